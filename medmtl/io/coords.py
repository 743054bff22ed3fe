"""The one place where coordinate systems are converted.

Conventions (DESIGN.md, "Coordinates"):

* **Tables** (annotations in, predictions out) use **LPS world millimetres** (DICOM / ITK /
  LUNA16): +x towards the patient's Left, +y Posterior, +z Superior.
* **Arrays** are MONAI ``MetaTensor`` s whose ``affine`` maps a voxel index ``(i, j, k)`` to
  **RAS world millimetres** (nibabel / MONAI convention: +x Right... i.e. x_RAS = -x_LPS,
  y_RAS = -y_LPS, z_RAS = z_LPS). Voxel index order is the array order after the channel axis,
  ``image[c, i, j, k]``.
* SimpleITK images store origin and direction in LPS and are indexed ``(i, j, k)``, while
  ``sitk.GetArrayFromImage`` returns ``(k, j, i)``; :func:`sitk_to_affine_ras` and
  :func:`affine_ras_to_sitk` convert the geometry.

No other module flips signs: they call these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Diagonal matrix turning LPS into RAS coordinates (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_points(points: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3) or (3,), got {arr.shape}")
    return arr


def lps_to_ras(points: ArrayLike) -> NDArray[np.float64]:
    """Convert world points from LPS to RAS millimetres.

    Args:
        points: ``(N, 3)`` or ``(3,)`` points in LPS mm.

    Returns:
        ``(N, 3)`` points in RAS mm.
    """
    p = _as_points(points).copy()
    p[:, :2] *= -1.0
    return p


def ras_to_lps(points: ArrayLike) -> NDArray[np.float64]:
    """Convert world points from RAS to LPS millimetres (``(N, 3)`` in, ``(N, 3)`` out)."""
    return lps_to_ras(points)


def affine_lps_to_ras(affine_lps: ArrayLike) -> NDArray[np.float64]:
    """Turn a voxel→LPS 4×4 affine into a voxel→RAS affine."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def affine_ras_to_lps(affine_ras: ArrayLike) -> NDArray[np.float64]:
    """Turn a voxel→RAS 4×4 affine into a voxel→LPS affine."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def voxel_to_ras(ijk: ArrayLike, affine_ras: ArrayLike) -> NDArray[np.float64]:
    """Map voxel indices to RAS world mm.

    Args:
        ijk: ``(N, 3)`` voxel indices (may be fractional).
        affine_ras: 4×4 voxel→RAS affine (e.g. ``MetaTensor.affine``).

    Returns:
        ``(N, 3)`` RAS mm.
    """
    a = np.asarray(affine_ras, dtype=np.float64)
    p = _as_points(ijk)
    return p @ a[:3, :3].T + a[:3, 3]


def voxel_to_lps(ijk: ArrayLike, affine_ras: ArrayLike) -> NDArray[np.float64]:
    """Map voxel indices to LPS world mm (the table convention).

    Args:
        ijk: ``(N, 3)`` voxel indices (may be fractional).
        affine_ras: 4×4 voxel→RAS affine.

    Returns:
        ``(N, 3)`` LPS mm.
    """
    return ras_to_lps(voxel_to_ras(ijk, affine_ras))


def ras_to_voxel(xyz_ras: ArrayLike, affine_ras: ArrayLike) -> NDArray[np.float64]:
    """Map RAS world mm to fractional voxel indices (``(N, 3)`` in and out)."""
    a = np.asarray(affine_ras, dtype=np.float64)
    inv = np.linalg.inv(a)
    p = _as_points(xyz_ras)
    return p @ inv[:3, :3].T + inv[:3, 3]


def lps_to_voxel(xyz_lps: ArrayLike, affine_ras: ArrayLike) -> NDArray[np.float64]:
    """Map LPS world mm (table convention) to fractional voxel indices.

    Args:
        xyz_lps: ``(N, 3)`` points in LPS mm.
        affine_ras: 4×4 voxel→RAS affine.

    Returns:
        ``(N, 3)`` fractional voxel indices ``(i, j, k)``.
    """
    return ras_to_voxel(lps_to_ras(xyz_lps), affine_ras)


def spacing_from_affine(affine: ArrayLike) -> tuple[float, float, float]:
    """Voxel spacing in mm along ``i, j, k`` (column norms of the 3×3 part)."""
    a = np.asarray(affine, dtype=np.float64)
    s = np.linalg.norm(a[:3, :3], axis=0)
    return (float(s[0]), float(s[1]), float(s[2]))


def direction_from_affine(affine: ArrayLike) -> NDArray[np.float64]:
    """3×3 direction cosines (unit columns) of an affine, in that affine's world frame."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def orientation_code(affine_ras: ArrayLike) -> str:
    """Three-letter axis code (nibabel convention, RAS frame), e.g. ``"RAS"`` or ``"LPS"``.

    Each letter names the world direction towards which the voxel index increases.
    """
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine_ras, dtype=np.float64)))


def sitk_to_affine_ras(
    origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]
) -> NDArray[np.float64]:
    """Build a voxel→RAS affine from SimpleITK geometry (which is LPS).

    Args:
        origin: LPS mm of voxel ``(0, 0, 0)`` (``img.GetOrigin()``).
        spacing: mm per voxel along ``i, j, k`` (``img.GetSpacing()``).
        direction: 9 row-major direction cosines (``img.GetDirection()``).

    Returns:
        4×4 voxel→RAS affine for the array indexed ``(i, j, k)``.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d * np.asarray(spacing, dtype=np.float64)[None, :]
    a[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine_lps_to_ras(a)


def affine_ras_to_sitk(
    affine_ras: ArrayLike,
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """Split a voxel→RAS affine into SimpleITK ``(origin, spacing, direction)`` in LPS.

    Returns:
        ``origin`` (LPS mm of voxel 0,0,0), ``spacing`` (mm), ``direction`` (9 row-major cosines).
    """
    a = affine_ras_to_lps(affine_ras)
    spacing = spacing_from_affine(a)
    direction = direction_from_affine(a)
    origin = a[:3, 3]
    return (
        (float(origin[0]), float(origin[1]), float(origin[2])),
        spacing,
        tuple(float(v) for v in direction.reshape(-1)),
    )


def inside_volume(ijk: ArrayLike, shape: Sequence[int], margin: float = 0.5) -> NDArray[np.bool_]:
    """Whether fractional voxel indices lie inside a volume's physical extent.

    A voxel centre ``n`` covers ``[n - 0.5, n + 0.5]``, so the extent is
    ``[-0.5, shape - 0.5]`` along each axis (``margin`` = 0.5 by default).

    Args:
        ijk: ``(N, 3)`` fractional voxel indices.
        shape: spatial shape ``(I, J, K)``.
        margin: half-voxel tolerance at the borders.

    Returns:
        ``(N,)`` boolean mask.
    """
    p = _as_points(ijk)
    s = np.asarray(shape[-3:], dtype=np.float64)
    return np.all((p >= -margin) & (p <= s - 1 + margin), axis=1)
