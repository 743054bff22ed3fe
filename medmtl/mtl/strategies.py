"""Transfer-learning strategies: what to freeze, which learning rate each part gets.

Strategies (``strategy=``):

* ``linear-probe`` — encoder frozen (BatchNorm statistics too), decoder + heads train;
* ``partial`` — the last ``partial_stages`` encoder stages train, earlier ones are frozen;
* ``full`` — everything trains (Yosinski et al. 2014, "How transferable are features");
* ``lp-ft`` — linear probe for ``probe_epochs``, then full fine-tuning (Kumar et al. 2022,
  "Fine-Tuning can Distort Pretrained Features");
* ``gradual`` — gradual unfreezing, one more encoder stage per epoch from the top
  (Howard & Ruder 2018, ULMFiT).

Orthogonal options: a lower learning rate for pretrained parameters (``pretrained_lr_mult``),
layer-wise LR decay (``layer_decay``: stage ``i`` of ``n`` gets ``lr × decay^(n − i)``, the
decoder and heads ``lr``; Clark et al. 2020 ELECTRA, Bao et al. 2022 BEiT), and the L2-SP
regulariser ``α/2 ‖w − w₀‖²`` towards the pretrained weights (Li, Grandvalet & Davoine
2018), which replaces weight decay on the encoder.

Encoder stages come from ``encoder.stages()`` when the encoder provides it; otherwise from
the backbone's feature levels (MONAI EfficientNet ``_blocks`` + ``feature_stages``) or its
top-level children.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medmtl.errors import ConfigError, did_you_mean

__all__ = [
    "STRATEGIES",
    "L2SPRegularizer",
    "StrategySchedule",
    "TransferPlan",
    "apply_strategy",
    "encoder_stages",
    "setup_transfer",
]

STRATEGIES: tuple[str, ...] = ("linear-probe", "partial", "full", "lp-ft", "gradual")


def _params_of(item: Any) -> list[nn.Parameter]:
    if isinstance(item, nn.Module):
        return list(item.parameters())
    if isinstance(item, nn.Parameter):
        return [item]
    return [p for p in item]


def _raw_stages(encoder: nn.Module) -> list[list[nn.Parameter]]:
    fn = getattr(encoder, "stages", None)
    if isinstance(fn, nn.Module):
        return [_params_of(m) for m in fn.children()]
    if callable(fn):
        return [_params_of(s) for s in fn()]
    backbone = getattr(encoder, "backbone", encoder)
    blocks = getattr(backbone, "_blocks", None)
    levels = getattr(backbone, "feature_stages", None)
    if isinstance(blocks, nn.Module) and levels:
        children = list(blocks.children())
        out, start = [], 0
        for end in levels:
            out.append([p for b in children[start : end + 1] for p in b.parameters()])
            start = end + 1
        return out
    return [list(c.parameters()) for c in backbone.children()]


def encoder_stages(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters grouped into stages, shallow → deep.

    Every parameter of ``encoder`` lands in exactly one stage: parameters a stage list does
    not cover (stem, head convolution) join the stage of the nearest preceding parameter in
    registration order (the first stage when none precedes).

    Returns:
        Non-empty parameter lists, one per stage.
    """
    groups = [g for g in _raw_stages(encoder) if g]
    owner: dict[int, int] = {}
    for i, g in enumerate(groups):
        for p in g:
            owner.setdefault(id(p), i)
    all_params = list(encoder.parameters())
    if not groups:
        return [all_params] if all_params else []
    out: list[list[nn.Parameter]] = [[] for _ in groups]
    current = 0
    for p in all_params:
        current = owner.get(id(p), current)
        out[current].append(p)
    return [g for g in out if g]


class L2SPRegularizer:
    """L2-SP (Li, Grandvalet & Davoine 2018, ICML): ``α/2 ‖w − w₀‖²`` on pretrained weights.

    ``w₀`` is a detached copy taken at construction (build it right after loading the
    pretrained weights). Optionally ``β/2 ‖w‖²`` on the new (decoder/head) weights.

    Args:
        pretrained: the pretrained parameters (the encoder's).
        alpha: strength ``α ≥ 0`` towards ``w₀``.
        new_params: parameters trained from scratch (for ``β``).
        beta: plain L2 strength on ``new_params``.
    """

    def __init__(
        self,
        pretrained: Sequence[nn.Parameter],
        alpha: float,
        new_params: Sequence[nn.Parameter] = (),
        beta: float = 0.0,
    ) -> None:
        if not (alpha >= 0 and beta >= 0):
            raise ConfigError(f"l2sp alpha={alpha!r}, beta={beta!r} invalid; both must be >= 0")
        self.params = list(pretrained)
        self.reference = [p.detach().clone() for p in self.params]
        self.new_params = list(new_params)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def __call__(self) -> torch.Tensor:
        """The penalty (float32 scalar) to add to the training loss."""
        dev = self.params[0].device if self.params else torch.device("cpu")
        total = torch.zeros((), device=dev)
        for p, p0 in zip(self.params, self.reference):
            if p.requires_grad:
                total = total + 0.5 * self.alpha * (p.float() - p0.to(p.device).float()).pow(2).sum()
        if self.beta > 0:
            for p in self.new_params:
                if p.requires_grad:
                    total = total + 0.5 * self.beta * p.float().pow(2).sum()
        return total

    def reference_tensors(self) -> dict[str, torch.Tensor]:
        """``w₀`` as ``{"l2sp.<i>": tensor}`` (save with the checkpoint to resume exactly)."""
        return {f"l2sp.{i}": t for i, t in enumerate(self.reference)}

    def load_reference_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`reference_tensors` (shapes must match)."""
        for i, ref in enumerate(self.reference):
            t = tensors[f"l2sp.{i}"]
            if t.shape != ref.shape:
                raise ConfigError(f"l2sp reference {i} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
            self.reference[i] = t.detach().clone().to(ref.device)


@dataclass
class StrategySchedule:
    """Per-epoch freezing of encoder stages (and frozen BatchNorm in eval mode).

    The trainer calls ``schedule.on_epoch_start(epoch, model, optimizer)`` at every epoch
    start and uses ``schedule.train(model)`` instead of ``model.train()`` (it keeps frozen
    BatchNorm layers in eval mode, so their running statistics stay the pretrained ones).

    Attributes:
        strategy: one of :data:`STRATEGIES`.
        n_stages: number of encoder stages.
        partial_stages: trainable top stages for ``partial``.
        probe_epochs: linear-probe epochs of ``lp-ft``.
    """

    strategy: str
    n_stages: int
    partial_stages: int = 2
    probe_epochs: int = 1
    stages: list[list[nn.Parameter]] = field(default_factory=list, repr=False)

    def trainable_stages(self, epoch: int) -> list[int]:
        """Indices of the encoder stages that train during ``epoch`` (0-based)."""
        n = self.n_stages
        if self.strategy == "full":
            return list(range(n))
        if self.strategy == "linear-probe":
            return []
        if self.strategy == "partial":
            return list(range(max(0, n - self.partial_stages), n))
        if self.strategy == "lp-ft":
            return [] if epoch < self.probe_epochs else list(range(n))
        # gradual: epoch 0 = heads + decoder only, then one more stage per epoch from the top
        return list(range(max(0, n - epoch), n))

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[int]:
        """Set ``requires_grad`` of the encoder stages for ``epoch``; freeze BN of frozen stages.

        Args:
            epoch: 0-based epoch about to start.
            model: the network (its ``encoder``'s BatchNorm layers are switched).
            optimizer: when given, checked to hold every trainable parameter.

        Returns:
            The trainable stage indices.

        Raises:
            ConfigError: a trainable parameter is missing from ``optimizer``.
        """
        on = set(self.trainable_stages(epoch))
        for i, params in enumerate(self.stages):
            for p in params:
                p.requires_grad_(i in on)
        if optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = sum(1 for p in model.parameters() if p.requires_grad and id(p) not in held)
            if missing:
                raise ConfigError(
                    f"{missing} trainable parameters are not in the optimizer at epoch {epoch}; build the optimizer "
                    "from apply_strategy()'s param groups"
                )
        self._freeze_bn(model)
        return sorted(on)

    def train(self, model: nn.Module) -> nn.Module:
        """``model.train()`` keeping the BatchNorm layers of frozen encoder parts in eval mode."""
        model.train()
        self._freeze_bn(model)
        return model

    @staticmethod
    def _freeze_bn(model: nn.Module) -> None:
        enc = getattr(model, "encoder", model)
        for m in enc.modules():
            if isinstance(m, _BatchNorm):
                ps = list(m.parameters())
                if ps and not any(p.requires_grad for p in ps):
                    m.eval()


@dataclass
class TransferPlan:
    """What :func:`setup_transfer` gives the trainer.

    Attributes:
        param_groups: optimizer groups (each with ``"name"``, ``"params"``, ``"lr"``, and
            ``"weight_decay": 0.0`` on encoder groups when L2-SP is on).
        schedule: per-epoch freezing (call ``on_epoch_start`` each epoch).
        l2sp: the regulariser to add to the loss, or ``None``.
    """

    param_groups: list[dict[str, Any]]
    schedule: StrategySchedule
    l2sp: L2SPRegularizer | None


def _check(strategy: str, base_lr: float, mult: float, layer_decay: float | None, partial: int, l2sp: float) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown transfer strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}.{did_you_mean(strategy, STRATEGIES)}"
        )
    if not (base_lr > 0):
        raise ConfigError(f"base_lr={base_lr!r} invalid; must be > 0, e.g. 1e-3")
    if not (mult > 0):
        raise ConfigError(f"pretrained_lr_mult={mult!r} invalid; must be > 0, e.g. 0.1")
    if layer_decay is not None and not (0 < layer_decay <= 1):
        raise ConfigError(f"layer_decay={layer_decay!r} invalid; must be in (0, 1], e.g. 0.75, or null")
    if partial < 1:
        raise ConfigError(f"partial_stages={partial!r} invalid; must be >= 1")
    if not (l2sp >= 0):
        raise ConfigError(f"l2sp={l2sp!r} invalid; must be >= 0")


def _trainable_new(modules: Iterable[nn.Module | None]) -> list[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters()]


def setup_transfer(
    model: nn.Module,
    *,
    strategy: str,
    base_lr: float,
    pretrained_lr_mult: float = 0.1,
    layer_decay: float | None = None,
    partial_stages: int = 2,
    l2sp: float = 0.0,
    probe_epochs: int = 1,
) -> TransferPlan:
    """Freeze/unfreeze the model for ``strategy`` and build the optimizer groups.

    Args:
        model: a :class:`~medmtl.models.mtl_net.MultiTaskNet` (``encoder``, ``decoder``, ``heads``).
        strategy: one of :data:`STRATEGIES`.
        base_lr: learning rate of the decoder and heads.
        pretrained_lr_mult: factor on the encoder's learning rate (1.0 for from-scratch).
        layer_decay: layer-wise LR decay factor in ``(0, 1]`` or ``None``.
        partial_stages: trainable top stages for ``partial`` (clipped to the stage count).
        l2sp: L2-SP strength ``α`` (0 = off).
        probe_epochs: linear-probe epochs of ``lp-ft``.

    Returns:
        The :class:`TransferPlan`; ``requires_grad`` is already set for epoch 0.

    Raises:
        ConfigError: invalid strategy (did-you-mean) or values.
    """
    _check(strategy, base_lr, pretrained_lr_mult, layer_decay, partial_stages, l2sp)
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    stages = encoder_stages(encoder)
    n = len(stages)
    schedule = StrategySchedule(strategy, n, partial_stages, int(probe_epochs), stages)
    for p in model.parameters():
        p.requires_grad_(True)
    schedule.on_epoch_start(0, model)
    # stages that may ever train go to the optimizer (frozen ones get no grad: skipped by step())
    ever = set(range(n)) if strategy in ("full", "lp-ft", "gradual") else set(schedule.trainable_stages(0))
    groups: list[dict[str, Any]] = []
    for i, params in enumerate(stages):
        if i not in ever:
            continue
        lr = base_lr * pretrained_lr_mult * (layer_decay ** (n - i) if layer_decay else 1.0)
        g: dict[str, Any] = {"name": f"encoder.stage{i}", "params": params, "lr": lr}
        if l2sp > 0:
            g["weight_decay"] = 0.0
        groups.append(g)
    enc_ids = {id(p) for p in encoder.parameters()}
    for name in ("decoder", "heads"):
        mod = getattr(model, name, None)
        if mod is not None:
            groups.append({"name": name, "params": list(mod.parameters()), "lr": base_lr})
    grouped = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in grouped and id(p) not in enc_ids]
    if rest:
        groups.append({"name": "other", "params": rest, "lr": base_lr})
    reg = None
    if l2sp > 0:
        reg = L2SPRegularizer(
            list(encoder.parameters()), l2sp, _trainable_new([getattr(model, "decoder", None), getattr(model, "heads", None)])
        )
    return TransferPlan(groups, schedule, reg)


def apply_strategy(
    model: nn.Module,
    *,
    strategy: str,
    base_lr: float,
    pretrained_lr_mult: float = 0.1,
    layer_decay: float | None = None,
    partial_stages: int = 2,
    l2sp: float = 0.0,
    probe_epochs: int = 1,
) -> list[dict[str, Any]]:
    """Set ``requires_grad`` for ``strategy`` and return the optimizer param groups.

    A shortcut for ``setup_transfer(...).param_groups``; use :func:`setup_transfer` to also
    get the per-epoch schedule (``lp-ft``, ``gradual``) and the L2-SP regulariser.
    """
    return setup_transfer(
        model,
        strategy=strategy,
        base_lr=base_lr,
        pretrained_lr_mult=pretrained_lr_mult,
        layer_decay=layer_decay,
        partial_stages=partial_stages,
        l2sp=l2sp,
        probe_epochs=probe_epochs,
    ).param_groups
