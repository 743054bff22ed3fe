"""The plain-language reading at the top of a shift report: one paragraph a radiologist reads first.

It says, from the report's own numbers (the verdict record, the fingerprint table and the HU
check; nothing is hard-coded), whether the target is shifted, in which measurements (human
names with units), by how much, and what to do:

* ``no_shift`` — "the model can be used as validated";
* ``shift`` — "shift that adaptation can address: try <one method>", the method chosen from
  what differs (:func:`recommend_method`);
* ``outside_domain`` — "outside the training domain: do not adapt, retrain or fine-tune with
  labels";
* ``not_tested`` — too few scans for the test: what the fingerprints show, descriptively.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Fingerprint rows named in the reading (the largest effects first).
MAX_NAMED = 3
_ACQUISITION = ("spacing", "slice_thickness", "noise")
_LABEL = re.compile(r"^(?P<name>.*?)\s*\((?P<unit>[^()]*)\)$")


def _name_unit(label: str) -> tuple[str, str]:
    """``"noise SD in homogeneous tissue (HU)"`` → ``("noise SD in homogeneous tissue", "HU")``;
    a range such as ``(0–1)`` is no unit."""
    m = _LABEL.match(label)
    if not m:
        return label, ""
    unit = m["unit"]
    return m["name"], "" if any(c.isdigit() for c in unit) else unit


def _value(v: float, unit: str) -> str:
    text = f"{v:.3g}".replace("-", "−")
    return f"{text} {unit}" if unit else text


def difference_phrase(row: Mapping[str, Any]) -> str:
    """One fingerprint row in words: ``"slice spacing 1.25 mm → 5 mm (g > 10)"``."""
    name, unit = _name_unit(str(row.get("label") or row["field"]))
    g = str(row.get("g_text") or "")
    how = f" (Hedges' g {g})" if g[:1] in "<>" else (f" (Hedges' g = {g})" if g and g != "–" and g[:1] != "c" else
                                                    (" (constant in each cohort)" if g[:1] == "c" else ""))
    return f"{name} {_value(float(row['source_mean']), unit)} → {_value(float(row['target_mean']), unit)}{how}"


def largest_differences(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The fingerprint rows to name: large effects (|g| ≥ 0.8), else rows where the target lies
    outside the source's range; ordered by |g| (read up to 10, where the display caps it), then
    by the relative change of the mean; at most :data:`MAX_NAMED`. A slice thickness that is only
    the slice spacing again is not named twice."""
    def key(r: Mapping[str, Any]) -> tuple[float, float]:
        g = r.get("hedges_g")
        s, t = float(r["source_mean"]), float(r["target_mean"])
        rel = abs(t - s) / max(abs(s), 1e-9)
        return (-min(abs(float(g)), 10.0) if isinstance(g, (int, float)) else 0.0, -rel)

    by_field = {r["field"]: r for r in rows}
    k = by_field.get("spacing_k")
    big = [r for r in rows if r.get("large")] or [r for r in rows if r.get("n_target_outside_source_range")]
    big = [r for r in big if not (r["field"] == "slice_thickness" and k is not None and k.get("large")
                                  and (r["source_mean"], r["target_mean"]) == (k["source_mean"], k["target_mean"]))]
    return sorted(big, key=key)[:MAX_NAMED]


def _and(items: Sequence[str]) -> str:
    """``["a", "b", "c"]`` → ``"a; b and c"`` (names that hold commas themselves stay readable)."""
    return items[0] if len(items) == 1 else "; ".join(items[:-1]) + " and " + items[-1] if items else ""


def _target_hu(report: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((h for h in report.get("hu_calibration") or [] if h.get("cohort") == "target"), {})


def _majority(count: Any, n: Any) -> bool:
    return bool(count) and bool(n) and 2 * int(count) >= int(n)


def recommend_method(report: Mapping[str, Any]) -> tuple[str, str]:
    """``(method, why)``: the one ``medmtl adapt`` method the reading suggests for an adaptable shift.

    A coarser or noisier target acquisition → ``resim`` (source scans re-simulated at it);
    intensities that differ (an HU miscalibration, or large percentile differences without
    contrast enhancement) → ``histmatch``; otherwise, including a contrast-enhanced target that
    no intensity mapping can make unenhanced, → ``adabn`` (the network's BatchNorm statistics
    re-estimated on the target).
    """
    rows = [r for r in report.get("fingerprint_table") or [] if r.get("large")]
    coarser = [r for r in rows if str(r["field"]).startswith(_ACQUISITION) and r["target_mean"] > r["source_mean"]]
    hu = _target_hu(report)
    if coarser:
        named = _and([_name_unit(str(r["label"]))[0] for r in coarser if r["field"] != "slice_thickness"])
        return "resim", (f"the target acquisition is coarser or noisier in {named or 'slice thickness'}, and resim "
                         "fine-tunes on the labelled source scans re-simulated at it")
    if _majority(hu.get("n_contrast_enhanced"), hu.get("n_scans")):
        return "adabn", ("the target is contrast-enhanced, which no intensity mapping undoes; re-estimating the "
                         "BatchNorm statistics on the target is the label-free option")
    if _majority(hu.get("n_flagged"), hu.get("n_scans")) or any(str(r["field"]).startswith("p") for r in rows):
        return "histmatch", "the target's intensities differ from the source's"
    return "adabn", "the difference is in the encoder's features rather than in one measurement"


def _hu_clause(report: Mapping[str, Any]) -> str:
    hu = _target_hu(report)
    if not hu:
        return ""
    n = hu.get("n_scans")
    if hu.get("n_flagged"):
        off = hu.get("median_offset_hu")
        by = f" by {off:+.0f} HU".replace("-", "−") if isinstance(off, (int, float)) else ""
        return (f" {hu['n_flagged']} of {n} target scans look HU-miscalibrated: air and fat are shifted{by} "
                "with the rest of the scale.")
    if hu.get("n_contrast_enhanced"):
        soft = hu.get("median_soft_tissue_hu")
        at = f" (soft tissue around {soft:.0f} HU)" if isinstance(soft, (int, float)) else ""
        return (f" {hu['n_contrast_enhanced']} of {n} target scans are contrast-enhanced{at}: air and fat are at "
                "their usual values, so this is enhancement, not an HU miscalibration.")
    return ""


def _differences_clause(report: Mapping[str, Any], lead: str) -> str:
    named = largest_differences(report.get("fingerprint_table") or [])
    if not named:
        return ""
    return f" {lead} " + "; ".join(difference_phrase(r) for r in named) + "."


def _p_clause(verdict: Mapping[str, Any], alpha: Any) -> str:
    p = verdict.get("p_value")
    if not isinstance(p, (int, float)):
        return ""
    return f" (combined feature-test p = {p:.3g} {'≤' if p <= float(alpha) else '>'} α = {alpha})"


def _cohorts(report: Mapping[str, Any]) -> str:
    n_s = (report.get("source") or {}).get("n_scans")
    n_t = (report.get("target") or {}).get("n_scans")
    mod_s = report.get("source_modality", report.get("modality"))
    return f"the {n_t} target {report.get('modality')} scans and the {n_s} source {mod_s} scans"


def plain_reading(report: Mapping[str, Any]) -> str:
    """The report's one-paragraph reading (see the module docstring), from its own numbers."""
    v = report.get("verdict") or {}
    kind, alpha = str(v.get("kind")), report.get("alpha", 0.05)
    who, p = _cohorts(report), _p_clause(v, alpha)
    if kind == "no_shift":
        return (f"No shift: {who} look alike to the model's encoder{p}."
                + _differences_clause(report, "Descriptive differences that did not add up to a shift:")
                + _hu_clause(report) + " The model can be used as validated.")
    if kind == "shift":
        method, why = recommend_method(report)
        return (f"Shift that adaptation can address: {who} differ{p}, with the same modality and a field of view "
                "inside the source's range." + _differences_clause(report, "Mostly in")
                + _hu_clause(report) + f" Try `medmtl adapt --method {method}`: {why}. Then run diagnose again "
                "on the adapted model.")
    if kind == "outside_domain":
        why = (f"the target is {report.get('modality')}, the model was trained on {report.get('source_modality')}"
               if report.get("source_modality", report.get("modality")) != report.get("modality")
               else "the domain classifier separates the cohorts completely and the target's field of view or body "
                    "content lies beyond the source's range")
        return (f"Outside the training domain: {who} differ beyond what adaptation can bridge — {why}{p}."
                + _differences_clause(report, "The largest differences:") + _hu_clause(report)
                + " Do not adapt; retrain or fine-tune the model with labelled scans of this domain.")
    reasons = " ".join(str(r) for r in v.get("reasons") or [])
    return (f"Not tested: {reasons or 'no shift test could run at these cohort sizes.'}"
            + _differences_clause(report, "Descriptively, the target differs most in")
            + _hu_clause(report) + " Add target scans and run diagnose again before relying on the model here.")


__all__ = ["MAX_NAMED", "difference_phrase", "largest_differences", "plain_reading", "recommend_method"]
