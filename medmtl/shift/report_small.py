"""The fingerprint-only report: cohorts too small for the shift test still get described.

A single target scan (or cohorts at which no p-value could reach alpha,
:func:`medmtl.shift.verdict.check_resolvable`) cannot be tested for shift: no two-sample test
is run and the verdict says so plainly (``kind`` ``not_tested``). What can still be said is
descriptive — each fingerprint field of the target against the source's mean, SD and range,
the HU check, the example slices — and that is what this report holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmtl.shift.verdict import RULE_TEXT, outside_range

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.shift.report import _Sides


def _sentence(text: str) -> str:
    return text.strip().rstrip(".") + "."


def not_tested_verdict(refusal: str, rows: list[dict[str, Any]], ranges: list[dict[str, Any]],
                       n_target: int) -> dict[str, Any]:
    """The verdict of a fingerprint-only report: no shift test, why, and what the rows show."""
    reasons = [f"No shift test was run: {_sentence(refusal)}"]
    outside = [r for r in rows if r["n_target_outside_source_range"]]
    details = []
    if outside and n_target == 1:
        details.append(f"Descriptive only: the target scan lies outside the source's range in {len(outside)} of "
                       f"{len(rows)} fingerprint fields: " + "; ".join(r["label"] for r in outside) + ".")
    elif outside:
        details.append("Descriptive only: outside the source's range in " + "; ".join(
            f"{r['label']} ({r['n_target_outside_source_range']} of {n_target} target scans)" for r in outside) + ".")
    else:
        details.append("Descriptive only: every fingerprint field of the target lies within the source's range.")
    domain = [r for r in ranges if r["n_outside"]]
    if domain:
        details.append("The target's field of view or body content is beyond what the shift rule calls the "
                       "training domain's range (" + ", ".join(str(r["field"]) for r in domain) + ").")
    advice = "Add target scans to test for shift; until then read the rows below as a description, not a verdict."
    text = " ".join([*reasons, advice, *details])
    return {"kind": "not_tested", "shift": None, "p_value": None, "min_p": None, "reasons": reasons,
            "advice": advice, "details": details, "text": text, "rule": RULE_TEXT}


def fingerprint_only_report(sides: _Sides, source: Path, target: Path, n_permutations: int, seed: int,
                            refusal: str) -> dict[str, Any]:
    """The report of cohorts the shift test refuses: fingerprints and the HU check, no tests."""
    from medmtl.shift.descriptive import fingerprint_rows
    from medmtl.shift.fingerprint import cohort_summary, effect_sizes
    from medmtl.shift.report import _fingerprints, _header, _hu_rows

    tgt_fps, src_fps, hists = _fingerprints(sides)
    effects = effect_sizes(src_fps, tgt_fps)  # empty when a side has one scan
    rows = fingerprint_rows(src_fps, tgt_fps, effects, {}, sides.modality)
    ranges = outside_range(src_fps, tgt_fps)
    src_ids = [s.scan_id for s in sides.src_scans] if sides.ref is None else list(sides.ref.scan_ids)
    return {
        **_header(sides, source, target, n_permutations, seed, src_ids),
        "feature_extractor": None, "tests": [], "mmd": None, "classifier": None, "shift_test": None,
        "fingerprints": {"source": src_fps, "target": tgt_fps,
                         "source_summary": cohort_summary(src_fps), "target_summary": cohort_summary(tgt_fps)},
        "effect_sizes": effects, "fingerprint_table": rows,
        "fingerprint_p": {"n_rows": 0, "reason": "no two-sample test at these cohort sizes (see the verdict)."},
        "domain_ranges": ranges, "hu_calibration": _hu_rows({"source": src_fps, "target": tgt_fps}),
        "histograms": hists, "embedding": None, "bn_shift": None, "prediction_shift": [], "target_scores": [],
        "encoder_ranking": None,
        "notes": [f"Fingerprint-only report: {_sentence(refusal)}"],
        "verdict": not_tested_verdict(refusal, rows, ranges, len(tgt_fps)),
    }
