"""The medmtl demo: site A → site B, from ImageNet weights to adapted predictions.

Run by ``make demo`` (``python -m pipelines.demo --out demo_out``). Uses only
``sample_data/ct_site_a`` (training site, 8 CT scans, all held out) and ``sample_data/ct_site_b``
(another simulated scanner, 8 scans), fresh site-A training phantoms of the held-out scans' shape
and the public API (:mod:`medmtl.api`):

1. **diagnose** site A vs site B (:func:`medmtl.api.diagnose`) → ``shift/report.html`` + ``report.json``;
2. **train** the multi-task net (detection, size, malignancy) from the embedded ImageNet
   EfficientNet-Lite0 inflated to 3D on the generated site-A phantoms (:func:`medmtl.api.train`
   with ``configs/demo.yaml``) → ``train/`` (``checkpoint/``, ``metrics.csv``,
   ``gradient_conflict.csv``);
3. **adapt** the checkpoint to site B without site-B labels (:func:`medmtl.api.adapt`: AdaBN and
   histogram matching by default; ``--methods adabn,histmatch,resim`` adds re-simulation — the
   labelled site-A scans re-rendered at site B's measured acquisition) → ``adapted/<method>/``;
4. **predict** (:func:`medmtl.api.predict_folder`) on site A's held-out scans (in-domain
   reference), on site B without adaptation and on site B with each adaptation →
   ``predictions/<condition>/``; the classical, training-free floor (:func:`medmtl.api.detect_classical`)
   on the same scans, and the model fused with it (:func:`medmtl.api.fuse_predictions`, noisy-OR,
   nothing fitted to labels) on site A and on site B;
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

This module is the command line; the run is :mod:`pipelines.demo_run` (:func:`run_demo`), the
summary tables and ``README.md`` :mod:`pipelines.demo_report`, the figures
:mod:`pipelines.demo_figures`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.demo_figures import gradient_conflict_figure, make_figures
from pipelines.demo_report import readme_text, summarize, verdict_text
from pipelines.demo_run import (
    DEFAULT_METHODS,
    DEFAULT_TRAIN_PHANTOMS,
    DEMO_ARTIFACTS,
    FAST_OVERRIDES,
    FAST_TRAIN_PHANTOMS,
    METHOD_TITLES,
    PREDICT_OVERLAP,
    TRAIN_PHANTOM_SEED,
    Condition,
    clear_outputs,
    run_demo,
)
from pipelines.runs import REPO, run_guarded, setup_logging
from pipelines.tables import Row, results_table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="medmtl demo: diagnose site A vs B, fine-tune Lite0 on A, predict on B with and "
        "without adaptation, evaluate, write a summary. See the module docstring.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--fast", action="store_true", help="smoke-test settings (one tiny epoch; numbers meaningless)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml", help="training config")
    p.add_argument("--source", type=Path, default=REPO / "sample_data" / "ct_site_a", help="site A scan folder")
    p.add_argument("--target", type=Path, default=REPO / "sample_data" / "ct_site_b", help="site B scan folder")
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


def print_table(out: Path) -> str:
    """The printed results table, read from ``results.json`` → each condition's ``metrics.json``."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [Row(r["condition"], out / r["metrics_json"]) for r in results["conditions"]]
    return results_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 a medmtl error, 2 usage)."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
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
        print(f"shift verdict: {verdict_text(results['shift_verdict'])}")
        parts = [name for name in ("README.md", "shift/report.html", "predictions/", "metrics/", "figures/")
                 if (out / name).exists()]
        print(f"wrote {out} ({', '.join(parts)}) in {time.perf_counter() - t0:.0f} s")
        return 0

    return run_guarded(body)


__all__ = [
    "DEFAULT_METHODS",
    "DEMO_ARTIFACTS",
    "FAST_OVERRIDES",
    "METHOD_TITLES",
    "PREDICT_OVERLAP",
    "Condition",
    "clear_outputs",
    "gradient_conflict_figure",
    "main",
    "make_figures",
    "print_table",
    "readme_text",
    "run_demo",
    "summarize",
]


if __name__ == "__main__":
    sys.exit(main())
