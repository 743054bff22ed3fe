"""Task weighting: how the per-task losses become one update (registry by name).

Contract with the trainer
-------------------------
Every weighting is an ``nn.Module`` built with ``create_weighting(name, tasks=..., **params)``
and is one of two kinds; the trainer (:func:`medmtl.engine.train_loop.backward_losses`) owns
every ``backward()``, writes every ``.grad`` and takes every optimizer ``step()``:

* :class:`LossWeighting` (``fixed``, ``uncertainty``, ``dwa``, ``gradnorm``)::

      total, weights = weighting.combine(losses, shared_params)

  returns the weighted total loss; the trainer calls ``total.backward()`` (or
  ``scaler.scale(total).backward()``). ``gradnorm`` needs ``shared_params`` to measure the
  task gradient norms (Chen et al. 2018); its weight-balancing loss is folded into
  ``total`` with zero value, so the same backward gives its weights their gradient.
* :class:`~medmtl.mtl.gradient_methods.GradientMethod` (``pcgrad``, ``upgrad``, ``cagrad``)::

      w = method.step_weights(jacobian)      # (T, P) task gradients → (T,) weights

  a pure function of the Gramian ``J Jᵀ`` (:meth:`~medmtl.mtl.gradient_methods.GradientMethod.weights`),
  as TorchJD's aggregators are. The trainer computes the task gradients on the shared
  parameters (:func:`medmtl.mtl.conflict.per_task_shared_grads`), writes
  ``.grad = Σ_t w_t g_t`` on them and the plain gradients of the heads' own losses.

Here ``losses`` maps task name → scalar loss (the keys must equal ``weighting.tasks``),
``shared_params`` are the shared parameters (``model.shared_parameters()``; frozen ones are
skipped) and ``weights`` maps task name → float weight used this step (always finite; log them).

Learnable weightings (``uncertainty``, ``gradnorm``) hold parameters; every weighting gives
its parameter groups for the trainer's optimizer through :meth:`Weighting.optimizer_groups`
(no weight decay; ``gradnorm`` at its own ``lr``). All weightings provide
``on_epoch_end(epoch_losses)`` (used by ``dwa``) and a JSON-safe ``state()`` /
``load_state()`` for resuming.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from medmtl.errors import ConfigError, did_you_mean, unknown_name
from medmtl.mtl.conflict import trainable

__all__ = [
    "Weighting",
    "LossWeighting",
    "register_weighting",
    "create_weighting",
    "list_weightings",
    "FixedWeighting",
    "UncertaintyWeighting",
    "DWAWeighting",
    "GradNormWeighting",
]

_REGISTRY: dict[str, type[Weighting]] = {}
W = TypeVar("W", bound="type[Weighting]")


def register_weighting(name: str) -> Callable[[W], W]:
    """Class decorator registering a :class:`Weighting` subclass under ``name``."""

    def deco(cls: W) -> W:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"weighting {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _ensure_registered() -> None:
    import medmtl.mtl.gradient_methods  # noqa: F401  (registers pcgrad, upgrad, cagrad)


def list_weightings() -> list[str]:
    """Registered weighting names, sorted."""
    _ensure_registered()
    return sorted(_REGISTRY)


def create_weighting(name: str, *, tasks: Sequence[str], **params: Any) -> Weighting:
    """Build a registered weighting.

    Args:
        name: e.g. ``"fixed"``, ``"uncertainty"``, ``"dwa"``, ``"gradnorm"``, ``"pcgrad"``,
            ``"upgrad"``, ``"cagrad"``.
        tasks: task names in order (``("det", "size", "malig")``).
        **params: the method's own parameters (see each class).

    Raises:
        RegistryError: unknown name (with a did-you-mean).
        ConfigError: unknown or invalid parameters.
    """
    _ensure_registered()
    if name not in _REGISTRY:
        raise unknown_name("weighting", name, _REGISTRY)
    cls = _REGISTRY[name]
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p not in ("self", "tasks")]
    for key in params:
        if key not in allowed:
            raise ConfigError(
                f"unknown parameter {key!r} for weighting {name!r}; allowed: {', '.join(allowed) or '(none)'}."
                f"{did_you_mean(key, allowed)}"
            )
    return cls(tasks, **params)


def _check_number(method: str, key: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"weighting {method!r} parameter {key}={value!r} is not a number") from None
    if not math.isfinite(v) or v < low or (strict and v == low):
        rel = ">" if strict else ">="
        raise ConfigError(f"weighting {method!r} parameter {key}={value!r} invalid; must be finite and {rel} {low}")
    return v


class Weighting(nn.Module):
    """Base class of both kinds (see the module docstring for the trainer contract).

    Args:
        tasks: task names in order.
    """

    name: ClassVar[str] = ""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        tasks = [str(t) for t in tasks]
        if not tasks or len(set(tasks)) != len(tasks):
            raise ConfigError(f"weighting tasks {tasks!r} invalid; need distinct names, e.g. ['det', 'size', 'malig']")
        self.tasks: tuple[str, ...] = tuple(tasks)

    def check_losses(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`ConfigError` unless ``losses`` has exactly :attr:`tasks` as keys."""
        if set(losses) != set(self.tasks):
            raise ConfigError(f"losses have tasks {sorted(losses)} but the weighting was built for {list(self.tasks)}")

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups of this weighting for the trainer's optimizer (none without parameters).

        Args:
            lr: the trainer's base learning rate (the group's unless the weighting sets its own).

        Returns:
            ``[{"params", "lr", "weight_decay": 0.0, "name": "weighting"}]`` or ``[]``.
        """
        params = list(self.parameters())
        if not params:
            return []
        return [{"params": params, "lr": float(lr), "weight_decay": 0.0, "name": "weighting"}]

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Receive the epoch's mean loss per task (used by DWA; a no-op otherwise)."""

    def state(self) -> dict[str, Any]:
        """JSON-safe state (learnable values and histories) for resuming."""
        return {"params": {k: v.detach().cpu().reshape(-1).tolist() for k, v in self.state_dict().items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`."""
        current = self.state_dict()
        loaded = {
            k: torch.tensor(v, dtype=current[k].dtype).reshape(current[k].shape) for k, v in state.get("params", {}).items()
        }
        self.load_state_dict(loaded)


class LossWeighting(Weighting):
    """A weighting that combines the task losses into one total loss (the trainer backpropagates it)."""

    def combine(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Sequence[nn.Parameter] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Combine task losses (see the module docstring).

        Args:
            losses: task → scalar loss.
            shared_params: the shared parameters (needed by ``gradnorm`` only).

        Returns:
            ``(total, {task: weight})``.
        """
        raise NotImplementedError


def _weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    return torch.stack([losses[t].float() * weights[t] for t in losses]).sum()


@register_weighting("fixed")
class FixedWeighting(LossWeighting):
    """``α·L_det + β·L_size + γ·L_malig`` with constant weights.

    Args:
        tasks: task names; ``alpha``, ``beta``, ``gamma`` weigh the first three.
        alpha, beta, gamma: non-negative weights.
        weights: explicit ``{task: weight}`` (overrides alpha/beta/gamma for those tasks).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(tasks)
        greek = [alpha, beta, gamma]
        w = {t: _check_number("fixed", ["alpha", "beta", "gamma"][i] if i < 3 else t, greek[i] if i < 3 else 1.0)
             for i, t in enumerate(self.tasks)}
        for t, v in (weights or {}).items():
            if t not in w:
                raise ConfigError(f"weighting 'fixed' weights key {t!r} is not a task; tasks: {list(self.tasks)}")
            w[t] = _check_number("fixed", f"weights.{t}", v)
        self.weights = w

    def combine(self, losses, shared_params=None):  # type: ignore[no-untyped-def]
        self.check_losses(losses)
        return _weighted_sum(losses, self.weights), dict(self.weights)


@register_weighting("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla 2018, CVPR).

    ``total = Σ_t ½·exp(-s_t)·L_t + ½·s_t`` with learnable ``s_t = log σ_t²`` (the
    regression form of the paper's eq. 7, used for all tasks as in common practice).
    ``s_t`` are clamped to ``[-10, 10]`` so weights stay finite. The trainer adds
    ``weighting.parameters()`` to its optimizer (no weight decay).

    Args:
        tasks: task names.
        init_log_var: initial ``s_t``.
    """

    def __init__(self, tasks: Sequence[str], init_log_var: float = 0.0) -> None:
        super().__init__(tasks)
        v = _check_number("uncertainty", "init_log_var", init_log_var, low=-10.0)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), v))

    def combine(self, losses, shared_params=None):  # type: ignore[no-untyped-def]
        self.check_losses(losses)
        s = self.log_vars.clamp(-10.0, 10.0)
        terms = [0.5 * torch.exp(-s[i]) * losses[t].float() + 0.5 * s[i] for i, t in enumerate(self.tasks)]
        w = (0.5 * torch.exp(-s)).detach().tolist()
        return torch.stack(terms).sum(), {t: float(w[i]) for i, t in enumerate(self.tasks)}


@register_weighting("dwa")
class DWAWeighting(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019, CVPR "MTAN", eq. 7).

    ``λ_k(t) = K·exp(r_k(t−1)/T) / Σ_i exp(r_i(t−1)/T)`` with ``r_k(t−1) = L_k(t−1)/L_k(t−2)``
    the ratio of the last two epochs' mean losses; weights are 1 for the first two epochs.
    The trainer calls :meth:`on_epoch_end` with the epoch's mean task losses.

    Args:
        tasks: task names.
        temperature: ``T > 0`` (2.0 in the paper).
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        self.temperature = _check_number("dwa", "temperature", temperature, strict=True)
        self.history: list[dict[str, float]] = []
        self.current = {t: 1.0 for t in self.tasks}

    def _update(self) -> None:
        if len(self.history) < 2:
            self.current = {t: 1.0 for t in self.tasks}
            return
        prev, prev2 = self.history[-1], self.history[-2]
        r = torch.tensor([prev[t] / prev2[t] if prev2[t] > 0 else 1.0 for t in self.tasks], dtype=torch.float64)
        w = len(self.tasks) * torch.softmax(r / self.temperature, dim=0)
        self.current = {t: float(w[i]) for i, t in enumerate(self.tasks)}

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        missing = [t for t in self.tasks if t not in epoch_losses]
        if missing:
            raise ConfigError(f"DWA on_epoch_end needs the mean loss of every task; missing {missing}")
        vals = {t: float(epoch_losses[t]) for t in self.tasks}
        if not all(math.isfinite(v) for v in vals.values()):
            return  # a non-finite epoch mean carries no usable ratio
        self.history.append(vals)
        self._update()

    def combine(self, losses, shared_params=None):  # type: ignore[no-untyped-def]
        self.check_losses(losses)
        return _weighted_sum(losses, self.current), dict(self.current)

    def state(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.history = [{k: float(v) for k, v in h.items()} for h in state.get("history", [])]
        self._update()


@register_weighting("gradnorm")
class GradNormWeighting(LossWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, ICML).

    Learnable weights ``w_t`` minimise
    ``L_grad = Σ_t |w_t·‖∇_W L_t‖ − mean_t(w·‖∇_W L‖)·r_t^α|`` where ``W`` is the last shared
    layer (the last trainable shared parameter with ≥ 2 dims) and ``r_t`` the relative inverse
    training rate ``(L_t/L_t(0)) / mean``; the gradient norms and the target are constants
    (the paper's recipe), so ``L_grad`` reaches only ``w``. ``combine`` returns
    ``Σ w_t·L_t + (L_grad − L_grad.detach())``: the weights are detached in the first term, so
    the one ``backward`` of the trainer gives the network ``Σ w_t ∇L_t`` and ``w`` exactly
    ``∇_w L_grad``, and the value is the plain weighted loss. The trainer's optimizer steps
    ``w`` (:meth:`optimizer_groups`, at ``lr``); the next ``combine`` clamps them to ≥ 1e-3 and
    renormalises them to sum to the number of tasks before using them.

    Args:
        tasks: task names.
        alpha: asymmetry ``α ≥ 0`` (1.5 in the paper's NYUv2 runs).
        lr: base learning rate of the weights' parameter group.
    """

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks)
        self.alpha = _check_number("gradnorm", "alpha", alpha)
        self.lr = _check_number("gradnorm", "lr", lr, strict=True)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """One group with the weights at this weighting's own ``lr`` (``lr`` argument unused)."""
        return [{"params": [self.task_weights], "lr": self.lr, "weight_decay": 0.0, "name": "weighting"}]

    def _normalise(self) -> None:
        with torch.no_grad():
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())

    def _grad_norms(self, losses, last: nn.Parameter) -> torch.Tensor:  # type: ignore[no-untyped-def]
        norms = []
        for t in self.tasks:
            if losses[t].requires_grad:
                (g,) = torch.autograd.grad(losses[t], last, retain_graph=True, allow_unused=True)
            else:
                g = None
            norms.append(g.detach().float().norm() if g is not None else torch.zeros((), device=last.device))
        return torch.stack(norms).to(self.task_weights.device)

    def combine(self, losses, shared_params=None):  # type: ignore[no-untyped-def]
        self.check_losses(losses)
        params = [p for p in trainable(shared_params or []) if p.dim() >= 2]
        if not params:
            raise ConfigError("weighting 'gradnorm' needs trainable shared parameters (pass model.shared_parameters())")
        self._normalise()
        w_now = self.task_weights.detach().clone()
        total = _weighted_sum(losses, {t: w_now[i] for i, t in enumerate(self.tasks)})
        lvals = torch.stack([losses[t].detach().float() for t in self.tasks]).to(self.initial_losses.device)
        with torch.no_grad():
            unset = (self.initial_losses <= 0) & (lvals > 0) & torch.isfinite(lvals)
            self.initial_losses[unset] = lvals[unset]
        gnorm = self._grad_norms(losses, params[-1])
        if torch.isfinite(gnorm).all() and torch.isfinite(lvals).all() and float(gnorm.sum()) > 0:
            ratio = torch.where(self.initial_losses > 0, lvals / self.initial_losses.clamp(min=1e-12), torch.ones_like(lvals))
            rel = ratio / ratio.mean().clamp(min=1e-12)
            g_w = self.task_weights * gnorm
            target = (g_w.mean() * rel**self.alpha).detach()
            l_grad = (g_w - target).abs().sum()
            total = total + (l_grad - l_grad.detach()).to(total.device)
        return total, {t: float(w_now[i]) for i, t in enumerate(self.tasks)}
