"""Lung masks and the working grid of the classical detector (:mod:`medmtl.engine.classical`).

Every length is in mm and becomes voxels through the scan's spacing, so the same settings work
for 0.6 mm and 5 mm slices alike. Morphology by a ball uses Euclidean distance transforms in mm
(exact for any spacing, linear time) rather than structuring elements.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import MedmtlError
from medmtl.io import coords

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float32]
Spacing = tuple[float, float, float]


class NoLungError(MedmtlError):
    """A CT holds no lung region (no air below the threshold inside the body)."""


def axial_axis(affine_ras: NDArray[np.float64]) -> int:
    """The voxel axis (0, 1 or 2) closest to the patient's head-feet (world z) direction."""
    return int(np.argmax(np.abs(coords.direction_from_affine(affine_ras)[2])))


def dilate(mask: BoolArray, radius_mm: float, spacing: Spacing) -> BoolArray:
    """Binary dilation by a ball of ``radius_mm`` (distance transform in mm)."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return mask.copy()
    return np.asarray(distance_transform_edt(~mask, sampling=spacing) <= radius_mm)


def erode(mask: BoolArray, radius_mm: float, spacing: Spacing) -> BoolArray:
    """Binary erosion by a ball of ``radius_mm`` (the array border does not erode)."""
    from scipy.ndimage import distance_transform_edt

    if mask.all():
        return mask.copy()
    return np.asarray(distance_transform_edt(mask, sampling=spacing) > radius_mm)


def _outside_labels(labels: NDArray[np.int32], axial: int, *, corners: bool) -> NDArray[np.int32]:
    """Labels of the air components touching the in-plane faces (or only the corner edges) of the volume."""
    plane = [ax for ax in range(3) if ax != axial]
    if corners:
        lines = [np.moveaxis(labels, plane, [0, 1])[i, j] for i in (0, -1) for j in (0, -1)]
    else:
        lines = [np.take(labels, idx, axis=ax) for ax in plane for idx in (0, -1)]
    return np.unique(np.concatenate([x.ravel() for x in lines]))


def lung_air(hu: FloatArray, axial: int, threshold_hu: float, spacing: Spacing,
             min_lung_ml: float = 20.0) -> BoolArray:
    """The lungs' air: the up to two largest air components inside the body.

    The air components touching the faces of the two in-plane axes are the air around the body (the
    lungs may touch the first and last slices). When no other component holds ``min_lung_ml``, the
    field of view cuts the lungs: only the components reaching the four corner edges are outside.
    A scan without a lung component of ``min_lung_ml`` is refused.
    The second-largest component counts only with at least 10 % of the largest's volume (not the
    trachea or bowel gas of a scan whose lungs touch).

    Args:
        hu: ``(I, J, K)`` HU.
        axial: the slice axis (see :func:`axial_axis`).
        threshold_hu: air is below this (HU, e.g. -400).
        spacing: voxel size (mm).
        min_lung_ml: smallest lung component (mL) before the corner rule applies.

    Returns:
        ``(I, J, K)`` bool: lung voxels below the threshold.

    Raises:
        NoLungError: no air component of ``min_lung_ml`` inside the body.
    """
    from scipy.ndimage import label

    labels, n = label(hu < threshold_hu)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    min_voxels = min_lung_ml * 1000.0 / float(np.prod(spacing))
    for corners in (False, True):
        sizes = counts.copy()
        sizes[_outside_labels(labels, axial, corners=corners)] = 0
        if sizes.max() >= min_voxels:
            break
    if sizes.max() < min_voxels:
        raise NoLungError(f"no lung found: no region below {threshold_hu:g} HU of at least {min_lung_ml:g} mL"
                          " inside the body; the classical detector needs a chest CT in HU")
    order = [int(c) for c in np.argsort(-sizes, kind="stable")[:2]]
    return np.isin(labels, [c for c in order if sizes[c] >= 0.1 * sizes[order[0]]])


def close_lungs(air: BoolArray, spacing: Spacing, closing_mm: float,
                dilation_mm: float) -> tuple[BoolArray, BoolArray]:
    """Lungs closed by a ball and hole-filled (nodules and vessels inside), and that dilated.

    Args:
        air: ``(I, J, K)`` lung air (:func:`lung_air`).
        spacing: voxel size (mm).
        closing_mm: radius of the closing ball (mm).
        dilation_mm: extra dilation of the search mask (mm), for juxta-pleural nodules.

    Returns:
        ``(closed, search)``, each shaped like ``air``.
    """
    from scipy.ndimage import binary_fill_holes

    closed = erode(dilate(air, closing_mm, spacing), closing_mm, spacing)
    closed = np.asarray(binary_fill_holes(closed | air))
    return closed, dilate(closed, dilation_mm, spacing)


def lung_box(air: BoolArray, margin_mm: float, spacing: Spacing) -> tuple[slice, ...]:
    """Bounding box of the lung air grown by ``margin_mm`` on every side (clipped to the volume)."""
    nz = np.nonzero(air)
    return tuple(slice(max(0, int(v.min()) - math.ceil(margin_mm / s)), int(v.max()) + math.ceil(margin_mm / s) + 1)
                 for v, s in zip(nz, spacing))


def working_grid(hu: FloatArray, air: BoolArray, spacing: Spacing, box: tuple[slice, ...], *,
                 voxel_mm: float, order: int) -> tuple[FloatArray, BoolArray, NDArray[np.float64], float]:
    """The box of a volume resampled to isotropic voxels of ``max(voxel_mm, min(spacing))`` mm.

    Isotropic voxels make the Hessian's finite differences and the Gaussian equally well sampled
    along every axis (Li et al. 2003 work on isotropic volumes); thick slices are interpolated.

    Args:
        hu: ``(I, J, K)`` HU of the whole scan.
        air: ``(I, J, K)`` lung air of the whole scan.
        spacing: the scan's voxel size (mm).
        box: the region to resample (:func:`lung_box`).
        voxel_mm: the working voxel size (mm), unless the scan's finest spacing is coarser.
        order: spline order of the HU interpolation (the air mask uses nearest neighbours).

    Returns:
        ``(hu, air, to_input, v)``: the working volume (HU), its lung air, the 4×4 map from working
        to input voxel indices (compose it with the scan's affine) and the voxel size ``v`` (mm).
    """
    from scipy.ndimage import affine_transform

    v = max(voxel_mm, min(spacing))
    factor = np.array([v / s for s in spacing])
    to_input = np.eye(4)
    to_input[:3, 3] = [b.start for b in box]
    sub, sub_air = hu[box], air[box]
    if np.allclose(factor, 1.0, atol=0.01):
        return sub, sub_air, to_input, float(np.mean(spacing))
    to_input[:3, :3] = np.diag(factor)
    shape = tuple(int((n - 1) / f) + 1 for n, f in zip(sub.shape, factor))
    work = affine_transform(sub, factor, output_shape=shape, order=order, mode="nearest")
    work_air = affine_transform(sub_air.astype(np.uint8), factor, output_shape=shape, order=0, mode="nearest")
    return np.asarray(work, dtype=np.float32), np.asarray(work_air > 0), to_input, v
