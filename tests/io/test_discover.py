"""Scan discovery: formats, label files, DICOM series grouping, localizers, failures."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medmtl.errors import ScanReadError
from medmtl.io.discover import discover_scans, scan_id_from_filename, split_scan_name


def _sitk_write(path, shape=(8, 7, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape[::-1], np.int16)), str(path))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.nii.gz", ("a", "nifti")),
        ("case.01.NII", ("case.01", "nifti")),
        ("x.mha", ("x", "mha")),
        ("x.mhd", ("x", "mhd")),
        ("x.nrrd", ("x", "nrrd")),
        ("x.csv", None),
        (".nii.gz", None),
    ],
)
def test_split_scan_name(name, expected):
    assert split_scan_name(name) == expected


def test_scan_id_from_filename():
    assert scan_id_from_filename("data/p1/scan_3.nii.gz") == "scan_3"
    assert scan_id_from_filename("other.img") == "other"


def test_discovers_each_format_and_skips_labels(tmp_path, write_nifti):
    write_nifti(tmp_path / "a.nii.gz", np.zeros((8, 7, 6), np.float32))
    write_nifti(tmp_path / "sub" / "b.nii", np.zeros((8, 7, 6), np.float32))
    _sitk_write(tmp_path / "c.mha")
    _sitk_write(tmp_path / "d.mhd")  # writes d.raw next to it, ignored silently
    _sitk_write(tmp_path / "e.nrrd")
    write_nifti(tmp_path / "a_lesions.nii.gz", np.zeros((8, 7, 6), np.uint8))
    write_nifti(tmp_path / "f_seg.nii.gz", np.zeros((8, 7, 6), np.uint8))
    write_nifti(tmp_path / "masks" / "g.nii.gz", np.zeros((8, 7, 6), np.uint8))
    write_nifti(tmp_path / "labels" / "h.nii.gz", np.zeros((8, 7, 6), np.uint8))
    for name in ("annotations.csv", "meta.json", "README.md", "preview.png", ".hidden.nii.gz"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    refs, skipped = discover_scans(tmp_path)
    assert [(r.scan_id, r.format) for r in refs] == [
        ("a", "nifti"),
        ("c", "mha"),
        ("d", "mhd"),
        ("e", "nrrd"),
        ("b", "nifti"),
    ]
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"a_lesions.nii.gz", "f_seg.nii.gz", "g.nii.gz", "h.nii.gz"}
    assert "'masks' folder" in reasons["g.nii.gz"] and "_lesions" in reasons["a_lesions.nii.gz"]
    assert not any(s.failed for s in skipped)


def test_dicom_series_grouped_by_uid_without_extensions(tmp_path, write_dicom):
    vol = np.zeros((8, 8, 4), np.int16)
    write_dicom(tmp_path / "ser", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2), series_uid="1.2.3.1", suffix="")
    write_dicom(tmp_path / "ser", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2), series_uid="1.2.3.2", prefix="b", suffix="")
    write_dicom(tmp_path / "scout", vol[:, :, :1], origin_lps=(0, 0, 0), spacing=(1, 1, 2), series_uid="1.2.3.3", image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    write_dicom(tmp_path / "two", vol[:, :, :2], origin_lps=(0, 0, 0), spacing=(1, 1, 2), series_uid="1.2.3.4")
    refs, skipped = discover_scans(tmp_path)
    assert sorted(r.scan_id for r in refs) == ["1.2.3.1", "1.2.3.2"]
    assert all(r.format == "dicom" and len(r.paths) == 4 for r in refs)
    text = " | ".join(s.reason for s in skipped)
    assert "1.2.3.3" in text and "localizer" in text
    assert "1.2.3.4 has 2 slice(s)" in text


def test_unreadable_dicom_header_is_recorded_as_failed(tmp_path, write_dicom):
    vol = np.zeros((8, 8, 4), np.int16)
    files = write_dicom(tmp_path / "ser", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2))
    bad = tmp_path / "ser" / "broken.dcm"
    bad.write_bytes(files[0].read_bytes()[:140])
    with pytest.raises(ScanReadError, match=r"no scans found .*broken\.dcm cannot be read"):
        discover_scans(tmp_path)  # the only series is refused as a whole
    write_dicom(tmp_path / "ser", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2), series_uid="7.7", prefix="other")
    refs, skipped = discover_scans(tmp_path)  # two series: which one lost the file is unknown
    assert len(refs) == 2
    assert len(skipped) == 1 and skipped[0].failed and "broken.dcm" in skipped[0].reason


def test_duplicate_scan_ids_skipped(tmp_path, write_nifti):
    write_nifti(tmp_path / "a" / "x.nii.gz", np.zeros((8, 7, 6), np.float32))
    write_nifti(tmp_path / "b" / "x.nii.gz", np.zeros((8, 7, 6), np.float32))
    refs, skipped = discover_scans(tmp_path)
    assert len(refs) == 1 and "duplicate scan id 'x'" in skipped[0].reason


def test_empty_folder_raises(tmp_path):
    (tmp_path / "notes.md").write_text("nothing here", encoding="utf-8")
    with pytest.raises(ScanReadError, match=r"no scans found in .*expected \.nii/\.nii\.gz/\.mha"):
        discover_scans(tmp_path)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(ScanReadError, match="does not exist"):
        discover_scans(tmp_path / "nope")
