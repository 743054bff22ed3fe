"""Batch inference over many GPUs (or CPU processes) with ``torchrun``, as a pipeline script.

The same runs from any working directory through the installed CLI (no repository on the path)::

    torchrun --nproc_per_node 4 -m medmtl.cli predict --checkpoint runs/tiny/checkpoint data/site_b -o preds

This script (run from the repository root, or with it on ``PYTHONPATH``) is kept for its log lines::

    torchrun --nproc_per_node 4 -m pipelines.batch_inference \\
        --checkpoint runs/tiny/checkpoint data/site_b -o preds [--amp auto] [--save-maps] [--cpu]

Both call :func:`medmtl.api.predict_distributed` (see :mod:`medmtl.engine.predict_dist`): each rank
predicts its round-robin share of the sorted scans on ``cuda:LOCAL_RANK`` when GPUs are present
(else the CPU), writing per-scan results atomically into the shared output folder (a rerun
resumes); the ranks meet and rank 0 merges every per-scan result into ``predictions.csv`` /
``predictions.json`` / ``failures.json``. Rank 0 exits 1 when any scan failed. Run without
``torchrun`` it is a single process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("pipelines.batch_inference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.batch_inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    p.add_argument("input_dir", type=Path, help="scan folder")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (shared by all ranks)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--save-maps", action="store_true")
    p.add_argument("--preview", action="store_true")
    p.add_argument("--cpu", action="store_true", help="use the CPU (gloo) even when GPUs are present")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(name)s: %(message)s")
    from medmtl import api
    from medmtl.errors import MedmtlError

    options = dict(checkpoint=args.checkpoint, input_dir=args.input_dir, out_dir=args.out,
                   device="cpu" if args.cpu else "auto", amp=args.amp, overlap=args.overlap,
                   sw_batch_size=args.sw_batch_size, tta=args.tta, save_maps=args.save_maps, preview=args.preview,
                   progress=rank == 0)
    shard = api.torchrun_shard()
    try:
        if shard is None:  # one process: predict_folder merges the tables itself
            summary = api.predict_folder(**options)
            merged = {"n_complete": summary["n_done"] + summary["n_skipped"], "n_failed": summary["n_failed"],
                      "n_missing": 0, "n_scans": summary["n_scans"]}
        else:
            summary = api.predict_distributed(shard=shard, **options)
            merged = summary.get("merge", {})
    except MedmtlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if rank != 0:
        return 0
    logger.info("merged %d scans (%d failed, %d missing) into %s", merged["n_complete"], merged["n_failed"],
                merged["n_missing"], summary["outputs"].get("predictions_csv"))
    if merged["n_failed"] or merged["n_missing"]:
        print(f"Error: {merged['n_failed'] + merged['n_missing']} of {merged['n_scans']} scans failed;"
              f" see {args.out / 'failures.json'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
