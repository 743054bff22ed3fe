"""Prediction sharded over the processes of ``torchrun`` (``torchrun --nproc_per_node N -m medmtl.cli predict ...``).

``torchrun`` starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address (``MASTER_ADDR``, ``MASTER_PORT``) in their environment. Each copy predicts its
round-robin share of the sorted scans (``shard=(rank, world_size)``, see
:func:`medmtl.engine.predict.shard_refs`) on ``cuda:LOCAL_RANK`` when the device is ``auto`` or
``cuda`` and there is a GPU, writing its per-scan records atomically into the shared output
folder. The copies then meet in a small ``gloo`` process group (a few integers pass through it,
on the CPU, whatever the device of the model) and rank 0 merges every record into
``predictions.csv`` / ``predictions.json`` / ``failures.json``; its summary holds the totals of
all ranks (so ``torchrun`` exits 1 when any scan failed). A rerun skips the finished scans, as a
single-process run does.

Without a rendezvous address (``RANK`` and ``WORLD_SIZE`` set by hand) each process predicts its
share and nothing is merged: a plain ``medmtl predict`` of the same folder afterwards skips the
finished scans and writes the tables.

Nothing here imports torch until a process group is joined.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from medmtl.errors import MedmtlError

log = logging.getLogger(__name__)

#: How long a rank waits at the end for the slowest one (a share can take hours on big folders).
GROUP_TIMEOUT = _dt.timedelta(hours=24)


def torchrun_shard(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world_size)`` when this process is one of several started by ``torchrun``, else ``None``.

    Raises:
        MedmtlError: ``RANK`` / ``WORLD_SIZE`` are not integers with ``0 <= RANK < WORLD_SIZE``.
    """
    e = os.environ if env is None else env
    if "RANK" not in e or "WORLD_SIZE" not in e:
        return None
    try:
        rank, world = int(e["RANK"]), int(e["WORLD_SIZE"])
    except ValueError as exc:
        raise MedmtlError(f"RANK={e['RANK']!r} and WORLD_SIZE={e['WORLD_SIZE']!r} must be integers "
                          "(torchrun sets them); unset both to predict in one process") from exc
    if world < 1 or not 0 <= rank < world:
        raise MedmtlError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world}); unset both to predict "
                          "in one process")
    return (rank, world) if world > 1 else None


def has_rendezvous(env: Mapping[str, str] | None = None) -> bool:
    """Whether the ranks can meet: ``MASTER_ADDR`` and ``MASTER_PORT`` are set (torchrun always sets them)."""
    e = os.environ if env is None else env
    return bool(e.get("MASTER_ADDR")) and bool(e.get("MASTER_PORT"))


def rank_device(device: str, local_rank: int) -> str:
    """The device of a rank: ``cuda:LOCAL_RANK`` (modulo the GPUs there are) for ``auto`` / ``cuda`` on a
    machine with CUDA; ``cpu``, ``cuda:N`` and ``auto`` without a GPU stay as given."""
    d = device.strip().lower()
    if d not in ("auto", "cuda"):
        return d
    import torch

    if not torch.cuda.is_available():
        return d
    return f"cuda:{local_rank % torch.cuda.device_count()}"


class _Group:
    """The ranks' ``gloo`` process group (``None`` inside when there is no rendezvous)."""

    def __init__(self, shard: tuple[int, int]) -> None:
        self.rank, self.world = shard
        self.dist: Any = None
        if has_rendezvous():
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo", timeout=GROUP_TIMEOUT)
            self.dist = dist

    def sum(self, values: list[int]) -> list[int]:
        """``values`` summed over the ranks (this rank's own without a group)."""
        if self.dist is None:
            return list(values)
        import torch

        t = torch.tensor(values, dtype=torch.int64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return [int(v) for v in t.tolist()]

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


def predict_sharded(
    *,
    predict: Callable[..., dict[str, Any]],
    merge: Callable[..., dict[str, Any]],
    shard: tuple[int, int],
    input_dir: Any,
    out_dir: Any,
    device: str = "auto",
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Predict this rank's share with ``predict``, meet the other ranks and (rank 0) ``merge`` the tables.

    Args:
        predict: :func:`medmtl.engine.predict.predict_folder` (or a wrapper with its keywords).
        merge: :func:`medmtl.engine.predict.merge_folder`.
        shard: ``(rank, world_size)`` (:func:`torchrun_shard`).
        input_dir: scan folder (or file).
        out_dir: the output folder all ranks share.
        device: as for ``predict``; ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK`` (:func:`rank_device`).
        progress: show the bar (rank 0 only: the others would draw over it).
        **options: the other keywords of ``predict``.

    Returns:
        The summary of ``predict`` for this rank's share, with ``shard``, ``rendezvous`` (whether
        the ranks met), ``merged`` (whether this rank wrote the tables) and, after a merge, the totals of all ranks (``n_scans``, ``n_done``,
        ``n_skipped``, ``n_failed``, ``failures``, ``outputs``) and ``merge`` (what
        :func:`~medmtl.engine.predict.merge_folder` counted) in rank 0's summary.

    Raises:
        MedmtlError: this rank failed (its own message), or another one did.
    """
    rank, world = shard
    dev = rank_device(device, int(os.environ.get("LOCAL_RANK", rank)))
    t_start = time.perf_counter()
    group = _Group(shard)
    try:
        summary, error = _own_share(predict, input_dir, out_dir, dev, shard, progress and rank == 0, options)
        n_done, n_skipped, n_errors = group.sum([summary.get("n_done", 0), summary.get("n_skipped", 0),
                                                 int(error is not None)])
        if error is not None:
            raise error
        if n_errors:
            raise MedmtlError(f"rank {rank} of {world}: {n_errors} other rank(s) failed (see their Error lines); "
                              "nothing was merged. Fix the cause and rerun: finished scans are skipped")
        summary = {**summary, "shard": [rank, world], "merged": False, "rendezvous": group.dist is not None}
        if group.dist is None:
            return summary
        merged, merge_error = _merge_on_rank0(merge, rank, input_dir, out_dir)
        (n_merge_errors,) = group.sum([int(merge_error is not None)])  # the others wait for the tables
        if merge_error is not None:
            raise merge_error
        if n_merge_errors:
            raise MedmtlError(f"rank {rank} of {world}: rank 0 could not merge the tables (see its Error line)")
        if merged is not None:
            summary = _merged_summary(summary, merged, n_done, n_skipped, time.perf_counter() - t_start)
        return summary
    finally:
        group.close()


def _own_share(predict: Callable[..., dict[str, Any]], input_dir: Any, out_dir: Any, device: str,
               shard: tuple[int, int], progress: bool, options: dict[str, Any]
               ) -> tuple[dict[str, Any], MedmtlError | None]:
    """This rank's prediction; a :class:`MedmtlError` is returned (after the meeting it is raised)."""
    try:
        return predict(input_dir=input_dir, out_dir=out_dir, device=device, shard=shard, progress=progress,
                       **options), None
    except MedmtlError as exc:
        return {}, MedmtlError(f"rank {shard[0]} of {shard[1]}: {exc}")


def _merge_on_rank0(merge: Callable[..., dict[str, Any]], rank: int, input_dir: Any, out_dir: Any
                    ) -> tuple[dict[str, Any] | None, MedmtlError | None]:
    """Rank 0 merges every rank's records into the tables; a failure is returned, raised after the meeting."""
    if rank != 0:
        return None, None
    try:
        return merge(input_dir=input_dir, out_dir=out_dir), None
    except MedmtlError as exc:
        return None, MedmtlError(f"rank 0: merging the tables failed: {exc}")


def _merged_summary(own: dict[str, Any], merged: dict[str, Any], n_done: int, n_skipped: int,
                    wall: float) -> dict[str, Any]:
    """Rank 0's summary after the merge: the totals over all ranks."""
    n_failed = int(merged["n_failed"]) + int(merged["n_missing"])
    timings = {**own.get("timings", {}), "wall_s": wall, "scans_per_s": n_done / wall if wall > 0 and n_done else 0.0}
    return {**own, "n_scans": merged["n_scans"], "n_done": n_done, "n_skipped": n_skipped, "n_failed": n_failed,
            "n_missing": merged["n_missing"], "failures": merged["failures"],
            "merge": {k: merged[k] for k in ("n_scans", "n_complete", "n_failed", "n_missing")},
            "outputs": {**own.get("outputs", {}), **merged["outputs"]}, "timings": timings, "merged": True}


__all__ = ["GROUP_TIMEOUT", "has_rendezvous", "predict_sharded", "rank_device", "torchrun_shard"]
