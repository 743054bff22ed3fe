"""Lesion shapes (smooth / lobulated / spiculated) and their rendering into a phantom.

A lesion of nominal diameter ``d`` (mm) is built around its centre with a random rotation:

* ``smooth``: an ellipsoid with semi-axes ``d/2 · (1 ± 10 %)``;
* ``lobulated``: a sphere of radius ``0.7 · d/2`` plus 3–5 lobes (spheres of radius
  0.4–0.55 · d/2 centred 0.45 · d/2 away), i.e. a sum of spheres;
* ``spiculated``: a core sphere of radius ``0.8 · d/2`` plus 6–12 radial spikes (tapering
  cones 1.3–2× the radius long).

Its inner intensity pattern (texture, calcification) is given by a value function of the
position relative to the centre (e.g. a solid core inside a ground-glass halo, a bright
calcified core). Rendering is super-sampled (see :mod:`medmtl.data.render`); the recorded
centre is the centroid of the rendered shape, so the instance mask's centre of mass maps
back to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medmtl.data.render import FloatArray, Grid, InsideFn, random_rotation, unit_vectors

#: Sub-samples per voxel and axis when rendering lesions.
LESION_SS = 4


@dataclass
class LesionShape:
    """A lesion's geometry and intensity.

    Attributes:
        center_ras: nominal centre, RAS mm.
        diameter_mm: nominal diameter, mm.
        extent_mm: radius (mm) of a ball that holds the whole lesion, spikes included.
        inside: world points (RAS mm) → inside mask.
        value: world points (inside only) → intensity (HU for CT).
    """

    center_ras: FloatArray
    diameter_mm: float
    extent_mm: float
    inside: InsideFn
    value: Callable[[FloatArray], FloatArray]


def lesion_geometry(
    rng: np.random.Generator, center_ras: FloatArray, diameter_mm: float, margin: str
) -> tuple[InsideFn, float]:
    """Inside function and bounding radius (mm) of a lesion of a given margin type.

    Args:
        rng: the phantom's random generator.
        center_ras: centre, RAS mm.
        diameter_mm: nominal diameter, mm.
        margin: ``"smooth"``, ``"lobulated"`` or ``"spiculated"``.

    Returns:
        ``(inside, extent_mm)``.
    """
    c = np.asarray(center_ras, dtype=np.float64)
    r = diameter_mm / 2.0
    rot = random_rotation(rng)
    if margin == "smooth":
        semi = r * (1.0 + rng.uniform(-0.1, 0.1, size=3))

        def smooth(p: FloatArray) -> NDArray[np.bool_]:
            q = (p - c) @ rot
            return np.asarray(((q / semi) ** 2).sum(axis=1) <= 1.0)

        return smooth, float(semi.max())
    if margin == "lobulated":
        k = int(rng.integers(3, 6))
        centers = 0.45 * r * unit_vectors(rng, k)
        radii = r * rng.uniform(0.4, 0.55, size=k)

        def lobulated(p: FloatArray) -> NDArray[np.bool_]:
            q = p - c
            out = (q**2).sum(axis=1) <= (0.7 * r) ** 2
            for cc, rr in zip(centers, radii):
                out |= ((q - cc) ** 2).sum(axis=1) <= rr**2
            return np.asarray(out)

        return lobulated, float(r)
    if margin == "spiculated":
        m = int(rng.integers(6, 13))
        dirs = unit_vectors(rng, m)
        lengths = r * rng.uniform(1.3, 2.0, size=m)
        w0 = max(0.7, 0.18 * r)
        core = 0.8 * r

        def spiculated(p: FloatArray) -> NDArray[np.bool_]:
            q = p - c
            out = (q**2).sum(axis=1) <= core**2
            for u, length in zip(dirs, lengths):
                t = q @ u
                perp = np.linalg.norm(q - t[:, None] * u[None, :], axis=1)
                out |= (t >= 0) & (t <= length) & (perp <= w0 * (1.0 - t / length))
            return np.asarray(out)

        return spiculated, float(lengths.max())
    raise ValueError(f"margin must be smooth, lobulated or spiculated, got {margin!r}")


def core_value(
    center_ras: FloatArray, core_radius_mm: float, core_value_: float, outer_value: float
) -> Callable[[FloatArray], FloatArray]:
    """Value function: ``core_value_`` within ``core_radius_mm`` of the centre, else ``outer_value``."""
    c = np.asarray(center_ras, dtype=np.float64)

    def fn(p: FloatArray) -> FloatArray:
        d2 = ((p - c) ** 2).sum(axis=1)
        return np.where(d2 <= core_radius_mm**2, core_value_, outer_value)

    return fn


def render_lesion(
    grid: Grid,
    volume: FloatArray,
    label_mask: NDArray[np.int16],
    tissue: NDArray[np.uint8],
    shape: LesionShape,
    label: int,
    tissue_class: int,
) -> tuple[float, float, float] | None:
    """Paint one lesion into ``volume``, ``label_mask`` and ``tissue`` (all in place).

    The instance mask takes the voxels the lesion fills at least half or, when it fills no
    voxel that much (a 3 mm nodule in 3 mm voxels), the voxel nearest to its centroid.

    Args:
        grid: the phantom grid.
        volume: ``(I, J, K)`` float64 image being built.
        label_mask: ``(I, J, K)`` int16 instance labels.
        tissue: ``(I, J, K)`` uint8 anatomy classes.
        shape: the lesion.
        label: instance label (1-based).
        tissue_class: class written into ``tissue`` where the lesion dominates.

    Returns:
        The lesion's centroid in LPS mm, or ``None`` if nothing of it lies in the grid.
    """
    lo, hi = grid.box(shape.center_ras, shape.extent_mm + 1.0)
    frac, vals, centroid = grid.render(shape.inside, lo, hi, LESION_SS, shape.value)
    if not np.isfinite(centroid).all():
        return None
    grid.paint(volume, lo, hi, frac, vals)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    major = frac >= 0.5
    center_lps = grid.to_lps(centroid)
    if major.any():
        label_mask[sl][major] = label
        tissue[sl][major] = tissue_class
    else:  # smaller than half a voxel everywhere: the voxel nearest to its centroid
        idx = tuple(grid.lps_to_voxel_idx(center_lps))
        label_mask[idx] = label
        tissue[idx] = tissue_class
    return center_lps
