"""AdaBN: re-estimate BatchNorm statistics on the target domain.

Li et al., "Revisiting batch normalization for practical domain adaptation" (ICLR-W 2017 /
Pattern Recognition 2018): the BN running mean/variance hold the source domain's statistics;
replacing them by the target domain's (with all weights unchanged) removes first- and
second-order feature shift without labels. Here the statistics are accumulated over whole
target volumes, tiled into the checkpoint's patch size, with cumulative averaging
(``momentum=None``: every patch counts equally). Only BN *buffers* change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

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


def adabn(model: nn.Module, volumes: Sequence[torch.Tensor], patch_size: Sequence[int], *, batch_size: int = 2) -> int:
    """Replace every BN layer's running statistics by those of the target volumes.

    Args:
        model: network with BatchNorm layers (modified in place: BN buffers only).
        volumes: preprocessed target volumes ``(1, C, I, J, K)``.
        patch_size: tile size ``(pi, pj, pk)`` in voxels.
        batch_size: patches per forward pass.

    Returns:
        The number of patches used.
    """
    import torch

    from medmtl.shift.bn_shift import bn_layers

    layers = [m for _, m in bn_layers(model)]
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
            if buf:
                model(torch.cat(buf).to(dev))
                n += len(buf)
    finally:
        for m, mom in zip(layers, saved):
            m.momentum = mom
        model.train(was_training)
    logger.info("AdaBN: %d BN layers re-estimated over %d patches", len(layers), n)
    return n
