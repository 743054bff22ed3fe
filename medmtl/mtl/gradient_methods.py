"""Gradient-combination methods (``needs_gradients = True``): PCGrad, UPGrad, CAGrad.

Each method sees the task Jacobian ``J`` (``m × n``: one row per task gradient on the shared
parameters) and returns the combined gradient ``wᵀJ``. All three are exact linear
combinations of the task gradients whose coefficients ``w`` depend only on the Gramian
``G = J Jᵀ`` (``m × m``), so each method computes ``w`` from ``G`` (cheap, float64) and the
weights it logs are those coefficients. ``combine`` writes the result into the shared
parameters' ``.grad`` and gives the heads their own losses' gradients; see
:mod:`medmtl.mtl.weighting` for the trainer contract.

* PCGrad — Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", NeurIPS.
* UPGrad — Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"; the
  maintained ``torchjd`` library computes the weights (``UPGradWeighting``).
* CAGrad — Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medmtl.mtl.conflict import per_task_shared_grads, trainable
from medmtl.mtl.weighting import Weighting, _check_number, register_weighting

log = logging.getLogger(__name__)

__all__ = ["GradientMethod", "PCGrad", "UPGrad", "CAGrad", "EnumerationProjector", "all_reduce_grads", "private_leaves"]


def private_leaves(losses: Sequence[torch.Tensor], exclude: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Leaf tensors requiring grad that the losses depend on, minus ``exclude``.

    Walks the autograd graph (``AccumulateGrad`` nodes); used to find the task-specific
    parameters (heads) without a hidden attribute contract with the model.
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


class GradientMethod(Weighting):
    """Base of the gradient methods: subclasses implement :meth:`coefficients`."""

    needs_gradients = True

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.steps = 0

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        """Combination weights ``(m,)`` from the Gramian ``(m, m)`` (float64, CPU)."""
        raise NotImplementedError

    def combine(  # type: ignore[override]
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Sequence[nn.Parameter] | None = None,
        *,
        task_grads: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[None, dict[str, float]]:
        """Write the combined gradient into ``.grad`` (shared) and own gradients (heads).

        Args:
            losses: task → scalar loss (AMP-scaled under fp16).
            shared_params: the shared parameters (frozen ones skipped).
            task_grads: optional precomputed :func:`per_task_shared_grads` (same params).

        Returns:
            ``(None, {task: coefficient})``.
        """
        self._check_losses(losses)
        params = trainable(shared_params or [])
        grads = task_grads if task_grads is not None else per_task_shared_grads(losses, params, retain_graph=True)
        self.steps += 1
        if params:
            jac = torch.stack([grads[t].to(params[0].device).float() for t in self.tasks])
            if torch.isfinite(jac).all():
                gram = (jac.double() @ jac.double().T).cpu()
                w = self.coefficients(gram)
                if not torch.isfinite(w).all():
                    log.warning("%s produced non-finite weights; using the plain sum this step", self.name)
                    w = torch.ones(len(self.tasks), dtype=torch.float64)
            else:  # fp16 overflow: pass it on so the GradScaler skips the step
                w = torch.ones(len(self.tasks), dtype=torch.float64)
            combined = w.to(jac) @ jac
            offset = 0
            for p in params:
                n = p.numel()
                g = combined[offset : offset + n].view_as(p).to(p.dtype)
                offset += n
                p.grad = g.clone() if p.grad is None else p.grad + g
        else:
            w = torch.ones(len(self.tasks), dtype=torch.float64)
        loss_list = [losses[t] for t in self.tasks if losses[t].requires_grad]
        own = private_leaves(loss_list, params)
        if own and loss_list:
            torch.autograd.backward(torch.stack([loss.float() for loss in loss_list]).sum(), inputs=own)
        return None, {t: float(w[i]) for i, t in enumerate(self.tasks)}

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))


@register_weighting("pcgrad")
class PCGrad(GradientMethod):
    """PCGrad (Yu et al. 2020): project each task gradient off the normal plane of conflicting ones.

    For each task ``i`` (random task order per step), for each other task ``j``: if
    ``g_i'·g_j < 0`` then ``g_i' ← g_i' − (g_i'·g_j / ‖g_j‖²) g_j``; the update is ``Σ_i g_i'``.
    Done on coefficients via the Gramian, exactly equivalent to the paper's Algorithm 1.

    Args:
        tasks: task names.
        seed: seed of the per-step random task order (step-indexed, so resumable).
    """

    def __init__(self, tasks: Sequence[str], seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(seed)

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        m = gram.shape[0]
        coef = torch.eye(m, dtype=torch.float64)
        gen = torch.Generator().manual_seed(self.seed + self.steps)
        for i in range(m):
            for j in torch.randperm(m, generator=gen).tolist():
                if j == i or gram[j, j] <= 0:
                    continue
                dot = coef[i] @ gram[:, j]  # g_i' · g_j
                if dot < 0:
                    coef[i, j] -= dot / gram[j, j]
        return coef.sum(dim=0)


class EnumerationProjector:
    """Exact dual-cone projector for torchjd's UPGrad without a QP library.

    Solves ``min_v vᵀGv s.t. v ≥ u`` (Quinton & Rey 2024, Prop. 1) by enumerating active sets
    and checking the KKT conditions — exact, and cheap for the few tasks of MTL (``2^m``
    small solves). Used when torchjd's default ``QuadprogProjector`` (optional ``quadprog``
    dependency) is not installed; it implements ``torchjd.linalg.DualConeProjector``'s call.

    Args:
        reg_eps: added to the normalised Gramian's diagonal (makes it positive definite).
    """

    def __init__(self, reg_eps: float = 1e-4) -> None:
        self.reg_eps = reg_eps

    def _solve(self, u: np.ndarray, g: np.ndarray) -> np.ndarray:
        m = len(u)
        best, best_obj = u.copy(), np.inf
        for r in range(m + 1):
            for free in itertools.combinations(range(m), r):
                act = [i for i in range(m) if i not in free]
                v = u.copy()
                if free:
                    f = list(free)
                    rhs = -g[np.ix_(f, act)] @ u[act] if act else np.zeros(len(f))
                    v[f] = np.linalg.solve(g[np.ix_(f, f)], rhs)
                    if np.any(v[f] < u[f] - 1e-10):
                        continue
                mu = 2.0 * (g @ v)
                if act and np.any(mu[act] < -1e-10):
                    continue
                obj = float(v @ g @ v)
                if obj < best_obj:
                    best, best_obj = v, obj
        return best

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        g = G.detach().cpu().double().numpy()
        scale = float(np.trace(g)) / len(g) if np.trace(g) > 0 else 1.0
        g = g / scale + self.reg_eps * np.eye(len(g))
        u = U.detach().cpu().double().numpy()
        flat = u.reshape(-1, u.shape[-1])
        out = np.stack([self._solve(row, g) for row in flat]).reshape(u.shape)
        return torch.as_tensor(out, dtype=G.dtype, device=G.device)


def _upgrad_projector() -> Any:
    from torchjd.linalg import DualConeProjector, QuadprogProjector

    try:
        return QuadprogProjector()
    except ImportError:

        class _Projector(EnumerationProjector, DualConeProjector):  # torchjd's ABC + our solver
            pass

        return _Projector()


@register_weighting("upgrad")
class UPGrad(GradientMethod):
    """UPGrad (Quinton & Rey 2024) through ``torchjd.aggregation.UPGradWeighting``.

    Each task gradient is projected onto the dual cone of all task gradients (so the update
    conflicts with none of them) and the projections are averaged; torchjd gives the
    coefficients from the Gramian.

    Args:
        tasks: task names.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        from torchjd.aggregation import UPGradWeighting

        self._weighting = UPGradWeighting(projector=_upgrad_projector())

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        return self._weighting(gram).double()


@register_weighting("cagrad")
class CAGrad(GradientMethod):
    """CAGrad (Liu et al. 2021): maximise the worst task improvement near the average gradient.

    ``w* = argmin_{w ∈ Δ} g_wᵀg_0 + √φ‖g_w‖`` with ``g_0`` the mean gradient and
    ``φ = c²‖g_0‖²``; the update is ``(g_0 + √φ/‖g_w*‖ · g_w*) / (1 + c²)`` (the authors'
    rescaled form), solved with SLSQP on the Gramian like the reference code.

    Args:
        tasks: task names.
        c: radius ``c ∈ [0, 1)`` of the conflict-averse ball (0.4 in the paper's NYUv2 runs).
    """

    def __init__(self, tasks: Sequence[str], c: float = 0.4) -> None:
        super().__init__(tasks)
        self.c = _check_number("cagrad", "c", c)

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        from scipy.optimize import minimize

        m = gram.shape[0]
        g = gram.numpy()
        scale = float(np.trace(g)) / m
        if scale <= 0:
            return torch.full((m,), 1.0 / m, dtype=torch.float64)
        g = g / scale
        b = g.mean(axis=1)  # G · 1/m  = (g_i · g_0)_i
        g0_sq = float(g.mean())  # ‖g_0‖²
        sqrt_phi = self.c * np.sqrt(max(g0_sq, 0.0))

        def obj(w: np.ndarray) -> float:
            return float(w @ b + sqrt_phi * np.sqrt(max(float(w @ g @ w), 1e-12)))

        res = minimize(
            obj,
            np.full(m, 1.0 / m),
            bounds=[(0.0, 1.0)] * m,
            constraints=({"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0)},),
            method="SLSQP",
        )
        w = np.clip(res.x, 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
        gw_norm = np.sqrt(max(float(w @ g @ w), 1e-12))
        lam = sqrt_phi / gw_norm
        coef = (np.full(m, 1.0 / m) + lam * w) / (1.0 + self.c**2)
        return torch.as_tensor(coef, dtype=torch.float64)


def all_reduce_grads(params: Sequence[nn.Parameter]) -> None:
    """Average ``.grad`` over DDP processes (no-op without an initialised process group).

    Gradient methods write ``.grad`` themselves, which bypasses DDP's reducer hooks: under
    DDP the trainer runs ``combine`` inside ``ddp_model.no_sync()`` and then calls this on
    all trainable parameters before ``optimizer.step()``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
