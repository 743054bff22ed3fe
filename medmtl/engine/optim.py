"""Optimizer and learning-rate schedule of the trainer.

Parameter groups come from the transfer strategy (:func:`medmtl.mtl.strategies.apply_strategy`:
frozen parts, lower LR for pretrained layers, layer-wise decay); the task weighting's own
parameters (e.g. the log-variances of uncertainty weighting) get one more group without
weight decay. Each group remembers its ``base_lr``; :class:`LRSchedule` sets
``lr = base_lr × factor(step)`` before every step (linear warm-up, then cosine / constant /
step decay), so rebuilding the optimizer at a strategy phase change (LP-FT) keeps the
schedule exact, and its state is a single step counter (JSON).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medmtl.errors import ConfigError

#: Cosine decay ends at this fraction of the base LR.
COSINE_FLOOR = 0.05


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the base LR at a (0-based) step.

    Args:
        step: optimizer step about to be taken.
        total_steps: steps of the whole run.
        warmup_steps: linear warm-up from ``1 / (warmup + 1)`` to 1.
        kind: ``cosine`` (to :data:`COSINE_FLOOR`), ``constant`` or ``step`` (×0.5 every
            quarter of the run).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "cosine":
        return COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "step":
        return 0.5 ** min(3, int(t * 4))
    raise ConfigError(f"train.scheduler '{kind}' is not allowed; allowed: cosine, constant, step")


class LRSchedule:
    """Per-step LR schedule over param groups that carry ``base_lr``.

    Args:
        optimizer: the optimizer (groups need ``base_lr``).
        total_steps: steps of the whole run.
        warmup_steps: warm-up steps.
        kind: schedule name (see :func:`lr_factor`).
        step: the next step to be taken (non-zero when resuming or rebuilding).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, kind: str, step: int = 0) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.kind = kind
        self.current = step
        self._apply()

    def _apply(self) -> None:
        f = lr_factor(self.current, total_steps=self.total_steps, warmup_steps=self.warmup_steps, kind=self.kind)
        for g in self.optimizer.param_groups:
            g["lr"] = float(g["base_lr"]) * f

    def step(self) -> None:
        """Advance one step and set the next step's LR."""
        self.current += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state."""
        return {"step": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.current = int(state["step"])
        self._apply()


def make_optimizer(
    groups: list[dict[str, Any]], *, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build the optimizer over param groups (``lr``/``weight_decay`` per group when given).

    Every group gets ``base_lr`` (its own ``lr`` or ``lr``). Empty groups are dropped;
    parameters frozen for now stay (they get no gradient, which the optimizers skip).
    """
    clean = []
    for g in groups:
        params = list(g["params"])
        if not params:
            continue
        g = dict(g)
        g["params"] = params
        g.setdefault("lr", lr)
        g.setdefault("weight_decay", weight_decay)
        g["base_lr"] = float(g["lr"])
        clean.append(g)
    if not clean:
        raise ConfigError("no parameter to optimise; check strategy.name and strategy.params")
    if name == "adamw":
        return torch.optim.AdamW(clean, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(clean, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(clean, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer '{name}' is not allowed; allowed: adamw, adam, sgd")


__all__ = ["COSINE_FLOOR", "LRSchedule", "lr_factor", "make_optimizer"]
