"""AdaBN: re-estimate BatchNorm statistics on the target domain.

Li et al., "Revisiting batch normalization for practical domain adaptation" (ICLR-W 2017 /
Pattern Recognition 2018): the BN running mean/variance hold the source domain's statistics;
replacing them by the target domain's (with all weights unchanged) removes first- and
second-order feature shift without labels. Here the statistics are accumulated over whole
target volumes, tiled into the checkpoint's patch size, with cumulative averaging
(``momentum=None``: every patch counts equally). Only BN *buffers* change.

Statistics-shift variant (``source_volumes`` given): the running statistics a network keeps
come from its *training* patches (here mostly lesion-centred, inside the lungs), while tiles of
whole volumes also cover air, table and body wall; replacing them changes the sampling as well
as the site (measured on an H100: plain AdaBN lowered site-B CPM, ``bench/RESULTS.md``). The
variant tiles source and target volumes the same way and moves each layer's running statistics
by the *difference* between the two: ``mean += mean_T − mean_S``, ``var *= var_T / var_S``.
Identical source and target leave the buffers unchanged. Written here because MONAI and torch
have no AdaBN; the statistics pass is the same cumulative BN update as above.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)


def tile_patches(x: torch.Tensor, patch_size: Sequence[int]) -> Iterator[torch.Tensor]:
    """Tile a ``(1, C, I, J, K)`` volume into patches covering it (the last patch of each
    axis is aligned with the volume's end; a volume smaller than a patch is edge-padded)."""
    import torch.nn.functional as F

    pads: list[int] = []
    for size, p in zip(reversed(x.shape[2:]), reversed(list(patch_size))):
        extra = max(int(p) - size, 0)
        pads.extend([extra // 2, extra - extra // 2])
    if any(pads):
        x = F.pad(x, pads, mode="replicate")
    starts = []
    for size, p in zip(x.shape[2:], patch_size):
        s = list(range(0, size - int(p) + 1, int(p)))
        if s[-1] != size - int(p):
            s.append(size - int(p))
        starts.append(s)
    pi, pj, pk = (int(v) for v in patch_size)
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                yield x[:, :, i : i + pi, j : j + pj, k : k + pk]


def _buffers(m: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var)`` of a BN layer that tracks running statistics."""
    if m.running_mean is None or m.running_var is None:  # track_running_stats=False
        raise ValueError(f"{type(m).__name__} keeps no running statistics (track_running_stats=False)")
    return m.running_mean, m.running_var


def _accumulate(model: nn.Module, layers: Sequence[_BatchNorm], volumes: Sequence[torch.Tensor],
                patch_size: Sequence[int], batch_size: int) -> int:
    """Reset ``layers``' running statistics and accumulate them over the tiles of ``volumes``."""
    import torch

    dev = next(model.parameters()).device
    saved = [m.momentum for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    n = 0
    try:
        with torch.no_grad():
            buf: list[torch.Tensor] = []
            for vol in volumes:
                for patch in tile_patches(vol, patch_size):
                    buf.append(patch)
                    if len(buf) == batch_size:
                        model(torch.cat(buf).to(dev))
                        n += len(buf)
                        buf = []
            # a last batch of one patch cannot be batch-normalised where the deepest level is one
            # voxel (torch refuses it); it is dropped unless it is the only patch there is
            if len(buf) > 1 or (buf and n == 0):
                if len(buf) == 1:
                    buf.append(buf[0])
                model(torch.cat(buf).to(dev))
                n += len(buf)
    finally:
        for m, mom in zip(layers, saved):
            m.momentum = mom
        model.train(was_training)
    return n


def tile_statistics(model: nn.Module, volumes: Sequence[torch.Tensor], patch_size: Sequence[int], *,
                    batch_size: int = 2) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Per BN layer ``(mean, var)`` over the tiles of ``volumes``; the model is left as it was.

    Args:
        model: network with BatchNorm layers (its buffers are restored afterwards).
        volumes: preprocessed volumes ``(1, C, I, J, K)``.
        patch_size: tile size in voxels.
        batch_size: patches per forward pass.

    Returns:
        ``(running_mean, running_var)`` of every BN layer, in :func:`bn_layers` order, and the
        number of patches used.
    """
    from medmtl.shift.bn_shift import bn_layers

    layers = [m for _, m in bn_layers(model)]
    saved = [(_buffers(m)[0].clone(), _buffers(m)[1].clone(),
              None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    try:
        n = _accumulate(model, layers, volumes, patch_size, batch_size)
        return [(_buffers(m)[0].clone(), _buffers(m)[1].clone()) for m in layers], n
    finally:
        for m, (mean, var, count) in zip(layers, saved):
            _buffers(m)[0].copy_(mean)
            _buffers(m)[1].copy_(var)
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def adabn(model: nn.Module, volumes: Sequence[torch.Tensor], patch_size: Sequence[int], *, batch_size: int = 2,
          source_volumes: Sequence[torch.Tensor] | None = None, eps: float = 1e-5) -> int:
    """Re-estimate every BN layer's running statistics for the target volumes.

    Args:
        model: network with BatchNorm layers (modified in place: BN buffers only).
        volumes: preprocessed target volumes ``(1, C, I, J, K)``.
        patch_size: tile size ``(pi, pj, pk)`` in voxels.
        batch_size: patches per forward pass.
        source_volumes: preprocessed *source* volumes; when given, the running statistics are
            shifted by the target − source difference of tile statistics (see the module
            docstring) instead of being replaced.
        eps: added to both variances of the ratio.

    Returns:
        The number of target patches used.
    """
    import torch

    from medmtl.shift.bn_shift import bn_layers

    layers = [m for _, m in bn_layers(model)]
    if source_volumes is None:
        n = _accumulate(model, layers, volumes, patch_size, batch_size)
        logger.info("AdaBN: %d BN layers re-estimated over %d patches", len(layers), n)
        return n
    src, _ = tile_statistics(model, source_volumes, patch_size, batch_size=batch_size)
    tgt, n = tile_statistics(model, volumes, patch_size, batch_size=batch_size)
    with torch.no_grad():
        for m, (ms, vs), (mt, vt) in zip(layers, src, tgt):
            mean, var = _buffers(m)
            mean.add_(mt - ms)
            var.mul_((vt + eps) / (vs + eps))
    logger.info("AdaBN (statistics shift): %d BN layers moved by target - source tile statistics (%d target, "
                "%d source volumes)", len(layers), len(volumes), len(source_volumes))
    return n
