"""Scan display for previews and reports: radiological orientation, stated windows, mm scale.

Every slice medmtl draws (lesion previews, the shift report's example slices) follows one
convention, the radiological one: the volume is put in RAS axis order (a permutation and
flips of the voxel axes, no resampling, so the scan is shown at its native resolution) and
each plane is drawn in millimetres with

* **axial** — the patient's right on the image left, anterior up;
* **coronal** — the patient's right on the image left, superior up;
* **sagittal** — anterior on the image left, superior up;

with orientation letters on the four edges, a scale bar in mm and the display window stated
(CT: width / level in HU; MR: the scan's own percentile window, MR having no absolute scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: CT display windows ``name → (width, level)`` in HU (the usual presets of a chest read).
CT_WINDOWS: dict[str, tuple[float, float]] = {"lung": (1500.0, -600.0), "mediastinum": (350.0, 50.0)}
#: MR window: these percentiles of the scan's voxels.
MR_PERCENTILES = (1.0, 99.5)

#: ``name → (axis held fixed, horizontal axis, vertical axis, (left, right, top, bottom) letters)``
#: on a RAS-ordered volume; the horizontal axis is drawn decreasing to the right (see module doc).
PLANES: dict[str, tuple[int, int, int, tuple[str, str, str, str]]] = {
    "axial": (2, 0, 1, ("R", "L", "A", "P")),
    "coronal": (1, 0, 2, ("R", "L", "S", "I")),
    "sagittal": (0, 1, 2, ("A", "P", "S", "I")),
}
#: Dark box behind the yellow annotations, readable on bone and on air.
_BOX = {"facecolor": "black", "alpha": 0.55, "pad": 1.0, "edgecolor": "none"}


@dataclass(frozen=True)
class Window:
    """A display window: grey levels from ``low`` to ``high`` and how it was chosen."""

    low: float
    high: float
    text: str


@dataclass(frozen=True)
class DisplayVolume:
    """A volume in RAS axis order for display.

    Attributes:
        array: ``(I', J', K')`` voxels whose indices increase towards the patient's right (0),
            anterior (1) and superior (2).
        spacing: voxel size (mm) along the three display axes.
        source_axis: for each display axis, the axis of the original array it comes from.
        flipped: for each display axis, whether its index runs against the original's.
        source_shape: shape of the original array.
    """

    array: NDArray[np.float32]
    spacing: tuple[float, float, float]
    source_axis: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]
    source_shape: tuple[int, int, int]

    def source_index(self, display_axis: int, index: int) -> int:
        """Index in the original array of slice ``index`` along display axis ``display_axis``."""
        n = self.source_shape[self.source_axis[display_axis]]
        return n - 1 - index if self.flipped[display_axis] else index

    def display_index(self, display_axis: int, source_index: float) -> float:
        """Fractional display index of a fractional index of the original array's matching axis."""
        n = self.source_shape[self.source_axis[display_axis]]
        return n - 1 - source_index if self.flipped[display_axis] else source_index


def ras_display(array: Any, affine_ras: Any) -> DisplayVolume:
    """Reorder a ``(I, J, K)`` (or ``(1, I, J, K)``) volume into RAS axis order (nibabel's
    closest canonical orientation: only axis permutations and flips)."""
    import nibabel as nib

    arr = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    arr = np.asarray(arr[0] if arr.ndim == 4 else arr, dtype=np.float32)
    aff = np.asarray(affine_ras.detach().cpu() if hasattr(affine_ras, "detach") else affine_ras, dtype=np.float64)
    ornt = nib.orientations.io_orientation(aff)
    out = nib.orientations.apply_orientation(arr, ornt)
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    src_axis = [0, 0, 0]
    flipped = [False, False, False]
    for src, (dst, sign) in enumerate(ornt):
        src_axis[int(dst)] = src
        flipped[int(dst)] = bool(sign < 0)
    sp = tuple(float(spacing[a]) for a in src_axis)
    return DisplayVolume(np.ascontiguousarray(out, dtype=np.float32), (sp[0], sp[1], sp[2]),
                         (src_axis[0], src_axis[1], src_axis[2]), (flipped[0], flipped[1], flipped[2]),
                         (int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2])))


def display_window(modality: str, array: NDArray[np.floating[Any]], preset: str = "lung") -> Window:
    """The window a slice is shown at: a CT preset in HU, or the MR scan's percentile range."""
    if modality == "CT":
        width, level = CT_WINDOWS[preset]
        return Window(level - width / 2.0, level + width / 2.0, f"window W {width:.0f} / L {level:.0f} HU ({preset})")
    lo, hi = (float(v) for v in np.percentile(array, MR_PERCENTILES))
    hi = hi if hi > lo else lo + 1.0
    return Window(lo, hi, f"window W {hi - lo:.3g} / L {(hi + lo) / 2.0:.3g} a.u. "
                          f"({MR_PERCENTILES[0]:g}th–{MR_PERCENTILES[1]:g}th percentile of the scan)")


def plane_extent(vol: DisplayVolume, plane: str) -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` mm extent of a plane's image: display voxel ``(h, v)`` at
    ``(h · spacing_h, v · spacing_v)``. :func:`draw_plane` then reverses the horizontal axis."""
    _, h, v, _ = PLANES[plane]
    sh, sv = vol.spacing[h], vol.spacing[v]
    nh, nv = vol.array.shape[h], vol.array.shape[v]
    return (-0.5 * sh, (nh - 0.5) * sh, -0.5 * sv, (nv - 0.5) * sv)


def draw_plane(ax: Any, vol: DisplayVolume, plane: str, index: int, window: Window, *,
               scale_mm: float = 10.0, letters: bool = True) -> None:
    """Draw slice ``index`` of ``plane`` on ``ax`` in mm (display axes' origin at voxel 0), with
    the orientation letters on its edges and a ``scale_mm`` scale bar.

    A point at display voxel ``(h, v)`` is at ``(h · spacing_h, v · spacing_v)`` in the axes' data
    coordinates, so lesion outlines are drawn in mm.
    """
    fixed, _, _, (left, right, top, bottom) = PLANES[plane]
    index = int(np.clip(index, 0, vol.array.shape[fixed] - 1))
    img = np.take(vol.array, index, axis=fixed)  # (horizontal, vertical)
    ax.imshow(img.T, cmap="gray", origin="lower", vmin=window.low, vmax=window.high,
              extent=plane_extent(vol, plane), interpolation="nearest")
    ax.invert_xaxis()  # higher index = patient's right (axial, coronal) or anterior (sagittal): on the left
    ax.set_xticks([])
    ax.set_yticks([])
    if letters:
        style = {"color": "yellow", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes, "bbox": _BOX}
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    if scale_mm > 0:
        _scale_bar(ax, plane_extent(vol, plane), scale_mm)


def _scale_bar(ax: Any, extent: tuple[float, float, float, float], length_mm: float) -> None:
    """A ``length_mm`` bar in the lower right corner (data units are mm; x runs right→left)."""
    low, high, bottom, top = extent
    width, height = high - low, top - bottom
    x1 = low + 0.05 * width  # the x axis is reversed: low x values are on the right
    y = bottom + 0.07 * height
    ax.plot([x1 + length_mm, x1], [y, y], color="yellow", lw=2.5, solid_capstyle="butt")
    ax.text(x1 + length_mm / 2.0, y + 0.02 * height, f"{length_mm:g} mm", color="yellow", fontsize=7,
            ha="center", va="bottom", bbox=_BOX)


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to at most ``limit`` characters with an ellipsis in the middle (long UIDs keep
    their first and last digits)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def fit_text(fig: Any, artists: Any, *, min_size: float = 5.0) -> None:
    """Shrink the fonts of ``artists`` (texts of ``fig``) until each lies inside the figure."""
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure: give it an Agg canvas to measure text
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    for art in artists:
        for _ in range(12):
            box = art.get_window_extent(renderer)
            if (box.x0 >= 0 and box.x1 <= width) or art.get_fontsize() <= min_size:
                break
            art.set_fontsize(max(min_size, art.get_fontsize() * 0.9))


__all__ = ["CT_WINDOWS", "PLANES", "DisplayVolume", "Window", "display_window", "draw_plane", "fit_text",
           "plane_extent", "ras_display", "shorten"]
