"""bench/lesion_readout: five conditions rescored from one predictions table, on the same detections."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from bench.lesion_readout import CONDITIONS, main, rescore
from medmtl.engine.lesion_readout import fit_readout
from medmtl.io.annotations import read_annotations

_spec = importlib.util.spec_from_file_location("medmtl_tests_readout_helpers",
                                               Path(__file__).parent / "engine" / "readout_helpers.py")
assert _spec is not None and _spec.loader is not None
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rescore_keeps_detections_and_changes_only_what_each_condition_reads(sample_data: Path, tmp_path: Path) -> None:
    images, lesions, _ = _helpers.attribute_cohort(20, 44)
    readout = fit_readout(images, lesions)
    assert readout.attribute_malignancy is not None
    site = sample_data / "ct_site_a"
    truth = read_annotations(site / "annotations.csv")
    pred = tmp_path / "predictions.csv"
    with pred.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm", "malignancy_prob"])
        for les in truth:  # the heads' guess: 30 % too large, malignancy 0.5 everywhere
            w.writerow([les.seriesuid, *les.center_lps, 0.9, 1.3 * les.diameter_mm, 0.5])
    paths, n_scans = rescore(pred, site, readout, tmp_path / "out")
    assert n_scans == 8
    assert set(paths) == set(CONDITIONS)
    tables = {name: _rows(path) for name, path in paths.items()}
    heads = tables["heads"]
    assert len(heads) == len(truth)
    for name, rows in tables.items():
        assert [(r["seriesuid"], r["coordX"], r["probability"]) for r in rows] == \
            [(r["seriesuid"], r["coordX"], r["probability"]) for r in heads], name
    size_changed = [float(a["diameter_mm"]) != pytest.approx(float(b["diameter_mm"]))
                    for a, b in zip(tables["size readout"], heads)]
    assert all(size_changed)
    assert [r["malignancy_prob"] for r in tables["size readout"]] == [r["malignancy_prob"] for r in heads]
    assert [r["diameter_mm"] for r in tables["malignancy readout"]] == [r["diameter_mm"] for r in heads]
    assert all(float(r["malignancy_prob"]) != 0.5 for r in tables["malignancy readout"])
    assert [r["diameter_mm"] for r in tables["both"]] == [r["diameter_mm"] for r in tables["size readout"]]
    direct = tables["both, direct malignancy"]
    assert [r["diameter_mm"] for r in direct] == [r["diameter_mm"] for r in tables["both"]]
    assert [r["malignancy_prob"] for r in direct] != [r["malignancy_prob"] for r in tables["both"]]


def test_a_run_without_predictions_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--run", str(tmp_path / "nope"), "--train-data", str(tmp_path), "--test-data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--run:" in err[0] and "predictions.csv not found" in err[0]
