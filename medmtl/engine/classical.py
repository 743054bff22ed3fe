"""Classical, training-free lung-nodule detector for CT: the "floor" row of every learning table.

Per scan (a CT in HU, any voxel spacing, anisotropic included; every length is in mm and becomes
voxels through the spacing; the masks live in :mod:`medmtl.engine.classical_lung`):

1. **Lung mask.** Voxels below ``lung_threshold_hu`` (-400 HU); air components touching the
   in-plane faces of the volume (the air around the body) are dropped; the up to two largest
   remaining components (the second only with at least 10 % of the first's volume) are the lungs.
   Their bounding box (+ 28 mm) is resampled to isotropic ``working_spacing_mm`` voxels (1 mm, or
   the scan's finest spacing if coarser; cubic spline), closed by a ball of ``closing_radius_mm``
   (10 mm) and hole-filled, so nodules and vessels inside the lung belong to the mask; the *search*
   mask is that dilated by ``mask_dilation_mm`` (3 mm) so juxta-pleural nodules count.
2. **Dot enhancement** (Li, Sone & Doi, "Selective enhancement filters for nodules, vessels, and
   airway walls in two- and three-dimensional CT scans", Med. Phys. 30(8), 2003): at each scale
   ``sigma`` (``sigmas_mm``: 6 geometric scales 1–6 mm, blob radii ≈ 1.7–10 mm) the Hessian (HU/mm²,
   central differences) of the volume smoothed by a Gaussian of ``sigma / spacing`` voxels per axis
   (at least 0.5), times ``sigma²`` (scale normalisation). Where it is negative definite (Sylvester's
   criterion), with eigenvalues ``λ1 ≤ λ2 ≤ λ3 < 0``, the dot response is ``|λ3|² / |λ1|`` (HU),
   else 0. The response is the maximum over scales; the arg-max scale gives the blob radius
   ``r = √3 · sigma`` (mm).
3. **Candidates**: local maxima of the response in the search mask (a ball of ``peak_distance_mm``,
   3 mm), the ``2 × max_lesions`` strongest, refined below the voxel by a parabola
   (:func:`medmtl.engine.decode.refine_subvoxel`) and re-centred by step 4, then greedy NMS by world
   distance (:func:`medmtl.engine.decode.nms_world`, ``nms_radius_mm`` 5 mm) to ``max_lesions``.
   **Score** = ``1 - exp(-response / response_scale_hu)`` (100 HU): one fixed, monotone map of the
   filter response to (0, 1) for every scan (not normalised per scan), so scores rank across scans
   as the FROC needs.
4. **Diameter** from the HU excess: ``b`` = median HU of the lung air within ``2.5 r + 5 mm``; in a
   ball of radius ``R = 1.5 r`` inside the closed lung mask ``V = Σ clip((HU - b) / (nodule_hu - b),
   0, 1) · voxel volume`` with ``nodule_hu`` = 0 HU (soft tissue), ``d = (6 V / π)^(1/3)`` mm. Then
   once more around the excess-weighted centroid of that ball (if it moved less than ``r``) with
   ``R = max(1.5 r, 0.75 d + 1 voxel)``. ``d`` is clipped to [2, 40] mm; the centroid is the
   reported centre. Part-solid and ground-glass nodules (below 0 HU) come out smaller than drawn.
5. **Malignancy** — a fixed, documented *prior*, not learned from any data:
   ``sigmoid(b0 + b_size · ((d / 10)^-0.5 - √2.5) - c)`` with the nodule-size term of the Brock model
   (McWilliams et al., "Probability of cancer in pulmonary nodules detected on first screening CT",
   NEJM 2013; ``b_size = -5.5537``: larger is more likely malignant), ``b0 = -2.2`` (a 4 mm nodule
   gets 0.10) and ``c = calcified_logit`` (4) when the median HU within ``max(r / 2, 1 voxel)`` of
   the centre exceeds ``calcified_hu`` (200 HU: calcified nodules are almost always benign), else 0.

Centres leave in LPS mm through :mod:`medmtl.io.coords`. The folder runner (``medmtl classical``,
:func:`medmtl.api.detect_classical`) is :mod:`medmtl.engine.classical_run`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medmtl.engine.classical_lung import (
    BoolArray,
    FloatArray,
    NoLungError,
    Spacing,
    axial_axis,
    close_lungs,
    lung_air,
    lung_box,
    working_grid,
)
from medmtl.engine.decode import nms_world, refine_subvoxel
from medmtl.io import coords
from medmtl.io.types import Detection

__all__ = ["ClassicalParams", "NoLungError", "detect_volume", "dot_enhancement", "malignancy_prior",
           "measure_lesion"]


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of the classical detector; see the module docstring for each step.

    Attributes:
        sigmas_mm: Gaussian scales of the dot filter (mm). lung_threshold_hu: air below it (HU).
        closing_radius_mm, mask_dilation_mm: lung closing ball and search-mask dilation (mm).
        peak_distance_mm, nms_radius_mm: peak neighbourhood and NMS radius (mm).
        max_lesions: detections per scan. response_scale_hu: score = 1 - exp(-response / it) (HU).
        nodule_hu, calcified_hu: solid-nodule and calcified-core HU. calcified_logit: its logit penalty.
        malignancy_b0, malignancy_b_size: intercept and Brock size coefficient of the prior.
        min_diameter_mm, max_diameter_mm: diameter clip (mm).
        working_spacing_mm, resample_order: isotropic working voxel (mm) and its spline order.
    """

    sigmas_mm: tuple[float, ...] = (1.0, 1.431, 2.048, 2.930, 4.193, 6.0)
    lung_threshold_hu: float = -400.0
    closing_radius_mm: float = 10.0
    mask_dilation_mm: float = 3.0
    peak_distance_mm: float = 3.0
    nms_radius_mm: float = 5.0
    max_lesions: int = 50
    response_scale_hu: float = 100.0
    nodule_hu: float = 0.0
    calcified_hu: float = 200.0
    calcified_logit: float = 4.0
    malignancy_b0: float = -2.2
    malignancy_b_size: float = -5.5537
    min_diameter_mm: float = 2.0
    max_diameter_mm: float = 40.0
    working_spacing_mm: float = 1.0
    resample_order: int = 3

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (for provenance)."""
        return asdict(self)


def _hessian_at(smooth: FloatArray, flat: NDArray[np.intp],
                spacing: Spacing) -> dict[tuple[int, int], FloatArray]:
    """Hessian entries (HU/mm²) of a smoothed volume at flat voxel indices, by central differences."""
    pad = np.pad(smooth, 1, mode="edge")
    n = smooth.shape

    def window(shift: dict[int, int]) -> FloatArray:
        return pad[tuple(slice(1 + shift.get(ax, 0), 1 + shift.get(ax, 0) + n[ax]) for ax in range(3))]

    h: dict[tuple[int, int], FloatArray] = {}
    for a in range(3):
        d2 = window({a: 1}) - 2.0 * smooth + window({a: -1})
        h[(a, a)] = d2.ravel()[flat] / np.float32(spacing[a] ** 2)
        for b in range(a + 1, 3):
            mixed = window({a: 1, b: 1}) - window({a: 1, b: -1}) - window({a: -1, b: 1}) + window({a: -1, b: -1})
            h[(a, b)] = mixed.ravel()[flat] / np.float32(4.0 * spacing[a] * spacing[b])
    return h


def _hessian_dot(hu: FloatArray, sigma_mm: float, spacing: Spacing,
                 mask: BoolArray) -> FloatArray:
    """Scale-normalised dot response ``σ² |λ3|² / |λ1|`` (HU) at one scale, 0 outside ``mask``."""
    from scipy.ndimage import gaussian_filter

    sig = tuple(max(sigma_mm / s, 0.5) for s in spacing)
    smooth = gaussian_filter(hu, sigma=sig, mode="nearest", truncate=3.0)
    flat = np.flatnonzero(mask)
    h = {k: v * np.float32(sigma_mm**2) for k, v in _hessian_at(smooth, flat, spacing).items()}
    # Sylvester's criterion: H is negative definite (all λ < 0) iff its leading minors alternate in sign
    xx, yy, zz, xy, xz, yz = h[(0, 0)], h[(1, 1)], h[(2, 2)], h[(0, 1)], h[(0, 2)], h[(1, 2)]
    det = xx * (yy * zz - yz**2) - xy * (xy * zz - yz * xz) + xz * (xy * yz - yy * xz)
    neg = np.nonzero((xx < 0) & (xx * yy - xy**2 > 0) & (det < 0))[0]
    out = np.zeros(hu.shape, dtype=np.float32)
    if neg.size:
        m = np.empty((neg.size, 3, 3), dtype=np.float32)
        for (a, b), v in h.items():
            m[:, a, b] = m[:, b, a] = v[neg]
        lam = np.linalg.eigvalsh(m)  # ascending: λ1 ≤ λ2 ≤ λ3 < 0
        out.ravel()[flat[neg]] = lam[:, 2] ** 2 / np.abs(lam[:, 0])
    return out


def dot_enhancement(hu: FloatArray, spacing: Spacing, mask: BoolArray,
                    sigmas_mm: tuple[float, ...]) -> tuple[FloatArray, NDArray[np.int64]]:
    """Multi-scale dot response (max over scales) and the index of the arg-max scale.

    Args:
        hu: ``(I, J, K)`` HU.
        spacing: voxel size (mm).
        mask: ``(I, J, K)`` voxels where the response is computed (0 elsewhere).
        sigmas_mm: Gaussian scales (mm).

    Returns:
        ``(response, scale)``: ``(I, J, K)`` float32 HU and ``(I, J, K)`` int64 indices into ``sigmas_mm``.
    """
    best = np.zeros(hu.shape, dtype=np.float32)
    scale = np.zeros(hu.shape, dtype=np.int64)
    for n, sigma in enumerate(sigmas_mm):
        resp = _hessian_dot(hu, sigma, spacing, mask)
        better = resp > best
        best[better] = resp[better]
        scale[better] = n
    return best, scale


def _ellipsoid(radius_mm: float, spacing: Spacing) -> BoolArray:
    """A ball of ``radius_mm`` on the voxel grid (at least one voxel each way per axis)."""
    half = [max(1, int(radius_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    r = max(radius_mm, max(spacing))
    return np.asarray(sum(g**2 for g in grids) <= r**2)


def find_candidates(response: FloatArray, mask: BoolArray, spacing: Spacing,
                    distance_mm: float, n: int) -> NDArray[np.int64]:
    """The ``n`` strongest local maxima of ``response`` inside ``mask`` (``(N, 3)`` voxel indices)."""
    from skimage.feature import peak_local_max

    if not (response[mask] > 0).any():
        return np.zeros((0, 3), dtype=np.int64)
    peaks = peak_local_max(response, footprint=_ellipsoid(distance_mm, spacing), labels=mask.astype(np.int32),
                           num_peaks=n, exclude_border=False, threshold_abs=1e-6)
    return np.asarray(peaks, dtype=np.int64).reshape(-1, 3)


def _ball(shape: tuple[int, ...], centre: NDArray[np.float64], radius_mm: float,
          spacing: Spacing) -> tuple[tuple[slice, ...], BoolArray]:
    """Bounding box slices and the ball of ``radius_mm`` around a fractional voxel ``centre`` in it."""
    lo = [max(0, int(math.floor(c - radius_mm / s))) for c, s in zip(centre, spacing)]
    hi = [min(n, int(math.ceil(c + radius_mm / s)) + 1) for c, s, n in zip(centre, spacing, shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    g = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)], indexing="ij")
    return box, np.asarray(sum(x**2 for x in g) <= radius_mm**2)


def measure_lesion(hu: FloatArray, air: BoolArray, closed: BoolArray, centre: NDArray[np.float64],
                   radius_mm: float, spacing: Spacing,
                   params: ClassicalParams) -> tuple[NDArray[np.float64], float, bool]:
    """Centre, diameter (mm) from the HU excess around ``centre``, and whether the core is calcified.

    Two passes: the excess-weighted centroid in the ball re-centres it (by at most ``radius_mm``) and the
    ball grows to ``max(1.5 r, 0.75 d + one voxel)`` when the first diameter ``d`` outgrows it.

    Args:
        hu: ``(I, J, K)`` HU.
        air: lung voxels below the threshold (the background sample).
        closed: closed lung mask (the volume is only counted inside it).
        centre: fractional voxel index ``(i, j, k)`` of the candidate.
        radius_mm: blob radius from the arg-max scale (mm).
        spacing: voxel size (mm).
        params: ``nodule_hu``, ``calcified_hu`` and the diameter bounds.

    Returns:
        ``(centre, diameter_mm, calcified)``: the refined fractional voxel centre, the diameter and the flag.
    """
    box, ball = _ball(hu.shape, centre, 2.5 * radius_mm + 5.0, spacing)
    lung = air[box] & ball
    background = float(np.median(hu[box][lung])) if lung.any() else -850.0
    span = max(params.nodule_hu - background, 1.0)
    start, reach, diameter = centre, 1.5 * radius_mm, 0.0
    for _ in range(2):
        box, ball = _ball(hu.shape, centre, reach, spacing)
        inside = ball & closed[box]
        frac = np.where(inside, np.clip((hu[box] - background) / span, 0.0, 1.0), 0.0)
        volume = float(frac.sum()) * float(np.prod(spacing))
        diameter = float(np.clip((6.0 * volume / math.pi) ** (1.0 / 3.0), params.min_diameter_mm,
                                 params.max_diameter_mm))
        if frac.sum() > 0:
            grid = np.indices(frac.shape).reshape(3, -1) + np.array([b.start for b in box])[:, None]
            moved = (grid * frac.ravel()).sum(axis=1) / frac.sum()
            if np.linalg.norm((moved - start) * np.asarray(spacing)) <= radius_mm:
                centre = moved
        reach = max(1.5 * radius_mm, 0.75 * diameter + max(spacing))
    box, core = _ball(hu.shape, centre, max(0.5 * radius_mm, max(spacing)), spacing)
    return centre, diameter, bool(np.median(hu[box][core]) > params.calcified_hu)


def malignancy_prior(diameter_mm: float, calcified: bool, params: ClassicalParams) -> float:
    """The fixed (not learned) malignancy prior of a nodule (Brock size term, calcification)."""
    size_term = (max(diameter_mm, 1e-3) / 10.0) ** -0.5 - math.sqrt(2.5)
    z = params.malignancy_b0 + params.malignancy_b_size * size_term - (params.calcified_logit if calcified else 0.0)
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def detect_volume(hu: FloatArray, affine_ras: NDArray[np.float64], *, seriesuid: str,
                  params: ClassicalParams) -> tuple[list[Detection], dict[str, float]]:
    """Detect nodules in one CT volume.

    Args:
        hu: ``(I, J, K)`` HU.
        affine_ras: 4×4 voxel→RAS affine.
        seriesuid: scan id written into the detections.
        params: detector settings.

    Returns:
        ``(detections, timings)``: lesions in LPS mm sorted by decreasing score, and seconds per
        step (``mask``, ``enhance``, ``measure``).

    Raises:
        NoLungError: the scan holds no lung.
    """
    t0 = time.perf_counter()
    spacing = coords.spacing_from_affine(affine_ras)
    hu = np.asarray(hu, dtype=np.float32)
    air = lung_air(hu, axial_axis(affine_ras), params.lung_threshold_hu, spacing)
    box = lung_box(air, params.closing_radius_mm + 3.0 * max(params.sigmas_mm), spacing)
    sub, air, to_input, v = working_grid(hu, air, spacing, box, voxel_mm=params.working_spacing_mm,
                                         order=params.resample_order)
    affine = np.asarray(affine_ras, dtype=np.float64) @ to_input  # working voxel -> RAS mm
    spacing = (v, v, v)
    closed, search = close_lungs(air, spacing, params.closing_radius_mm, params.mask_dilation_mm)
    t1 = time.perf_counter()
    response, scale = dot_enhancement(sub, spacing, search, params.sigmas_mm)
    t2 = time.perf_counter()
    peaks = find_candidates(response, search, spacing, params.peak_distance_mm, 2 * params.max_lesions)
    out: list[Detection] = []
    if peaks.shape[0]:
        import torch

        ijk = refine_subvoxel(torch.from_numpy(response), torch.from_numpy(peaks))
        scores = response[tuple(peaks.T)].astype(np.float64)
        radii = [math.sqrt(3.0) * params.sigmas_mm[int(scale[tuple(pk)])] for pk in peaks]
        found = [measure_lesion(sub, air, closed, ijk[n], radii[n], spacing, params) for n in range(len(peaks))]
        centres = np.array([f[0] for f in found])
        kept = nms_world(coords.voxel_to_ras(centres, affine), scores, params.nms_radius_mm)[: params.max_lesions]
        lps = coords.voxel_to_lps(centres[kept], affine)
        for n, idx in enumerate(kept):
            _, diameter, calcified = found[idx]
            out.append(Detection(
                seriesuid=seriesuid, center_lps=(float(lps[n, 0]), float(lps[n, 1]), float(lps[n, 2])),
                probability=float(1.0 - math.exp(-scores[idx] / params.response_scale_hu)),
                diameter_mm=diameter, malignancy_prob=malignancy_prior(diameter, calcified, params)))
    t3 = time.perf_counter()
    return out, {"mask": t1 - t0, "enhance": t2 - t1, "measure": t3 - t2}
