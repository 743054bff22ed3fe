"""bench/learning.py: the pure parts (Δm, condition grid, tables, Bayes AUC, appending) — no training."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root (python -m bench.learning)
    sys.path.insert(0, str(REPO))

from bench import learning as L  # noqa: E402


def test_task_delta_and_delta_m() -> None:
    # CPM 0.5 → 0.6 is +20 %; MAE 2.5 → 2.0 mm (lower is better) is +20 %; AUC unchanged is 0.
    res = L.delta_m({"det": 0.6, "size": 2.0, "malig": 0.8}, {"det": 0.5, "size": 2.5, "malig": 0.8})
    assert res["per_task"]["det"] == pytest.approx(20.0)
    assert res["per_task"]["size"] == pytest.approx(20.0)
    assert res["per_task"]["malig"] == pytest.approx(0.0)
    assert res["delta_m"] == pytest.approx(40.0 / 3.0)
    # a worse MAE is a negative Δ
    assert L.task_delta(3.0, 2.0, lower_is_better=True) == pytest.approx(-50.0)
    # undefined: missing value, zero baseline → Δ_t None and Δm None (no partial mean)
    assert L.task_delta(None, 0.5, False) is None
    assert L.task_delta(0.3, 0.0, False) is None
    assert L.delta_m({"det": 0.6, "size": 2.0, "malig": None}, {"det": 0.5, "size": 2.5, "malig": 0.8})["delta_m"] is None


def test_delta_m_table_pairs_seeds() -> None:
    st = L.single_task_conditions("with-detection")
    mt = L.Condition()

    def rec(seed: int, cpm: float, mae: float, auc: float) -> dict:
        return {"seed": seed, "cpm": cpm, "diameter_mae_mm": mae, "malignancy_auc": auc}

    records = {
        mt: [rec(0, 0.6, 2.0, 0.8), rec(1, 0.4, 2.0, 0.8)],
        st["det"]: [rec(0, 0.5, 9.0, 0.1), rec(1, 0.5, 9.0, 0.1)],
        st["size"]: [rec(0, 0.1, 2.5, 0.1), rec(1, 0.1, 2.5, 0.1), rec(2, 0.1, 2.5, 0.1)],  # seed 2 has no partner
        st["malig"]: [rec(0, 0.1, 9.0, 0.8), rec(1, 0.1, 9.0, 0.8)],
    }
    dm = L.delta_m_table(records, st, mt)
    assert dm["seeds"] == [0, 1]
    det = next(t for t in dm["tasks"] if t["task"] == "det")
    assert det["delta"] == pytest.approx(0.0)  # +20 % and −20 %
    assert det["delta_ci95"] is not None
    per = {p["seed"]: p["delta_m"] for p in dm["per_seed"]}
    assert per[0] == pytest.approx(40.0 / 3.0)
    assert per[1] == pytest.approx(0.0)
    assert dm["delta_m"] == pytest.approx(20.0 / 3.0)


def test_expand_conditions_full_grid() -> None:
    pairs = L.expand_conditions()
    blocks = [b for b, _ in pairs]
    assert blocks.count("init") == 6  # 3 adapters × ImageNet / scratch
    assert blocks.count("mtl") == 4  # multi-task + 3 single-task
    assert blocks.count("weighting") == 3
    assert blocks.count("transfer") == 9  # 3 strategies × 3 label shares
    uniq = L.unique_conditions(pairs)
    # the ImageNet / inflate / full / fixed / 100 % condition is in all four blocks, trained once
    assert len(uniq) == len(pairs) - 3
    assert len({c.key for c in uniq}) == len(uniq)
    weightings = [c.weighting for b, c in pairs if b == "weighting"]
    assert weightings == ["fixed", "uncertainty", "upgrad"]
    lfs = sorted({c.label_fraction for b, c in pairs if b == "transfer"})
    assert lfs == [0.1, 0.3, 1.0]
    assert {c.pretrained for b, c in pairs if b == "init"} == {True, False}


def test_expand_conditions_subset_and_errors() -> None:
    pairs = L.expand_conditions(blocks=["weighting"], gradient_method="fixed")
    assert [c.weighting for _, c in pairs] == ["fixed", "uncertainty"]  # no duplicate
    with pytest.raises(ValueError, match="unknown block"):
        L.expand_conditions(blocks=["nope"])
    with pytest.raises(ValueError, match="single-task mode"):
        L.expand_conditions(blocks=["mtl"], single_task="loose")
    with pytest.raises(ValueError, match="fixed"):
        L.Condition(weighting="uncertainty", tasks=("det",))
    with pytest.raises(ValueError, match="subset"):
        L.Condition(tasks=("cls",))


def test_single_task_weights() -> None:
    wd = L.single_task_conditions("with-detection")
    assert wd["det"].overrides() == ["weighting.params.alpha=1.0", "weighting.params.beta=0.0",
                                     "weighting.params.gamma=0.0"]
    assert wd["size"].overrides() == ["weighting.params.alpha=1.0", "weighting.params.beta=1.0",
                                      "weighting.params.gamma=0.0"]
    assert wd["malig"].tasks == ("det", "malig")
    strict = L.single_task_conditions("strict")
    assert strict["malig"].overrides() == ["weighting.params.alpha=0.0", "weighting.params.beta=0.0",
                                           "weighting.params.gamma=1.0"]
    assert L.Condition().overrides() == []
    assert strict["size"].key.endswith("__only-size")
    assert strict["size"].point(3).seed == 3
    assert "seed=3" in strict["size"].point(3).overrides()


def test_single_task_overrides_are_valid_config() -> None:
    from medmtl import api

    for c in L.single_task_conditions("strict").values():
        cfg = api.resolve_config(config=REPO / "configs" / "tiny.yaml",
                                 overrides=[*c.point(0).overrides(), *c.overrides()])
        assert cfg["weighting"]["name"] == "fixed"
        assert sorted(cfg["weighting"]["params"]) == ["alpha", "beta", "gamma"]


def _row(block: str = "init") -> L.Row:
    return L.Row(block=block, condition="inflate, ImageNet, full, fixed, 100% labels",
                 metrics={"cpm": {"value": 0.5, "ci95": [0.4, 0.6]},
                          "diameter_mae_mm": {"value": 2.345, "ci95": [1.5, 3.25]},
                          "malignancy_auc": {"value": None, "ci95": None}},
                 n_seeds=3, ci_over="seeds", where="cpu (Test CPU, 2 cores)")


def test_results_table_format() -> None:
    text = L.results_table([_row()])
    lines = text.splitlines()
    assert len(lines) == 3
    for h in ("condition", "CPM [95% CI]", "MAE mm [95% CI]", "AUC [95% CI]", "seeds", "where measured"):
        assert h in lines[0]
    assert "0.500 [0.400, 0.600]" in lines[2]
    assert "2.35 [1.50, 3.25]" in lines[2]
    assert "n/a" in lines[2]
    assert "cpu (Test CPU, 2 cores)" in lines[2]


def test_pool_and_markdown() -> None:
    recs = [{"run": f"r{s}", "adapter": "inflate", "strategy": "full", "weighting": "fixed", "label_fraction": 1.0,
             "pretrained": True, "seed": s, "cpm": 0.1 * (s + 1), "cpm_ci95": None, "diameter_mae_mm": 2.0,
             "diameter_mae_mm_ci95": None, "malignancy_auc": None, "malignancy_auc_ci95": None,
             "mean_grad_cosine": None, "where": "cpu (x)"} for s in range(3)]
    row = L.make_row("mtl", L.Condition(), recs)
    assert row.n_seeds == 3 and row.ci_over == "seeds"
    assert row.metrics["cpm"]["value"] == pytest.approx(0.2)
    assert row.metrics["malignancy_auc"]["value"] is None
    dm = {"tasks": [{"task": "det", "metric": "cpm", "lower_is_better": False, "st": 0.5, "mt": 0.6, "delta": 20.0,
                     "delta_ci95": [10.0, 30.0], "st_condition": "det only"}],
          "delta_m": 20.0, "delta_m_ci95": None, "seeds": [0]}
    res = {"rows": [asdict(row)], "delta_m": dm, "data": "d", "config": "c", "fast": True, "seeds": [0],
           "split": {"train": ["a"], "val": ["b"], "test": ["c", "d"]},
           "bayes_auc_test": {"value": 0.9, "ci95": [0.8, 1.0], "n_lesions": 5, "n_positive": 2},
           "bayes_auc_all": {"value": None, "ci95": None, "n_lesions": 0, "n_positive": 0}}
    md = L.markdown(res)
    assert "**mtl**" in md and "**init**" not in md and "classical floor" not in md
    res["floor"] = {"cpm": {"value": 0.7, "ci95": [0.6, 0.8]}, "diameter_mae_mm": {"value": 1.9, "ci95": [1.5, 2.4]},
                    "malignancy_auc": {"value": 0.66, "ci95": [0.5, 0.8]}}
    table = L.markdown(res).split("**mtl**")[1].splitlines()
    first = next(line for line in table if line.startswith("| mtl "))  # the floor heads the block's table
    assert "classical floor (no training)" in first and "0.700 [0.600, 0.800]" in first and "test scans" in first
    assert "Δm = +20.0 %" in md
    assert "+20.0 % [+10.0, +30.0]" in md
    assert "Bayes-optimal malignancy AUC of the test scans: 0.900 [0.800, 1.000]" in md


def test_bayes_auc(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    rows = [("s1", 0.9, "1"), ("s1", 0.2, "0"), ("s2", 0.8, "1"), ("s2", 0.1, ""), ("s3", 0.3, "0")]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["seriesuid", "malignancy", "bayes_malignancy_prob"])
        w.writerows([(s, y, p) for s, p, y in rows])
    all_ = L.bayes_auc(path, n_boot=50)
    assert all_["value"] == pytest.approx(1.0) and all_["n_lesions"] == 4 and all_["n_positive"] == 2
    assert all_["ci95"] is not None
    only_s2 = L.bayes_auc(path, ["s2"], n_boot=50)
    assert only_s2["value"] is None and only_s2["n_lesions"] == 1


def test_bayes_auc_matches_sample_data_readme() -> None:
    res = L.bayes_auc(REPO / "sample_data" / "ct_site_a" / "annotations.csv", n_boot=20)
    assert res["n_lesions"] == 11
    assert math.isclose(res["value"], 0.917, abs_tol=5e-4)


def test_append_results_only_appends(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Old\n\nkeep me", encoding="utf-8")
    L.append_results(path, "## Learning — one\n\ntable\n")
    L.append_results(path, "## Learning — two\n")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results\n\n## Old\n\nkeep me\n")
    assert text.index("## Learning — one") < text.index("## Learning — two")
    fresh = L.append_results(tmp_path / "new.md", "## S\n")
    assert fresh.read_text(encoding="utf-8").startswith("# Benchmark results\n")


def test_parser_help_lists_options() -> None:
    text = L._parser().format_help()
    for opt in ("--fast", "--device", "--seeds", "--out", "--append-results", "--blocks", "--generate"):
        assert opt in text


def test_run_all_order_deadline_and_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs start in the given (seed-major) order; after the deadline only finished runs are read back."""
    import time

    calls: list[tuple[str, int]] = []

    def fake_run(cond: L.Condition, seed: int, **kw: object) -> dict[str, object]:
        calls.append((cond.key, seed))
        return {"seed": seed, "key": cond.key}

    monkeypatch.setattr(L, "run_condition", fake_run)
    a, b = L.Condition(), L.Condition(pretrained=False)
    todo = [(a, 0), (b, 0), (a, 1), (b, 1)]
    kw = {"out": tmp_path}
    done = L.run_all(todo, kw, jobs=1)
    assert calls == [(a.key, 0), (b.key, 0), (a.key, 1), (b.key, 1)] and len(done) == 4
    # past the deadline: only the run whose folder is already finished is read back
    calls.clear()
    finished = tmp_path / "runs" / f"{b.key}__s1"
    finished.mkdir(parents=True)
    (finished / "done.json").write_text("{}", encoding="utf-8")
    done = L.run_all(todo, kw, jobs=1, deadline=time.perf_counter() - 1.0)
    assert calls == [(b.key, 1)] and [c for c, _ in done] == [b]
    with pytest.raises(ValueError, match="--jobs must be at least 1, got 0"):
        L.run_all(todo, kw, jobs=0)


def test_classical_floor_runs_once_on_the_test_scans(sample_data: Path, tmp_path: Path) -> None:
    data = sample_data / "ct_site_a"
    with open(data / "annotations.csv", newline="", encoding="utf-8") as fh:
        test_ids = [next(csv.DictReader(fh))["seriesuid"]]  # a scan with a lesion
    floor = L.classical_floor(out=tmp_path, data=data, test_ids=test_ids, n_bootstrap=20)
    assert set(floor) == {"cpm", "diameter_mae_mm", "malignancy_auc"}
    assert 0.0 <= floor["cpm"]["value"] <= 1.0
    scored = (tmp_path / "classical" / "predictions" / "predictions.csv").read_text(encoding="utf-8")
    others = {p.name.removesuffix(".nii.gz") for p in data.glob("*.nii.gz")} - set(test_ids)
    assert test_ids[0] in scored and len(others) == 7 and all(i not in scored for i in others)
    (tmp_path / "classical" / "predictions" / "predictions.csv").unlink()
    assert L.classical_floor(out=tmp_path, data=data, test_ids=test_ids, n_bootstrap=20) == floor  # reused, not rerun
