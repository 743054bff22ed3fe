"""Fixtures for the io tests: a small physical scene written as NIfTI (RAS), MHA (LPS) and a
DICOM series (rotated axes), all holding one bright lesion at the same LPS point."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

_spec = importlib.util.spec_from_file_location("medmtl_tests_dicom_helpers", Path(__file__).with_name("dicom_helpers.py"))
assert _spec is not None and _spec.loader is not None
dicom_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dicom_helpers)

#: LPS grid of the reference (MHA) scene.
SHAPE = (40, 36, 24)
SPACING = (0.7, 0.8, 2.5)
ORIGIN_LPS = (-120.5, 80.25, -300.0)
LESION_VOXEL = (17, 11, 9)
#: The lesion's LPS position, computed by hand (identity LPS direction).
LESION_LPS = tuple(o + v * s for o, v, s in zip(ORIGIN_LPS, LESION_VOXEL, SPACING))


@dataclass
class Scene:
    """Where the three versions of the scene were written."""

    root: Path
    nifti: Path
    mha: Path
    dicom_dir: Path
    dicom_files: list[Path]
    volume_lps: np.ndarray


def scene_volume() -> np.ndarray:
    """``(I, J, K)`` int16 CT-like volume (air, a body block) with a 3×3×3 lesion."""
    rng = np.random.default_rng(0)
    vol = np.full(SHAPE, -1000, dtype=np.int16)
    vol[4:-4, 4:-4, :] = (rng.normal(0, 20, (SHAPE[0] - 8, SHAPE[1] - 8, SHAPE[2]))).astype(np.int16)
    i, j, k = LESION_VOXEL
    vol[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 800
    return vol


def write_scene(root: Path) -> Scene:
    """Write the scene as ``scene.nii.gz`` (RAS), ``scene_mha.mha`` (LPS) and ``dicom/`` (rotated)."""
    root.mkdir(parents=True, exist_ok=True)
    vol = scene_volume()
    n_i, n_j, n_k = SHAPE
    # MHA: the LPS grid as is.
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN_LPS)
    mha = root / "scene_mha.mha"
    sitk.WriteImage(img, str(mha))
    # NIfTI: i and j reversed so the array is RAS-oriented; affine written by hand.
    affine = np.diag([SPACING[0], SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = (
        -(ORIGIN_LPS[0] + (n_i - 1) * SPACING[0]),
        -(ORIGIN_LPS[1] + (n_j - 1) * SPACING[1]),
        ORIGIN_LPS[2],
    )
    nii = root / "scene.nii.gz"
    nib.save(nib.Nifti1Image(vol[::-1, ::-1, :].astype(np.int16), affine), str(nii))
    # DICOM: i -> posterior (+y), j -> left (+x), k -> inferior (-z).
    vol_d = vol.transpose(1, 0, 2)[:, :, ::-1]
    origin_d = (ORIGIN_LPS[0], ORIGIN_LPS[1], ORIGIN_LPS[2] + (n_k - 1) * SPACING[2])
    files = dicom_helpers.write_series(
        root / "dicom",
        vol_d,
        origin_lps=origin_d,
        spacing=(SPACING[1], SPACING[0], SPACING[2]),
        direction=(0, 1, 0, 1, 0, 0, 0, 0, -1),
    )
    return Scene(root=root, nifti=nii, mha=mha, dicom_dir=root / "dicom", dicom_files=files, volume_lps=vol)


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """The three-format scene, written once per session (read-only for tests)."""
    return write_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture
def write_dicom() -> Callable[..., list[Path]]:
    """The test DICOM-series writer (:func:`dicom_helpers.write_series`)."""
    return dicom_helpers.write_series


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """Write an array as NIfTI with a given affine (default: 1 mm RAS identity)."""

    def _write(path: Path, array: Any, affine: Any = None, descrip: str | None = None) -> Path:
        img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else np.asarray(affine))
        if descrip is not None:
            img.header["descrip"] = descrip.encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))
        return path

    return _write
