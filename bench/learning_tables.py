"""Tables of the learning benchmark (:mod:`bench.learning`): rows pooled over seeds, Δm, the
Bayes-optimal AUC of the test lesions, where each number was measured, the ``RESULTS.md`` section.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.learning_conditions import BLOCK_TITLES, BLOCKS, Condition
from bench.machine import cpu_model
from medmtl import api
from pipelines.tables import METRICS, fmt, fmt_ci, markdown_table
from pipelines.transfer_study import aggregate

# --------------------------------------------------------------------------- Bayes AUC, machine


def bayes_auc(annotations: Path, scan_ids: Sequence[str] | None = None, *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Bayes-optimal malignancy AUC of the labelled lesions of ``scan_ids`` (all scans when ``None``).

    The rows of ``annotations`` with a ``bayes_malignancy_prob`` and a malignancy label are
    scored by the library: :func:`medmtl.api.bayes_auc` (AUC of the generator's
    ``bayes_malignancy_prob`` against the recorded, noisy labels) and
    :func:`medmtl.api.bayes_auc_interval` (percentile bootstrap interval over the lesions).

    Returns:
        ``{"value", "ci95", "n_lesions", "n_positive"}`` (``value`` ``None`` when a class is missing
        or the column is absent).
    """
    keep = set(scan_ids) if scan_ids is not None else None
    with open(annotations, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.DictReader(fh)
                if (keep is None or (r.get("seriesuid") or "").strip() in keep)
                and (r.get("bayes_malignancy_prob") or "").strip() and (r.get("malignancy") or "").strip()]
    value = api.bayes_auc(rows=rows) if rows else float("nan")
    out: dict[str, Any] = {"value": None, "ci95": None, "n_lesions": len(rows),
                           "n_positive": int(sum(float(r["malignancy"]) >= 0.5 for r in rows))}
    if value == value:  # not NaN: both classes present
        out["value"] = value
        lo, hi = api.bayes_auc_interval(rows=rows, n_boot=n_boot, seed=seed)
        out["ci95"] = [lo, hi] if lo == lo and hi == hi else None
    return out


def where_measured(device: str) -> str:
    """``"cuda (NVIDIA H100 …)"`` or ``"cpu (AMD EPYC …, 2 cores)"`` for the resolved ``device``."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return (f"{device} ({torch.cuda.get_device_name(torch.device(device))}; host {cpu_model()}, "
                    f"{os.cpu_count()} cores)")
        return f"{device} (unavailable)"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"


# --------------------------------------------------------------------------- tables


@dataclass
class Row:
    """One table row: a condition of a block, seeds pooled."""

    block: str
    condition: str
    metrics: dict[str, dict[str, Any]]  # metric key → {"value", "ci95"}
    n_seeds: int
    ci_over: str
    where: str
    key: str = ""


def pool(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seeds of one condition pooled by :func:`pipelines.transfer_study.aggregate` (one row)."""
    rows = aggregate([dict(r) for r in records])
    if len(rows) != 1:
        raise ValueError(f"records of one condition must share their configuration, got {len(rows)} groups")
    return rows[0]


def make_row(block: str, cond: Condition, records: Sequence[Mapping[str, Any]]) -> Row:
    """A :class:`Row` from a condition's run records."""
    agg = pool(records)
    where = sorted({str(r.get("where", "?")) for r in records})
    return Row(block=block, condition=cond.label, key=cond.key, n_seeds=agg["n_seeds"], ci_over=agg["ci_over"],
               where="; ".join(where),
               metrics={k: {"value": agg[k], "ci95": agg[f"{k}_ci95"]} for k, _, _ in METRICS})


def results_table(rows: Sequence[Row]) -> str:
    """The markdown table: condition, CPM, MAE, AUC (each with its 95% interval), seeds, where."""
    header = ["block", "condition", "CPM [95% CI]", "MAE mm [95% CI]", "AUC [95% CI]", "seeds", "CI over",
              "where measured"]
    body = [[r.block, r.condition, fmt_ci(r.metrics["cpm"]), fmt_ci(r.metrics["diameter_mae_mm"], 2),
             fmt_ci(r.metrics["malignancy_auc"]), str(r.n_seeds), r.ci_over, r.where] for r in rows]
    return markdown_table(header, body)


def _pct(v: float | None, ci: Sequence[float] | None = None) -> str:
    if v is None:
        return "n/a"
    s = f"{v:+.1f} %"
    return s + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")


def delta_table(dm: Mapping[str, Any]) -> str:
    """Markdown table of Δ_t per task and the Δm line."""
    header = ["task", "metric", "single-task run", "single-task", "multi-task", "Δ_t [95% CI]"]
    body = []
    for t in dm["tasks"]:
        digits = 2 if t["metric"] == "diameter_mae_mm" else 3
        body.append([t["task"], t["metric"] + (" (lower better)" if t["lower_is_better"] else ""), t["st_condition"],
                     fmt(t["st"], digits), fmt(t["mt"], digits), _pct(t["delta"], t["delta_ci95"])])
    seeds = ", ".join(str(s) for s in dm["seeds"]) or "none"
    return (markdown_table(header, body) + f"\n\n**Δm = {_pct(dm['delta_m'], dm['delta_m_ci95'])}** "
            f"(seeds {seeds}; > 0: the multi-task net beats the single-task baselines on average).")


def bayes_line(b: Mapping[str, Any], what: str) -> str:
    """One sentence on a Bayes-optimal AUC."""
    return (f"Bayes-optimal malignancy AUC of the {what}: {fmt_ci({'value': b['value'], 'ci95': b['ci95']})} "
            f"({b['n_lesions']} labelled lesions, {b['n_positive']} malignant; lesion bootstrap).")


def markdown(res: Mapping[str, Any]) -> str:
    """The results as markdown: one table per block, the Δm table and the Bayes AUC."""
    rows = [Row(**r) for r in res["rows"]]
    lines = [f"Data: `{res['data']}` — {len(res['split']['train'])} training, {len(res['split']['val'])} validation, "
             f"{len(res['split']['test'])} test scans (test: {', '.join(res['split']['test'])}); base config "
             f"`{res['config']}`{' with the --fast overrides' if res['fast'] else ''}; seeds "
             f"{', '.join(str(s) for s in res['seeds'])}.", "",
             bayes_line(res["bayes_auc_test"], "test scans") + " "
             + bayes_line(res["bayes_auc_all"], "whole set"), ""]
    floor = res.get("floor")
    for block in BLOCKS:
        br = [r for r in rows if r.block == block]
        if not br:
            continue
        if floor:  # the training-free floor on the same test scans heads every table
            br = [Row(block=block, condition="classical floor (no training)", metrics=dict(floor), n_seeds=0,
                      ci_over="test scans", where=res.get("where", "")), *br]
        lines += [f"**{block}** — {BLOCK_TITLES[block]}", "", results_table(br), ""]
        if block == "mtl" and res.get("delta_m"):
            lines += [delta_table(res["delta_m"]), ""]
    if res.get("missing"):
        lines += [f"Not run (time budget of {res.get('time_budget_s')} s reached): " + ", ".join(res["missing"]) + ".", ""]
    lines.append("Intervals: 95 % percentile bootstrap of the mean over seeds (≥ 2 seeds) or over test scans "
                 "(one seed, the evaluation's bootstrap). MAE and AUC are read at detected lesions.")
    return "\n".join(lines) + "\n"


def append_dated_section(path: Path, title: str, where: str, module: str, argv: Sequence[str] | None,
                         text: str) -> Path:
    """Append ``## title (date)``, the machine, the command (``python -m module`` + its arguments) and ``text``."""
    command = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
    return append_results(path, "\n".join([f"## {title} ({time.strftime('%Y-%m-%d')})", "",
                                           f"Machine: {where}. Command: `{command}`.", "", text]))


def append_results(path: Path, section: str) -> Path:
    """Append ``section`` to ``path`` (created when missing), re-reading it first; never rewrites it."""
    path = Path(path)
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    with open(path, "a", encoding="utf-8") as fh:
        if existing is None:
            fh.write("# Benchmark results\n")
        elif existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write("\n" + section.rstrip("\n") + "\n")
    return path


def section(res: Mapping[str, Any], command: str) -> str:
    """The dated ``bench/RESULTS.md`` section of a benchmark run."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = (f"## Learning (bench/learning.py){' — fast smoke setting' if res['fast'] else ''} — {res['date']}\n\n"
            f"Measured on: {res['where']}; torch threads {res['torch_threads']}, Python {res['python']}; "
            f"{res['n_runs']} runs ({res['n_reused']} reused from an earlier run of the same folder), wall "
            f"{res['wall_s']:.0f} s; load average at the end {load:.1f}.\n\n`{command}`\n\n")
    note = ("\nThese numbers come from the smoke setting (1 epoch of 2 steps): they check the pipeline, "
            "not the methods.\n" if res["fast"] else "")
    return head + res["markdown"] + note


__all__ = [
    "Row",
    "append_results",
    "bayes_auc",
    "bayes_line",
    "delta_table",
    "make_row",
    "markdown",
    "pool",
    "results_table",
    "section",
    "where_measured",
]
