"""Must show: every bad input gives ONE clear ``Error:`` line and a non-zero exit from the CLI,
no traceback and no partial output (plus the success cases that sit next to them); every case
asserts the same properties through the corpus's one checker (``hostile``, tests/conftest.py)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

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


# --------------------------------------------------------------------------- what a new user meets (issue #13)
SB = Path(__file__).resolve().parents[1] / "sample_data" / "ct_site_b"
INSIDE = "ct_b_0000,0,0,-150,5"  # a lesion inside ct_b_0000


def _sample_scan(d, name="ct_b_0000.nii.gz"):
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(SB / "ct_b_0000.nii.gz", d / name)


def _with_sample_table(d, data: bytes, name="annotations.csv"):
    _sample_scan(d / "scans")
    (d / name).write_bytes(data)
    return ["--annotations", str(d / name)]


def png_as_nii(d):
    (d / "photo.nii.gz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return []


def zero_length_dim(d):
    _nifti(d / "z.nii.gz", np.zeros((32, 0, 8), np.float32))
    return []


def empty_nii(d):
    (d / "empty.nii.gz").write_bytes(b"")
    return []


def one_voxel(d):
    _nifti(d / "dot.nii.gz", np.zeros((1, 1, 1), np.float32))
    return []


def all_nan(d):
    _nifti(d / "void.nii.gz", np.full((16, 16, 8), np.nan, np.float32))
    return []


def symlink_loop_files(d):
    _sample_scan(d)
    os.symlink("a.nii.gz", d / "b.nii.gz")
    os.symlink("b.nii.gz", d / "a.nii.gz")
    return []


def symlink_loop_folder(d):
    _sample_scan(d)
    (d / "again").symlink_to(d, target_is_directory=True)
    return []


def dangling_symlink(d):
    os.symlink(d / "moved_away.nii.gz", d / "x.nii.gz")
    return []


def only_other_files(d):
    (d / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (d / "table.csv").write_text("a,b\n", encoding="utf-8")
    (d / "readme.txt").write_text("scans will follow", encoding="utf-8")
    return []


def folder_named_like_scan(d):
    (d / "x.nii.gz").mkdir()
    return []


def duplicate_scan_id(d):
    _sample_scan(d, "x.nii.gz")
    _nifti(d / "x.nii")
    return []


def mha_header_only(d):
    (d / "x.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
                             "ElementDataFile = LOCAL\n", encoding="latin-1")
    return []


def mhd_missing_raw(d):
    (d / "x.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
                             "ElementDataFile = x.raw\n", encoding="latin-1")
    return []


def unicode_name(d):
    _sample_scan(d, "Müller_肺 2.nii.gz")
    return []


def csv_bom(d):
    return _with_sample_table(d, f"\ufeff{HEADER}\n{INSIDE}\n".encode())


def csv_mixed_line_endings(d):
    return _with_sample_table(d, f"{HEADER}\r\n{INSIDE}\nct_b_0000,1,1,-151,5\r\n".encode())


def csv_negative_diameter(d):
    return _with_sample_table(d, f"{HEADER}\nct_b_0000,0,0,-150,-5\n".encode())


def csv_nan_coordinate(d):
    return _with_sample_table(d, f"{HEADER}\nct_b_0000,nan,0,-150,5\n".encode())


def csv_inf_diameter(d):
    return _with_sample_table(d, f"{HEADER}\nct_b_0000,0,0,-150,inf\n".encode())


def csv_latin1(d):
    return _with_sample_table(d, f"{HEADER},note\nct_b_0000,0,0,-150,5,Müller\n".encode("latin-1"))


def csv_empty(d):
    return _with_sample_table(d, b"")


def csv_header_only(d):
    return _with_sample_table(d, f"{HEADER}\n".encode())


def csv_ragged(d):
    return _with_sample_table(d, f"{HEADER}\n{INSIDE},extra,more\n".encode())


def csv_semicolons(d):
    return _with_sample_table(d, f"{HEADER.replace(',', ';')}\n{INSIDE.replace(',', ';')}\n".encode())


def csv_fifo(d):
    _sample_scan(d / "scans")
    os.mkfifo(d / "annotations.csv")  # open() would block forever
    return ["--annotations", str(d / "annotations.csv")]


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
    # what a new user meets (issue #13)
    "a .nii.gz that is a PNG": Case(png_as_nii, 1, ["photo.nii.gz", "cannot be read as NIfTI", "re-export or remove it"]),
    "zero-length dimension": Case(zero_length_dim, 1, ["z.nii.gz", "shape (32, 0, 8)", "each > 1 voxel"]),
    "empty .nii.gz file": Case(empty_nii, 1, ["empty.nii.gz", "cannot be read as NIfTI"]),
    "one-voxel image": Case(one_voxel, 1, ["dot.nii.gz", "shape (1, 1, 1)", "needs a 3D volume"]),
    "all voxels NaN": Case(all_nan, 1, ["void", "no finite voxel", "expected real intensities"]),
    "symlink loop between two files": Case(symlink_loop_files, 1, ["a.nii.gz", "Too many levels of symbolic links"],
                                           ["ct_b_0000", "1 scan(s) read"], True),
    "symlink loop to the folder itself": Case(symlink_loop_folder, 0, [], ["ct_b_0000", "1 scan(s) read"]),
    "dangling symlink": Case(dangling_symlink, 1, ["no scans found", "x.nii.gz", "No such file or directory"]),
    "only non-scan files": Case(only_other_files, 1, ["no scans found", "expected .nii/.nii.gz/.mha/.mhd/.nrrd"]),
    "folder named like a scan": Case(folder_named_like_scan, 1, ["no scans found"]),
    "two files with one scan id": Case(duplicate_scan_id, 1, ["duplicate scan id 'x'", "rename one"], ["x "], True),
    "MHA header without data": Case(mha_header_only, 1, ["x.mha", "cannot be read", "re-export or remove it"]),
    "MHD whose raw file is missing": Case(mhd_missing_raw, 1, ["x.mhd", "data file is missing"]),
    "unicode file name": Case(unicode_name, 0, [], ["Müller_肺 2", "1 scan(s) read"]),
    "CSV with a byte-order mark": Case(csv_bom, 0, [], ["1 lesion(s) in 1 scan(s), all inside their scans"]),
    "CSV with mixed line endings": Case(csv_mixed_line_endings, 0, [], ["2 lesion(s) in 1 scan(s)"]),
    "negative diameter": Case(csv_negative_diameter, 1, ["row 1", "column diameter_mm", "'-5' is not > 0", "diameter in mm > 0"]),
    "NaN coordinate": Case(csv_nan_coordinate, 1, ["row 1", "column coordX", "'nan' is not a number"]),
    "infinite diameter": Case(csv_inf_diameter, 1, ["column diameter_mm", "'inf' is not a number"]),
    "Latin-1 CSV": Case(csv_latin1, 1, ["annotations.csv", "cannot be read", "expected a UTF-8 CSV file"]),
    "empty CSV": Case(csv_empty, 1, ["annotations.csv is empty", "expected a header row"]),
    "CSV with a header only": Case(csv_header_only, 0, [], ["0 lesion(s) in 0 scan(s)"]),
    "CSV row with extra fields": Case(csv_ragged, 1, ["row 1 (line 2)", "7 fields for 5 columns"]),
    "semicolon-separated CSV": Case(csv_semicolons, 1, ["missing column(s)", "looks ';'-separated", "comma-separated"]),
    "annotations file is a FIFO": Case(csv_fifo, 2, ["--annotations", "is a FIFO (named pipe), not a regular file"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(tmp_path, hostile, name):
    case = CASES[name]
    folder = tmp_path / "in"
    folder.mkdir()
    extra = case.build(folder)
    hostile(["inspect", folder / "scans" if (folder / "scans").exists() else folder, *extra],
            code=case.exit_code, words=case.words, stdout_words=case.stdout_words,
            partial_stdout=case.partial_stdout_ok, watch=[tmp_path])  # inspect writes nothing


def test_one_corrupt_among_good_json_is_complete(tmp_path, hostile):
    one_corrupt_among_good(tmp_path)
    run = hostile(["inspect", tmp_path, "--json"], code=1, words=["bad.nii.gz"], partial_stdout=True, watch=[tmp_path])
    info = json.loads(run.stdout)
    assert [r["id"] for r in info["scans"]] == ["good_a", "good_b"]
    assert info["n_failed"] == 1 and info["skipped"][0]["path"] == "bad.nii.gz" and info["skipped"][0]["failed"]


def test_bad_folder_argument_is_a_usage_error(tmp_path, monkeypatch, hostile):
    monkeypatch.chdir(tmp_path)
    hostile(["inspect", "nope"], code=2, words=["does not exist"], watch=[tmp_path])


def test_a_file_that_is_not_a_scan_is_named(tmp_path, monkeypatch, hostile):
    """inspect takes one scan file as well as a folder (issue #14); a file that is no scan is one Error: line."""
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    hostile(["inspect", "file.txt"], code=1, words=["file.txt is not a scan file", ".nii.gz"], watch=[tmp_path])
