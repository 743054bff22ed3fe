"""De-identified DICOM: a series whose Series/Study/SOP Instance UIDs are empty is grouped by
geometry (as GDCM does), read with the same geometry as SimpleITK, and predicted (issue #13)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medmtl import api

_spec = importlib.util.spec_from_file_location("medmtl_tests_dicom_helpers_nouid", Path(__file__).parent / "dicom_helpers.py")
assert _spec is not None and _spec.loader is not None
dicom_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dicom_helpers)


def _anonymised_series(folder: Path) -> list[Path]:
    import pydicom

    rng = np.random.default_rng(0)
    vol = np.full((48, 40, 12), -1000, np.int16)
    vol[6:-6, 6:-6, :] = rng.normal(40, 20, (36, 28, 12)).astype(np.int16)
    files = dicom_helpers.write_series(folder, vol, origin_lps=(-20.0, 15.0, -40.0), spacing=(0.8, 0.7, 2.5))
    for f in files:
        ds = pydicom.dcmread(str(f))
        ds.SeriesInstanceUID = ""
        ds.StudyInstanceUID = ""
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(str(f))
    return files


def test_series_without_uids_reads_like_simpleitk(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from medmtl.io import coords

    files = _anonymised_series(tmp_path / "anon")
    scans, skipped = api.load_scans(folder=tmp_path / "anon")
    assert len(scans) == 1 and scans[0].scan_id.startswith("anon-nouid-")
    notes = [s.reason for s in skipped]
    assert len(notes) == 1 and "have no SeriesInstanceUID; grouped by geometry" in notes[0]  # one note per series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    ref = reader.Execute()
    expect = coords.sitk_to_affine_ras(ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
    np.testing.assert_allclose(np.asarray(scans[0].image.affine), expect, atol=1e-4)
    assert tuple(scans[0].image.shape[1:]) == (48, 40, 12)
    np.testing.assert_allclose(scans[0].image[0].numpy(), sitk.GetArrayFromImage(ref).transpose(2, 1, 0), atol=1e-3)


@pytest.mark.usefixtures("tiny_checkpoint")
def test_series_without_uids_predicts(tmp_path: Path, tiny_checkpoint: Path) -> None:
    _anonymised_series(tmp_path / "anon")
    summary = api.predict_folder(checkpoint=tiny_checkpoint, input_dir=tmp_path / "anon", out_dir=tmp_path / "pred",
                                 device="cpu", overlap=0.0, progress=False)
    assert summary["n_done"] == 1 and summary["n_failed"] == 0
    assert (tmp_path / "pred" / "predictions.csv").is_file()


def test_zero_pixel_spacing_is_refused(tmp_path: Path) -> None:
    import pydicom

    from medmtl.errors import MedmtlError

    vol = np.zeros((16, 16, 4), np.int16)
    files = dicom_helpers.write_series(tmp_path / "s", vol, origin_lps=(0.0, 0.0, 0.0), spacing=(0.8, 0.8, 2.0))
    for f in files:
        ds = pydicom.dcmread(str(f))
        ds.PixelSpacing = [0, 0]
        ds.save_as(str(f))
    with pytest.raises(MedmtlError, match=r"has PixelSpacing '0.0\\\\0.0'; allowed: two positive numbers in mm"):
        api.load_scans(folder=tmp_path / "s")


def test_missing_slices_are_not_resampled_across(tmp_path: Path) -> None:
    from medmtl.errors import GeometryError
    from medmtl.io.discover import discover_scans
    from medmtl.io.read import read_scan

    vol = np.zeros((16, 16, 6), np.int16)
    zs = [0.0, 2.0, 4.0, 6.0, 206.0, 208.0]  # a 20 cm hole: slices are missing
    dicom_helpers.write_series(tmp_path / "s", vol, origin_lps=(0.0, 0.0, 0.0), spacing=(0.8, 0.8, 2.0),
                               positions=[(0.0, 0.0, z) for z in zs])
    refs, _ = discover_scans(tmp_path / "s")
    with pytest.raises(GeometryError, match=r"a 200 mm gap between slices, 100.0× its median spacing .* at most 3×"):
        read_scan(refs[0], resample_nonuniform=True)
