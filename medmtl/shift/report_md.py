"""``report.md``: the shift report as markdown, for a ticket, a wiki page or a terminal.

It opens with the same plain-language reading as ``report.html``
(:func:`medmtl.shift.reading.plain_reading`), then the verdict with its stated rule, the
decision tests, the descriptive fingerprint rows and the HU check; the figures stay in the
HTML page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medmtl.shift.html import _fmt  # one number format for both pages

_TITLES = {"no_shift": "No shift detected", "shift": "Shift detected that adaptation can address",
           "outside_domain": "Outside the training domain", "not_tested": "Not tested: fingerprint only"}


def _cell(v: Any) -> str:
    return (_fmt(v) if not isinstance(v, str) else v).replace("|", "\\|").replace("&gt;", ">").replace("&lt;", "<")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table of ``rows`` with ``(key, header)`` columns."""
    if not rows:
        return []
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return [*out, ""]


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render a :func:`medmtl.shift.report.run_diagnose` report dict as markdown."""
    v = report.get("verdict") or {}
    src, tgt = report.get("source") or {}, report.get("target") or {}
    lines = ["# Domain-shift report", "",
             f"source: `{src.get('path', '')}` ({src.get('n_scans')} scans, {src.get('kind', '')}) · target: "
             f"`{tgt.get('path', '')}` ({tgt.get('n_scans')} scans) · modality {report.get('modality')} · "
             f"medmtl {report.get('medmtl_version', '')}", "",
             f"**Reading.** {report.get('reading', '')}", "",
             f"## Verdict: {_TITLES.get(str(v.get('kind')), str(v.get('kind')))}", "", str(v.get("text", "")), ""]
    if v.get("rule"):
        lines += [f"Decision rule: {v['rule']}", ""]
    decision = [t for t in report.get("tests") or [] if not t.get("descriptive")]
    if decision:
        lines += ["## Decision: feature-level tests", ""]
        lines += md_table(decision, [("name", "test"), ("statistic", "statistic"), ("p_value", "p-value")])
    rows = report.get("fingerprint_table") or []
    if rows:
        lines += ["## Fingerprints (descriptive, not part of the decision)", ""]
        lines += md_table([dict(r, source=_mean_sd(r, "source"), target=_mean_sd(r, "target")) for r in rows], [
            ("label", "field"), ("source", "source mean ± SD"), ("target", "target mean ± SD"),
            ("g_text", "Hedges' g"), ("holm_p", "Holm-adjusted p"),
            ("n_target_outside_source_range", "target scans outside the source range")])
    hu = report.get("hu_calibration") or []
    if hu:
        lines += ["## HU calibration (CT)", ""]
        lines += md_table(hu, [("cohort", "cohort"), ("n_scans", "scans"), ("n_flagged", "miscalibrated (air/fat off)"),
                               ("n_contrast_enhanced", "contrast-enhanced"), ("median_offset_hu", "median offset (HU)"),
                               ("median_soft_tissue_hu", "median soft-tissue mode (HU)")])
    lines += ["The figures (example slices, histograms, embedding, BatchNorm shift) are in `report.html`.", ""]
    return "\n".join(lines)


def _mean_sd(row: Mapping[str, Any], side: str) -> str:
    mean, sd = row.get(f"{side}_mean"), row.get(f"{side}_sd")
    return _fmt(mean) if sd is None else f"{_fmt(mean)} ± {_fmt(sd)}"


__all__ = ["md_table", "render_markdown"]
