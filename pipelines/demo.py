"""The medmtl demo: site A → site B, from ImageNet weights to adapted predictions.

Run by ``make demo`` (``python -m pipelines.demo --out demo_out``). Uses only
``sample_data/ct_site_a`` (training site, 12 CT scans) and ``sample_data/ct_site_b`` (another
simulated scanner, 8 scans) and the public API (:mod:`medmtl.api`):

1. **diagnose** site A vs site B (:func:`medmtl.api.diagnose`) → ``shift/report.html`` + ``report.json``;
2. **train** the multi-task net (detection, size, malignancy) from the embedded ImageNet
   EfficientNet-Lite0 inflated to 3D on site A's training scans (:func:`medmtl.api.train`
   with ``configs/demo.yaml``) → ``train/`` (``checkpoint/``, ``metrics.csv``,
   ``gradient_conflict.csv``);
3. **adapt** the checkpoint to site B without site-B labels (:func:`medmtl.api.adapt`: AdaBN,
   histogram matching and re-simulation — the labelled site-A scans re-rendered at site B's
   measured acquisition — by default) → ``adapted/<method>/``;
4. **predict** (:func:`medmtl.api.predict_folder`) on site A's held-out scans (in-domain
   reference), on site B without adaptation and on site B with each adaptation →
   ``predictions/<condition>/``;
5. **evaluate** each (:func:`medmtl.api.evaluate`) → ``metrics/<condition>/metrics.json``
   (+ FROC, Bland-Altman, reliability plots);
6. write ``figures/`` (results bars, FROC curves of all conditions, training curves, gradient
   conflict), ``results.csv`` / ``results.json`` and a summary ``README.md``, and print the
   results table. Every number printed is read back from the ``metrics.json`` files.

**Output folder policy.** The demo writes into ``--out`` and replaces only what it owns there
(:data:`DEMO_ARTIFACTS`: its sub-folders and summary files) at the start of a run; any other
file in the folder is left untouched, and nothing outside ``--out`` is ever deleted. So
re-running the demo is safe, and ``--out`` may be an existing folder.

The site A held-out scans (the last three by id) are the trainer's validation split: they
choose the best epoch and fit the malignancy temperature, so their numbers are a slightly
optimistic in-domain reference; no site B label is used anywhere before evaluation.

``--fast`` is a smoke-test setting (one short epoch, few bootstrap replicates): it checks that
everything runs, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import _common as C

logger = logging.getLogger("pipelines.demo")

#: What the demo writes into ``--out`` (and therefore replaces on a re-run); nothing else is touched.
DEMO_ARTIFACTS = (
    "shift",
    "train",
    "adapted",
    "predictions",
    "metrics",
    "figures",
    "data",
    "README.md",
    "results.csv",
    "results.json",
    "config.yaml",
    "versions.json",
    "inputs.json",
)

#: Adaptation methods the demo runs by default (all need no target labels).
DEFAULT_METHODS = ("adabn", "histmatch", "resim")

METHOD_TITLES = {
    "adabn": "AdaBN",
    "histmatch": "histogram matching",
    "tent": "TENT",
    "dann": "DANN",
    "resim": "re-simulation",
    "n4": "N4",
}

#: Sliding-window overlap of the demo's predictions: the validation's (configs/demo.yaml), half
#: the windows of ``medmtl predict``'s default 0.5 — the demo's CPU time goes to training instead.
PREDICT_OVERLAP = 0.25

#: Fresh site-A phantoms the demo trains on (seed disjoint from every committed set).
DEFAULT_TRAIN_PHANTOMS = 24
FAST_TRAIN_PHANTOMS = 3
TRAIN_PHANTOM_SEED = 7000

#: Overrides of ``--fast``: a smoke test, numbers meaningless.
FAST_OVERRIDES = (
    "train.epochs=1",
    "train.steps_per_epoch=3",
    "train.patch_size=[32, 32, 32]",
    "train.conflict_every=1",
    "validation.every=1",
    "validation.calibrate=false",
    "data.reference_scans=2",
)


@dataclass
class Condition:
    """One evaluated condition: a checkpoint applied to a scan set."""

    key: str
    title: str
    checkpoint: Path | None  # None: the classical, training-free detector
    input_dir: Path
    annotations: Path
    scan_ids: list[str] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="medmtl demo: diagnose site A vs B, fine-tune Lite0 on A, predict on B with and "
        "without adaptation, evaluate, write a summary. See the module docstring.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--fast", action="store_true", help="smoke-test settings (one tiny epoch; numbers meaningless)")
    p.add_argument("--config", type=Path, default=C.REPO / "configs" / "demo.yaml", help="training config")
    p.add_argument("--source", type=Path, default=C.REPO / "sample_data" / "ct_site_a", help="site A scan folder")
    p.add_argument("--target", type=Path, default=C.REPO / "sample_data" / "ct_site_b", help="site B scan folder")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated adaptation methods (adabn, histmatch, resim, tent, dann); '' for none")
    p.add_argument("--n-heldout", type=int, default=3,
                   help="with --train-phantoms 0: site A scans held out (the last ones by id)")
    p.add_argument("--train-phantoms", type=int, default=DEFAULT_TRAIN_PHANTOMS,
                   help=f"train on this many freshly generated site A phantoms (seed {TRAIN_PHANTOM_SEED}, disjoint "
                   f"from --source), so every --source scan is held out (default {DEFAULT_TRAIN_PHANTOMS}; --fast "
                   f"{FAST_TRAIN_PHANTOMS}); 0 trains on the --source scans but the last --n-heldout")
    p.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap replicates (default 1000, fast 50)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training-config override (repeatable), e.g. --set train.epochs=4")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="use this trained checkpoint instead of training (step 2 skipped); its held-out scans are"
                   " the card's validation ids when recorded, else the last --n-heldout scans")
    p.add_argument("--skip-diagnose", action="store_true", help="do not run the shift report")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def clear_outputs(out: Path) -> None:
    """Remove the demo's own artifacts from ``out`` (:data:`DEMO_ARTIFACTS`); keep everything else."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out '{out}' is a file; pass a folder")
    for name in DEMO_ARTIFACTS:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)


class _Timer:
    """Wall-clock and CPU seconds (this process, all threads) of each named step."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        logger.info("── %s", name)
        t, c = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.steps[name] = round(time.perf_counter() - t, 2)
        self.cpu[name] = round(time.process_time() - c, 2)
        logger.info("   %s done in %.1f s (%.1f CPU s)", name, self.steps[name], self.cpu[name])
        return result

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._t0, 2)


def run_demo(
    *,
    out: Path,
    device: str = "auto",
    fast: bool = False,
    config: Path = C.REPO / "configs" / "demo.yaml",
    source: Path = C.REPO / "sample_data" / "ct_site_a",
    target: Path = C.REPO / "sample_data" / "ct_site_b",
    methods: Sequence[str] = DEFAULT_METHODS,
    n_heldout: int = 3,
    n_bootstrap: int | None = None,
    overrides: Sequence[str] = (),
    diagnose: bool = True,
    checkpoint: Path | None = None,
    train_phantoms: int | None = None,
) -> dict[str, Any]:
    """Run the whole demo into ``out`` (see the module docstring); returns ``results.json``'s dict.

    Args:
        out: output folder; only :data:`DEMO_ARTIFACTS` inside it are replaced.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (training and prediction).
        fast: smoke-test settings.
        config: training config (``configs/demo.yaml``).
        source: site A folder (scans + ``annotations.csv``).
        target: site B folder (scans + ``annotations.csv``; labels used for evaluation only).
        methods: adaptation methods to compare with no adaptation.
        n_heldout: site A scans held out of training (in-domain reference).
        n_bootstrap: bootstrap replicates of the evaluation (default 1000; 50 with ``fast``).
        overrides: extra ``key=value`` training-config overrides.
        diagnose: write the shift report.
        checkpoint: an already trained checkpoint to use instead of training.
        train_phantoms: train on this many fresh site-A phantoms written to ``out/data``
            (``None``: :data:`DEFAULT_TRAIN_PHANTOMS`, with ``fast`` :data:`FAST_TRAIN_PHANTOMS`;
            0: train on the ``source`` scans but the last ``n_heldout``).
    """
    from medmtl import api

    out = Path(out).resolve()
    source, target, config = Path(source).resolve(), Path(target).resolve(), Path(config).resolve()
    timer = _Timer()
    n_boot = n_bootstrap if n_bootstrap is not None else (50 if fast else 1000)
    resolved_device = C.default_device(device)

    # --- split and config -------------------------------------------------------------
    ids = C.scan_ids(source)  # bad inputs fail here, before anything in `out` is touched
    C.scan_ids(target)  # an empty or missing target folder is refused by discovery
    n_gen = (FAST_TRAIN_PHANTOMS if fast else DEFAULT_TRAIN_PHANTOMS) if train_phantoms is None else int(train_phantoms)
    if n_gen < 0:
        raise ValueError(f"--train-phantoms must be >= 0, got {n_gen}")
    train_root = out / "data" / "train_phantoms"
    train_ids, heldout_ids, _ = C.split_ids(ids, n_test=0, n_val=n_heldout)
    if n_gen and checkpoint is None:
        heldout_ids, train_ids = list(ids), []
        all_overrides = [f"data.root={train_root}", "data.max_scans=null", f"train.device={device}",
                         *(FAST_OVERRIDES if fast else ()), *overrides]
    if checkpoint is not None:
        checkpoint = Path(checkpoint).resolve()
        data_cfg = (_read_card(checkpoint).get("train_config") or {}).get("data") or {}
        if data_cfg.get("val_ids") and data_cfg.get("train_ids"):
            train_ids, heldout_ids = sorted(data_cfg["train_ids"]), sorted(data_cfg["val_ids"])
        else:
            train_ids = sorted(set(ids) - set(heldout_ids))
    if not (n_gen and checkpoint is None):
        all_overrides = [
        f"data.root={source}",
        f"data.annotations={source / 'annotations.csv'}",
        "data.max_scans=null",
        f"data.train_ids={C.id_list(train_ids)}",
        f"data.val_ids={C.id_list(heldout_ids)}",
        f"train.device={device}",
        *(FAST_OVERRIDES if fast else ()),
        *overrides,
        ]
    if checkpoint is not None:
        cfg = _read_card(checkpoint).get("train_config")
    elif n_gen:  # the phantoms are generated after this check: validate the config against the source folder
        cfg = C.resolve_config(config, [o for o in all_overrides if not o.startswith("data.root=")]
                               + [f"data.root={source}"])
        cfg["data"]["root"] = str(train_root)
        cfg["data"]["annotations"] = str(train_root / "annotations.csv")
    else:
        cfg = C.resolve_config(config, all_overrides)
    clear_outputs(out)
    C.write_run_records(
        out,
        inputs={"source": source, "target": target, **({"checkpoint": checkpoint} if checkpoint else {"config": config})},
        config=cfg,
        device=resolved_device,
        extra={"train_ids": train_ids, "heldout_ids": heldout_ids, "methods": list(methods), "fast": fast,
               "overrides": all_overrides, "n_bootstrap": n_boot,
               "train_phantoms": {"n": n_gen, "seed": TRAIN_PHANTOM_SEED} if n_gen and checkpoint is None else None},
    )
    heldout_ann = C.filter_annotations(source / "annotations.csv", out / "data" / "site_a_heldout_annotations.csv",
                                       heldout_ids)

    # --- 1. shift report ----------------------------------------------------------------
    shift: dict[str, Any] = {}
    if diagnose:
        shift = timer.run("diagnose", api.diagnose, source=source, target=target, out_dir=out / "shift",
                          n_permutations=100 if fast else 1000, seed=0)

    # --- 2. training --------------------------------------------------------------------
    if checkpoint is None:
        if n_gen:
            timer.run("generate_train_phantoms", api.generate_sample_data, out=train_root, kind="ct", site="a",
                      n=n_gen, seed=TRAIN_PHANTOM_SEED)
        ckpt = Path(timer.run("train", api.train, config=config, out_dir=out / "train", overrides=all_overrides))
    else:
        ckpt = checkpoint

    # --- 3. adaptation ------------------------------------------------------------------
    conditions = [
        Condition("site_a_heldout", "site A held-out (in-domain)", ckpt, source, heldout_ann, list(heldout_ids)),
        Condition("site_b_none", "site B, no adaptation", ckpt, target, target / "annotations.csv"),
        Condition("site_a_classical", "classical floor, site A held-out", None, source, heldout_ann,
                  list(heldout_ids)),
        Condition("site_b_classical", "classical floor, site B", None, target, target / "annotations.csv"),
    ]
    for method in methods:
        adapted = Path(timer.run(f"adapt_{method}", api.adapt, checkpoint=ckpt, target=target, method=method,
                                 out=out / "adapted" / method, seed=0,
                                 steps=2 if fast and method in ("dann", "resim") else None))
        conditions.append(Condition(f"site_b_{method}", f"site B + {METHOD_TITLES.get(method, method)}",
                                    adapted, target, target / "annotations.csv"))

    # --- 4-5. predict and evaluate ------------------------------------------------------
    rows: list[C.Row] = []
    for cond in conditions:
        pred_dir = out / "predictions" / cond.key
        if cond.checkpoint is None:
            timer.run(f"predict_{cond.key}", api.detect_classical, input_dir=cond.input_dir, out_dir=pred_dir,
                      scan_ids=cond.scan_ids)
        else:
            timer.run(f"predict_{cond.key}", api.predict_folder, checkpoint=cond.checkpoint,
                      input_dir=cond.input_dir, out_dir=pred_dir, device=device, progress=False,
                      scan_ids=cond.scan_ids, overlap=PREDICT_OVERLAP)
        timer.run(f"evaluate_{cond.key}", api.evaluate, predictions=pred_dir / "predictions.csv",
                  annotations=cond.annotations, out_dir=out / "metrics" / cond.key, n_bootstrap=n_boot, seed=0)
        rows.append(C.Row(cond.title, out / "metrics" / cond.key / "metrics.json"))

    # --- 6. figures, tables, summary ----------------------------------------------------
    figures = timer.run("figures", make_figures, out, conditions)
    results = summarize(out, conditions, shift=shift, timings=timer.steps, cpu_s=timer.cpu, total_s=timer.total,
                        device=resolved_device, fast=fast, train_ids=train_ids, heldout_ids=heldout_ids,
                        figures=figures, n_bootstrap=n_boot, checkpoint=ckpt, trained=checkpoint is None,
                        train_phantoms={"n": n_gen, "seed": TRAIN_PHANTOM_SEED} if n_gen and checkpoint is None else None)
    return results


def _read_card(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``model_card.json`` (plain JSON, see DESIGN.md → Checkpoint)."""
    path = Path(checkpoint) / "model_card.json"
    if not path.is_file():
        from medmtl.errors import MedmtlError

        raise MedmtlError(f"--checkpoint '{checkpoint}' holds no model_card.json; pass a checkpoint folder")
    return dict(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- summary


def _overall(path: Path) -> dict[str, dict[str, Any]]:
    return C.read_overall(path)


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
    train_phantoms: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write ``results.csv``, ``results.json`` and ``README.md``; return the results dict."""
    ref = _overall(out / "metrics" / "site_a_heldout" / "metrics.json")
    base = _overall(out / "metrics" / "site_b_none" / "metrics.json")
    records = []
    for cond in conditions:
        m = _overall(out / "metrics" / cond.key / "metrics.json")
        rec: dict[str, Any] = {"key": cond.key, "condition": cond.title,
                               "metrics_json": f"metrics/{cond.key}/metrics.json"}
        for key, _, _ in C.METRICS:
            rec[key] = m[key]["value"]
            rec[f"{key}_ci95"] = m[key]["ci95"]
            if _is_adaptation(cond):
                rec[f"{key}_gap_closed"] = C.gap_closed(m[key]["value"], base[key]["value"], ref[key]["value"])
        records.append(rec)
    csv_cols = ["key", "condition", *(k for k, _, _ in C.METRICS)]
    from medmtl.io.writers import atomic_write_csv

    atomic_write_csv(out / "results.csv", [{k: r[k] for k in csv_cols} for r in records], csv_cols)
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
    C.write_json(out / "results.json", results)
    C.write_text(out / "README.md", readme_text(out, conditions, results, figures))
    return results


def _is_adaptation(cond: Condition) -> bool:
    """A site-B condition with an adapted checkpoint (not the unadapted model, not the classical floor)."""
    return cond.key.startswith("site_b_") and cond.key != "site_b_none" and cond.checkpoint is not None


def _verdict_text(verdict: Any) -> str:
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
    rows = [C.Row(c.title, out / "metrics" / c.key / "metrics.json") for c in conditions]
    table = C.results_table(rows, with_ci=True)
    gap_rows = []
    for rec in results["conditions"]:
        if f"{C.METRICS[0][0]}_gap_closed" in rec:
            gap_rows.append([rec["condition"], *(C.fmt(rec.get(f"{k}_gap_closed"), 2) for k, _, _ in C.METRICS)])
    gap = C.markdown_table(["condition", *(h for _, h, _ in C.METRICS)], gap_rows) if gap_rows else "(no adaptation run)"
    steps = C.markdown_table(["step", "wall s", "CPU s"], [[k, f"{v:.1f}", f"{results['cpu_s'].get(k, float('nan')):.1f}"]
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
        heldout = (f"Trained on {tp['n']} freshly generated site A phantoms (seed {tp['seed']}; the config's validation "
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
   [shift/report.html](shift/report.html) ([report.json](shift/report.json)). Verdict: {_verdict_text(results['shift_verdict'])}
2. {training}
   {heldout}
3. **Adaptation to site B without labels**: {', '.join(c.title for c in conditions if _is_adaptation(c)) or 'none'}
   (checkpoints in `adapted/`).
4. **Prediction and evaluation** of each condition (LUNA16 CPM = mean sensitivity at 1/8…8 false
   positives per scan; diameter MAE in mm over detected lesions; malignancy AUC over detected,
   labelled lesions; 95% scan-level bootstrap intervals, {results['n_bootstrap']} replicates).

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


# --------------------------------------------------------------------------- figures


def make_figures(out: Path, conditions: Sequence[Condition]) -> list[Path]:
    """Write the demo's summary figures into ``out/figures``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # results bars with CIs
    fig, axes = plt.subplots(1, len(C.METRICS), figsize=(4.2 * len(C.METRICS), 3.6))
    for ax, (key, title, higher) in zip(axes, C.METRICS):
        vals, los, his, labels = [], [], [], []
        for cond in conditions:
            e = _overall(out / "metrics" / cond.key / "metrics.json")[key]
            v = e["value"]
            vals.append(float("nan") if v is None else v)
            ci = e["ci95"] or [v, v]
            los.append(0.0 if v is None or ci[0] is None else max(v - ci[0], 0.0))
            his.append(0.0 if v is None or ci[1] is None else max(ci[1] - v, 0.0))
            labels.append(cond.title.replace(", ", "\n").replace(" + ", "\n+ ").replace(" (", "\n("))
        ax.bar(range(len(vals)), vals, yerr=[los, his], capsize=3,
               color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"][: len(vals)])
        for i, v in enumerate(vals):
            if v != v:  # NaN: the metric is undefined (e.g. no detected labelled lesion)
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    fig.tight_layout()
    written.append(_save(fig, fig_dir / "results.png"))

    # FROC of all conditions
    fig, ax = plt.subplots(figsize=(5, 4))
    for cond in conditions:
        data = json.loads((out / "metrics" / cond.key / "metrics.json").read_text(encoding="utf-8"))
        curve = data.get("froc", {}).get("curve", {})
        fps, sens = curve.get("fps") or [], curve.get("sensitivity") or []
        if fps:
            ax.step(fps, sens, where="post", label=cond.title)
    ax.set_xscale("symlog", linthresh=0.125)
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    written.append(_save(fig, fig_dir / "froc_all.png"))

    # training curves
    metrics_csv = out / "train" / "metrics.csv"
    if metrics_csv.is_file():
        hist = _read_csv(metrics_csv)
        if hist:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
            ep = [_num(r.get("epoch")) for r in hist]
            for col in ("loss", "loss_det", "loss_size", "loss_malig"):
                ax1.plot(ep, [_num(r.get(col)) for r in hist], marker="o", label=col)
            ax1.set_xlabel("epoch")
            ax1.set_title("training losses")
            ax1.legend(fontsize=7)
            for col in ("cpm", "malignancy_auc"):
                pts = [(e, _num(r.get(col))) for e, r in zip(ep, hist) if r.get(col) not in (None, "")]
                if pts:
                    ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=col)
            ax2.set_xlabel("epoch")
            ax2.set_title("validation (site A held-out)")
            ax2.legend(fontsize=7)
            fig.tight_layout()
            written.append(_save(fig, fig_dir / "training.png"))

    conflict_csv = out / "train" / "gradient_conflict.csv"
    if conflict_csv.is_file():
        path = gradient_conflict_figure(conflict_csv, fig_dir / "gradient_conflict.png")
        if path is not None:
            written.append(path)
    return written


def gradient_conflict_figure(conflict_csv: Path, dst: Path) -> Path | None:
    """Plot every ``cos_*`` column of a run's ``gradient_conflict.csv`` per epoch (None if none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_csv(conflict_csv)
    if not rows:
        return None
    cols = [c for c in rows[0] if c.startswith("cos")]
    if not cols:
        cols = [c for c in rows[0] if "cos" in c or "conflict" in c]
    if not cols:
        return None
    x = [_num(r.get("epoch", i)) for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for col in cols:
        ax.plot(x, [_num(r.get(col)) for r in rows], marker="o", label=col)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_title("task-gradient cosine on the shared encoder")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, dst)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------- CLI


def print_table(out: Path) -> str:
    """The printed results table, read from ``results.json`` → each condition's ``metrics.json``."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [C.Row(r["condition"], out / r["metrics_json"]) for r in results["conditions"]]
    return C.results_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 a medmtl error, 2 usage)."""
    args = _parser().parse_args(argv)
    C.setup_logging(args.verbose)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    t0 = time.perf_counter()

    def body() -> int:
        results = run_demo(
            out=args.out, device=args.device, fast=args.fast, config=args.config, source=args.source,
            target=args.target, methods=methods, n_heldout=args.n_heldout, n_bootstrap=args.n_bootstrap,
            overrides=args.overrides, diagnose=not args.skip_diagnose, checkpoint=args.checkpoint,
            train_phantoms=args.train_phantoms,
        )
        out = args.out.resolve()
        print()
        print(f"medmtl demo — results (device {results['device']}{', --fast: numbers meaningless' if args.fast else ''})")
        print(print_table(out))
        print(f"shift verdict: {_verdict_text(results['shift_verdict'])}")
        parts = [name for name in ("README.md", "shift/report.html", "predictions/", "metrics/", "figures/")
                 if (out / name).exists()]
        print(f"wrote {out} ({', '.join(parts)}) in {time.perf_counter() - t0:.0f} s")
        return 0

    return C.run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
