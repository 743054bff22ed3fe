"""`medmtl predict`: a corrupt scan among good ones, exit codes, resume, device errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medmtl.cli import main

_spec = importlib.util.spec_from_file_location(
    "medmtl_tests_predict_helpers", Path(__file__).parent / "engine" / "predict_helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.session_checkpoint(tmp_path_factory)


def test_corrupt_scan_is_recorded_the_batch_goes_on_and_reruns_resume(
    checkpoint: Path, sample_data: Path, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for sid in ("ct_b_0000", "ct_b_0001"):
        shutil.copy(sample_data / "ct_site_b" / f"{sid}.nii.gz", scans)
    (scans / "ct_b_bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a NIfTI file" * 10)
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(scans), "-o", str(out), "--device", "cpu",
            "--overlap", "0.25", "--no-progress"]
    r1 = CliRunner().invoke(main, args)
    assert r1.exit_code == 1, r1.output
    assert f"Error: 1 of 3 scans failed; see {out / 'failures.json'}" in r1.output
    failures = json.loads((out / "failures.json").read_text(encoding="utf-8"))
    assert [f["seriesuid"] for f in failures] == ["ct_b_bad"] and failures[0]["reason"]
    assert (out / "scans" / "ct_b_0000.json").is_file() and (out / "scans" / "ct_b_0001.json").is_file()
    rows = (out / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 2 * helpers.DECODE["max_lesions"]

    r2 = CliRunner().invoke(main, args)  # second run: nothing to redo for the complete scans
    assert r2.exit_code == 1
    assert "0 predicted, 2 already complete, 1 failed" in r2.output


def test_usage_and_device_errors(checkpoint: Path, sample_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad_amp = runner.invoke(main, ["predict", "--checkpoint", str(checkpoint), str(sample_data / "ct_site_b"),
                                   "-o", str(tmp_path), "--amp", "fp8"])
    assert bad_amp.exit_code == 2 and "fp8" in bad_amp.output
    bad_dev = runner.invoke(main, ["predict", "--checkpoint", str(checkpoint), str(sample_data / "ct_site_b"),
                                   "-o", str(tmp_path), "--device", "gpu0"])
    assert bad_dev.exit_code == 2
    if not torch.cuda.is_available():
        r = runner.invoke(main, ["predict", "--checkpoint", str(checkpoint), str(sample_data / "ct_site_b"),
                                 "-o", str(tmp_path), "--device", "cuda"])
        assert r.exit_code == 1 and r.output.count("\n") == 1 and "no CUDA GPU" in r.output
    missing = runner.invoke(main, ["predict", "--checkpoint", str(tmp_path / "nope"), str(sample_data), "-o",
                                   str(tmp_path)])
    assert missing.exit_code == 2


def test_json_and_threshold(tmp_path: Path, sample_data: Path, tiny_checkpoint: Path) -> None:
    """``--json`` prints the summary with the numbers of the written tables; ``--threshold``
    replaces the card's (and a rerun with another threshold is not skipped)."""
    import csv

    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "ct_b_0000.nii.gz").write_bytes((sample_data / "ct_site_b" / "ct_b_0000.nii.gz").read_bytes())
    out = tmp_path / "out"
    base = ["predict", "--checkpoint", str(tiny_checkpoint), str(scans), "-o", str(out), "--device", "cpu",
            "--overlap", "0", "--json"]
    res = CliRunner().invoke(main, [*base, "--threshold", "0.9"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert summary["n_done"] == 1 and all(float(r["probability"]) >= 0.9 for r in rows)
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert record["run"]["decode"]["threshold"] == 0.9
    again = json.loads(CliRunner().invoke(main, [*base, "--threshold", "0.05"]).stdout)
    assert again["n_done"] == 1 and again["n_skipped"] == 0  # another threshold: predicted again


def test_preview_without_lesion_and_with_lesions(checkpoint: Path, sample_data: Path, tmp_path: Path) -> None:
    """``--preview`` writes a preview for every scan: one per lesion, or one saying no lesion was
    found at the threshold; drawn on the original grid (176 × 144 voxels of 0.9 mm here, not the
    card's 6 mm grid)."""
    from PIL import Image

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(sample_data / "ct_site_a" / "ct_a_0000.nii.gz", scans)
    base = ["predict", "--checkpoint", str(checkpoint), str(scans), "--device", "cpu", "--overlap", "0",
            "--no-progress", "--preview"]
    none = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "none"), "--threshold", "0.999999"])
    assert none.exit_code == 0, none.output
    record = json.loads((tmp_path / "none" / "scans" / "ct_a_0000.json").read_text(encoding="utf-8"))
    assert record["lesions"] == [] and record["outputs"]["previews"] == ["previews/ct_a_0000_no_lesion.png"]
    with Image.open(tmp_path / "none" / "previews" / "ct_a_0000_no_lesion.png") as im:
        assert im.size[0] >= 3 * 260 and im.size[1] >= 260
    some = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "some")])
    assert some.exit_code == 0, some.output
    names = sorted(p.name for p in (tmp_path / "some" / "previews").iterdir())
    assert names == [f"ct_a_0000_lesion{k}.png" for k in range(1, helpers.DECODE["max_lesions"] + 1)]
