"""``medmtl inspect``: table and JSON output, options, skipped files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from medmtl.cli import main


def _folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ct = np.full((32, 32, 8), -1000.0, np.float32)
    ct[6:-6, 6:-6, :] = rng.normal(30, 10, (20, 20, 8))
    affine = np.array([[0.7, 0, 0, -11.0], [0, 0.8, 0, 12.0], [0, 0, 2.5, 13.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ct, affine), str(tmp_path / "ct_case.nii.gz"))
    mr = sitk.GetImageFromArray(rng.uniform(0, 500, (8, 32, 32)).astype(np.float32))
    mr.SetSpacing((1.0, 1.0, 3.0))
    mr.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(mr, str(tmp_path / "mr_case.mha"))
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.uint8), affine), str(tmp_path / "masks" / "ct_case_lesions.nii.gz"))
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nct_case,-3,-20,20,5\n", encoding="utf-8")
    return tmp_path


def test_table_output(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(_folder(tmp_path))])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header, ct_row, mr_row = lines[0], lines[1], lines[2]
    assert header.split()[:8] == ["id", "format", "shape", "spacing_mm", "orient", "origin_lps", "direction", "modality"]
    for col in ("format", "shape", "spacing_mm", "modality", "p50"):
        assert ct_row[header.index(col) - 1] == " " and mr_row[header.index(col) - 1] == " "  # aligned columns
    assert ct_row.startswith("ct_case ") and "nifti" in ct_row and "32x32x8" in ct_row and "RAS" in ct_row
    assert "(11.00, -12.00, 13.00)" in ct_row and " CT " in ct_row
    assert mr_row.startswith("mr_case ") and "LPS" in mr_row and " MR " in mr_row
    assert "2 scan(s) read" in result.stdout
    assert "masks/ct_case_lesions.nii.gz: label file under a 'masks' folder" in result.stdout


def test_json_output(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(_folder(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    rows = {r["id"]: r for r in info["scans"]}
    ct = rows["ct_case"]
    assert ct["shape"] == [32, 32, 8] and ct["orientation"] == "RAS"
    np.testing.assert_allclose(ct["spacing_mm"], [0.7, 0.8, 2.5], atol=1e-6)
    np.testing.assert_allclose(ct["origin_lps"], [11.0, -12.0, 13.0])
    np.testing.assert_allclose(ct["direction"], [-1, 0, 0, 0, -1, 0, 0, 0, 1])
    assert ct["modality"] == "CT" and ct["percentiles"]["0.5"] == -1000.0
    assert rows["mr_case"]["modality"] == "MR" and rows["mr_case"]["format"] == "mha"
    assert info["skipped"] == [
        {"path": "masks/ct_case_lesions.nii.gz", "reason": "label file under a 'masks' folder, not a scan", "failed": False}
    ]
    assert info["n_failed"] == 0


def test_annotations_validated(tmp_path):
    folder = _folder(tmp_path)
    result = CliRunner().invoke(main, ["inspect", str(folder), "--json", "--annotations", str(folder / "annotations.csv")])
    assert result.exit_code == 0, result.output
    ann = json.loads(result.stdout)["annotations"]
    assert ann["n_lesions"] == 1 and ann["n_scans"] == 1 and ann["warnings"] == []


@pytest.mark.parametrize("flag", [[], ["--resample-nonuniform"]])
def test_resample_flag_reads_tilted_series(tmp_path, flag):
    import importlib.util

    spec = importlib.util.spec_from_file_location("medmtl_tests_dicom_helpers_cli", Path(__file__).parent / "io" / "dicom_helpers.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    z = [0.0, 2.5, 5.0, 10.0, 12.5]
    helpers.write_series(tmp_path / "s", np.zeros((32, 32, 5), np.int16) - 1000, origin_lps=(0, 0, 0), spacing=(1, 1, 2.5), positions=[(0, 0, v) for v in z])
    result = CliRunner().invoke(main, ["inspect", str(tmp_path), "--json", *flag])
    if flag:
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.stdout)["scans"]
        assert row["spacing_mm"][2] == pytest.approx(3.125) and "resampled" in row["warnings"][0]
    else:
        assert result.exit_code == 1 and "non-uniform slice spacing" in result.stderr


def test_help_lists_options():
    result = CliRunner().invoke(main, ["inspect", "-h"])
    assert result.exit_code == 0
    for opt in ("FOLDER", "--json", "--resample-nonuniform", "--annotations"):
        assert opt in result.output
