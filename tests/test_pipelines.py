"""Pipelines: the demo end to end (``--fast``), the adaptation and transfer studies, run records.

The end-to-end tests use tiny settings (``--fast``: one short epoch, few bootstrap
replicates) so they check wiring and file contracts, not learning quality.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the pipelines are run from the repository root (python -m pipelines.demo)
    sys.path.insert(0, str(REPO))

from medmtl import api  # noqa: E402
from pipelines import adaptation_study, demo, runs, splits, tables, transfer_study  # noqa: E402

SITE_A = runs.REPO / "sample_data" / "ct_site_a"
SITE_B = runs.REPO / "sample_data" / "ct_site_b"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def pipeline_checkpoint(tiny_checkpoint: Path) -> Path:
    """The checkpoint folder of the shared ``tiny_checkpoint`` fixture (tests/conftest.py)."""
    p = Path(tiny_checkpoint)
    return p if (p / "model_card.json").is_file() else p / "checkpoint"


def _subset(src: Path, dst: Path, ids: list[str]) -> Path:
    """A scan folder with only ``ids`` of ``src`` (NIfTI files + filtered annotations)."""
    import shutil

    dst.mkdir(parents=True)
    for sid in ids:
        shutil.copy2(src / f"{sid}.nii.gz", dst / f"{sid}.nii.gz")
    splits.filter_annotations(src / "annotations.csv", dst / "annotations.csv", ids)
    return dst


def _write_metrics(path: Path, cpm: float, mae: float | None, auc: float | None) -> Path:
    def entry(v: float | None) -> dict:
        return {"value": v, "ci95": None if v is None else [v - 0.1, v + 0.1]}

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overall": {"cpm": entry(cpm), "diameter_mae_mm": entry(mae),
                                            "malignancy_auc": entry(auc)}}), encoding="utf-8")
    return path


def _parse_table(text: str) -> dict[str, list[str]]:
    """``condition → cells`` of a markdown table printed by a pipeline."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| condition") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


# --------------------------------------------------------------------------- unit: runs, splits, tables


def test_split_ids_is_deterministic_and_disjoint() -> None:
    ids = [f"s{i:02d}" for i in range(12)]
    train, val, test = splits.split_ids(list(reversed(ids)), n_test=3, n_val=2)
    assert test == ["s09", "s10", "s11"] and val == ["s07", "s08"] and train == ids[:7]
    assert splits.split_ids(ids, n_test=0, n_val=3) == (ids[:9], ids[9:], [])
    with pytest.raises(ValueError, match="need at least 6 scans"):
        splits.split_ids(ids[:5], n_test=3, n_val=2)


def test_gap_closed_both_directions() -> None:
    assert tables.gap_closed(0.6, 0.4, 0.8) == pytest.approx(0.5)  # higher is better
    assert tables.gap_closed(3.0, 5.0, 1.0) == pytest.approx(0.5)  # MAE: lower is better
    assert tables.gap_closed(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # adaptation hurt
    assert tables.gap_closed(0.5, 0.5, 0.5) is None
    assert tables.gap_closed(None, 0.4, 0.8) is None


def test_bootstrap_mean_ci() -> None:
    mean, ci = tables.bootstrap_mean_ci([0.2, 0.4, 0.6, float("nan")], n_boot=500, seed=1)
    assert mean == pytest.approx(0.4)
    assert ci is not None and 0.2 <= ci[0] <= 0.4 <= ci[1] <= 0.6
    assert tables.bootstrap_mean_ci([0.3]) == (0.3, None)
    # scipy.stats.bootstrap draws the same replicates as the loop it replaced, so the interval is unchanged
    vals = np.random.default_rng(3).random(7)
    means = vals[np.random.default_rng(0).integers(0, 7, size=(2000, 7))].mean(axis=1)
    assert tables.bootstrap_mean_ci(list(vals))[1] == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), rel=1e-12)
    assert tables.bootstrap_mean_ci([]) == (None, None)


def test_filter_annotations_keeps_only_given_scans(tmp_path: Path) -> None:
    dst = splits.filter_annotations(SITE_A / "annotations.csv", tmp_path / "a.csv", ["ct_a_0000", "ct_a_0011"])
    import csv

    rows = list(csv.DictReader(open(dst, encoding="utf-8")))
    assert rows and {r["seriesuid"] for r in rows} <= {"ct_a_0000", "ct_a_0011"}
    assert "diameter_mm" in rows[0] and "malignancy" in rows[0]


def test_run_records_hash_every_input_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a", encoding="utf-8")
    (data / "sub" / "b.txt").write_text("b")
    run = tmp_path / "run"
    runs.write_run_records(run, inputs={"data": data}, config={"seed": 3}, device="cpu")
    inputs = json.loads((run / "inputs.json").read_text(encoding="utf-8"))
    files = {f["path"]: f["sha256"] for f in inputs["inputs"]["data"]["files"]}
    assert files == {"a.txt": api.sha256_file(data / "a.txt"), "sub/b.txt": api.sha256_file(data / "sub" / "b.txt")}
    versions = json.loads((run / "versions.json").read_text(encoding="utf-8"))
    assert {"python", "torch", "monai", "medmtl"} <= set(versions) and versions["device"] == "cpu"
    assert "seed: 3" in (run / "config.yaml").read_text(encoding="utf-8")


def test_results_table_reads_metrics_json(tmp_path: Path) -> None:
    a = _write_metrics(tmp_path / "a" / "metrics.json", 0.5, 2.25, None)
    b = _write_metrics(tmp_path / "b" / "metrics.json", 0.125, 4.0, 0.75)
    table = _parse_table(tables.results_table([tables.Row("A", a), tables.Row("B", b)]))
    assert table == {"A": ["0.500", "2.250", "n/a"], "B": ["0.125", "4.000", "0.750"]}
    with_ci = _parse_table(tables.results_table([tables.Row("A", a)], with_ci=True))
    assert with_ci["A"][0] == "0.500 [0.400, 0.600]"


def test_demo_clear_outputs_keeps_user_files(tmp_path: Path) -> None:
    out = tmp_path / "demo_out"
    (out / "predictions" / "x").mkdir(parents=True)
    (out / "README.md").write_text("old", encoding="utf-8")
    (out / "my_notes.txt").write_text("keep me", encoding="utf-8")
    demo.clear_outputs(out)
    assert not (out / "predictions").exists() and not (out / "README.md").exists()
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "keep me"


# --------------------------------------------------------------------------- unit: transfer grid


def test_transfer_grid_expansion_and_names(tmp_path: Path) -> None:
    points = transfer_study.expand({"adapter": ["inflate", "2.5d"], "seed": [0, 1], "pretrained": ["false"]})
    assert len(points) == 4
    assert {p.name for p in points} == {
        "inflate__full__fixed__lf1__scratch__s0", "inflate__full__fixed__lf1__scratch__s1",
        "2p5d__full__fixed__lf1__scratch__s0", "2p5d__full__fixed__lf1__scratch__s1",
    }
    assert "model.pretrained=false" in points[0].overrides()
    assert "data.label_fraction=1.0" in points[0].overrides()
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  adaptor: [inflate]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown axis.*adapter"):
        transfer_study.load_grid(grid)
    grid.write_text("gird: {}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown key"):
        transfer_study.load_grid(grid)


def test_transfer_aggregate_pools_seeds() -> None:
    base = {"adapter": "inflate", "strategy": "full", "weighting": "fixed", "label_fraction": 1.0,
            "pretrained": True, "mean_grad_cosine": 0.1}
    recs = [dict(base, seed=s, cpm=v, cpm_ci95=None, diameter_mae_mm=2.0, diameter_mae_mm_ci95=None,
                 malignancy_auc=None, malignancy_auc_ci95=None) for s, v in enumerate([0.2, 0.4, 0.6])]
    (row,) = transfer_study.aggregate(recs)
    assert row["n_seeds"] == 3 and row["ci_over"] == "seeds"
    assert row["cpm"] == pytest.approx(0.4) and row["cpm_ci95"][0] <= 0.4 <= row["cpm_ci95"][1]
    assert row["malignancy_auc"] is None
    assert "inflate" in transfer_study.table([row])


# --------------------------------------------------------------------------- end to end


def _check_printed_table(out: Path, printed: str, n_conditions: int) -> None:
    """Every number the demo printed equals the one in that condition's metrics.json."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    table = _parse_table(printed)
    assert len(table) == n_conditions == len(results["conditions"])
    for rec in results["conditions"]:
        overall = json.loads((out / rec["metrics_json"]).read_text(encoding="utf-8"))["overall"]
        expected = [tables.fmt(overall[k]["value"]) for k, _, _ in tables.METRICS]
        assert table[rec["condition"]] == expected


def test_demo_with_checkpoint(tmp_path: Path, pipeline_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's steps after training, on the tiny checkpoint and two site B scans (the full
    --fast demo, with training and the shift report, is the slow test below)."""
    target = _subset(SITE_B, tmp_path / "site_b", ["ct_b_0000", "ct_b_0001"])
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "keep.txt").write_text("user file", encoding="utf-8")
    args = ["--out", str(out), "--fast", "--device", "cpu", "--checkpoint", str(pipeline_checkpoint),
            "--target", str(target), "--methods", "histmatch,resim", "--skip-diagnose", "--n-heldout", "2"]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    keys = ["site_a_heldout", "site_b_none", "site_a_classical", "site_b_classical", "site_a_fused", "site_b_fused",
            "site_b_histmatch", "site_b_resim"]
    for key in keys:
        assert (out / "predictions" / key / "predictions.csv").is_file()
        assert (out / "metrics" / key / "metrics.json").is_file()
    for rel in ("README.md", "results.json", "results.csv", "versions.json", "inputs.json",
                "figures/results.png", "figures/froc_all.png", "adapted/histmatch/model_card.json"):
        assert (out / rel).is_file(), rel
    assert (out / "keep.txt").read_text(encoding="utf-8") == "user file"
    _check_printed_table(out, printed, len(keys))
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["heldout_ids"]).isdisjoint(results["train_ids"])
    assert results["trained"] is False
    inputs = json.loads((out / "inputs.json").read_text(encoding="utf-8"))
    assert set(inputs["inputs"]) == {"source", "target", "checkpoint"}
    summary = (out / "README.md").read_text(encoding="utf-8")
    assert "site B + histogram matching" in summary and "site B + re-simulation" in summary
    assert "classical floor, site A held-out" in summary  # the training-free floor on the same scans
    classical = json.loads((out / "predictions" / "site_b_classical" / "predictions.json").read_text(encoding="utf-8"))
    assert classical["run"]["method"] == "classical"
    fused = json.loads((out / "predictions" / "site_a_fused" / "predictions.json").read_text(encoding="utf-8"))
    assert fused["run"]["method"] == "fusion" and len(fused["run"]["inputs"]) == 2
    assert "model + classical (noisy-OR), site A held-out" in summary
    rec = json.loads((out / "adapted" / "resim" / "model_card.json").read_text(encoding="utf-8"))["adaptation"][-1]
    assert rec["method"] == "resim" and rec["params"]["steps"] == 2  # --fast: two fine-tuning steps


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m pipelines.demo --fast``: every step, training and shift report included."""
    out = tmp_path / "demo_out"
    rc = demo.main(["--out", str(out), "--fast", "--device", "cpu", "--methods", "adabn,resim"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    for rel in ("shift/report.html", "shift/report.json", "README.md", "results.json", "results.csv",
                "config.yaml", "versions.json", "inputs.json", "train/checkpoint/model_card.json",
                "train/gradient_conflict.csv", "figures/results.png", "figures/froc_all.png"):
        assert (out / rel).is_file(), rel
    _check_printed_table(out, printed, 8)  # in-domain, site B, 2 methods, classical floor and fusion on A and B
    inputs = json.loads((out / "inputs.json").read_text(encoding="utf-8"))
    assert set(inputs["inputs"]) == {"source", "target", "config"}
    assert set(inputs["heldout_ids"]).isdisjoint(inputs["train_ids"])
    summary = (out / "README.md").read_text(encoding="utf-8")
    assert "site B + AdaBN" in summary and "site B + re-simulation" in summary
    # trained on phantoms of the held-out scans' own acquisition (the committed 164×144×80 slab)
    made = json.loads((out / "data" / "train_phantoms" / "generation.json").read_text(encoding="utf-8"))
    assert made["shape"] == [164, 144, 80] == json.loads((out / "results.json").read_text())["train_phantoms"]["shape"]


def test_demo_phantom_shape_comes_from_the_generation_record(tmp_path: Path) -> None:
    from medmtl import api

    assert api.generated_shape(folder=SITE_A) == (164, 144, 80)
    assert api.generated_shape(folder=tmp_path) is None  # not made by the generator
    (tmp_path / "generation.json").write_text('{"kind": "ct", "site": "a", "seed": 0, "scans": [], "shape": null}',
                                              encoding="utf-8")
    assert api.generated_shape(folder=tmp_path) is None  # made at the site default
    (tmp_path / "generation.json").write_text("{not json", encoding="utf-8")
    assert api.generated_shape(folder=tmp_path) is None


def test_adaptation_study_with_checkpoint(tmp_path: Path, pipeline_checkpoint: Path) -> None:
    out = tmp_path / "adapt"
    target = _subset(SITE_B, tmp_path / "site_b", ["ct_b_0000", "ct_b_0001"])
    args = ["--out", str(out), "--checkpoint", str(pipeline_checkpoint), "--target", str(target),
            "--methods", "none,histmatch", "--fast", "--device", "cpu", "--n-heldout", "2"]
    rc = adaptation_study.main(args)
    assert rc == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["reference", "none", "histmatch"]
    assert "cpm_gap_closed" in results["rows"][2]
    for rel in ("versions.json", "inputs.json", "results.md", "results.csv", "seed_0/histmatch/done.json",
                "seed_0/histmatch/checkpoint/model_card.json", "seed_0/none/metrics/metrics.json"):
        assert (out / rel).is_file(), rel
    # a rerun reuses finished steps
    stamp = (out / "seed_0" / "histmatch" / "done.json").stat().st_mtime_ns
    assert adaptation_study.main(args) == 0
    assert (out / "seed_0" / "histmatch" / "done.json").stat().st_mtime_ns == stamp


def test_transfer_study_tiniest_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "transfer"
    data = _subset(SITE_A, tmp_path / "site_a", ["ct_a_0000", "ct_a_0001", "ct_a_0002", "ct_a_0003"])
    rc = transfer_study.main(["--out", str(out), "--data", str(data), "--fast", "--device", "cpu",
                              "--n-test", "1", "--n-val", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (run,) = sorted((out / "runs").iterdir())
    for rel in ("config.yaml", "versions.json", "inputs.json", "train/checkpoint/model_card.json",
                "predictions/predictions.csv", "metrics/metrics.json", "done.json"):
        assert (run / rel).is_file(), rel
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (row,) = results["rows"]
    metrics = json.loads((run / "metrics" / "metrics.json").read_text(encoding="utf-8"))["overall"]
    assert row["cpm"] == metrics["cpm"]["value"]
    assert row["ci_over"] == "scans"
    assert "inflate" in printed


@pytest.mark.slow
def test_transfer_study_two_seeds_gives_seed_intervals(tmp_path: Path) -> None:
    out = tmp_path / "transfer2"
    data = _subset(SITE_A, tmp_path / "site_a", ["ct_a_0000", "ct_a_0001", "ct_a_0002", "ct_a_0003"])
    assert transfer_study.main(["--out", str(out), "--data", str(data), "--fast", "--device", "cpu",
                                "--seeds", "0,1", "--n-test", "1", "--n-val", "1"]) == 0
    (row,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert row["n_seeds"] == 2 and row["ci_over"] == "seeds"
    assert row["cpm"] is None or math.isfinite(row["cpm"])


def test_bad_usage_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("grid:\n  weightings: [fixed]\n", encoding="utf-8")
    assert transfer_study.main(["--out", str(tmp_path / "t"), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "weightings" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_adaptation_study_with_a_missing_checkpoint_is_one_line_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert adaptation_study.main(["--out", str(tmp_path / "s"), "--checkpoint", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_demo_with_a_missing_source_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--out", str(tmp_path / "d"), "--source", str(tmp_path / "nope"), "--skip-diagnose"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "does not exist" in err[-1]
    assert not [ln for ln in err if ln.startswith("Traceback")]
    assert not (tmp_path / "d").exists()
    (tmp_path / "empty").mkdir()
    assert demo.main(["--out", str(tmp_path / "d"), "--target", str(tmp_path / "empty"), "--skip-diagnose"]) == 1
    assert "no scans found" in capsys.readouterr().err and not (tmp_path / "d").exists()
