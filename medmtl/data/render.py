"""Partial-volume rendering of analytic shapes on a voxel grid (used by the phantoms).

Shapes are functions of world points (RAS mm, ``(N, 3)``) that say whether each point is
inside and, optionally, which value it carries. A shape is rendered on the voxels of a
bounding box by *super-sampling*: each voxel is split into ``ss**3`` sub-voxels, and the
voxel takes the inside fraction (partial volume) and the mean inside value. Small lesions
(one or two voxels across) therefore stay visible with the right integrated contrast, and a
thick slice averages what lies inside it (a box slice profile).

Voxel ↔ world conversions go through :mod:`medmtl.io.coords`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from medmtl.io.coords import lps_to_ras, ras_to_lps, ras_to_voxel, voxel_to_ras
from medmtl.io.types import Lesion

FloatArray = NDArray[np.float64]
InsideFn = Callable[[FloatArray], NDArray[np.bool_]]
ValueFn = Callable[[FloatArray], FloatArray]


@dataclass
class Phantom:
    """One generated scan with its ground truth.

    Attributes:
        volume: ``(I, J, K)`` float32 image, HU for CT (already rounded to integers and
            clipped to [-1024, 3071]), arbitrary positive intensity for MRI.
        affine_ras: 4×4 voxel ``(i, j, k)`` → RAS world mm affine.
        lesions: ground-truth lesions (centres in LPS mm, diameters in mm, malignancy label
            or ``None`` when unlabelled, ``extra`` with ``bayes_malignancy_prob``,
            ``margin``, ``texture``, ``calcification``).
        label_mask: ``(I, J, K)`` int16 instance labels, ``n`` for ``lesions[n - 1]``.
        site: acquisition site (``"a"`` or ``"b"``).
        spacing: voxel size along ``i, j, k`` in mm.
        modality: ``"CT"`` or ``"MR"``.
        tissue: ``(I, J, K)`` uint8 anatomy classes (see ``CT_TISSUES`` / ``MRI_TISSUES``);
            a voxel takes a class when that structure fills at least half of it.
        scan_id: the id used in ``annotations.csv``.
        acquisition: scanner description (manufacturer, kernel, kVp, noise, offset...).
    """

    volume: NDArray[np.float32]
    affine_ras: FloatArray
    lesions: list[Lesion]
    label_mask: NDArray[np.int16]
    site: str
    spacing: tuple[float, float, float]
    modality: str
    tissue: NDArray[np.uint8]
    scan_id: str = "phantom"
    acquisition: dict[str, str | float] = field(default_factory=dict)


class Grid:
    """A voxel grid (shape + voxel→RAS affine) with super-sampled painting.

    Args:
        shape: ``(I, J, K)`` voxels.
        affine_ras: 4×4 voxel→RAS affine (mm).
    """

    def __init__(self, shape: tuple[int, int, int], affine_ras: FloatArray) -> None:
        self.shape = shape
        self.affine_ras = np.asarray(affine_ras, dtype=np.float64)
        self._cache: dict[tuple[int, ...], FloatArray] = {}

    def box(self, center_ras: FloatArray, radius_mm: float) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Voxel box ``[lo, hi)`` covering a ball (RAS centre, radius mm), clipped to the grid."""
        corners = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
        )
        pts = np.asarray(center_ras, dtype=np.float64)[None, :] + radius_mm * corners
        ijk = ras_to_voxel(pts, self.affine_ras)
        lo = np.clip(np.floor(ijk.min(axis=0)).astype(np.int64), 0, np.array(self.shape))
        hi = np.clip(np.ceil(ijk.max(axis=0)).astype(np.int64) + 1, 0, np.array(self.shape))
        return lo, hi

    def points(self, lo: NDArray[np.int64], hi: NDArray[np.int64], ss: int) -> FloatArray:
        """RAS mm of the sub-voxel centres of box ``[lo, hi)``, ``(bi*ss * bj*ss * bk*ss, 3)``.

        The full grid's points are cached (they are asked for by every large structure).
        """
        key = (*(int(v) for v in lo), *(int(v) for v in hi), ss)
        full = key[:6] == (0, 0, 0, *self.shape)
        if full and key in self._cache:
            return self._cache[key]
        axes = [
            (np.arange(int(lo[a]) * ss, int(hi[a]) * ss, dtype=np.float64) + 0.5) / ss - 0.5
            for a in range(3)
        ]
        # The map is affine: f(i, j, k) = f(i, 0, 0) + f(0, j, 0) + f(0, 0, k) - 2 f(0, 0, 0),
        # so three 1D conversions and a broadcast sum give every sub-voxel centre.
        per_axis = []
        for a, ax in enumerate(axes):
            ijk = np.zeros((len(ax), 3))
            ijk[:, a] = ax
            per_axis.append(voxel_to_ras(ijk, self.affine_ras))
        origin = voxel_to_ras(np.zeros(3), self.affine_ras)[0]
        pts = (
            per_axis[0][:, None, None, :] + per_axis[1][None, :, None, :] + per_axis[2][None, None, :, :]
            - 2.0 * origin
        ).reshape(-1, 3)
        if full:
            self._cache[key] = pts
        return pts

    def render(
        self,
        inside: InsideFn,
        lo: NDArray[np.int64],
        hi: NDArray[np.int64],
        ss: int,
        value: ValueFn | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Render a shape on a box.

        Args:
            inside: world points → inside mask.
            lo, hi: voxel box ``[lo, hi)``.
            ss: sub-samples per voxel and axis.
            value: world points → value (only evaluated inside); ``None`` for a mask only.

        Returns:
            ``(fraction, value_sum, centroid_ras)``: box-shaped inside fraction in [0, 1], the
            box-shaped sum of inside values divided by ``ss**3`` (so ``volume * (1 - f) +
            value_sum`` paints the shape), and the RAS centroid of the inside sub-voxels
            (``nan`` when empty).
        """
        dims = tuple(int(h - lo_) for lo_, h in zip(lo, hi))
        if min(dims) <= 0:
            empty = np.zeros(dims if min(dims) >= 0 else (0, 0, 0))
            return empty, empty.copy(), np.full(3, np.nan)
        pts = self.points(lo, hi, ss)
        mask = inside(pts)
        fine = (dims[0], ss, dims[1], ss, dims[2], ss)
        frac = mask.reshape(fine).mean(axis=(1, 3, 5))
        if value is None:
            vals = np.zeros_like(frac)
        else:
            v = np.zeros(mask.shape, dtype=np.float64)
            if mask.any():
                v[mask] = value(pts[mask])
            vals = v.reshape(fine).mean(axis=(1, 3, 5))
        centroid = pts[mask].mean(axis=0) if mask.any() else np.full(3, np.nan)
        return frac, vals, centroid

    def paint(
        self,
        volume: FloatArray,
        lo: NDArray[np.int64],
        hi: NDArray[np.int64],
        frac: FloatArray,
        value_sum: FloatArray,
    ) -> None:
        """Composite a rendered shape over ``volume`` in place (painter's algorithm)."""
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        volume[sl] = volume[sl] * (1.0 - frac) + value_sum

    def full_box(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The box covering the whole grid."""
        return np.zeros(3, dtype=np.int64), np.array(self.shape, dtype=np.int64)

    def to_lps(self, center_ras: FloatArray) -> tuple[float, float, float]:
        """A RAS mm point as an LPS mm tuple (the table convention)."""
        p = ras_to_lps(center_ras)[0]
        return (float(p[0]), float(p[1]), float(p[2]))

    def lps_to_voxel_idx(self, center_lps: tuple[float, float, float]) -> NDArray[np.int64]:
        """Nearest voxel index ``(i, j, k)`` of an LPS mm point, clipped to the grid."""
        ijk = ras_to_voxel(lps_to_ras(center_lps), self.affine_ras)[0]
        return np.clip(np.rint(ijk).astype(np.int64), 0, np.array(self.shape) - 1)


def affine_for(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    center_ras: tuple[float, float, float],
    axis_signs: tuple[int, int, int] = (1, 1, 1),
) -> FloatArray:
    """A diagonal voxel→RAS affine whose grid centre lies at ``center_ras``.

    Args:
        shape: ``(I, J, K)``.
        spacing: mm per voxel along ``i, j, k``.
        center_ras: RAS mm of the grid centre.
        axis_signs: ``(1, 1, 1)`` for RAS axis order, ``(-1, -1, 1)`` for LPS axis order.

    Returns:
        4×4 affine.
    """
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(spacing, dtype=np.float64) * np.asarray(axis_signs, dtype=np.float64))
    mid = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    a[:3, 3] = np.asarray(center_ras, dtype=np.float64) - a[:3, :3] @ mid
    return a


def ellipsoid(center: FloatArray, semi_axes: FloatArray, rotation: FloatArray | None = None) -> InsideFn:
    """Inside function of an ellipsoid (RAS mm centre, semi-axes mm, optional 3×3 rotation)."""
    c = np.asarray(center, dtype=np.float64)
    s = np.asarray(semi_axes, dtype=np.float64)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)

    def fn(p: FloatArray) -> NDArray[np.bool_]:
        if rotation is None:  # per-column arithmetic: much faster than (N, 3) reductions
            acc = ((p[:, 0] - c[0]) / s[0]) ** 2
            acc += ((p[:, 1] - c[1]) / s[1]) ** 2
            acc += ((p[:, 2] - c[2]) / s[2]) ** 2
            return np.asarray(acc <= 1.0)
        q = (p - c) @ r
        return np.asarray(((q / s) ** 2).sum(axis=1) <= 1.0)

    return fn


def segment_distance(p: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """Distance (mm) from points ``(N, 3)`` to the segment ``a``–``b``."""
    ab = b - a
    denom = float(ab @ ab)
    t = np.zeros(len(p)) if denom == 0 else np.clip((p - a) @ ab / denom, 0.0, 1.0)
    closest = a[None, :] + t[:, None] * ab[None, :]
    return np.asarray(np.linalg.norm(p - closest, axis=1))


def tube(points: FloatArray, radii: FloatArray) -> InsideFn:
    """Inside function of a polyline tube (``(M, 3)`` RAS mm vertices, ``(M,)`` radii mm).

    The radius varies linearly along each segment (tapering vessels and ribs).
    """
    pts = np.asarray(points, dtype=np.float64)
    rad = np.asarray(radii, dtype=np.float64)

    def fn(p: FloatArray) -> NDArray[np.bool_]:
        out = np.zeros(len(p), dtype=bool)
        for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
            r = max(ra, rb)
            near = np.all((p >= np.minimum(a, b) - r) & (p <= np.maximum(a, b) + r), axis=1)
            idx = np.flatnonzero(near)
            if idx.size == 0:
                continue
            q = p[idx]
            ab = b - a
            denom = float(ab @ ab)
            t = np.zeros(len(q)) if denom == 0 else np.clip((q - a) @ ab / denom, 0.0, 1.0)
            diff = q - (a[None, :] + t[:, None] * ab[None, :])
            d2 = np.einsum("ij,ij->i", diff, diff)
            out[idx] |= d2 <= (ra + t * (rb - ra)) ** 2
        return out

    return fn


def random_rotation(rng: np.random.Generator) -> FloatArray:
    """A uniformly random 3×3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q)


def unit_vectors(rng: np.random.Generator, n: int) -> FloatArray:
    """``(n, 3)`` random unit vectors, uniform on the sphere."""
    v = rng.normal(size=(n, 3))
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: float | tuple[float, float, float]
) -> FloatArray:
    """Zero-mean, unit-std smooth random field ``(I, J, K)`` (Gaussian-filtered white noise)."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=shape), sigma=sigma_vox, mode="wrap")
    std = float(f.std())
    return np.asarray((f - f.mean()) / (std if std > 0 else 1.0))
