"""Bootstrap confidence intervals and per-site breakdowns of the detection metrics.

Intervals resample **scans** (or patients, when a scan → patient map is given) with
replacement and recompute every metric on each replicate (Efron & Tibshirani, "An
Introduction to the Bootstrap", 1993; percentile intervals). Resampling whole scans keeps the
lesions and false positives of a scan together, so the FP rate and the sensitivity vary
jointly, as they do between cohorts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medmtl.metrics import ScanMatch, summarize_matches


def bootstrap_metrics(
    matches: Sequence[ScanMatch],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Point estimates and percentile bootstrap intervals of :func:`~medmtl.metrics.summarize_matches`.

    Args:
        matches: per-scan matches (:func:`medmtl.metrics.match_all`).
        n_bootstrap: replicates (0 gives point estimates without intervals).
        seed: random seed of the resampling.
        groups: scan id → patient id; patients are resampled with all their scans. Default:
            every scan is its own group.
        alpha: 1 − coverage (0.05 → 95% intervals).

    Returns:
        ``{metric: {"value": float | None, "ci95": [low, high] | None, "n_valid": int}}`` where
        ``n_valid`` counts the replicates in which the metric was defined.
    """
    point = summarize_matches(matches)
    out: dict[str, dict[str, Any]] = {
        k: {"value": v, "ci95": None, "n_valid": 0} for k, v in point.items()
    }
    if n_bootstrap <= 0 or not matches:
        return out
    by_group: dict[str, list[ScanMatch]] = {}
    for m in matches:
        by_group.setdefault(groups.get(m.scan_id, m.scan_id) if groups else m.scan_id, []).append(m)
    keys = sorted(by_group)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(keys), size=len(keys))
        resampled = [m for g in pick for m in by_group[keys[int(g)]]]
        rep = summarize_matches(resampled)
        for k, v in rep.items():
            if v is not None and math.isfinite(v):
                samples[k].append(float(v))
    for k, vals in samples.items():
        if vals:
            lo, hi = np.quantile(vals, [alpha / 2.0, 1.0 - alpha / 2.0])
            out[k]["ci95"] = [float(lo), float(hi)]
        out[k]["n_valid"] = len(vals)
    return out


def per_site_metrics(
    matches: Sequence[ScanMatch], scan_site: Mapping[str, str], *, unknown: str = "unknown"
) -> dict[str, dict[str, Any]]:
    """Headline metrics per acquisition site.

    Args:
        matches: per-scan matches.
        scan_site: scan id → site name (from the annotations' ``site`` column); scans not in it
            go to ``unknown``.
        unknown: name of the bucket of scans without a site.

    Returns:
        ``{site: {"n_scans", "n_lesions", "cpm", "sens@…", "diameter_mae_mm",
        "malignancy_auc", "malignancy_ece"}}``, sorted by site.
    """
    by_site: dict[str, list[ScanMatch]] = {}
    for m in matches:
        by_site.setdefault(scan_site.get(m.scan_id, unknown), []).append(m)
    out: dict[str, dict[str, Any]] = {}
    for site in sorted(by_site):
        ms = by_site[site]
        row: dict[str, Any] = {
            "n_scans": len(ms),
            "n_lesions": int(sum(m.lesion_scores.size for m in ms)),
        }
        row.update(summarize_matches(ms))
        out[site] = row
    return out
