"""``read_nifti`` returns our own C-ordered float32 voxels, equal to nibabel's scaled values."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmtl.io.read import read_nifti


@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<u2", "<f4", "<f8", "|u1", "<i4"])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_voxels_are_a_c_ordered_float32_copy(tmp_path: Path, dtype: str, ext: str) -> None:
    rng = np.random.default_rng(0)
    arr = (np.abs(rng.normal(size=(7, 6, 5))) * 100).astype(dtype)
    img = nib.Nifti1Image(arr, np.diag([0.9, 0.9, 1.25, 1.0]))
    if dtype == "<i2":
        img.header.set_slope_inter(2.0, -1024.0)  # stored scaling: HU = 2 * raw - 1024
    path = tmp_path / f"scan{ext}"
    nib.save(img, str(path))
    if dtype == "<i2":
        assert nib.load(str(path)).dataobj.slope == 2.0
    expected = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    got = read_nifti(path).array
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable and got.flags.owndata
    np.testing.assert_array_equal(got, expected)
    got[0, 0, 0] = -12345.0  # our own memory (not the .nii's memmap): the file keeps its voxel
    assert float(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)[0, 0, 0]) == expected[0, 0, 0]
