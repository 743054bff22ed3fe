"""Distributed data-parallel helpers for training under ``torchrun``.

When ``torchrun`` (``python -m torch.distributed.run``) starts the trainer it sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` then
joins the process group (``nccl`` on CUDA, ``gloo`` on CPU). Each rank trains on its share
of the scans (``DistributedSampler``); after every backward pass the gradients are averaged
over the ranks with ``all_reduce`` (:func:`average_gradients`). Averaging explicitly instead
of wrapping the net in ``DistributedDataParallel`` works the same for loss-level weightings
(``total.backward()``) and for gradient-level ones (PCGrad, CAGrad, UPGrad...), which fill
``.grad`` through ``torch.autograd.grad`` where DDP's reducer hooks would never fire. Buffers
(BatchNorm statistics) are broadcast from rank 0 after each epoch. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (selects ``cuda:local_rank``).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether ``RANK`` and ``WORLD_SIZE`` (set by ``torchrun``) are in the environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (no-op otherwise).

    Args:
        device_type: ``"cuda"`` → ``nccl`` and ``cuda:LOCAL_RANK``; ``"cpu"`` → ``gloo``.

    Returns:
        This process's :class:`DistInfo`.
    """
    if not launched_by_torchrun():
        return DistInfo()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo(rank=rank, world_size=1, local_rank=local)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("distributed: rank %d/%d (%s)", rank, world, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (if this module joined one)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` of ``params`` over the ranks (in place; missing grads count as 0)."""
    if not info.enabled:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average a dict of floats over the ranks (same keys on every rank)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (picklable, in-memory only; nothing is loaded from disk)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = [
    "DistInfo",
    "all_mean",
    "average_gradients",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "init_distributed",
    "launched_by_torchrun",
    "shutdown",
]
