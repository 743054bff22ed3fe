"""Figures of the shift report, each an ``<img>`` with a ``data:`` URI and a real ``alt`` text.

Every figure is a matplotlib PNG embedded as ``data:image/png;base64`` (the page opens with no
network access); its ``alt`` says what the figure shows, for a reader who cannot see it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.io.types import Scan

COLOURS = {"source": "#1f77b4", "target": "#d62728"}


def png(fig: Any, alt: str) -> str:
    """Encode a matplotlib figure as an ``<img>`` with a base64 data URI and ``alt`` text."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


def _figure(width: float = 6.0, height: float = 3.4, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def histogram_figure(hists: Mapping[str, Mapping[str, Sequence[float]]], unit: str) -> str:
    """Body-intensity histograms per cohort (step lines)."""
    fig, ax = _figure()
    for name, h in hists.items():
        edges = np.asarray(h["edges"])
        ax.step(edges[:-1], h["density"], where="post", label=name, color=COLOURS.get(name))
    ax.set_xlabel(f"intensity inside the body ({unit})")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Intensity histograms per cohort")
    return png(fig, f"Histograms of the intensities inside the body ({unit}), the source cohort in blue and the "
                    "target cohort in red.")


def spacing_figure(cohorts: Mapping[str, Sequence[Mapping[str, Any]]], slice_label: str) -> str:
    """In-plane spacing vs slice thickness (or spacing), one point per scan."""
    fig, ax = _figure(5.0, 3.6)
    for name, fps in cohorts.items():
        xs = [0.5 * (fp["spacing_i"] + fp["spacing_j"]) for fp in fps]
        ys = [fp["slice_thickness"] for fp in fps]
        ax.scatter(xs, ys, label=name, alpha=0.7, color=COLOURS.get(name))
    ax.set_xlabel("in-plane spacing (mm)")
    ax.set_ylabel(slice_label)
    ax.legend()
    ax.set_title("Spacing per scan")
    return png(fig, f"Scatter plot, one point per scan, of the in-plane spacing (mm) against the {slice_label}; "
                    "source scans in blue, target scans in red.")


def embedding_figure(points: Sequence[Sequence[float]], cohorts: Sequence[str], method: str,
                     axes: Sequence[str]) -> str:
    """2D embedding of pooled encoder features, coloured by cohort, axes named."""
    fig, ax = _figure(5.0, 4.0)
    pts = np.asarray(points, dtype=np.float64)
    labels = np.asarray(cohorts)
    for name in ("source", "target"):
        sel = labels == name
        if sel.any():
            ax.scatter(pts[sel, 0], pts[sel, 1], label=name, alpha=0.75, color=COLOURS[name])
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"Encoder features, {method} embedding")
    ax.legend()
    return png(fig, f"{method} of the pooled encoder features, one point per scan ({len(pts)} scans), "
                    f"{axes[0]} horizontally and {axes[1]} vertically; source in blue, target in red. "
                    "Separate clouds mean the encoder sees the cohorts differently.")


def bn_figure(rows: Sequence[Mapping[str, Any]], ref_rows: Sequence[Mapping[str, Any]] | None) -> str:
    """Per-layer BN shift (symmetric KL, log scale) of the target (and source) cohort."""
    fig, ax = _figure(8.0, 3.4)
    x = np.arange(len(rows))
    ax.bar(x, [max(r["sym_kl"], 1e-6) for r in rows], color=COLOURS["target"], label="target vs running stats")
    if ref_rows:
        ax.plot(x[: len(ref_rows)], [max(r["sym_kl"], 1e-6) for r in ref_rows], "o-", ms=3,
                color=COLOURS["source"], label="source vs running stats")
    ax.set_yscale("log")
    ax.set_xlabel("BatchNorm layer (network order)")
    ax.set_ylabel("mean symmetric KL")
    ax.legend()
    ax.set_title("BatchNorm statistics shift per layer")
    both = " (red bars) and of the source cohort (blue line)" if ref_rows else " (red bars)"
    return png(fig, f"Bar chart, log scale, of the mean symmetric KL divergence between each of the {len(rows)} "
                    f"BatchNorm layers' stored running statistics and the statistics of the target cohort{both}.")


def example_slices_figure(examples: Sequence[tuple[str, Scan]]) -> str:
    """One axial slice (the middle one) of one scan of each cohort, side by side, at one window
    for CT (each scan's own percentile window for MR), radiological orientation, 10 mm bar."""
    from medmtl.io.display import display_window, draw_plane, ras_display, shorten

    fig, axes = _figure(3.6 * len(examples), 3.9, ncols=len(examples))
    axes = np.atleast_1d(axes)
    windows = []
    for ax, (cohort, scan) in zip(axes, examples):
        vol = ras_display(scan.image, scan.image.affine)
        window = display_window(scan.modality, vol.array)
        k = vol.array.shape[2] // 2
        draw_plane(ax, vol, "axial", k, window)
        axis = "ijk"[vol.source_axis[2]]
        ax.set_title(f"{cohort}: {shorten(scan.scan_id, 28)}\naxial, slice {axis} = {vol.source_index(2, k)}",
                     fontsize=8, color=COLOURS.get(cohort, "black"))
        windows.append(window.text)
    same = len(set(windows)) == 1
    fig.suptitle(windows[0] if same else "each scan at its own window (MR intensities have no absolute scale)",
                 fontsize=8)
    names = " and ".join(f"{c} scan {s.scan_id}" for c, s in examples)
    return png(fig, f"Middle axial slice of the {names}, side by side, "
                    f"{windows[0] if same else 'each at its own 1st to 99.5th percentile window'}; the patient's "
                    "right is on the image left, a 10 mm scale bar in the lower right corner.")


__all__ = ["COLOURS", "bn_figure", "embedding_figure", "example_slices_figure", "histogram_figure", "png",
           "spacing_figure"]
