"""Evaluation figures: FROC curve, Bland-Altman plot of diameters, reliability diagram.

Rendered with matplotlib's object API on a plain ``Figure`` (no pyplot state, no display) and
written atomically as PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medmtl.io.writers import atomic_save


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def froc_plot(
    path: Path, fps: ArrayLike, sensitivity: ArrayLike, fp_rates: Sequence[float],
    sensitivity_at: Sequence[float], *, cpm: float | None, ci: Sequence[float] | None = None,
) -> Path:
    """FROC curve (sensitivity vs average FP per scan, log x axis) with the LUNA16 points marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.subplots()
    x = np.asarray(fps, dtype=float)
    y = np.asarray(sensitivity, dtype=float)
    lo = min(fp_rates) / 2.0
    xs = np.clip(x, lo, None)
    ax.step(np.append(xs, max(max(fp_rates), xs.max() if xs.size else 0.0) * 1.5),
            np.append(y, y[-1] if y.size else 0.0), where="post", color="tab:blue", label="FROC")
    ax.plot(fp_rates, sensitivity_at, "o", color="tab:red", label="LUNA16 points")
    ax.set_xscale("log")
    ax.set_xlim(lo, max(fp_rates) * 1.5)
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(list(fp_rates))
    ax.set_xticklabels([f"{f:g}" for f in fp_rates])
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    title = "FROC" if cpm is None else f"FROC, CPM = {cpm:.3f}"
    if ci is not None:
        title += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


#: Fewest diameter pairs for which a Bland-Altman plot is drawn: with 1 or 2 the standard
#: deviation (and so the limits of agreement) is zero or rests on a single difference.
MIN_N_BLAND_ALTMAN = 3


def bland_altman_note(n: int) -> str | None:
    """Why no Bland-Altman plot is drawn for ``n`` diameter pairs (``None``: it is drawn)."""
    if n >= MIN_N_BLAND_ALTMAN:
        return None
    what = "no detected lesion with a diameter" if n == 0 else f"n = {n} detected lesion{'s' if n > 1 else ''}"
    return (f"Bland-Altman plot not drawn: {what}; limits of agreement need at least "
            f"{MIN_N_BLAND_ALTMAN} diameter pairs.")


def bland_altman_plot(path: Path, pred_mm: ArrayLike, true_mm: ArrayLike,
                      stats: Mapping[str, Any]) -> Path:
    """Write :func:`bland_altman_figure` as a PNG."""
    fig = bland_altman_figure(pred_mm, true_mm, stats)
    if not fig.axes:  # the note alone
        return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return _save(fig, path)


def bland_altman_figure(pred_mm: ArrayLike, true_mm: ArrayLike, stats: Mapping[str, Any]) -> Any:
    """Bland-Altman plot: difference (pred − true, mm) vs mean of the two diameters (mm); with
    fewer than :data:`MIN_N_BLAND_ALTMAN` pairs, a figure without axes holding the note saying why not."""
    from matplotlib.figure import Figure

    p = np.asarray(pred_mm, dtype=float)
    t = np.asarray(true_mm, dtype=float)
    ok = np.isfinite(p) & np.isfinite(t)
    note = bland_altman_note(int(ok.sum()))
    if note is not None:
        fig = Figure(figsize=(5.0, 1.6))
        fig.text(0.5, 0.5, note.replace("; ", ";\n"), ha="center", va="center", fontsize=9)
        return fig
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.subplots()
    ax.scatter((p[ok] + t[ok]) / 2.0, p[ok] - t[ok], s=14, alpha=0.7)
    for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
        if stats.get(key) is not None:
            ax.axhline(stats[key], color="tab:red", ls=style, lw=1)
    ax.set_title(f"diameter: bias {stats['bias']:.2f} mm, 95% LoA "
                 f"[{stats['loa_low']:.2f}, {stats['loa_high']:.2f}] (n = {stats['n']})", fontsize=9)
    ax.set_xlabel("mean of predicted and annotated diameter (mm)")
    ax.set_ylabel("predicted − annotated (mm)")
    ax.grid(True, alpha=0.3)
    return fig


def reliability_plot(path: Path, bins: Mapping[str, Sequence[float]], *, ece: float | None) -> Path:
    """Write :func:`reliability_figure` as a PNG."""
    return _save(reliability_figure(bins, ece=ece), path)


def reliability_figure(bins: Mapping[str, Sequence[float]], *, ece: float | None) -> Any:
    """Reliability diagram: observed malignancy rate vs mean predicted probability per bin, the
    number of lesions of each bin written above its bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    edges = np.asarray(bins["edges"], dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2.0
    acc = np.asarray(bins["accuracy"], dtype=float)
    cnt = np.asarray(bins["count"], dtype=float)
    ok = cnt > 0
    ax.bar(centres[ok], acc[ok], width=np.diff(edges)[ok] * 0.9, alpha=0.7, label="observed rate")
    for x, y, n in zip(centres[ok], acc[ok], cnt[ok]):
        ax.text(x, min(y, 0.9) + 0.02, f"n={int(n)}", ha="center", va="bottom", fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predicted malignancy probability")
    ax.set_ylabel("fraction malignant")
    total = int(cnt.sum())
    ax.set_title("reliability" + ("" if ece is None else f", ECE = {ece:.3f}") + f" (n = {total} lesions)",
                 fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig
