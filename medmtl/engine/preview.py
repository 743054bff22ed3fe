"""PNG previews of predicted lesions: axial, coronal and sagittal slices through each centre.

Previews are drawn on the **original scan grid** (the voxels as read, HU for CT; only axis
permutations and flips, no resampling: :func:`medmtl.io.display.ras_display`), in the
radiological convention (the patient's right on the image left; see :mod:`medmtl.io.display`),
with orientation letters on the edges, a 10 mm scale bar, the display window stated, the
lesion's LPS centre (mm) and its slice index in the original scan. A scan without any lesion
above the detection threshold still gets one preview: its central slices, saying so.
Rendering uses matplotlib's object API (no pyplot state, no display); files are written
atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmtl.io import coords
from medmtl.io.display import (
    PLANES,
    DisplayVolume,
    Window,
    display_window,
    draw_plane,
    fit_text,
    ras_display,
    shorten,
)
from medmtl.io.types import Detection
from medmtl.io.writers import atomic_save

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.io.types import Scan

#: Longest scan id shown in a title (longer ones keep their ends around an ellipsis).
TITLE_ID_CHARS = 36
#: Length of the scale bar (mm).
SCALE_BAR_MM = 10.0
_AXIS_NAMES = "ijk"


def _figure(vol: DisplayVolume) -> tuple[Any, Any]:
    """A three-panel figure sized so that a 512² slice is shown at about one pixel per voxel."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    extent_mm = [n * s for n, s in zip(vol.array.shape, vol.spacing)]
    finest = min(vol.spacing)
    panel_px = float(np.clip(max(extent_mm) / finest, 260.0, 512.0))
    fig = Figure(figsize=(3 * panel_px / 100.0 + 0.6, panel_px / 100.0 + 1.1), dpi=100)
    return fig, fig.subplots(1, 3)


def _plane_caption(vol: DisplayVolume, plane: str, index: int) -> str:
    """``"axial · slice k = 37 (0…63)"``: the original scan's axis and its (0-based) index."""
    fixed = PLANES[plane][0]
    axis = vol.source_axis[fixed]
    n = vol.source_shape[axis]
    return f"{plane} · slice {_AXIS_NAMES[axis]} = {vol.source_index(fixed, index)} (0…{n - 1})"


def _draw(fig: Any, axes: Any, vol: DisplayVolume, centre: Sequence[float], window: Window,
          diameter_mm: float | None) -> None:
    """The three planes through display voxel ``centre``, with a circle of ``diameter_mm``."""
    from matplotlib.patches import Circle

    for ax, plane in zip(axes, ("axial", "coronal", "sagittal")):
        fixed, h, v, _ = PLANES[plane]
        index = int(round(float(np.clip(centre[fixed], 0, vol.array.shape[fixed] - 1))))
        draw_plane(ax, vol, plane, index, window, scale_mm=SCALE_BAR_MM)
        if diameter_mm is not None:
            ax.add_patch(Circle((centre[h] * vol.spacing[h], centre[v] * vol.spacing[v]), diameter_mm / 2.0,
                                fill=False, color="tab:red", lw=1.2))
        ax.set_title(_plane_caption(vol, plane, index), fontsize=8)


def _titles(fig: Any, lines: Sequence[str]) -> None:
    """Title lines above the panels, shrunk until each fits the figure's width."""
    titles = [fig.text(0.5, 1.0 - (i + 0.6) * 0.055, line, ha="center", va="center",
                       fontsize=10 if i == 0 else 8.5) for i, line in enumerate(lines)]
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1.0 - 0.055 * (len(lines) + 0.9), wspace=0.04)
    fit_text(fig, titles)


def preview_figure(scan: Scan, detection: Detection | None, *, title: str = "", threshold: float | None = None) -> Any:
    """The preview of ``scan`` on its own grid, as a matplotlib ``Figure`` (see :func:`render_lesion_preview`)."""
    affine = np.asarray(scan.image.affine.detach().cpu().numpy() if hasattr(scan.image.affine, "detach")
                        else scan.image.affine, dtype=np.float64)
    vol = ras_display(scan.image, affine)
    window = display_window(scan.modality, vol.array)
    fig, axes = _figure(vol)
    head = title or shorten(scan.scan_id, TITLE_ID_CHARS)
    if detection is None:
        centre = [(n - 1) / 2.0 for n in vol.array.shape]
        _draw(fig, axes, vol, centre, window, None)
        found = "no lesion found" + (f" at threshold {threshold:g}" if threshold is not None else "")
        lines = [f"{head}: {found}", f"central slices of the scan · {window.text} · patient's right on the image left"]
    else:
        src = coords.lps_to_voxel(detection.center_lps, affine)[0]
        centre = [vol.display_index(a, float(src[vol.source_axis[a]])) for a in range(3)]
        _draw(fig, axes, vol, centre, window, detection.diameter_mm)
        x, y, z = (float(c) for c in detection.center_lps)
        lines = [head, f"centre LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm · Ø {detection.diameter_mm:.1f} mm · "
                       f"p = {detection.probability:.2f} · malignancy {detection.malignancy_prob:.2f}",
                 f"{window.text} · patient's right on the image left"]
    _titles(fig, lines)
    return fig


def render_lesion_preview(path: Path, scan: Scan, detection: Detection | None, *, title: str = "",
                          threshold: float | None = None) -> Path:
    """Write one preview PNG of ``scan`` on its own grid.

    Args:
        path: output ``.png``.
        scan: the scan as read (image ``(1, I, J, K)``, voxel→RAS affine, HU for CT).
        detection: the lesion (LPS mm centre, diameter mm); ``None`` draws the scan's central
            slices and says that no lesion was found at ``threshold``.
        title: first title line (default: the scan id, shortened).
        threshold: the detection threshold, stated when ``detection`` is ``None``.

    Returns:
        ``path``.
    """
    fig = preview_figure(scan, detection, title=title, threshold=threshold)
    return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))


def save_lesion_previews(out_dir: Path, scan: Scan, detections: Sequence[Detection], *,
                         threshold: float | None = None) -> list[str]:
    """Write ``out_dir/previews/<id>_lesion<k>.png`` for each detection (k from 1, by probability),
    or ``out_dir/previews/<id>_no_lesion.png`` when there is none.

    Returns:
        Paths relative to ``out_dir``.
    """
    from medmtl.engine.predict_io import safe_name

    sid = scan.scan_id
    if not detections:
        rel = f"previews/{safe_name(sid)}_no_lesion.png"
        render_lesion_preview(out_dir / rel, scan, None, threshold=threshold)
        return [rel]
    written: list[str] = []
    for k, det in enumerate(detections, start=1):
        rel = f"previews/{safe_name(sid)}_lesion{k}.png"
        head = f"{shorten(sid, TITLE_ID_CHARS)} · lesion {k} of {len(detections)}"
        render_lesion_preview(out_dir / rel, scan, det, title=head)
        written.append(rel)
    return written
