"""Batch inference over many GPUs (or CPU processes) with ``torchrun``.

Usage::

    torchrun --nproc_per_node 4 -m pipelines.batch_inference \\
        --checkpoint runs/tiny/checkpoint data/site_b -o preds [--amp auto] [--save-maps]

Each rank joins the process group (NCCL on CUDA, gloo on CPU), uses ``cuda:LOCAL_RANK`` when
GPUs are present (else the CPU), predicts its round-robin share of the sorted scans with
:func:`medmtl.api.predict_folder` (``shard=(rank, world_size)``; per-scan results are written
atomically into the shared output folder and a rerun resumes), waits at a barrier, and rank 0
merges every per-scan result into ``predictions.csv`` / ``predictions.json`` /
``failures.json`` with :func:`medmtl.api.merge_predictions`. The exit code is 1 on every rank
when any scan failed. Run without ``torchrun`` it is a single process (rank 0 of 1).
"""

from __future__ import annotations

import argparse
import datetime as _dt
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
    p.add_argument("--timeout-min", type=float, default=60.0, help="process-group timeout (minutes)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(name)s: %(message)s")
    import torch
    import torch.distributed as dist

    from medmtl import api
    from medmtl.errors import MedmtlError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not args.cpu
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    log = logger
    distributed = world > 1
    if distributed:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=_dt.timedelta(minutes=args.timeout_min))
    status = 0
    try:
        try:
            summary = api.predict_folder(
                checkpoint=args.checkpoint, input_dir=args.input_dir, out_dir=args.out, device=device,
                amp=args.amp, overlap=args.overlap, sw_batch_size=args.sw_batch_size, tta=args.tta,
                save_maps=args.save_maps, preview=args.preview, progress=rank == 0,
                shard=(rank, world),
            )
            log.info("predicted %d, already complete %d, failed %d of %d scans on %s",
                     summary["n_done"], summary["n_skipped"], summary["n_failed"], summary["n_scans"], device)
        except MedmtlError as exc:
            print(f"Error: rank {rank}: {exc}", file=sys.stderr)
            status = 1
        if distributed:
            flag = torch.tensor([status], dtype=torch.int64, device=device if use_cuda else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # acts as the barrier too
            status = int(flag.item())
        if rank == 0 and status == 0:
            merged = api.merge_predictions(input_dir=args.input_dir, out_dir=args.out)
            log.info("merged %d scans (%d failed, %d missing) into %s", merged["n_complete"], merged["n_failed"],
                     merged["n_missing"], merged["outputs"]["predictions_csv"])
            if merged["n_failed"] or merged["n_missing"]:
                print(f"Error: {merged['n_failed'] + merged['n_missing']} of {merged['n_scans']} scans failed;"
                      f" see {args.out / 'failures.json'}", file=sys.stderr)
                status = 1
        if distributed:
            flag = torch.tensor([status], dtype=torch.int64, device=device if use_cuda else "cpu")
            dist.broadcast(flag, src=0)
            status = int(flag.item())
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
