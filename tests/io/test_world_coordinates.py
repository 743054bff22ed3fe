"""Must show: a lesion at a known voxel comes back at the same LPS point from NIfTI, MHA and
DICOM; ``inspect --json`` reports the geometry SimpleITK reports."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from scipy import ndimage

from medmtl.cli import main
from medmtl.io import coords
from medmtl.io.annotations import lesions_from_label_mask
from medmtl.io.discover import discover_scans
from medmtl.io.read import read_scan

from .conftest import LESION_LPS, SPACING


def _lesion_center_lps(image) -> np.ndarray:
    """Centre of the bright lesion of a ``(1, I, J, K)`` MetaTensor, LPS mm."""
    com = ndimage.center_of_mass(image[0].numpy() > 500)
    return coords.voxel_to_lps(np.asarray(com), image.affine.numpy())[0]


@pytest.mark.parametrize("fmt", ["nifti", "mha", "dicom"])
def test_lesion_comes_back_at_same_lps_point(scene, fmt):
    refs, _ = discover_scans(scene.root)
    ref = next(r for r in refs if r.format == fmt)
    scan = read_scan(ref)
    assert scan.image.shape[0] == 1 and scan.image.ndim == 4
    assert scan.image.dtype.is_floating_point
    got = _lesion_center_lps(scan.image)
    np.testing.assert_allclose(got, LESION_LPS, atol=0.01)
    # the reverse direction: LPS point -> voxel index holds the lesion
    ijk = np.round(coords.lps_to_voxel(LESION_LPS, scan.image.affine.numpy())[0]).astype(int)
    assert scan.image[0][tuple(ijk)].item() == 800.0
    assert scan.modality == "CT"


def test_three_formats_hold_the_same_voxels_in_world_space(scene):
    refs, _ = discover_scans(scene.root)
    scans = {r.format: read_scan(r) for r in refs}
    # same physical extent / voxel volume for all three
    vox = {f: abs(np.linalg.det(s.image.affine.numpy()[:3, :3])) for f, s in scans.items()}
    assert vox["nifti"] == pytest.approx(vox["mha"], rel=1e-5) == pytest.approx(vox["dicom"], rel=1e-5)
    assert sorted(scans["dicom"].image.shape[1:]) == sorted(scans["mha"].image.shape[1:])
    assert float(scans["nifti"].image.sum()) == pytest.approx(float(scans["mha"].image.sum()))
    assert float(scans["dicom"].image.sum()) == pytest.approx(float(scans["mha"].image.sum()))


def _sitk_geometry(fmt, scene):
    if fmt == "dicom":
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scene.dicom_dir)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(scene.nifti if fmt == "nifti" else scene.mha))
    return img.GetOrigin(), img.GetSpacing(), img.GetDirection(), img.GetSize()


def test_inspect_json_matches_simpleitk(scene):
    result = CliRunner().invoke(main, ["inspect", str(scene.root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["format"]: r for r in json.loads(result.stdout)["scans"]}
    assert set(rows) == {"nifti", "mha", "dicom"}
    for fmt, row in rows.items():
        origin, spacing, direction, size = _sitk_geometry(fmt, scene)
        np.testing.assert_allclose(row["origin_lps"], origin, atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(row["spacing_mm"], spacing, atol=1e-5, err_msg=fmt)
        np.testing.assert_allclose(row["direction"], direction, atol=1e-6, err_msg=fmt)
        assert tuple(row["shape"]) == tuple(size), fmt
        assert row["modality"] == "CT"
        assert set(row["percentiles"]) == {"0.5", "50", "99.5"}
        assert row["percentiles"]["0.5"] == -1000.0
    assert rows["mha"]["orientation"] == "LPS"
    assert rows["nifti"]["orientation"] == "RAS"
    assert rows["dicom"]["orientation"] == "PLI"
    # acquisition tags, never patient tags
    assert rows["dicom"]["acquisition"]["manufacturer"] == "TestVendor"
    assert "Doe" not in result.stdout and "PID12345" not in result.stdout


def test_label_mask_lesion_at_lps_point(scene, tmp_path, write_nifti):
    mask = np.zeros((40, 36, 24), dtype=np.uint8)
    # same RAS-flipped layout as the scene NIfTI: lesion voxel (17, 11, 9) in LPS order
    i, j, k = 40 - 1 - 17, 36 - 1 - 11, 9
    mask[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 3
    affine = nib.load(str(scene.nifti)).affine
    path = write_nifti(tmp_path / "scene_lesions.nii.gz", mask, affine)
    lesions = lesions_from_label_mask(path, "scene")
    assert len(lesions) == 1
    les = lesions[0]
    assert les.lesion_id == "3" and les.seriesuid == "scene"
    np.testing.assert_allclose(les.center_lps, LESION_LPS, atol=0.01)
    expected = (6 * 27 * SPACING[0] * SPACING[1] * SPACING[2] / math.pi) ** (1 / 3)
    assert les.diameter_mm == pytest.approx(expected, rel=1e-4)


def test_monai_orientation_keeps_the_lesion_in_place(scene):
    from monai.transforms import Orientation

    refs, _ = discover_scans(scene.root)
    arrays = []
    for ref in refs:
        ras = Orientation("RAS")(read_scan(ref).image)
        assert coords.orientation_code(ras.affine.numpy()) == "RAS"
        np.testing.assert_allclose(_lesion_center_lps(ras), LESION_LPS, atol=0.01)
        arrays.append(ras[0].numpy())
    np.testing.assert_array_equal(arrays[0], arrays[1])
    np.testing.assert_array_equal(arrays[0], arrays[2])
