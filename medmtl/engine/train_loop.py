"""One training epoch: patch batches → forward (AMP) → task losses → weighting → step.

The trainer alone runs ``backward()``, writes ``.grad`` and steps (DESIGN.md, "Task
weighting"); :func:`backward_losses` treats the two kinds of weighting by their type:

* a :class:`~medmtl.mtl.weighting.LossWeighting` (fixed, uncertainty, DWA, GradNorm) returns a
  total loss: ``total.backward()`` (GradNorm's weight-balancing gradient rides along in it);
* a :class:`~medmtl.mtl.gradient_methods.GradientMethod` (PCGrad, UPGrad, CAGrad) returns
  weights ``w`` from the task Gramian: the trainer computes the per-task gradients on the
  shared parameters once, writes ``.grad = Σ_t w_t g_t`` there and backpropagates the heads'
  own losses into the heads.

Either way an L2-SP term (Li et al., "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", ICML 2018) is added by a separate backward, gradients are averaged
over DDP ranks, unscaled (fp16 ``GradScaler``), clipped to ``grad_clip`` and applied. Every
``conflict_every`` steps the per-task gradients on the shared parameters are measured for
the gradient-conflict statistics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medmtl.data.dataset import TARGET_KEYS, stack_patches
from medmtl.engine.ddp import DistInfo, average_gradients
from medmtl.errors import MedmtlError
from medmtl.mtl.conflict import per_task_shared_grads, trainable
from medmtl.mtl.gradient_methods import GradientMethod
from medmtl.mtl.weighting import LossWeighting, Weighting

logger = logging.getLogger(__name__)


@dataclass
class StepContext:
    """Everything one optimisation step needs.

    Attributes:
        model: the multi-task net (train mode).
        optimizer: its optimizer.
        scheduler: per-step LR scheduler (or ``None``).
        scaler: ``torch.amp.GradScaler`` (enabled only for fp16 on CUDA).
        weighting: the task weighting (a ``LossWeighting`` or a ``GradientMethod``).
        shared_params: trainable parameters shared by all tasks (encoder + decoder).
        params: every trainable parameter (clipping, DDP averaging).
        device: training device.
        amp_dtype: autocast dtype, ``None`` = full precision.
        grad_clip: max global gradient norm (0 = off).
        dist: DDP info.
        regularizer: optional extra loss (e.g. L2-SP) of the model, a scalar tensor.
        conflict: optional :class:`~medmtl.mtl.conflict.GradientConflictTracker`.
        conflict_every: measure conflict every N steps (0 = off).
        train_mode: puts the model in training mode (the strategy's, which keeps frozen
            BatchNorm layers in eval mode); default ``model.train()``.
        freeze_bn: after that, keep every BatchNorm layer of ``model.encoder`` in eval mode
            (``train.freeze_bn``).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    weighting: Weighting
    shared_params: list[torch.nn.Parameter]
    params: list[torch.nn.Parameter]
    device: torch.device
    amp_dtype: torch.dtype | None
    grad_clip: float
    dist: DistInfo
    regularizer: Callable[[], torch.Tensor] | None = None
    conflict: Any = None
    conflict_every: int = 0
    train_mode: Callable[[torch.nn.Module], Any] | None = None
    freeze_bn: bool = False


@dataclass
class EpochStats:
    """Running means of one epoch."""

    losses: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    grad_norm: float = 0.0
    grad_norm_max: float = 0.0
    per_step: list[dict[str, float]] = field(default_factory=list)

    def add(self, losses: dict[str, float], weights: dict[str, float], grad_norm: float, step: int = -1) -> None:
        """Accumulate one step (and keep its row for ``steps.csv``)."""
        self.per_step.append({"step": step, "grad_norm": grad_norm, **{f"loss_{k}": v for k, v in losses.items()}})
        self.grad_norm_max = max(self.grad_norm_max, grad_norm)
        self.steps += 1
        n = self.steps
        for k, v in losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + (v - self.losses.get(k, 0.0)) / n
        for k, v in weights.items():
            self.weights[k] = self.weights.get(k, 0.0) + (v - self.weights.get(k, 0.0)) / n
        self.grad_norm += (grad_norm - self.grad_norm) / n


def _to_float_dict(weights: Any) -> dict[str, float]:
    if weights is None:
        return {}
    if isinstance(weights, dict):
        return {str(k): float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in weights.items()}
    return {}


def private_leaves(losses: Sequence[torch.Tensor], exclude: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Leaf tensors requiring grad that the losses depend on, minus ``exclude``.

    Walks the autograd graph (``AccumulateGrad`` nodes); finds the task-specific parameters
    (heads) without a hidden attribute contract with the model.
    """
    skip = {id(p) for p in exclude}
    seen: set[int] = set()
    found: dict[int, torch.Tensor] = {}
    stack = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None:
            if var.requires_grad and id(var) not in skip:
                found[id(var)] = var
            continue
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return list(found.values())


def write_combined_grad(params: Sequence[torch.nn.Parameter], weights: torch.Tensor, jacobian: torch.Tensor) -> None:
    """Accumulate ``weightsᵀ · jacobian`` into ``.grad`` of ``params``.

    Args:
        params: the parameters the Jacobian's columns cover, in order (flattened, concatenated).
        weights: ``(T,)`` combination weights.
        jacobian: ``(T, P)`` task gradients, ``P`` the total size of ``params``.
    """
    combined = weights.to(jacobian) @ jacobian
    offset = 0
    for p in params:
        n = p.numel()
        g = combined[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
        p.grad = g.clone() if p.grad is None else p.grad + g


def _backward_gradient_method(
    method: GradientMethod,
    losses: Mapping[str, torch.Tensor],
    shared_params: Sequence[torch.nn.Parameter],
    task_grads: Mapping[str, torch.Tensor] | None,
) -> dict[str, float]:
    method.check_losses(losses)
    params = trainable(shared_params)
    grads = task_grads if task_grads is not None else per_task_shared_grads(losses, params, retain_graph=True)
    device = params[0].device if params else torch.device("cpu")
    jac = torch.stack([grads[t].to(device).float() for t in method.tasks])
    w = method.step_weights(jac)
    if params:
        write_combined_grad(params, w, jac)
    loss_list = [losses[t] for t in method.tasks if losses[t].requires_grad]
    own = private_leaves(loss_list, params)
    if own and loss_list:
        torch.autograd.backward(torch.stack([loss.float() for loss in loss_list]).sum(), inputs=own)
    return {t: float(w[i]) for i, t in enumerate(method.tasks)}


def backward_losses(
    weighting: Weighting,
    losses: Mapping[str, torch.Tensor],
    shared_params: Sequence[torch.nn.Parameter],
    *,
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    task_grads: Mapping[str, torch.Tensor] | None = None,
    regularizer: Callable[[], torch.Tensor] | None = None,
) -> tuple[float, dict[str, float]]:
    """Fill ``.grad`` of one step from the task losses: the trainer's one backward.

    A :class:`LossWeighting`'s total (plus the regulariser) is backpropagated. For a
    :class:`GradientMethod`, the task gradients on the trainable shared parameters
    (``task_grads`` when given, else computed once) make the Jacobian ``J`` (``T × P``), the
    method turns it into weights ``w`` and ``.grad = wᵀJ`` is written there; each head gets
    the plain gradient of the losses it feeds, and the regulariser its own backward.
    Gradients accumulate (zero them before).

    Args:
        weighting: the task weighting.
        losses: task → scalar loss (unscaled).
        shared_params: the shared parameters (frozen ones skipped).
        scale: AMP loss scaling (``GradScaler.scale``) applied to every backpropagated loss.
        task_grads: :func:`~medmtl.mtl.conflict.per_task_shared_grads` of the losses after ``scale``
            already computed this step (saves recomputing them).
        regularizer: optional extra loss (e.g. L2-SP).

    Returns:
        ``(total, weights)``: the unscaled total loss value (``Σ w_t L_t`` for a gradient
        method, plus the regulariser) and the task weights used.
    """
    values = {k: float(v.detach()) for k, v in losses.items()}
    if isinstance(weighting, GradientMethod):
        scaled = {k: scale(v) for k, v in losses.items()} if scale is not None else losses
        weights = _backward_gradient_method(weighting, scaled, shared_params, task_grads)
        total_value = sum(w * values[k] for k, w in weights.items() if k in values)
        if regularizer is not None:
            reg = regularizer()
            (scale(reg) if scale is not None else reg).backward()
            total_value += float(reg.detach())
        return total_value, weights
    if not isinstance(weighting, LossWeighting):
        raise TypeError(f"weighting {weighting.name!r} is neither a LossWeighting nor a GradientMethod")
    total, raw = weighting.combine(losses, shared_params)
    if regularizer is not None:
        total = total + regularizer()
    (scale(total) if scale is not None else total).backward()
    return float(total.detach()), _to_float_dict(raw)


def train_step(ctx: StepContext, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, float], float]:
    """One optimisation step on a batch.

    Args:
        ctx: the step context.
        batch: ``image (B, C, I, J, K)`` and targets ``(B, 1, I, J, K)``.
        step: global step index (0-based; decides conflict measurement).

    Returns:
        ``(losses, weights, grad_norm)``: per-task losses plus ``"total"``, the task weights
        used, and the global gradient norm before clipping.

    Raises:
        MedmtlError: the loss became NaN/inf (with the step and the losses).
    """
    from medmtl.mtl.losses import task_losses

    model = ctx.model
    dev = ctx.device
    image = batch["image"].to(dev, non_blocking=True)
    targets = {k: batch[k].to(dev, non_blocking=True) for k in TARGET_KEYS}
    ctx.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None):
        outputs = model(image)
    losses = task_losses({k: v.float() for k, v in outputs.items()}, targets)
    values = {k: float(v.detach()) for k, v in losses.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise MedmtlError(
            f"training diverged at step {step}: task losses {values}; lower train.learning_rate,"
            " keep train.grad_clip > 0 or use train.amp=bf16/off"
        )
    conflict_grads = None
    if ctx.conflict is not None and ctx.conflict_every > 0 and step % ctx.conflict_every == 0:
        conflict_grads = per_task_shared_grads(losses, ctx.shared_params, retain_graph=True)
    scaler = ctx.scaler
    scaling = scaler is not None and scaler.is_enabled()
    total_value, weights = backward_losses(
        ctx.weighting,
        losses,
        ctx.shared_params,
        scale=scaler.scale if scaling else None,
        task_grads=conflict_grads if not scaling else None,
        regularizer=ctx.regularizer,
    )
    if conflict_grads is not None:
        ctx.conflict.update(conflict_grads, weights)
    average_gradients(ctx.params, ctx.dist)
    if scaling:
        scaler.unscale_(ctx.optimizer)
    grads = [p.grad for p in ctx.params if p.grad is not None]
    if ctx.grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(ctx.params, ctx.grad_clip))
    elif grads:
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    else:
        norm = 0.0
    if scaling:
        scaler.step(ctx.optimizer)
        scaler.update()
    else:
        ctx.optimizer.step()
    if ctx.scheduler is not None:
        ctx.scheduler.step()
    values["total"] = total_value
    return values, weights, norm


def patch_batches(
    passes: Callable[[int], Iterator[list[dict[str, torch.Tensor]]]], batch_size: int, steps: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Cut a stream of per-scan patch lists into ``steps`` batches of ``batch_size`` patches.

    Args:
        passes: ``passes(i)`` iterates the ``i``-th pass over the (shuffled) scans, each item
            the list of patches of one scan.
        batch_size: patches per batch.
        steps: number of batches to yield (passes are repeated as needed).
    """
    buf: list[dict[str, torch.Tensor]] = []
    produced = 0
    n_pass = 0
    while produced < steps:
        got_any = False
        for patches in passes(n_pass):
            got_any = True
            buf.extend(patches)
            while len(buf) >= batch_size and produced < steps:
                yield stack_patches(buf[:batch_size])
                buf = buf[batch_size:]
                produced += 1
            if produced >= steps:
                return
        if not got_any:
            raise MedmtlError("the training data produced no patch; check data.root and data.train_ids")
        n_pass += 1


def train_epoch(
    ctx: StepContext,
    batches: Iterator[dict[str, torch.Tensor]],
    *,
    steps: int,
    epoch: int,
    global_step: int,
    progress: bool,
    epochs: int | None = None,
) -> tuple[EpochStats, int]:
    """Run ``steps`` optimisation steps (``progress``: a bar per epoch with ETA and the task losses;
    ``epochs``, the run's total, only names the bar).

    Returns:
        ``(stats, global_step)`` after the epoch.
    """
    from medmtl.progress import bar as progress_bar

    if ctx.train_mode is not None:
        ctx.train_mode(ctx.model)
    else:
        ctx.model.train()
    if ctx.freeze_bn:
        from torch.nn.modules.batchnorm import _BatchNorm

        encoder = getattr(ctx.model, "encoder", ctx.model)
        for m in encoder.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
    stats = EpochStats()
    start = time.perf_counter()
    bar = progress_bar(total=steps, desc=f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else ""), unit="step",
                       leave=False, enabled=progress and ctx.dist.is_main)
    try:
        t_data = time.perf_counter()
        for batch in batches:
            t_step = time.perf_counter()
            losses, weights, norm = train_step(ctx, batch, global_step)
            logger.debug(
                "step %d: data %.2f s, step %.2f s, losses %s", global_step, t_step - t_data,
                time.perf_counter() - t_step, {k: round(v, 4) for k, v in losses.items()},
            )
            t_data = time.perf_counter()
            global_step += 1
            stats.add(losses, weights, norm, global_step)
            bar.update(1)
            bar.set_postfix({"loss": f"{losses['total']:.4f}",
                             **{t: f"{v:.4f}" for t, v in losses.items() if t != "total"}}, refresh=False)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    stats.lr = float(ctx.optimizer.param_groups[0]["lr"])
    return stats, global_step


__all__ = [
    "EpochStats",
    "StepContext",
    "backward_losses",
    "patch_batches",
    "private_leaves",
    "train_epoch",
    "train_step",
    "write_combined_grad",
]
