"""Must show: every bad input gives ONE clear ``Error:`` line and a non-zero exit from the CLI,
no traceback and no partial output (plus the success cases that sit next to them)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medmtl.cli import main

#: every case of this module runs under the hostile-input time limit (tests/conftest.py)
HOSTILE_CASES = True

_spec = importlib.util.spec_from_file_location("medmtl_tests_dicom_helpers_bad", Path(__file__).parent / "io" / "dicom_helpers.py")
assert _spec is not None and _spec.loader is not None
dicom_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dicom_helpers)

SHAPE = (32, 32, 8)
HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm"


def _ct(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000.0, np.float32)
    vol[4:-4, 4:-4, :] = rng.normal(40, 20, (shape[0] - 8, shape[1] - 8, shape[2]))
    return vol


def _nifti(path: Path, array=None, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_ct() if array is None else array, np.eye(4) if affine is None else affine), str(path))
    return path


def _series(folder: Path, *, positions=None, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), uid="1.2.3.4.5", n_k=5, prefix="slice"):
    vol = _ct((32, 32, n_k)).astype(np.int16)
    return dicom_helpers.write_series(
        folder, vol, origin_lps=(-10.0, 20.0, -30.0), spacing=(0.7, 0.8, 2.5), direction=direction, positions=positions, series_uid=uid,
        prefix=prefix,
    )


@dataclass
class Case:
    """A folder builder, the extra CLI arguments, the expected exit code and key words."""

    build: Callable[[Path], list[str]]
    exit_code: int
    words: list[str] = field(default_factory=list)
    stdout_words: list[str] = field(default_factory=list)
    partial_stdout_ok: bool = False


def empty_folder(d):
    (d / "notes.md").write_text("no scans", encoding="utf-8")
    return []


def corrupt_nii(d):
    (d / "corrupt.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return []


def truncated_nii(d):
    good = _nifti(d / "whole.nii.gz")
    (d / "trunc.nii.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return []


def truncated_dicom(d):
    files = _series(d / "ser")
    files[2].write_bytes(files[2].read_bytes()[:-300])
    return []


def two_series(d):
    _series(d / "ser", uid="1.2.3.4.1", prefix="a")
    _series(d / "ser", uid="1.2.3.4.2", prefix="b")
    return []


def nonuniform(d):
    _series(d / "ser", positions=[(-10.0, 20.0, z) for z in (-30, -27.5, -25, -20, -17.5)])
    return []


def tilt(d):
    c = (0.0, np.cos(np.radians(20)), -np.sin(np.radians(20)))
    direction = np.stack([(1.0, 0, 0), c, np.cross((1.0, 0, 0), c)], axis=1).reshape(-1)
    _series(d / "ser", positions=[(-10.0, 20.0, -30 + 2.5 * k) for k in range(5)], direction=direction)
    return []


def image_2d(d):
    _nifti(d / "flat.nii.gz", np.zeros((32, 32), np.float32))
    return []


def image_4d(d):
    _nifti(d / "dyn.nii.gz", np.zeros((32, 32, 8, 3), np.float32))
    return []


def nan_voxels(d):
    vol = _ct()
    vol[5, 5, 5] = np.nan
    _nifti(d / "holes.nii.gz", vol)
    return []


def _with_table(d, text, name="annotations.csv"):
    _nifti(d / "scans" / "s1.nii.gz")
    (d / name).write_text(text, encoding="utf-8")
    return ["--annotations", str(d / name)]


def csv_missing_column(d):
    return _with_table(d, "seriesuid,coordX,coordY,diameter_mm\ns1,1,2,4\n")


def csv_non_numeric(d):
    return _with_table(d, f"{HEADER}\ns1,10,10,4,5\ns1,1,2,3,4\ns1,abc,2,3,4\n")


def csv_bad_malignancy(d):
    return _with_table(d, f"{HEADER},malignancy\ns1,10,10,4,5,2\n")


def lesion_outside(d):
    return _with_table(d, f"{HEADER},lesion_id\ns1,-10,-10,4,5,n1\ns1,500,10,4,5,n2\n")


def lesion_inside(d):
    return _with_table(d, f"{HEADER}\ns1,-10,-10,4,5\nother,0,0,0,3\n")


def datalist_escape(d):
    data = {"training": [{"image": "../x.nii.gz", "box": [[1, 2, 3, 4, 4, 4]], "label": [0]}]}
    return _with_table(d, json.dumps(data), name="datalist.json")


def unknown_option(d):
    _nifti(d / "s1.nii.gz")
    return ["--bogus"]


def one_corrupt_among_good(d):
    _nifti(d / "good_a.nii.gz")
    _nifti(d / "good_b.nii.gz")
    (d / "bad.nii.gz").write_bytes(b"\x1f\x8b broken")
    return []


def localizer_only(d):
    dicom_helpers.write_series(
        d / "scout", _ct((32, 32, 1)).astype(np.int16), origin_lps=(0, 0, 0), spacing=(1, 1, 1), image_type="ORIGINAL\\PRIMARY\\LOCALIZER"
    )
    return []


def csv_duplicate_column(d):
    return _with_table(d, "seriesuid,coordX,coordY,coordZ,diameter_mm,seriesuid\ns1,1,2,3,4,other\n")


def datalist_too_deep(d):
    return _with_table(d, "[" * 100_000 + "]" * 100_000, name="datalist.json")


CASES = {
    "CSV duplicated column": Case(csv_duplicate_column, 1, ["duplicated column(s) seriesuid", "each column may appear once"]),
    "datalist nested too deeply": Case(datalist_too_deep, 1, ["datalist.json", "nested too deeply"]),
    "empty folder": Case(empty_folder, 1, ["no scans found", "expected .nii/.nii.gz/.mha/.mhd/.nrrd"]),
    "corrupt nii.gz": Case(corrupt_nii, 1, ["corrupt.nii.gz", "cannot be read as NIfTI"]),
    "truncated nii.gz": Case(truncated_nii, 1, ["trunc.nii.gz", "cannot be read as NIfTI"]),
    "truncated DICOM": Case(truncated_dicom, 1, ["slice002.dcm", "cannot be read"]),
    "two series": Case(two_series, 0, [], ["1.2.3.4.1", "1.2.3.4.2", "2 scan(s) read"]),
    "non-uniform spacing": Case(nonuniform, 1, ["non-uniform slice spacing", "--resample-nonuniform"]),
    "gantry tilt": Case(tilt, 1, ["gantry tilt", "20.0 degrees", "--resample-nonuniform"]),
    "2D image": Case(image_2d, 1, ["flat.nii.gz", "shape (32, 32)", "needs a 3D volume"]),
    "4D image": Case(image_4d, 1, ["dyn.nii.gz", "shape (32, 32, 8, 3)", "needs a 3D volume"]),
    "NaN voxels": Case(nan_voxels, 0, [], ["holes", "1 NaN/inf voxel(s) replaced"]),
    "CSV missing column": Case(csv_missing_column, 1, ["missing column(s) coordZ", "found: seriesuid, coordX, coordY, diameter_mm"]),
    "non-numeric coordinate": Case(csv_non_numeric, 1, ["annotations.csv row 3", "column coordX", "'abc' is not a number"]),
    "malignancy out of range": Case(csv_bad_malignancy, 1, ["row 1", "column malignancy", "outside [0, 1]"]),
    "lesion outside scan": Case(lesion_outside, 1, ["lesion 2 (lesion_id n2) of scan s1", "LPS (500.00, 10.00, 4.00)", "lies outside"]),
    "lesion inside scan": Case(lesion_inside, 0, [], ["all inside their scans", "matches no scan"]),
    "manifest .. escape": Case(datalist_escape, 1, ["'../x.nii.gz'", "outside the manifest folder"]),
    "unknown option": Case(unknown_option, 2, ["No such option", "--bogus"]),
    "one corrupt among good": Case(one_corrupt_among_good, 1, ["1 scan(s)", "bad.nii.gz"], ["good_a", "good_b", "skipped (1)"], True),
    "localizer only": Case(localizer_only, 1, ["no scans found", "localizer"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(tmp_path, name):
    case = CASES[name]
    folder = tmp_path / "in"
    folder.mkdir()
    extra = case.build(folder)
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["inspect", str(folder / "scans" if (folder / "scans").exists() else folder), *extra])
    output = result.output
    assert result.exit_code == case.exit_code, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    if case.exit_code == 0:
        assert errors == []
    else:
        assert len(errors) == 1, output
        for word in case.words:
            assert word in errors[0], (word, errors[0])
        if not case.partial_stdout_ok:
            assert result.stdout == "", "no partial output on error"
    for word in case.stdout_words:
        assert word in result.stdout, (word, result.stdout)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # inspect writes nothing


def test_one_corrupt_among_good_json_is_complete(tmp_path):
    one_corrupt_among_good(tmp_path)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path), "--json"])
    assert result.exit_code == 1
    info = json.loads(result.stdout)
    assert [r["id"] for r in info["scans"]] == ["good_a", "good_b"]
    assert info["n_failed"] == 1 and info["skipped"][0]["path"] == "bad.nii.gz" and info["skipped"][0]["failed"]
    assert result.stderr.count("Error:") == 1


@pytest.mark.parametrize(("args", "words"), [(["nope"], "does not exist"), (["file.txt"], "is a file")])
def test_bad_folder_argument_is_a_usage_error(tmp_path, monkeypatch, args, words):
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["inspect", *args])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0]
