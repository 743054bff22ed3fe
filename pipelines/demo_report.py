"""The demo's summary: ``results.csv`` / ``results.json`` and the ``README.md`` of ``--out``.

Every number is read back from the conditions' ``metrics.json`` files
(:func:`pipelines.tables.read_overall`), so the summary and the evaluations cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmtl import api
from pipelines.tables import METRICS, Row, fmt, gap_closed, markdown_table, read_overall, results_table

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.demo_run import Condition


def condition_records(out: Path, conditions: Sequence[Condition]) -> list[dict[str, Any]]:
    """One record per condition: its metrics with 95 % intervals and, for an adaptation, the gap closed.

    The gap closed is measured between site B without adaptation (``site_b_none``) and the
    site A held-out scans (``site_a_heldout``, in-domain), see :func:`pipelines.tables.gap_closed`.
    """
    ref = read_overall(out / "metrics" / "site_a_heldout" / "metrics.json")
    base = read_overall(out / "metrics" / "site_b_none" / "metrics.json")
    records = []
    for cond in conditions:
        m = read_overall(out / "metrics" / cond.key / "metrics.json")
        rec: dict[str, Any] = {"key": cond.key, "condition": cond.title,
                               "metrics_json": f"metrics/{cond.key}/metrics.json"}
        for key, _, _ in METRICS:
            rec[key] = m[key]["value"]
            rec[f"{key}_ci95"] = m[key]["ci95"]
            if is_adaptation(cond):
                rec[f"{key}_gap_closed"] = gap_closed(m[key]["value"], base[key]["value"], ref[key]["value"])
        records.append(rec)
    return records


def summarize(
    out: Path,
    conditions: Sequence[Condition],
    *,
    shift: dict[str, Any],
    timings: dict[str, float],
    cpu_s: dict[str, float],
    total_s: float,
    device: str,
    fast: bool,
    train_ids: Sequence[str],
    heldout_ids: Sequence[str],
    figures: Sequence[Path],
    n_bootstrap: int,
    checkpoint: Path,
    trained: bool,
    train_phantoms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``results.csv``, ``results.json`` and ``README.md``; return the results dict."""
    records = condition_records(out, conditions)
    csv_cols = ["key", "condition", *(k for k, _, _ in METRICS)]
    api.write_table(path=out / "results.csv", rows=[{k: r[k] for k in csv_cols} for r in records], fieldnames=csv_cols)
    verdict = shift.get("verdict") if isinstance(shift, dict) else None
    results = {
        "conditions": records,
        "shift_verdict": verdict,
        "timings_s": timings,
        "cpu_s": cpu_s,
        "total_s": total_s,
        "device": device,
        "fast": fast,
        "train_ids": list(train_ids),
        "heldout_ids": list(heldout_ids),
        "n_bootstrap": n_bootstrap,
        "checkpoint": str(checkpoint),
        "trained": trained,
        "train_phantoms": train_phantoms,
    }
    api.write_json(path=out / "results.json", obj=results)
    api.write_text(path=out / "README.md", text=readme_text(out, conditions, results, figures))
    return results


def is_adaptation(cond: Condition) -> bool:
    """A site-B condition with an adapted checkpoint (not the unadapted model, not the classical floor)."""
    return cond.key.startswith("site_b_") and cond.key != "site_b_none" and cond.checkpoint is not None


def verdict_text(verdict: Any) -> str:
    """The shift report's verdict as one line (``not run`` without a report)."""
    if verdict is None:
        return "not run"
    if isinstance(verdict, dict):
        for key in ("text", "summary", "message", "label"):
            if key in verdict:
                return str(verdict[key])
        return json.dumps(verdict)
    return str(verdict)


def readme_text(out: Path, conditions: Sequence[Condition], results: dict[str, Any], figures: Sequence[Path]) -> str:
    """The demo's summary ``README.md``: what ran, the numbers (with 95% CIs), links to figures."""
    rows = [Row(c.title, out / "metrics" / c.key / "metrics.json") for c in conditions]
    table = results_table(rows, with_ci=True)
    gap_rows = []
    for rec in results["conditions"]:
        if f"{METRICS[0][0]}_gap_closed" in rec:
            gap_rows.append([rec["condition"], *(fmt(rec.get(f"{k}_gap_closed"), 2) for k, _, _ in METRICS)])
    gap = markdown_table(["condition", *(h for _, h, _ in METRICS)], gap_rows) if gap_rows else "(no adaptation run)"
    steps = markdown_table(["step", "wall s", "CPU s"], [[k, f"{v:.1f}", f"{results['cpu_s'].get(k, float('nan')):.1f}"]
                                                      for k, v in results["timings_s"].items()])
    figs = "\n".join(f"- [{f.name}](figures/{f.name})" for f in figures) or "- (none)"
    per_cond = "\n".join(
        f"- {c.title}: [predictions.csv](predictions/{c.key}/predictions.csv), "
        f"[metrics.md](metrics/{c.key}/metrics.md), [FROC](metrics/{c.key}/froc.png)"
        for c in conditions
    )
    if results.get("trained", True):
        training = """**Training**: the multi-task net (detection + diameter + malignancy heads) fine-tuned from the
   embedded ImageNet EfficientNet-Lite0 (inflated to 3D) on site A scans
   ([config.yaml](config.yaml), [train/metrics.csv](train/metrics.csv),
   [train/gradient_conflict.csv](train/gradient_conflict.csv), checkpoint in `train/checkpoint/`)."""
    else:
        training = f"**Training skipped**: the given checkpoint `{results['checkpoint']}` was used."
    if results.get("train_phantoms"):
        tp = results["train_phantoms"]
        shape = f", {'×'.join(str(v) for v in tp['shape'])} voxels like the held-out scans" if tp.get("shape") else ""
        heldout = (f"Trained on {tp['n']} freshly generated site A phantoms (seed {tp['seed']}{shape}; the config's validation "
                   "split of them picks the checkpoint and fits the malignancy temperature); every site A scan of "
                   f"the table ({', '.join(results['heldout_ids'])}) is held out of training and of validation.")
    else:
        heldout = (f"Held out of training: {', '.join(results['heldout_ids'])} (also the validation split that picks "
                   "the best epoch and fits the malignancy temperature, so their numbers are a slightly optimistic "
                   "in-domain reference).")
    fast_note = ("\n> **--fast smoke run**: one tiny epoch; the numbers below only show that everything runs.\n"
                 if results["fast"] else "")
    return f"""# medmtl demo results
{fast_note}
What ran (`python -m pipelines.demo`, device `{results['device']}`, {results['total_s']:.0f} s in all):

1. **Domain-shift report**, site A (`sample_data/ct_site_a`) vs site B (`sample_data/ct_site_b`):
   [shift/report.html](shift/report.html) ([report.json](shift/report.json)). Verdict: {verdict_text(results['shift_verdict'])}
2. {training}
   {heldout}
3. **Adaptation to site B without labels**: {', '.join(c.title for c in conditions if is_adaptation(c)) or 'none'}
   (checkpoints in `adapted/`).
4. **Prediction and evaluation** of each condition (LUNA16 CPM = mean sensitivity at 1/8…8 false
   positives per scan; diameter MAE in mm over detected lesions; malignancy AUC over detected,
   labelled lesions; 95% scan-level bootstrap intervals, {results['n_bootstrap']} replicates).
   The classical floor is the training-free Hessian detector (`medmtl classical`) on the same
   scans; *model + classical (noisy-OR)* combines the two prediction tables without fitting
   anything to labels (`medmtl fuse`; detections within 5 mm are one candidate scored
   1 − (1 − p_model)(1 − p_classical), the model's diameter and malignancy kept). Read the model's
   own row against the floor to judge what training learned; the fused row is what the two
   together find.

## Results

{table}

Share of the site A → site B gap closed by each adaptation (1 = as good as in-domain, 0 = no better
than no adaptation, negative = worse; undefined when there is no gap):

{gap}

Per condition:
{per_cond}

## Figures

{figs}

## Time per step

{steps}

Inputs (with SHA-256 of every file): [inputs.json](inputs.json); versions: [versions.json](versions.json).
These are synthetic phantoms (`sample_data/README.md`): a handful of scans, so intervals are wide.
"""


__all__ = ["condition_records", "is_adaptation", "readme_text", "summarize", "verdict_text"]
