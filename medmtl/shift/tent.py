"""TENT: test-time entropy minimisation on BatchNorm affine parameters.

Wang et al., "Tent: Fully test-time adaptation by entropy minimization" (ICLR 2021): BN
layers normalise with the *batch* statistics of target data and only their affine
parameters (weight γ, bias β) are optimised to minimise the entropy of the predictions.
Here the entropy is the mean binary entropy of the detection heatmap and of the malignancy
logits, on patches tiled from the target volumes. Running statistics are frozen
(``momentum = 0``) so the only tensors that change are BN weights and biases; ``episodic``
resets them to the source values before each batch (the paper's episodic variant).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from medmtl.progress import bar

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy (nats) of sigmoid probabilities of ``logits``."""
    import torch.nn.functional as F

    p = logits.sigmoid()
    return (F.binary_cross_entropy_with_logits(logits, p, reduction="none")).mean()


def _shuffled_batches(n: int, passes: int, batch_size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """``passes`` passes over the indices ``0..n-1``, each in a fresh random order, ``batch_size`` at a time."""
    import torch

    for _ in range(passes):
        order = torch.randperm(n, generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            yield order[i : i + batch_size]


def tent(
    model: nn.Module,
    volumes: Sequence[torch.Tensor],
    patch_size: Sequence[int],
    *,
    steps: int = 1,
    lr: float = 1e-3,
    batch_size: int = 2,
    episodic: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Adapt BN affine parameters by entropy minimisation (modified in place).

    Args:
        model: network with BatchNorm layers whose outputs hold ``heatmap`` and
            ``malignancy`` logits.
        volumes: preprocessed target volumes ``(1, C, I, J, K)``.
        patch_size: tile size in voxels.
        steps: passes over the target patches.
        lr: Adam learning rate.
        batch_size: patches per step.
        episodic: reset the affine parameters before every batch.
        seed: shuffling seed.
        progress: a progress bar over the optimisation steps (:func:`medmtl.progress.bar`).

    Returns:
        The entropy loss of every optimisation step.
    """
    import torch

    from medmtl.shift.adabn import tile_patches
    from medmtl.shift.bn_shift import bn_layers

    layers = [m for _, m in bn_layers(model)]
    dev = next(model.parameters()).device
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    initial = copy.deepcopy([p.detach().clone() for p in params])
    saved_mom = [m.momentum for m in layers]
    saved_count = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.train()
        m.momentum = 0.0  # batch statistics in the forward pass, running buffers untouched
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    patches = [p for v in volumes for p in tile_patches(v, patch_size)]
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    steps_bar = bar(_shuffled_batches(len(patches), steps, batch_size, gen), desc="tent", unit="step",
                    total=steps * -(-len(patches) // batch_size), enabled=progress)
    try:
        for idx in steps_bar:
            if episodic:
                with torch.no_grad():
                    for p, p0 in zip(params, initial):
                        p.copy_(p0)
            out = model(torch.cat([patches[j] for j in idx]).to(dev))
            loss = binary_entropy(out["heatmap"]) + binary_entropy(out["malignancy"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps_bar.set_postfix(entropy=f"{losses[-1]:.4f}", refresh=False)
    finally:
        steps_bar.close()
        for m, mom, count in zip(layers, saved_mom, saved_count):
            m.momentum = mom
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    logger.info("TENT: %d steps, entropy %.4f -> %.4f", len(losses), losses[0] if losses else 0, losses[-1] if losses else 0)
    return losses
