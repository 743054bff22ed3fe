"""The demo's summary figures: results bars with 95 % intervals, FROC of every condition,
training curves and the task-gradient cosine (matplotlib, ``Agg`` backend, written atomically)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.tables import METRICS, read_overall

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.demo_run import Condition

#: Bar colours of the results figure, one per condition (in condition order).
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def make_figures(out: Path, conditions: Sequence[Condition]) -> list[Path]:
    """Write the demo's summary figures into ``out/figures``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = [results_figure(out, conditions, fig_dir / "results.png"),
               froc_figure(out, conditions, fig_dir / "froc_all.png")]
    metrics_csv = out / "train" / "metrics.csv"
    if metrics_csv.is_file():
        path = training_figure(metrics_csv, fig_dir / "training.png")
        if path is not None:
            written.append(path)
    conflict_csv = out / "train" / "gradient_conflict.csv"
    if conflict_csv.is_file():
        path = gradient_conflict_figure(conflict_csv, fig_dir / "gradient_conflict.png")
        if path is not None:
            written.append(path)
    return written


def _bar_label(title: str) -> str:
    return title.replace(", ", "\n").replace(" + ", "\n+ ").replace(" (", "\n(")


def results_figure(out: Path, conditions: Sequence[Condition], dst: Path) -> Path:
    """One bar chart per metric of :data:`~pipelines.tables.METRICS`, with the 95 % intervals."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, (key, title, higher) in zip(axes, METRICS):
        vals, los, his, labels = [], [], [], []
        for cond in conditions:
            e = read_overall(out / "metrics" / cond.key / "metrics.json")[key]
            v = e["value"]
            vals.append(float("nan") if v is None else v)
            ci = e["ci95"] or [v, v]
            los.append(0.0 if v is None or ci[0] is None else max(v - ci[0], 0.0))
            his.append(0.0 if v is None or ci[1] is None else max(ci[1] - v, 0.0))
            labels.append(_bar_label(cond.title))
        ax.bar(range(len(vals)), vals, yerr=[los, his], capsize=3, color=list(COLOURS[: len(vals)]))
        for i, v in enumerate(vals):
            if v != v:  # NaN: the metric is undefined (e.g. no detected labelled lesion)
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    fig.tight_layout()
    return _save(fig, dst)


def froc_figure(out: Path, conditions: Sequence[Condition], dst: Path) -> Path:
    """The FROC curves of every condition (sensitivity against false positives per scan)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for cond in conditions:
        data = json.loads((out / "metrics" / cond.key / "metrics.json").read_text(encoding="utf-8"))
        curve = data.get("froc", {}).get("curve", {})
        fps, sens = curve.get("fps") or [], curve.get("sensitivity") or []
        if fps:
            ax.step(fps, sens, where="post", label=cond.title)
    ax.set_xscale("symlog", linthresh=0.125)
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, dst)


def training_figure(metrics_csv: Path, dst: Path) -> Path | None:
    """Training losses and validation metrics per epoch from a run's ``metrics.csv`` (None if empty)."""
    import matplotlib.pyplot as plt

    hist = _read_csv(metrics_csv)
    if not hist:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [_num(r.get("epoch")) for r in hist]
    for col in ("loss", "loss_det", "loss_size", "loss_malig"):
        ax1.plot(ep, [_num(r.get(col)) for r in hist], marker="o", label=col)
    ax1.set_xlabel("epoch")
    ax1.set_title("training losses")
    ax1.legend(fontsize=7)
    for col in ("cpm", "malignancy_auc"):
        pts = [(e, _num(r.get(col))) for e, r in zip(ep, hist) if r.get(col) not in (None, "")]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=col)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation scans (not the reported ones)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, dst)


def gradient_conflict_figure(conflict_csv: Path, dst: Path) -> Path | None:
    """Plot every ``cos_*`` column of a run's ``gradient_conflict.csv`` per epoch (None if none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_csv(conflict_csv)
    if not rows:
        return None
    cols = [c for c in rows[0] if c.startswith("cos")]
    if not cols:
        cols = [c for c in rows[0] if "cos" in c or "conflict" in c]
    if not cols:
        return None
    x = [_num(r.get("epoch", i)) for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for col in cols:
        ax.plot(x, [_num(r.get(col)) for r in rows], marker="o", label=col)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_title("task-gradient cosine on the shared encoder")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, dst)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


__all__ = ["froc_figure", "gradient_conflict_figure", "make_figures", "results_figure", "training_figure"]
