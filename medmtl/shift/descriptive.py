"""The descriptive rows of a shift report: fingerprint and prediction differences, read honestly.

These rows say *how* two cohorts differ (spacing, noise, intensity percentiles, prediction
summaries); the verdict does not use them (:mod:`medmtl.shift.verdict` decides on the
feature-level tests alone). When p-values are shown beside them they are

* **permutation p-values on the same relabellings as the feature test**
  (:func:`medmtl.shift.verdict.label_sets`), so none is below the smallest p-value those
  relabellings can give — a two-sided rank-sum (Mann-Whitney) statistic for fingerprint
  fields, the Kolmogorov-Smirnov distance for prediction summaries;
* **Holm-adjusted** within each family of rows (Holm, "A simple sequentially rejective
  multiple test procedure", Scand. J. Statist. 1979), since they are read together.

Hedges' g above :data:`G_DISPLAY_MAX` in magnitude is shown as "> 10": the cohorts then hardly
overlap, and with a few scans per side the exact value means nothing more (a constant cohort
makes it infinite; :func:`medmtl.shift.fingerprint.hedges_g` caps it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from medmtl.shift.fingerprint import NUMERIC_FIELDS, field_label

#: |Hedges' g| above this is shown as "> 10" (see the module docstring).
G_DISPLAY_MAX = 10.0
_EPS = 1e-12


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given; each at most 1)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def rank_sum_stats(values: Sequence[float], labels: NDArray[np.bool_]) -> NDArray[np.float64]:
    """|rank sum of the target − its expectation| for every relabelling (``labels`` ``(L, N)``, True = target)."""
    ranks = stats.rankdata(np.asarray(values, dtype=np.float64))
    n_t = labels[0].sum()
    expected = n_t * (len(ranks) + 1) / 2.0
    return np.abs(labels.astype(np.float64) @ ranks - expected)


def ks_stats(values: Sequence[float], labels: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Two-sample Kolmogorov-Smirnov distance for every relabelling (``labels`` ``(L, N)``)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    lab = labels[:, order].astype(np.float64)
    n_t = lab[0].sum()
    n_s = lab.shape[1] - n_t
    last_of_tie = np.r_[np.diff(v[order]) > 0, True]  # ECDFs are compared after each distinct value
    cum_t = np.cumsum(lab, axis=1)[:, last_of_tie] / n_t
    cum_s = np.cumsum(1.0 - lab, axis=1)[:, last_of_tie] / n_s
    return np.abs(cum_t - cum_s).max(axis=1)


def permutation_p(statistics: NDArray[np.float64]) -> float:
    """Share of relabellings whose statistic is at least the observed one (the first)."""
    return float((statistics >= statistics[0] - _EPS).mean())


def family_p_values(source: Sequence[Mapping[str, Any]], target: Sequence[Mapping[str, Any]],
                    fields: Sequence[str], labels: NDArray[np.bool_], statistic: str) -> dict[str, dict[str, float]]:
    """Permutation and Holm-adjusted p-values of each field of a family of descriptive rows.

    Args:
        source, target: per-scan dicts (fingerprints or prediction summaries), in the order of
            the pooled sample of ``labels`` (source first).
        fields: the fields of the family.
        labels: ``(L, n_source + n_target)`` relabellings, the observed one first.
        statistic: ``"rank_sum"`` or ``"ks"``.

    Returns:
        ``{field: {"permutation_p", "holm_p"}}`` for the fields measured on every scan.
    """
    fn = rank_sum_stats if statistic == "rank_sum" else ks_stats
    pooled = [*source, *target]
    raw: dict[str, float] = {}
    for name in fields:
        vals = [r.get(name) for r in pooled]
        if not all(isinstance(x, (int, float)) and math.isfinite(float(x)) for x in vals):
            continue
        raw[name] = permutation_p(fn([float(x) for x in vals], labels))  # type: ignore[arg-type]
    adjusted = holm(list(raw.values()))
    return {k: {"permutation_p": p, "holm_p": a} for (k, p), a in zip(raw.items(), adjusted)}


def g_text(g: float | None, source_sd: float | None = None, target_sd: float | None = None) -> str:
    """Hedges' g as read: ``"1.85"``, ``"> 10"`` / ``"< −10"``, ``"constant in each cohort"``."""
    if g is None or not math.isfinite(g):
        return "–"
    if abs(g) > G_DISPLAY_MAX:
        if (source_sd is not None and target_sd is not None and source_sd < _EPS and target_sd < _EPS):
            return "constant in each cohort"
        return f"> {G_DISPLAY_MAX:g}" if g > 0 else f"< −{G_DISPLAY_MAX:g}"
    return f"{g:.2f}"


def slice_label(fingerprints: Sequence[Mapping[str, Any]]) -> str:
    """Name of the ``slice_thickness`` field for a set of scans: the DICOM SliceThickness tag
    (0018,0050) where every scan carries it, else the spacing between slices."""
    kinds = {fp.get("slice_thickness_source", "spacing") for fp in fingerprints}
    if kinds == {"dicom"}:
        return "slice thickness, DICOM tag (mm)"
    if "dicom" in kinds:
        return "slice thickness (DICOM tag) or spacing (mm)"
    return "slice spacing (mm)"


def fingerprint_rows(source: Sequence[Mapping[str, Any]], target: Sequence[Mapping[str, Any]],
                     effects: Sequence[Mapping[str, Any]], p_values: Mapping[str, Mapping[str, float]],
                     modality: str) -> list[dict[str, Any]]:
    """The report's fingerprint table: one row per numeric field with its human name and unit,
    each cohort's mean, SD and range, Hedges' g as read, the Holm-adjusted p and how many target
    scans lie outside the source's range (all descriptive)."""
    by_field = {str(e["field"]): e for e in effects}
    rows = []
    for name in NUMERIC_FIELDS:
        a = _finite(source, name)
        b = _finite(target, name)
        if not a.size or not b.size:
            continue
        e = by_field.get(name, {})
        sd_a = float(a.std(ddof=1)) if a.size > 1 else None
        sd_b = float(b.std(ddof=1)) if b.size > 1 else None
        label = slice_label([*source, *target]) if name == "slice_thickness" else field_label(name, modality)
        rows.append({
            "field": name, "label": label,
            "source_mean": float(a.mean()), "source_sd": sd_a, "source_min": float(a.min()), "source_max": float(a.max()),
            "target_mean": float(b.mean()), "target_sd": sd_b,
            "hedges_g": e.get("hedges_g"), "g_text": g_text(e.get("hedges_g"), sd_a, sd_b) if e else "–",
            "large": e.get("large"), "holm_p": (p_values.get(name) or {}).get("holm_p"),
            "n_target_outside_source_range": int(((b < a.min()) | (b > a.max())).sum()),
        })
    return rows


def describe_fingerprints(src_fps: list[dict[str, Any]], tgt_fps: list[dict[str, Any]], modality: str, n_permutations: int,
              seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """``(effects, fingerprint table, p-value note)``: the descriptive fingerprint rows, with
    Holm-adjusted permutation p-values on the feature test's relabellings where both cohorts
    can be tested."""
    from medmtl.shift.fingerprint import effect_sizes
    from medmtl.shift.verdict import label_sets, smallest_p

    effects = effect_sizes(src_fps, tgt_fps)
    p_values: dict[str, dict[str, float]] = {}
    note: dict[str, Any] = {"n_rows": 0, "smallest_p": None}
    if min(len(src_fps), len(tgt_fps)) >= 2:
        labels, _ = label_sets(len(src_fps), len(tgt_fps), n_permutations, seed)
        p_values = family_p_values(src_fps, tgt_fps, NUMERIC_FIELDS, labels, "rank_sum")
        note = {"n_rows": len(p_values), "smallest_p": smallest_p(len(src_fps), len(tgt_fps), n_permutations),
                "method": "two-sided rank-sum permutation test on the feature test's relabellings, Holm-adjusted"}
    rows = fingerprint_rows(src_fps, tgt_fps, effects, p_values, modality)
    by_field = {r["field"]: r for r in rows}
    for e in effects:
        r = by_field.get(e["field"], {})
        e.update(label=r.get("label"), source_sd=r.get("source_sd"), target_sd=r.get("target_sd"),
                 holm_p=r.get("holm_p"), permutation_p=(p_values.get(e["field"]) or {}).get("permutation_p"))
    return effects, rows, note


def prediction_rows(pred_s: Any, pred_t: Any, n_permutations: int, seed: int) -> list[dict[str, Any]]:
    """Prediction-shift rows (KS distance per output summary), with Holm-adjusted KS permutation p."""
    from medmtl.shift import bn_shift as bns
    from medmtl.shift.verdict import label_sets

    if not pred_s or not pred_t:
        return []
    rows = bns.prediction_shift(pred_s, pred_t)
    labels, _ = label_sets(len(pred_s), len(pred_t), n_permutations, seed)
    p = family_p_values(pred_s, pred_t, [r["field"] for r in rows], labels, "ks")
    for r in rows:
        r["scipy_p"] = r.pop("p_value")
        r["permutation_p"] = (p.get(r["field"]) or {}).get("permutation_p")
        r["holm_p"] = (p.get(r["field"]) or {}).get("holm_p")
    return rows


def _finite(fps: Sequence[Mapping[str, Any]], name: str) -> NDArray[np.float64]:
    vals = [float(fp[name]) for fp in fps if isinstance(fp.get(name), (int, float))]
    arr = np.asarray(vals, dtype=np.float64)
    return arr[np.isfinite(arr)]


__all__ = ["G_DISPLAY_MAX", "describe_fingerprints", "family_p_values", "fingerprint_rows", "g_text", "holm", "ks_stats",
           "permutation_p", "prediction_rows", "rank_sum_stats", "slice_label"]
