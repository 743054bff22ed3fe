"""DANN: domain-adversarial fine-tuning with a gradient-reversal layer.

Ganin et al., "Domain-adversarial training of neural networks" (JMLR 2016): a domain
classifier on the encoder's features learns to tell source from target, while a gradient
reversal layer (identity forward, ``−λ ×`` gradient backward) makes the encoder learn
features the classifier cannot separate. The detection, size and malignancy losses are kept
on labelled source patches, so the features stay useful. The domain classifier reads the
global-average-pooled, concatenated encoder levels; ``λ`` follows the paper's schedule
``2 / (1 + exp(−10 p)) − 1`` over training progress ``p``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmtl.shift.source_patches import LabelledPatches, SourceItem

logger = logging.getLogger(__name__)


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``−λ`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:  # noqa: D102
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Gradient reversal (Ganin et al. 2016): ``y = x``, ``∂L/∂x = −λ ∂L/∂y``."""
    out: torch.Tensor = _ReverseGrad.apply(x, lam)  # type: ignore[no-untyped-call]
    return out


class GradientReversal(nn.Module):
    """Module form of :func:`reverse_gradient` with a settable ``lam``."""

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.lam)


class DomainClassifier(nn.Module):
    """Gradient reversal → MLP (``F → hidden → 1`` logit: source 0, target 1)."""

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.grl = GradientReversal()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.grl(features))


def pooled_features(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Differentiable global-average pooling of each ``(B, C_l, ...)`` level, concatenated."""
    return torch.cat([f.flatten(2).mean(dim=2) for f in levels], dim=1)


def grl_schedule(progress: float) -> float:
    """λ of Ganin et al.: ``2 / (1 + exp(−10 p)) − 1`` for progress ``p`` in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def dann(
    model: nn.Module,
    source: Sequence[SourceItem],
    target: Sequence[torch.Tensor],
    patch_size: Sequence[int],
    *,
    steps: int = 20,
    lr: float = 1e-4,
    domain_weight: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` (in place) with the task losses on source and a reversed domain loss.

    Args:
        model: ``MultiTaskNet`` (``.encoder`` returns the feature levels).
        source: :data:`~medmtl.shift.source_patches.SourceItem` per labelled source scan
            (volumes smaller than a patch are padded).
        target: unlabelled target volumes ``(1, C, I, J, K)``.
        patch_size: patch size in voxels.
        steps: optimisation steps (one source and one target patch each, in one batch).
        lr: Adam learning rate.
        domain_weight: weight of the domain loss.
        seed: sampling seed.
        progress: a progress bar over the steps with the losses (:func:`medmtl.progress.bar`).

    Returns:
        Per-step losses (``task``, ``domain``, ``lambda``).
    """
    import torch.nn.functional as F

    from medmtl.mtl.losses import task_losses
    from medmtl.progress import bar
    from medmtl.shift.adabn import tile_patches

    gen = torch.Generator().manual_seed(seed)
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    info: list[dict[str, Any]] = list(encoder.feature_info)  # type: ignore[arg-type]
    feat_dim = sum(int(i["channels"]) for i in info)
    dev = next(model.parameters()).device
    head = DomainClassifier(feat_dim).to(dev)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=lr)
    tgt_patches = [p for v in target for p in tile_patches(v, patch_size)]
    captured: list[Any] = []
    hook = encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
    history: list[dict[str, float]] = []
    patches = LabelledPatches(source, patch_size)
    model.train()
    try:
        for step in (steps_bar := bar(range(steps), desc="dann", unit="step", enabled=progress)):
            xs, tmaps = patches.sample(gen)
            ts = {k: v.to(dev) for k, v in tmaps.items()}
            xt = tgt_patches[int(torch.randint(0, len(tgt_patches), (1,), generator=gen))]
            # one pass over the (source, target) pair: BatchNorm sees a batch of 2 (a batch of
            # one 1×1×1 deepest level cannot be batch-normalised) and both domains share it
            captured.clear()
            out_both = model(torch.cat([xs, xt]).to(dev))
            out = {k: v[:1] for k, v in out_both.items()}
            feats = pooled_features(captured[-1])
            lam = grl_schedule(step / max(steps - 1, 1))
            head.grl.lam = lam
            logits = head(feats)
            dom_y = torch.tensor([[0.0], [1.0]], device=dev)
            l_dom = F.binary_cross_entropy_with_logits(logits, dom_y)
            l_task = torch.stack(list(task_losses(out, ts).values())).sum()
            loss = l_task + domain_weight * l_dom
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            history.append({"task": float(l_task.detach()), "domain": float(l_dom.detach()), "lambda": lam})
            steps_bar.set_postfix(task=f"{history[-1]['task']:.4f}", domain=f"{history[-1]['domain']:.4f}", refresh=False)
    finally:
        hook.remove()
        model.eval()
    logger.info("DANN: %d steps, last %s", steps, history[-1] if history else {})
    return history
