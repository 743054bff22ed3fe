"""Bootstrap confidence intervals and per-site breakdowns of the detection metrics.

Intervals resample **scans** (or patients, when a scan → patient map is given) with
replacement and recompute every metric on each replicate (Efron & Tibshirani, "An
Introduction to the Bootstrap", 1993; percentile intervals). Resampling whole scans keeps the
lesions and false positives of a scan together, so the FP rate and the sensitivity vary
jointly, as they do between cohorts.

Every metric carries ``n``, the number of lesions it is computed over, and no interval where
there is nothing to resample: with fewer than :data:`MIN_N_INTERVAL` lesions, or all of them in
one scan (or patient), the percentile interval would have zero width and claim a certainty the
data do not have, so ``ci95`` is ``None`` and ``ci_note`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medmtl.metrics import ScanMatch, lesion_level_arrays, summarize_matches

#: Fewest lesions (of the kind a metric counts) for which an interval is reported.
MIN_N_INTERVAL = 2
#: What the ``n`` of each metric counts, by metric name prefix.
N_UNITS = {"cpm": "lesions", "sens@": "lesions", "diameter_mae_mm": "detected lesions",
           "malignancy_auc": "detected lesions with a malignancy label",
           "malignancy_ece": "detected lesions with a malignancy label"}


def _unit(metric: str) -> str:
    return next((u for k, u in N_UNITS.items() if metric.startswith(k)), "lesions")


def metric_counts(matches: Sequence[ScanMatch], groups: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """What each headline metric is computed over.

    Returns:
        ``{metric: {"n": lesions counted, "n_unit": what they are, "n_groups": scans (or
        patients) holding them}}`` for the metrics of :func:`~medmtl.metrics.summarize_matches`.
    """
    arr = lesion_level_arrays(matches)
    owner = np.concatenate([np.full(m.true_diameter_mm.size, groups.get(m.scan_id, m.scan_id) if groups else m.scan_id,
                                    dtype=object) for m in matches]) if matches else np.zeros(0, dtype=object)
    sized = np.isfinite(arr["pred_diameter_mm"]) & np.isfinite(arr["true_diameter_mm"])
    labelled = np.isfinite(arr["malignancy_prob"]) & np.isfinite(arr["malignancy_label"])
    every = np.ones(owner.size, dtype=bool)
    sel = {"lesions": every, "detected lesions": sized, "detected lesions with a malignancy label": labelled}
    out: dict[str, dict[str, Any]] = {}
    for metric in summarize_matches(matches):
        unit = _unit(metric)
        mask = sel[unit]
        out[metric] = {"n": int(mask.sum()), "n_unit": unit, "n_groups": len(set(owner[mask].tolist()))}
    return out


def interval_note(n: int, n_groups: int) -> str | None:
    """Why no interval can be given for a metric over ``n`` lesions in ``n_groups`` scans (``None``: it can)."""
    if n < MIN_N_INTERVAL:
        return f"interval not estimable (n = {n})"
    if n_groups < 2:
        return f"interval not estimable (all n = {n} in one scan)"
    return None


def bootstrap_metrics(
    matches: Sequence[ScanMatch],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Point estimates and percentile bootstrap intervals of :func:`~medmtl.metrics.summarize_matches`.

    Args:
        matches: per-scan matches (:func:`medmtl.metrics.match_all`).
        n_bootstrap: replicates (0 gives point estimates without intervals).
        seed: random seed of the resampling.
        groups: scan id → patient id; patients are resampled with all their scans. Default:
            every scan is its own group.
        alpha: 1 − coverage (0.05 → 95% intervals).
        progress: a progress bar over the replicates (:func:`medmtl.progress.bar`).

    Returns:
        ``{metric: {"value": float | None, "ci95": [low, high] | None, "n_valid": int, "n": int,
        "n_unit": str, "n_groups": int, "ci_note": str | None}}`` where ``n_valid`` counts the
        replicates in which the metric was defined, ``n`` the lesions the metric is computed over
        (:func:`metric_counts`) and ``ci_note`` why ``ci95`` is ``None`` when it cannot be estimated.
    """
    point = summarize_matches(matches)
    counts = metric_counts(matches, groups)
    out: dict[str, dict[str, Any]] = {
        k: {"value": v, "ci95": None, "n_valid": 0, **counts[k],
            "ci_note": interval_note(counts[k]["n"], counts[k]["n_groups"])} for k, v in point.items()
    }
    if n_bootstrap <= 0 or not matches:
        return out
    by_group: dict[str, list[ScanMatch]] = {}
    for m in matches:
        by_group.setdefault(groups.get(m.scan_id, m.scan_id) if groups else m.scan_id, []).append(m)
    keys = sorted(by_group)
    # Not scipy.stats.bootstrap: a metric undefined in one replicate (AUC of a one-class draw) makes its whole interval NaN; here it drops out (n_valid).
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    from medmtl.progress import bar

    for _ in bar(range(n_bootstrap), desc="bootstrap", unit="replicate", enabled=progress, leave=False):
        pick = rng.integers(0, len(keys), size=len(keys))
        resampled = [m for g in pick for m in by_group[keys[int(g)]]]
        rep = summarize_matches(resampled)
        for k, v in rep.items():
            if v is not None and math.isfinite(v):
                samples[k].append(float(v))
    for k, vals in samples.items():
        if vals and out[k]["ci_note"] is None:
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
