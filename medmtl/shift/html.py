"""Self-contained HTML rendering of a shift report.

Every figure is a PNG embedded as a ``data:image/png;base64`` URI with a real ``alt`` text
(:mod:`medmtl.shift.report_figures`) and the CSS is inline, so the page opens with no network
access: no external URLs, scripts or fonts. Text written with markdown code spans (`` `…` ``)
is rendered as ``<code>``; fingerprint and prediction rows are labelled descriptive, with
Holm-adjusted permutation p-values (:mod:`medmtl.shift.descriptive`), never coloured as
decisions.

Not a Jinja2 template: every value already goes through one of three escaping helpers
(:func:`inline`, ``_fmt``, :func:`table`) and most sections are computed sentences and tables,
so a template would need the same helpers as filters plus ``Markup`` for the figures and code
spans — no shorter, and one more dependency and package-data file.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.verdict{padding:.8em 1em;border-radius:6px;font-size:1.05em}
.shift{background:#fdecea;border:1px solid #f5c2c0}.noshift{background:#e8f5e9;border:1px solid #b9dfbb}
.outside{background:#fff3e0;border:1px solid #f0b070}.untested{background:#eef2f7;border:1px solid #b8c4d6}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.95em}
.sig{font-weight:bold;color:#b00020}img{max-width:100%;margin:.4em 0}.muted{color:#777;font-size:.9em}
.reading{font-size:.95em;margin:.2em 0 1em 0}.summary{font-size:1.1em;line-height:1.45;margin:.8em 0}
"""

_CODE = re.compile(r"`([^`]+)`")


def inline(text: Any) -> str:
    """Escape ``text`` for HTML and render its markdown code spans as ``<code>``."""
    return _CODE.sub(r"<code>\1</code>", html.escape(str(text)))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "–"
        return f"{f:.2e}" if (f != 0 and abs(f) < 1e-3) else f"{f:.{digits}g}"
    return html.escape(str(v))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], *,
          alpha: float | None = None, red: Sequence[str] = ("p_value",)) -> str:
    """An HTML table of ``rows`` with ``(key, header)`` columns; with ``alpha``, values of the
    ``red`` columns (decision p-values) at most alpha in bold red."""
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{html.escape(h)}</th>' for i, (_, h) in enumerate(columns))
    body = []
    for r in rows:
        cells = []
        for i, (k, _) in enumerate(columns):
            v = r.get(k)
            cls = "l" if i == 0 else ""
            if alpha is not None and k in red and isinstance(v, (int, float)) and v <= alpha:
                cls += " sig"
            cells.append(f'<td class="{cls.strip()}">{_fmt(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_VERDICT_TITLES = {"no_shift": ("noshift", "No shift detected"),
                   "shift": ("shift", "Shift detected that adaptation can address"),
                   "outside_domain": ("outside", "Outside the training domain"),
                   "not_tested": ("untested", "Not tested: fingerprint only")}


def _verdict_block(verdict: Mapping[str, Any]) -> str:
    """The verdict banner: its kind, the plain-language text and the stated rule."""
    cls, title = _VERDICT_TITLES.get(str(verdict.get("kind")), ("shift" if verdict.get("shift") else "noshift",
                                                                 "Shift detected" if verdict.get("shift") else "No shift"))
    body = inline(" ".join([*verdict.get("reasons", []), verdict.get("advice", ""), *verdict.get("details", [])])
                  or str(verdict.get("text", "")))
    rule = f"<p class='muted'>Decision rule: {inline(verdict['rule'])}</p>" if verdict.get("rule") else ""
    return f"<div class='verdict {cls}'><b>{html.escape(title)}.</b> {body}</div>{rule}"


def _test_note(report: Mapping[str, Any], alpha: float) -> str:
    """How the p-values were computed (exact enumeration or random relabellings) and the smallest reachable one."""
    st = report.get("shift_test") or {}
    if not st:
        why = ("the cohorts are of different modalities" if report.get("source_modality", report.get("modality"))
               != report.get("modality") else "the cohorts are too small (see the verdict)")
        return f"<p class='muted'>No feature test: {why}.</p>"
    how = (f"all {st['n_label_sets']} relabellings (exact)" if st.get("exact")
           else f"{st['n_label_sets'] - 1} random relabellings")
    return (f"<p class='muted'>Permutation p-values over {how}; smallest reachable p = {_fmt(st.get('smallest_p'))}; "
            f"combined p = {_fmt(st.get('p_value'))} (the larger of the two: shift only when both tests reject); "
            f"level α = {alpha} (p ≤ α in red).</p>")


def _header(report: Mapping[str, Any]) -> list[str]:
    src, tgt = report.get("source", {}), report.get("target", {})
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>medmtl domain-shift report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Domain-shift report</h1>",
        f"<p class='muted'>source: {html.escape(str(src.get('path', '')))} ({_fmt(src.get('n_scans'))} scans, "
        f"{html.escape(str(src.get('kind', '')))}) · target: {html.escape(str(tgt.get('path', '')))} "
        f"({_fmt(tgt.get('n_scans'))} scans) · modality {html.escape(str(report.get('modality', '')))} · "
        f"medmtl {html.escape(str(report.get('medmtl_version', '')))}</p>",
    ]


def _fingerprint_section(report: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    """The descriptive fingerprint table (human names, units, Holm-adjusted p) and its figures."""
    rows = [dict(r, source=_mean_sd(r.get("source_mean"), r.get("source_sd")),
                 source_range=f"{_fmt(r.get('source_min'))} – {_fmt(r.get('source_max'))}",
                 target=_mean_sd(r.get("target_mean"), r.get("target_sd"))) for r in report.get("fingerprint_table", [])]
    fp_p = report.get("fingerprint_p") or {}
    parts = ["<h2>Fingerprints (descriptive)</h2>",
             "<p class='reading'>How the scans differ, field by field. These rows are descriptive effect sizes: "
             "the verdict does not use them (it rests on the feature-level tests above).</p>"]
    parts += [figs[k] for k in ("examples", "histogram", "spacing") if k in figs]
    if rows:
        parts.append(table(rows, [("label", "field"), ("source", "source mean ± SD"), ("source_range", "source range"),
                                  ("target", "target mean ± SD"), ("g_text", "Hedges' g"),
                                  ("holm_p", "Holm-adjusted p"), ("n_target_outside_source_range",
                                                                  "target scans outside the source range")]))
    notes = ["Hedges' g is the target's mean minus the source's in pooled standard deviations (|g| ≥ 0.8 is large); "
             "beyond ±10 it is shown as &gt; 10: the cohorts then hardly overlap and the exact value means nothing more."]
    if fp_p.get("n_rows"):
        notes.append(f"p-values: two-sided rank-sum (Mann-Whitney) permutation tests on the same relabellings as the "
                     f"feature test (none can be below {_fmt(fp_p.get('smallest_p'))}), Holm-adjusted over the "
                     f"{fp_p['n_rows']} rows.")
    else:
        notes.append("No p-values: " + str(fp_p.get("reason") or "a cohort has too few scans for a two-sample test."))
    parts.append("<p class='muted'>" + " ".join(notes) + "</p>")
    return parts


def _mean_sd(mean: Any, sd: Any) -> str:
    return _fmt(mean) if sd is None else f"{_fmt(mean)} ± {_fmt(sd)}"


def bn_reading(bn: Mapping[str, Any]) -> str:
    """One sentence on how to read the BatchNorm chart, with this report's numbers."""
    t, s = bn.get("target_mean_sym_kl"), bn.get("source_mean_sym_kl")
    rows = bn.get("target") or []
    if t is None:
        return ""
    if s is None or not s:
        return (f"Reading: each bar is how far the target's activations at one BatchNorm layer are from the statistics "
                f"the network was normalised with (mean {_fmt(t)} over layers); with no source scans there is no "
                "reference level, so compare it with a diagnosis of the training site.")
    ref = {r["layer"]: r["sym_kl"] for r in bn.get("source") or []}
    worst = max(rows, key=lambda r: r["sym_kl"] - ref.get(r["layer"], 0.0))
    ratio = t / s
    trend = ("further from the network's stored statistics than" if ratio > 1.25 else
             "closer to the network's stored statistics than" if ratio < 0.8 else
             "about as far from the network's stored statistics as")
    return (f"Reading: the target's activations are {trend} the source's (mean symmetric KL {_fmt(t)} against "
            f"{_fmt(s)}, {ratio:.2g}×); the layer where the target departs most from the source is "
            f"{html.escape(str(worst['layer']))}. Where the red bars rise above the blue line the target differs "
            "from the source at that layer; AdaBN re-estimates exactly these statistics.")


def _lower_sections(report: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    """HU check, BN shift, prediction shift, per-scan scores, LogME ranking and notes."""
    parts: list[str] = []
    hu = report.get("hu_calibration")
    if hu:
        parts += ["<h3>HU calibration (CT)</h3>", table(hu, [
            ("cohort", "cohort"), ("n_scans", "scans"), ("n_flagged", "miscalibrated (air/fat off)"),
            ("n_contrast_enhanced", "contrast-enhanced"), ("median_offset_hu", "median offset (HU)"),
            ("median_soft_tissue_hu", "median soft-tissue mode (HU)")]),
            "<p class='muted'>A miscalibration shifts the whole scale, air (−1000 HU) and fat (−100 HU) with soft "
            "tissue; contrast enhancement brightens soft tissue and blood (about 100–200 HU) and leaves air and fat "
            "where they were, so it is reported as enhancement, not as miscalibration.</p>"]
    bn = report.get("bn_shift")
    if bn and bn.get("target"):
        parts += ["<h2>BatchNorm statistics shift</h2>", figs.get("bn", ""),
                  f"<p class='reading'>{bn_reading(bn)}</p>",
                  f"<p class='muted'>network: {html.escape(str(bn.get('network', '')))}.</p>"]
    pred = report.get("prediction_shift")
    if pred:
        pred = [dict(r, label=f"prediction: {r.get('field')}") for r in pred]
        parts += ["<h2>Prediction shift (descriptive)</h2>", table(pred, [
            ("label", "output"), ("source_median", "source median"), ("target_median", "target median"),
            ("ks", "KS distance"), ("holm_p", "Holm-adjusted p")]),
            "<p class='muted'>Kolmogorov-Smirnov permutation tests on the same relabellings as the feature test, "
            "Holm-adjusted over these rows; descriptive, not part of the decision.</p>"]
    scores = report.get("target_scores")
    if scores:
        parts += ["<h2>Per-scan “looks like target” score</h2>",
                  table(scores, [("scan_id", "scan"), ("cohort", "cohort"), ("score", "P(target), out-of-fold")])]
    ranking = report.get("encoder_ranking")
    if ranking:
        parts += ["<h2>Transferability (LogME)</h2>", table(ranking, [
            ("encoder", "encoder"), ("adapter", "adapter"), ("logme_size", "LogME size"),
            ("logme_malignancy", "LogME malignancy"), ("logme_mean", "mean"), ("n_lesions", "lesions")])]
    notes = report.get("notes", [])
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{inline(n)}</li>" for n in notes] + ["</ul>"]
    return parts


def render_report(report: Mapping[str, Any]) -> str:
    """Render a :func:`medmtl.shift.report.run_diagnose` report dict as a standalone HTML page."""
    alpha = float(report.get("alpha", 0.05))
    figs = report.get("_figures", {})
    parts = [*_header(report)]
    if report.get("reading"):
        parts.append(f"<p class='summary'><b>Reading.</b> {inline(report['reading'])}</p>")
    parts.append(_verdict_block(report.get("verdict", {})))
    decision = [t for t in report.get("tests", []) if not t.get("descriptive")]
    if decision or report.get("shift_test"):
        parts += ["<h2>Decision: feature-level tests</h2>",
                  table(decision, [("name", "test"), ("statistic", "statistic"), ("p_value", "p-value"),
                                   ("detail", "detail")], alpha=alpha)]
    parts.append(_test_note(report, alpha))
    if "embedding" in figs:
        parts += ["<h2>Feature embedding</h2>", figs["embedding"]]
    parts += _fingerprint_section(report, figs)
    parts += _lower_sections(report, figs)
    parts.append("</body></html>")
    return "\n".join(parts)
