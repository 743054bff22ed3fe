"""Result tables of the pipelines: metrics read from ``metrics.json``, number formats, intervals.

Every number a pipeline prints or tabulates is read back from an evaluation's ``metrics.json``
(:func:`read_overall`), so the tables and the files cannot disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Metrics shown in every results table: (key in ``metrics.json["overall"]``, header, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("cpm", "CPM", True),
    ("diameter_mae_mm", "diameter MAE (mm)", False),
    ("malignancy_auc", "malignancy AUC", True),
)


@dataclass(frozen=True)
class Row:
    """One condition of a results table: its name and its ``metrics.json``."""

    condition: str
    metrics_path: Path


def read_overall(metrics_path: Path) -> dict[str, dict[str, Any]]:
    """``metrics.json["overall"]`` entries for :data:`METRICS`: ``{"value": float|None, "ci95": [lo, hi]|None}``."""
    data = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    overall = data.get("overall", {})
    out = {}
    for key, _, _ in METRICS:
        entry = overall.get(key) or {}
        out[key] = {"value": entry.get("value"), "ci95": entry.get("ci95")}
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """A metric for a table: ``n/a`` for missing / NaN, else fixed ``digits`` decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_ci(entry: Mapping[str, Any], digits: int = 3) -> str:
    """``value [lo, hi]`` (or just the value when there is no interval)."""
    v = fmt(entry.get("value"), digits)
    ci = entry.get("ci95")
    if v == "n/a" or not ci or ci[0] is None or ci[1] is None:
        return v
    return f"{v} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table (also what the pipelines print)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(rows: Sequence[Row], *, with_ci: bool = False, digits: int = 3) -> str:
    """The results table of several conditions, every number read from its ``metrics.json``."""
    header = ["condition", *(h for _, h, _ in METRICS)]
    body = []
    for row in rows:
        overall = read_overall(row.metrics_path)
        cells = [fmt_ci(overall[k], digits) if with_ci else fmt(overall[k]["value"], digits) for k, _, _ in METRICS]
        body.append([row.condition, *cells])
    return markdown_table(header, body)


def gap_closed(value: float | None, baseline: float | None, reference: float | None) -> float | None:
    """Share of the gap between ``baseline`` (no adaptation) and ``reference`` (in-domain) closed.

    ``(value - baseline) / (reference - baseline)``: 0 = no better than no adaptation,
    1 = as good as in-domain; negative when adaptation hurts. Works for lower-is-better
    metrics too (both differences flip sign). ``None`` when undefined (missing values or a
    gap below 1e-9).
    """
    if value is None or baseline is None or reference is None:
        return None
    gap = reference - baseline
    if abs(gap) < 1e-9:
        return None
    return (value - baseline) / gap


def bootstrap_mean_ci(
    values: Sequence[float | None], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float | None, tuple[float, float] | None]:
    """Mean of ``values`` (NaN/None dropped) and its percentile-bootstrap interval (``scipy.stats.bootstrap``).

    Returns:
        ``(mean, (lo, hi))``; the interval is ``None`` with fewer than two values, the mean
        ``None`` with none.
    """
    import numpy as np
    from scipy.stats import bootstrap

    arr = np.asarray([v for v in values if v is not None and not math.isnan(float(v))], dtype=float)
    if arr.size == 0:
        return None, None
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None
    res = bootstrap((arr,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                    rng=np.random.default_rng(seed))
    return mean, (float(res.confidence_interval.low), float(res.confidence_interval.high))


__all__ = [
    "METRICS",
    "Row",
    "bootstrap_mean_ci",
    "fmt",
    "fmt_ci",
    "gap_closed",
    "markdown_table",
    "read_overall",
    "results_table",
]
