"""bench/adaptation.py: the pure parts (gap shares against site A and against the oracle, tables)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root (python -m bench.adaptation)
    sys.path.insert(0, str(REPO))

from bench import adaptation as A  # noqa: E402


def _row(name: str, cpm: float | None, mae: float | None = None) -> dict[str, Any]:
    return {"condition": name, "n_scans": 4, "cpm": {"value": cpm, "ci95": None},
            "diameter_mae_mm": {"value": mae, "ci95": None}, "malignancy_auc": {"value": None, "ci95": None}}


def test_gap_share() -> None:
    assert A.gap_share(0.4, 0.1, 0.25) == pytest.approx(0.5)  # half of the A→B gap
    assert A.gap_share(4.0, 8.0, 6.0) == pytest.approx(0.5)  # MAE: lower is better, same formula
    assert A.gap_share(0.4, 0.1, 0.05) == pytest.approx(-1 / 6)  # worse than no adaptation
    assert A.gap_share(0.2, 0.2, 0.3) is None and A.gap_share(None, 0.1, 0.2) is None


def test_closable_share_against_the_oracle_and_tables() -> None:
    rows = [_row("site A held-out", 0.4, 4.0), _row("site B, none", 0.1, 8.0), _row("site B, adabn", 0.15, 7.0),
            _row("site B, oracle: trained on 8 labelled site-B scans", 0.2, 6.0)]
    for r in rows[2:]:
        r["gap_share"] = {k: A.gap_share(rows[0][k]["value"], rows[1][k]["value"], r[k]["value"]) for k, _ in A.METRICS}
    A.add_closable_shares(rows)
    assert rows[2]["closable_share"]["cpm"] == pytest.approx(0.5)  # half of what labels would give
    assert rows[2]["closable_share"]["diameter_mae_mm"] == pytest.approx(0.5)
    assert rows[2]["gap_share"]["cpm"] == pytest.approx(1 / 6)
    assert "closable_share" not in rows[3]  # the oracle is the reference, not a method
    md = A.markdown({"quality": {"rows": rows}})
    assert "share of the closable gap, oracle = 1" in md and "| +0.50 / +0.50 / n/a |" in md
    plain = rows[:3]
    for r in plain:
        r.pop("closable_share", None)
    assert "closable" not in A.markdown({"quality": {"rows": plain}})


def _run(seed: int, cpms: list[float], names: list[str] | None = None) -> dict[str, Any]:
    names = names or ["site A held-out", "site B, none", "site B, adabn", "site B, oracle: trained on 8 labelled site-B scans"]
    rows = [_row(n, c, 5.0) for n, c in zip(names, cpms)]
    for r in rows[2:]:
        r["gap_share"] = {k: A.gap_share(rows[0][k]["value"], rows[1][k]["value"], r[k]["value"]) for k, _ in A.METRICS}
    A.add_closable_shares(rows)
    return {"quality": {"rows": rows, "overrides": [f"data.root=/x/s{seed}", "train.epochs=4", f"seed={seed}"]}}


def test_combine_runs_of_several_seeds() -> None:
    comb = A.combine([_run(0, [0.4, 0.1, 0.2, 0.3]), _run(1, [0.2, 0.1, 0.1, 0.1])], names=["s0", "s1"])
    adabn = comb["rows"][2]
    assert adabn["cpm"]["mean"] == pytest.approx(0.15) and adabn["cpm"]["sd"] == pytest.approx(0.0707107)
    # share of the run-averaged metrics: (0.15 − 0.1) / (0.3 − 0.1) = 0.25; per run 1/3 and 0
    assert adabn["gap_share"]["cpm"]["of_means"] == pytest.approx(0.25)
    assert adabn["gap_share"]["cpm"]["values"] == pytest.approx([1 / 3, 0.0])
    # against the oracle: means 0.2 vs none 0.1 → 0.5; run 1's oracle gap is 0 → no per-run share
    assert adabn["closable_share"]["cpm"]["of_means"] == pytest.approx(0.5)
    assert adabn["closable_share"]["cpm"]["values"][1] is None
    assert adabn["gap_share"]["diameter_mae_mm"]["of_means"] is None  # MAE equal everywhere: no gap
    assert "closable_share" not in comb["rows"][3]
    md = A.combined_markdown(comb)
    assert "2 runs (s0, s1)" in md and "| site B, adabn | 4 | 0.150 ± 0.071 |" in md
    assert "+0.25 [+0.00, +0.33]" in md and "+0.50 [+0.50, +0.50]" in md


def test_combine_refuses_runs_that_differ_in_more_than_the_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 runs"):
        A.combine([_run(0, [0.4, 0.1, 0.2, 0.3])])
    other = _run(1, [0.4, 0.1, 0.2, 0.3])
    other["quality"]["overrides"][1] = "train.epochs=8"
    with pytest.raises(ValueError, match=r"other settings.*differ only in --set seed=N"):
        A.combine([_run(0, [0.4, 0.1, 0.2, 0.3]), other])
    fewer = _run(1, [0.4, 0.1, 0.2], names=["site A held-out", "site B, none", "site B, tent"])
    with pytest.raises(ValueError, match="same --methods"):
        A.combine([_run(0, [0.4, 0.1, 0.2, 0.3]), fewer])
    # the command line: one error line, exit 2, nothing written
    import json
    for i, run in enumerate((_run(0, [0.4, 0.1, 0.2, 0.3]), other)):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "results.json").write_text(json.dumps(run), encoding="utf-8")
    assert A.main(["--combine", str(tmp_path / "s0"), str(tmp_path / "missing")]) == 2
    assert A.main(["--combine", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 2
    assert not (tmp_path / "combined.json").exists()
    (tmp_path / "s1" / "results.json").write_text(json.dumps(_run(1, [0.2, 0.1, 0.1, 0.1])), encoding="utf-8")
    assert A.main(["--combine", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    assert "0.150 ± 0.071" in (tmp_path / "combined.md").read_text(encoding="utf-8")


def test_a_second_call_reuses_matching_checkpoints_and_refuses_others(tmp_path: Path) -> None:
    import json

    from medmtl import api

    config = REPO / "configs" / "tiny.yaml"
    over = ["train.epochs=1", "seed=3"]
    v01 = json.loads((REPO / "tests" / "engine" / "cards" / "model_card_v0_1.json").read_text(encoding="utf-8"))
    ck = tmp_path / "train" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / "model_card.json").write_text(json.dumps({**v01, "train_config": api.resolve_config(config=config, overrides=over)}),
                                        encoding="utf-8")
    assert A.train_or_reuse(config, tmp_path / "train", over) == (ck, True)  # no training happens
    with pytest.raises(ValueError, match="other settings"):
        A.train_or_reuse(config, tmp_path / "train", ["train.epochs=2", "seed=3"])
    ad = tmp_path / "adapted" / "dann"
    ad.mkdir(parents=True)
    rec = {"method": "dann", "source_checkpoint": str(ck), "params": {"steps": 200}}
    (ad / "model_card.json").write_text(json.dumps({**v01, "adaptation": [rec]}), encoding="utf-8")
    assert A.adapt_or_reuse(ad, checkpoint=ck, method="dann", steps=200) == (ad, True)
    assert A.adapt_or_reuse(ad, checkpoint=ck, method="dann", steps=None) == (ad, True)
    with pytest.raises(ValueError, match="another adaptation"):
        A.adapt_or_reuse(ad, checkpoint=ck, method="dann", steps=20)
    with pytest.raises(ValueError, match="another adaptation"):
        A.adapt_or_reuse(ad, checkpoint=tmp_path / "other", method="dann", steps=None)
