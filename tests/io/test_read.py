"""Reading scans: shapes, NaN handling, modality, DICOM geometry checks and resampling."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from medmtl.errors import GeometryError, ScanReadError
from medmtl.io import coords
from medmtl.io.discover import discover_scans
from medmtl.io.read import guess_modality, load_folder, read_scan
from medmtl.io.types import ScanRef


def _ref(path, fmt="nifti"):
    return ScanRef(scan_id=path.name.split(".")[0], format=fmt, paths=(path,), folder=path.parent)


def _dicom_ref(folder):
    refs, _ = discover_scans(folder)
    assert len(refs) == 1
    return refs[0]


def test_nifti_nan_replaced_and_warned(tmp_path, write_nifti, caplog):
    arr = np.full((8, 7, 6), 5.0, np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 0, 0] = np.inf
    arr[2, 0, 0] = 2.0
    scan = read_scan(_ref(write_nifti(tmp_path / "n.nii.gz", arr)))
    img = scan.image[0].numpy()
    assert np.isfinite(img).all() and img[0, 0, 0] == 2.0 and img[1, 0, 0] == 2.0
    assert len(scan.warnings) == 1 and "2 NaN/inf voxel(s)" in scan.warnings[0]
    assert "NaN/inf" in caplog.text


def test_all_nan_is_an_error(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "n.nii.gz", np.full((8, 7, 6), np.nan, np.float32))
    with pytest.raises(ScanReadError, match="no finite voxel"):
        read_scan(_ref(path))


@pytest.mark.parametrize("shape", [(8, 7), (8, 7, 1), (8, 7, 6, 3)])
def test_not_3d_is_an_error(tmp_path, write_nifti, shape):
    path = write_nifti(tmp_path / "x.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(ScanReadError, match=r"has shape \(.*\); medmtl needs a 3D volume"):
        read_scan(_ref(path))


def test_4d_with_trailing_singleton_is_squeezed(tmp_path, write_nifti):
    scan = read_scan(_ref(write_nifti(tmp_path / "x.nii.gz", np.zeros((8, 7, 6, 1), np.float32))))
    assert tuple(scan.image.shape) == (1, 8, 7, 6)


def test_2d_mha_is_an_error(tmp_path):
    path = tmp_path / "x.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 8), np.float32)), str(path))
    with pytest.raises(ScanReadError, match=r"shape \(8, 7\); medmtl needs a 3D volume"):
        read_scan(_ref(path, "mha"))


def test_corrupt_and_truncated_nifti_name_the_file(tmp_path, write_nifti):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"not a nifti header" * 30))
    for path in (trunc, corrupt):
        with pytest.raises(ScanReadError, match=f"{path.name} cannot be read as NIfTI"):
            read_scan(_ref(path))


def test_modality_from_metadata_and_heuristic(tmp_path, write_nifti):
    ct_like = np.full((8, 7, 6), -1000.0, np.float32)
    ct_like[2:6, 2:5, 2:4] = 40.0
    mr_like = np.random.default_rng(1).uniform(0, 800, (8, 7, 6)).astype(np.float32)
    assert guess_modality(ct_like) == "CT" and guess_modality(mr_like) == "MR"
    scan = read_scan(_ref(write_nifti(tmp_path / "a.nii.gz", ct_like, descrip="T1 MRI brain")))
    assert scan.modality == "MR" and scan.image.meta["modality_source"] == "metadata"
    scan = read_scan(_ref(write_nifti(tmp_path / "b.nii.gz", mr_like)))
    assert scan.modality == "MR" and scan.image.meta["modality_source"] == "intensity heuristic"
    img = sitk.GetImageFromArray(mr_like.transpose(2, 1, 0))
    img.SetMetaData("Modality", "CT")
    sitk.WriteImage(img, str(tmp_path / "c.nrrd"))
    assert read_scan(_ref(tmp_path / "c.nrrd", "nrrd")).modality == "CT"


def test_dicom_mr_modality_and_acquisition_without_patient_tags(tmp_path, write_dicom):
    vol = np.random.default_rng(0).integers(0, 500, (10, 9, 4)).astype(np.int16)
    write_dicom(tmp_path / "s", vol, origin_lps=(5, 6, 7), spacing=(1.0, 1.0, 3.0), modality="MR")
    scan = read_scan(_dicom_ref(tmp_path / "s"))
    assert scan.modality == "MR"
    np.testing.assert_array_equal(scan.image[0].numpy(), vol)
    assert scan.acquisition == {"manufacturer": "TestVendor", "convolution_kernel": "B30f", "kvp": 120.0, "slice_thickness_mm": 3.0}
    assert "Doe" not in repr(scan.image.meta) and "PID" not in repr(scan.image.meta)


def _linear_scene(positions, row=(1, 0, 0), col=(0, 1, 0), spacing=(1.0, 1.0)):
    """Slices whose voxel values are a linear function of the LPS position."""
    n_i, n_j = 12, 10
    row, col = np.asarray(row, float), np.asarray(col, float)
    vol = np.zeros((n_i, n_j, len(positions)), np.int16)
    ii, jj = np.meshgrid(np.arange(n_i), np.arange(n_j), indexing="ij")
    for k, p in enumerate(positions):
        world = np.asarray(p)[None, None, :] + ii[..., None] * spacing[0] * row + jj[..., None] * spacing[1] * col
        vol[:, :, k] = np.round(2 * world[..., 0] + 3 * world[..., 1] + 5 * world[..., 2]).astype(np.int16)
    return vol


def _check_linear(scan, j_stop=None):
    arr = scan.image[0].numpy()
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in arr.shape], indexing="ij"), -1).reshape(-1, 3)
    world = coords.voxel_to_lps(ijk, scan.image.affine.numpy())
    expected = (2 * world[:, 0] + 3 * world[:, 1] + 5 * world[:, 2]).reshape(arr.shape)
    inner = (slice(None), slice(0, j_stop), slice(None))  # slices shifted in-plane leave the far j edge empty
    np.testing.assert_allclose(arr[inner], expected[inner], atol=0.6)


def test_non_uniform_spacing_refused_then_resampled(tmp_path, write_dicom):
    z = [0.0, 2.0, 4.0, 7.0, 8.0, 10.0]
    positions = [(0.0, 0.0, v) for v in z]
    vol = _linear_scene(positions)
    write_dicom(tmp_path / "s", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2), positions=positions, series_uid="9.9.1")
    ref = _dicom_ref(tmp_path / "s")
    with pytest.raises(GeometryError, match=r"9\.9\.1 has non-uniform slice spacing.*--resample-nonuniform"):
        read_scan(ref)
    scan = read_scan(ref, resample_nonuniform=True)
    assert tuple(scan.image.shape) == (1, 12, 10, 6)
    assert coords.spacing_from_affine(scan.image.affine.numpy())[2] == pytest.approx(2.0)
    assert any("resampled" in w for w in scan.warnings)
    _check_linear(scan)


def test_gantry_tilt_refused_then_resampled(tmp_path, write_dicom):
    # tilted slices: rows along x, columns tilted by 15 degrees about x; positions move along z only
    angle = np.radians(15)
    col = (0.0, np.cos(angle), -np.sin(angle))
    normal = np.cross((1, 0, 0), col)
    gap_z = 2.0
    positions = [(0.0, 0.0, k * gap_z) for k in range(8)]
    vol = _linear_scene(positions, col=col)
    direction = np.stack([(1, 0, 0), col, normal], axis=1).reshape(-1)
    write_dicom(tmp_path / "s", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2), direction=direction, positions=positions, series_uid="9.9.2")
    ref = _dicom_ref(tmp_path / "s")
    with pytest.raises(GeometryError, match=r"9\.9\.2 has gantry tilt \(15\.0 degrees.*--resample-nonuniform"):
        read_scan(ref)
    scan = read_scan(ref, resample_nonuniform=True)
    assert coords.spacing_from_affine(scan.image.affine.numpy())[2] == pytest.approx(gap_z * np.cos(angle), rel=1e-4)
    _check_linear(scan, j_stop=-4)  # shift 0.52 mm/slice * 7 slices


def test_unsorted_slices_sorted_by_position(tmp_path, write_dicom):
    positions = [(0.0, 0.0, v) for v in (6.0, 0.0, 4.0, 2.0)]
    vol = _linear_scene(positions)
    write_dicom(tmp_path / "s", vol, origin_lps=(0, 0, 0), spacing=(1, 1, 2), positions=positions)
    scan = read_scan(_dicom_ref(tmp_path / "s"))
    _check_linear(scan)
    np.testing.assert_allclose(coords.voxel_to_lps([0, 0, 0], scan.image.affine.numpy())[0], (0, 0, 0), atol=1e-6)


def test_truncated_dicom_names_the_file(tmp_path, write_dicom):
    files = write_dicom(tmp_path / "s", np.zeros((16, 16, 4), np.int16), origin_lps=(0, 0, 0), spacing=(1, 1, 2))
    ref = _dicom_ref(tmp_path / "s")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 200])  # truncated after discovery
    with pytest.raises(ScanReadError, match=f"DICOM file .*{files[2].name} .*cannot be read"):
        read_scan(ref)


def test_load_folder_records_failures_and_raises_when_nothing_reads(tmp_path, write_nifti):
    write_nifti(tmp_path / "good.nii.gz", np.zeros((8, 7, 6), np.float32))
    (tmp_path / "bad.nii.gz").write_bytes(b"junk")
    scans, skipped = load_folder(tmp_path, progress=False)
    assert [s.scan_id for s in scans] == ["good"]
    assert len(skipped) == 1 and skipped[0].failed and "bad.nii.gz" in skipped[0].reason
    (tmp_path / "good.nii.gz").unlink()
    with pytest.raises(ScanReadError, match=r"no scan in .* could be read \(1 failed\); first: .*bad\.nii\.gz"):
        load_folder(tmp_path, progress=False)
