"""PNG previews of predicted lesions: three orthogonal slices through each lesion centre.

Each preview shows the axial, coronal and sagittal slices of the preprocessed volume (its
first channel, e.g. the lung window for CT) through the lesion centre, with an ellipse of the
predicted diameter (the circle in mm drawn in voxel units of each plane). Rendering uses the
non-interactive matplotlib ``Agg`` backend; files are written atomically. Display follows the
radiological convention (patient's right on the viewer's left, anterior/superior up).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.io import coords
from medmtl.io.types import Detection
from medmtl.io.writers import atomic_save

#: (title, axis held fixed, the two displayed axes (horizontal, vertical)) on a RAS grid.
_PLANES: tuple[tuple[str, int, tuple[int, int]], ...] = (
    ("axial", 2, (0, 1)),
    ("coronal", 1, (0, 2)),
    ("sagittal", 0, (1, 2)),
)


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    index = int(np.clip(index, 0, vol.shape[axis] - 1))
    return np.take(vol, index, axis=axis)


def render_lesion_preview(
    path: Path, image: Any, affine_ras: np.ndarray, detection: Detection, *, title: str = ""
) -> Path:
    """Write one preview PNG.

    Args:
        path: output ``.png``.
        image: ``(C, I, J, K)`` or ``(I, J, K)`` volume on a RAS grid (first channel shown).
        affine_ras: its voxel→RAS affine.
        detection: the lesion (LPS mm centre, diameter mm).
        title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    vol = arr[0] if arr.ndim == 4 else arr
    ijk = coords.lps_to_voxel(detection.center_lps, affine_ras)[0]
    spacing = coords.spacing_from_affine(affine_ras)
    lo, hi = np.percentile(vol, [1.0, 99.5])
    fig = Figure(figsize=(9.0, 3.4), dpi=100)
    axes = fig.subplots(1, 3)
    for ax, (name, fixed, (h, v)) in zip(axes, _PLANES):
        plane = _slice(vol, fixed, int(round(ijk[fixed])))
        # plane axes are the remaining ones in order; show h horizontally, v vertically (superior/anterior up)
        ax.imshow(plane.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1.0,
                  aspect=spacing[v] / spacing[h], interpolation="nearest")
        ax.add_patch(Ellipse((ijk[h], ijk[v]), width=detection.diameter_mm / spacing[h],
                             height=detection.diameter_mm / spacing[v], fill=False, color="tab:red", lw=1.2))
        if h == 0:
            ax.invert_xaxis()  # radiological convention: the patient's right on the viewer's left
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or (f"p={detection.probability:.2f}  d={detection.diameter_mm:.1f} mm  "
                           f"malignancy={detection.malignancy_prob:.2f}"), fontsize=9)
    fig.tight_layout()
    return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))


def save_lesion_previews(
    out_dir: Path, scan_id: str, image: Any, affine_ras: np.ndarray, detections: Sequence[Detection]
) -> list[str]:
    """Write ``out_dir/previews/<id>_lesion<k>.png`` for each detection (k from 1, by probability).

    Returns:
        Paths relative to ``out_dir``.
    """
    from medmtl.engine.predict_io import safe_name

    written: list[str] = []
    for k, det in enumerate(detections, start=1):
        rel = f"previews/{safe_name(scan_id)}_lesion{k}.png"
        title = (f"{scan_id} lesion {k}: p={det.probability:.2f}, d={det.diameter_mm:.1f} mm, "
                 f"malignancy={det.malignancy_prob:.2f}")
        render_lesion_preview(out_dir / rel, image, affine_ras, det, title=title[:110])
        written.append(rel)
    return written
