"""Gradient-combination methods: PCGrad, UPGrad, CAGrad — Gramian in, weights out.

Each method is a **pure function** from the Gramian ``G = J Jᵀ`` (``T × T``) of the task
Jacobian ``J`` (``T × P``: one row per task gradient on the shared parameters) to a weight
vector ``w`` (``(T,)``), as TorchJD's aggregators are (``torchjd/aggregation/_pcgrad.py``,
``_upgrad.py``): the combined shared-parameter gradient is ``wᵀJ``. All three methods are
exact linear combinations of the task gradients, so nothing is lost by returning weights:
PCGrad's sequential projections and UPGrad's dual-cone projections only ever add multiples
of task gradients, and CAGrad's ``d = g₀ + c‖g₀‖·g_w/‖g_w‖`` is one too.

The backward pass lives apart: the trainer (:func:`medmtl.engine.train_loop.backward_losses`)
computes the per-task gradients once, calls :meth:`GradientMethod.step_weights` and itself
writes ``.grad = Σ_t w_t g_t`` (the heads get their own losses' gradients) and steps.

* PCGrad — Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", NeurIPS.
* UPGrad — Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"; the
  maintained ``torchjd`` library computes the weights (``UPGradWeighting``).
* CAGrad — Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medmtl.mtl.weighting import Weighting, _check_number, register_weighting

log = logging.getLogger(__name__)

__all__ = [
    "GradientMethod",
    "PCGrad",
    "UPGrad",
    "CAGrad",
    "EnumerationProjector",
    "cagrad_weights",
    "pcgrad_orders",
    "pcgrad_weights",
    "upgrad_weights",
]


def pcgrad_orders(n_tasks: int, seed: int) -> list[list[int]]:
    """PCGrad's random task orders of one step: one permutation of ``range(n_tasks)`` per task.

    Drawn from a ``torch.Generator`` seeded with ``seed`` (PCGrad seeds it with
    ``seed + step`` so a resumed run draws the same orders).
    """
    gen = torch.Generator().manual_seed(int(seed))
    return [torch.randperm(n_tasks, generator=gen).tolist() for _ in range(n_tasks)]


def pcgrad_weights(gramian: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """PCGrad's combination weights from the Gramian alone (Yu et al. 2020, Algorithm 1).

    For each task ``i``, for each ``j`` in ``orders[i]`` (``j ≠ i``): if ``g_i'·g_j < 0`` then
    ``g_i' ← g_i' − (g_i'·g_j / ‖g_j‖²) g_j``; the update is ``Σ_i g_i'``. Every ``g_i'`` is
    kept as coefficients on the original gradients, so only the Gramian is needed; tasks
    with a zero gradient (``G_jj ≤ 0``) are never projected on.

    Args:
        gramian: ``(T, T)`` Gramian ``J Jᵀ`` (float64 on the CPU is what the trainer passes).
        orders: ``T`` permutations of ``range(T)`` (see :func:`pcgrad_orders`).

    Returns:
        ``(T,)`` weights ``w`` (same dtype as ``gramian``) with update ``wᵀJ``.
    """
    m = gramian.shape[0]
    coef = torch.eye(m, dtype=gramian.dtype)
    for i in range(m):
        for j in orders[i]:
            if j == i or gramian[j, j] <= 0:
                continue
            dot = coef[i] @ gramian[:, j]  # g_i' · g_j
            if dot < 0:
                coef[i, j] -= dot / gramian[j, j]
    return coef.sum(dim=0)


class GradientMethod(Weighting):
    """Base of the gradient methods: subclasses implement :meth:`weights` (Gramian → weights).

    The trainer computes the task Jacobian on the shared parameters and calls
    :meth:`step_weights` once per optimisation step; it writes ``.grad`` and steps itself.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.steps = 0

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """Combination weights of the current step; no side effect.

        Args:
            gramian: ``(T, T)`` Gramian of the task gradients (float64, CPU), tasks in
                :attr:`tasks` order.

        Returns:
            ``(T,)`` float64 weights ``w``: the combined gradient is ``wᵀJ``.
        """
        raise NotImplementedError

    def step_weights(self, jacobian: torch.Tensor) -> torch.Tensor:
        """Advance one step and return its weights from the task Jacobian.

        Args:
            jacobian: ``(T, P)`` task gradients on the shared parameters (rows in
                :attr:`tasks` order).

        Returns:
            ``(T,)`` float64 CPU weights; all ones (the plain sum) when ``P = 0``, when the
            Jacobian is not finite (fp16 overflow: the sum carries the ``inf`` on so the
            ``GradScaler`` skips the step) or when the method's weights are not finite.
        """
        self.steps += 1
        ones = torch.ones(len(self.tasks), dtype=torch.float64)
        if jacobian.numel() == 0 or not torch.isfinite(jacobian).all():
            return ones
        jac = jacobian.double()
        w = self.weights((jac @ jac.T).cpu())
        if not torch.isfinite(w).all():
            log.warning("%s produced non-finite weights; using the plain sum this step", self.name)
            return ones
        return w

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))


@register_weighting("pcgrad")
class PCGrad(GradientMethod):
    """PCGrad (Yu et al. 2020): project each task gradient off the normal plane of conflicting ones.

    Weights from :func:`pcgrad_weights` with the orders of :func:`pcgrad_orders` seeded by
    ``seed + steps`` (step-indexed, so a resumed run draws the same orders).

    Args:
        tasks: task names.
        seed: seed of the per-step random task order.
    """

    def __init__(self, tasks: Sequence[str], seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(seed)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return pcgrad_weights(gramian, pcgrad_orders(gramian.shape[0], self.seed + self.steps))


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


@functools.lru_cache(maxsize=1)
def _torchjd_upgrad() -> Any:
    from torchjd.aggregation import UPGradWeighting

    return UPGradWeighting(projector=_upgrad_projector())


def upgrad_weights(gramian: torch.Tensor) -> torch.Tensor:
    """UPGrad's combination weights from the Gramian (Quinton & Rey 2024; ``torchjd``).

    Each task gradient is projected onto the dual cone of all task gradients (so the update
    conflicts with none of them) and the projections are averaged; every projection is a
    non-negative combination of the task gradients, so the average is ``wᵀJ``.

    Args:
        gramian: ``(T, T)`` Gramian ``J Jᵀ``.

    Returns:
        ``(T,)`` float64 weights.
    """
    return _torchjd_upgrad()(gramian).double()


@register_weighting("upgrad")
class UPGrad(GradientMethod):
    """UPGrad (Quinton & Rey 2024): weights from :func:`upgrad_weights` (``torchjd``).

    Args:
        tasks: task names.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        _torchjd_upgrad()  # fail here, not at the first step, when torchjd is missing

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return upgrad_weights(gramian)


def cagrad_weights(gramian: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad's combination weights from the Gramian (Liu et al. 2021).

    ``w* = argmin_{w ∈ Δ} g_wᵀg_0 + √φ‖g_w‖`` with ``g_0`` the mean gradient and
    ``φ = c²‖g_0‖²``, solved with SLSQP on the (trace-normalised) Gramian like the reference
    code; the update ``(g_0 + √φ/‖g_w*‖ · g_w*) / (1 + c²)`` (the authors' rescaled form) is
    the linear combination ``(1/T + λ w*) / (1 + c²)`` of the task gradients.

    Args:
        gramian: ``(T, T)`` Gramian ``J Jᵀ`` (CPU).
        c: radius ``c ≥ 0`` of the conflict-averse ball.

    Returns:
        ``(T,)`` float64 weights (``1/T`` each for a zero Gramian).
    """
    from scipy.optimize import minimize

    m = gramian.shape[0]
    g = gramian.double().numpy()
    scale = float(np.trace(g)) / m
    if scale <= 0:
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
    g = g / scale
    b = g.mean(axis=1)  # G · 1/m  = (g_i · g_0)_i
    g0_sq = float(g.mean())  # ‖g_0‖²
    sqrt_phi = c * np.sqrt(max(g0_sq, 0.0))

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
    coef = (np.full(m, 1.0 / m) + lam * w) / (1.0 + c**2)
    return torch.as_tensor(coef, dtype=torch.float64)


@register_weighting("cagrad")
class CAGrad(GradientMethod):
    """CAGrad (Liu et al. 2021): maximise the worst task improvement near the average gradient.

    Weights from :func:`cagrad_weights`.

    Args:
        tasks: task names.
        c: radius ``c ∈ [0, 1)`` of the conflict-averse ball (0.4 in the paper's NYUv2 runs).
    """

    def __init__(self, tasks: Sequence[str], c: float = 0.4) -> None:
        super().__init__(tasks)
        self.c = _check_number("cagrad", "c", c)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return cagrad_weights(gramian, self.c)
