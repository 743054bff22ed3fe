"""Self-contained HTML rendering of a shift report.

Every figure is a matplotlib PNG embedded as a ``data:image/png;base64`` URI and the CSS is
inline, so the page opens with no network access: no external URLs, scripts or fonts.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COLOURS = {"source": "#1f77b4", "target": "#d62728"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.verdict{padding:.8em 1em;border-radius:6px;font-size:1.05em}
.shift{background:#fdecea;border:1px solid #f5c2c0}.noshift{background:#e8f5e9;border:1px solid #b9dfbb}
.outside{background:#fff3e0;border:1px solid #f0b070}
.sig{font-weight:bold;color:#b00020}img{max-width:100%;margin:.4em 0}.muted{color:#777;font-size:.9em}
"""


def _png(fig: Any) -> str:
    """Encode a matplotlib figure as an ``<img>`` with a base64 data URI (and close it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _figure(width: float = 6.0, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


def histogram_figure(hists: Mapping[str, Mapping[str, Sequence[float]]], unit: str) -> str:
    """Body-intensity histograms per cohort (step lines)."""
    fig, ax = _figure()
    for name, h in hists.items():
        edges = np.asarray(h["edges"])
        ax.step(edges[:-1], h["density"], where="post", label=name, color=COLOURS.get(name))
    ax.set_xlabel(f"intensity inside the body ({unit})")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Intensity histograms per cohort")
    return _png(fig)


def spacing_figure(cohorts: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """In-plane spacing vs slice thickness, one point per scan."""
    fig, ax = _figure(5.0, 3.6)
    for name, fps in cohorts.items():
        xs = [0.5 * (fp["spacing_i"] + fp["spacing_j"]) for fp in fps]
        ys = [fp["slice_thickness"] for fp in fps]
        ax.scatter(xs, ys, label=name, alpha=0.7, color=COLOURS.get(name))
    ax.set_xlabel("in-plane spacing (mm)")
    ax.set_ylabel("slice thickness (mm)")
    ax.legend()
    ax.set_title("Spacing per scan")
    return _png(fig)


def embedding_figure(points: Sequence[Sequence[float]], cohorts: Sequence[str], method: str) -> str:
    """2D embedding of pooled encoder features, coloured by cohort."""
    fig, ax = _figure(5.0, 4.0)
    pts = np.asarray(points, dtype=np.float64)
    labels = np.asarray(cohorts)
    for name in ("source", "target"):
        sel = labels == name
        if sel.any():
            ax.scatter(pts[sel, 0], pts[sel, 1], label=name, alpha=0.75, color=COLOURS[name])
    ax.set_title(f"Encoder features, {method} embedding")
    ax.legend()
    return _png(fig)


def bn_figure(rows: Sequence[Mapping[str, Any]], ref_rows: Sequence[Mapping[str, Any]] | None) -> str:
    """Per-layer BN shift (symmetric KL, log scale) of the target (and source) cohort."""
    fig, ax = _figure(8.0, 3.4)
    x = np.arange(len(rows))
    ax.bar(x, [max(r["sym_kl"], 1e-6) for r in rows], color=COLOURS["target"], label="target vs running stats")
    if ref_rows:
        ax.plot(x[: len(ref_rows)], [max(r["sym_kl"], 1e-6) for r in ref_rows], "o-", ms=3,
                color=COLOURS["source"], label="source vs running stats")
    ax.set_yscale("log")
    ax.set_xlabel("BatchNorm layer (network order)")
    ax.set_ylabel("mean symmetric KL")
    ax.legend()
    ax.set_title("BatchNorm statistics shift per layer")
    return _png(fig)


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


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], *, alpha: float | None = None) -> str:
    """An HTML table of ``rows`` with ``(key, header)`` columns; p-values < alpha in bold red."""
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{html.escape(h)}</th>' for i, (_, h) in enumerate(columns))
    body = []
    for r in rows:
        cells = []
        for i, (k, _) in enumerate(columns):
            v = r.get(k)
            cls = "l" if i == 0 else ""
            if alpha is not None and k in ("p_value", "adjusted_p") and isinstance(v, (int, float)) and v <= alpha:
                cls += " sig"
            cells.append(f'<td class="{cls.strip()}">{_fmt(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_VERDICT_TITLES = {"no_shift": ("noshift", "No shift detected"),
                   "shift": ("shift", "Shift detected that adaptation can address"),
                   "outside_domain": ("outside", "Outside the training domain")}


def _verdict_block(verdict: Mapping[str, Any]) -> str:
    """The verdict banner: its kind, the plain-language text and the stated rule."""
    cls, title = _VERDICT_TITLES.get(str(verdict.get("kind")), ("shift" if verdict.get("shift") else "noshift",
                                                                 "Shift detected" if verdict.get("shift") else "No shift"))
    body = html.escape(" ".join([*verdict.get("reasons", []), verdict.get("advice", ""), *verdict.get("details", [])])
                       or str(verdict.get("text", "")))
    rule = f"<p class='muted'>Decision rule: {html.escape(str(verdict['rule']))}</p>" if verdict.get("rule") else ""
    return f"<div class='verdict {cls}'><b>{html.escape(title)}.</b> {body}</div>{rule}"


def _test_note(report: Mapping[str, Any], alpha: float) -> str:
    """How the p-values were computed (exact enumeration or random relabellings) and the smallest reachable one."""
    st = report.get("shift_test") or {}
    if not st:
        return "<p class='muted'>No feature test: the cohorts are of different modalities.</p>"
    how = (f"all {st['n_label_sets']} relabellings (exact)" if st.get("exact")
           else f"{st['n_label_sets'] - 1} random relabellings")
    return (f"<p class='muted'>Permutation p-values over {how}; smallest reachable p = {_fmt(st.get('smallest_p'))}; "
            f"combined (min-P) p = {_fmt(st.get('p_value'))}; family-wise level α = {alpha} (p ≤ α in red).</p>")


def render_report(report: Mapping[str, Any]) -> str:
    """Render a :func:`medmtl.shift.report.run_diagnose` report dict as a standalone HTML page."""
    alpha = float(report.get("alpha", 0.05))
    modality = report.get("modality", "")
    verdict = report.get("verdict", {})
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>medmtl domain-shift report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Domain-shift report</h1>",
        f"<p class='muted'>source: {html.escape(str(report.get('source', {}).get('path', '')))} "
        f"({_fmt(report.get('source', {}).get('n_scans'))} scans, {html.escape(str(report.get('source', {}).get('kind', '')))}) · "
        f"target: {html.escape(str(report.get('target', {}).get('path', '')))} "
        f"({_fmt(report.get('target', {}).get('n_scans'))} scans) · modality {html.escape(str(modality))} · "
        f"medmtl {html.escape(str(report.get('medmtl_version', '')))}</p>",
        _verdict_block(verdict),
        "<h2>Decision: feature-level tests</h2>",
        table([t for t in report.get("tests", []) if not t.get("descriptive")],
              [("name", "test"), ("statistic", "statistic"), ("p_value", "p-value"),
               ("adjusted_p", "min-P adjusted p"), ("detail", "detail")], alpha=alpha),
        _test_note(report, alpha),
    ]
    descriptive = [t for t in report.get("tests", []) if t.get("descriptive")]
    if descriptive:
        parts += ["<h3>Descriptive rows (not part of the decision, uncorrected)</h3>",
                  table(descriptive, [("name", "row"), ("statistic", "statistic"), ("p_value", "uncorrected p"),
                                      ("detail", "detail")])]
    figs = report.get("_figures", {})
    if "embedding" in figs:
        parts += ["<h2>Feature embedding</h2>", figs["embedding"]]
    parts += ["<h2>Fingerprints</h2>"]
    for key in ("histogram", "spacing"):
        if key in figs:
            parts.append(figs[key])
    parts.append(table(report.get("effect_sizes", []), [
        ("field", "feature"), ("source_mean", "source mean"), ("target_mean", "target mean"),
        ("hedges_g", "Hedges' g"), ("mann_whitney_p", "Mann-Whitney p"), ("large", "|g| ≥ 0.8")]))
    hu = report.get("hu_calibration")
    if hu:
        parts += ["<h3>HU calibration (CT)</h3>", table(hu, [
            ("cohort", "cohort"), ("n_flagged", "scans flagged"), ("n_scans", "scans"),
            ("median_offset_hu", "median offset (HU)")])]
    bn = report.get("bn_shift")
    if bn and bn.get("target"):
        parts += ["<h2>BatchNorm statistics shift</h2>", figs.get("bn", ""),
                  f"<p class='muted'>network: {html.escape(str(bn.get('network', '')))}; mean over layers: "
                  f"target {_fmt(bn.get('target_mean_sym_kl'))}, source {_fmt(bn.get('source_mean_sym_kl'))}.</p>"]
    pred = report.get("prediction_shift")
    if pred:
        parts += ["<h2>Prediction shift</h2>", table(pred, [
            ("field", "output"), ("source_median", "source median"), ("target_median", "target median"),
            ("ks", "KS"), ("p_value", "uncorrected p (descriptive)")])]
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
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(str(n))}</li>" for n in notes] + ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)
