"""Gradient methods are pure functions Gramian → weights; the trainer writes ``wᵀJ``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from medmtl.engine.train_loop import backward_losses
from medmtl.mtl.gradient_methods import (
    GradientMethod,
    cagrad_weights,
    pcgrad_orders,
    pcgrad_weights,
    upgrad_weights,
)
from medmtl.mtl.weighting import create_weighting

TASKS3 = ("a", "b", "c")
METHODS = ("pcgrad", "upgrad", "cagrad")

#: ``wᵀJ`` of the pre-refactor implementation (``combine`` writing ``.grad`` itself) on
#: :func:`_jacobian`, first step of a fresh method with default parameters.
OLD_COMBINED = {
    "pcgrad": [-1.9360311, -1.3939968, -0.8685791, -1.2885205, -0.4206829],
    "upgrad": [-0.5910549, -0.461605, -0.2404483, -0.4231981, -0.1202752],
    "cagrad": [-0.4767224, -0.3002516, -0.2111778, -0.346495, -0.1357127],
}


def _jacobian() -> torch.Tensor:
    """A random 3-task Jacobian (3 × 5) with conflicting pairs (negative Gramian entries)."""
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(12))
    gram = jac @ jac.T
    assert (gram < 0).sum() >= 2
    return jac


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _pcgrad_on_vectors(jac: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1, on the gradient vectors themselves."""
    out = torch.zeros(jac.shape[1], dtype=torch.float64)
    for i in range(jac.shape[0]):
        g = jac[i].clone()
        for j in orders[i]:
            if j != i and torch.dot(g, jac[j]) < 0:
                g = g - torch.dot(g, jac[j]) / jac[j].norm() ** 2 * jac[j]
        out += g
    return out


def _upgrad_on_vectors(jac: torch.Tensor) -> torch.Tensor:
    """Mean of each gradient's projection onto the dual cone ``{x : Jx ≥ 0}`` (a QP in R^P)."""
    j = jac.numpy()
    projections = []
    for g in j:
        res = minimize(
            lambda x, g=g: float(np.sum((x - g) ** 2)), g, jac=lambda x, g=g: 2 * (x - g),
            constraints=({"type": "ineq", "fun": lambda x: j @ x, "jac": lambda x: j},), method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 500},
        )
        projections.append(res.x)
    return torch.as_tensor(np.mean(projections, axis=0))


def _cagrad_on_vectors(jac: torch.Tensor, c: float) -> torch.Tensor:
    """``(g₀ + c‖g₀‖·g_w/‖g_w‖) / (1 + c²)`` with vectors (Liu et al. 2021, the authors' rescaled form)."""
    m = jac.shape[0]
    gram = (jac @ jac.T).numpy()
    g0 = jac.mean(dim=0)

    def obj(w: np.ndarray) -> float:
        return float(w @ gram.mean(axis=1) + c * np.sqrt(gram.mean()) * np.sqrt(max(float(w @ gram @ w), 1e-12)))

    res = minimize(obj, np.full(m, 1 / m), bounds=[(0.0, 1.0)] * m, method="SLSQP",
                   constraints=({"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0)},),
                   options={"ftol": 1e-14, "maxiter": 500})
    gw = torch.as_tensor(res.x) @ jac
    return (g0 + c * g0.norm() * gw / gw.norm()) / (1 + c**2)


@pytest.mark.parametrize("name", METHODS)
def test_weights_reproduce_the_old_combined_gradient(name):
    """Must show: ``wᵀJ`` equals what the method combined before it returned weights."""
    jac = _jacobian()
    method = create_weighting(name, tasks=TASKS3)
    w = method.step_weights(jac)
    assert w.shape == (3,) and w.dtype == torch.float64
    assert torch.allclose(w.float() @ jac, torch.tensor(OLD_COMBINED[name]), atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_weights_reproduce_the_method_computed_on_vectors(name):
    """Must show: the Gramian-space weights give the paper's update computed on the gradients."""
    jac = _jacobian().double()
    gram = jac @ jac.T
    if name == "pcgrad":
        orders = pcgrad_orders(3, seed=7)
        w, ref, tol = pcgrad_weights(gram, orders), _pcgrad_on_vectors(jac, orders), 1e-10
    elif name == "upgrad":
        w, ref, tol = upgrad_weights(gram), _upgrad_on_vectors(jac), 1e-4
    else:
        w, ref, tol = cagrad_weights(gram, c=0.4), _cagrad_on_vectors(jac, c=0.4), 2e-3  # SLSQP's tolerance
    assert torch.allclose(w @ jac, ref, atol=tol), (w @ jac, ref)


@pytest.mark.parametrize("name", METHODS)
def test_weights_depend_on_the_gramian_alone(name):
    """Must show: two Jacobians with one Gramian (``J`` and ``JQ``, ``Q`` orthogonal; or the
    ``T × T`` Cholesky factor of the Gramian) get the same weights."""
    jac = _jacobian().double()
    rotated = jac @ _orthogonal(5, seed=3)
    factor = torch.linalg.cholesky(jac @ jac.T)
    got = [create_weighting(name, tasks=TASKS3).step_weights(j) for j in (jac, rotated, factor)]
    for w in got[1:]:
        assert torch.allclose(w, got[0], atol=1e-7), got
    assert torch.allclose(create_weighting(name, tasks=TASKS3).weights(jac @ jac.T), got[0], atol=1e-7)


def test_pcgrad_weights_are_pure_and_the_order_advances_per_step():
    jac = _jacobian()
    method = create_weighting("pcgrad", tasks=TASKS3, seed=4)
    gram = (jac.double() @ jac.double().T)
    assert torch.equal(method.weights(gram), method.weights(gram))  # no side effect
    assert method.steps == 0
    first = method.step_weights(jac)
    assert method.steps == 1
    assert torch.equal(first, pcgrad_weights(gram, pcgrad_orders(3, seed=4 + 1)))
    resumed = create_weighting("pcgrad", tasks=TASKS3, seed=4)
    resumed.load_state(method.state())
    assert torch.equal(resumed.step_weights(jac), method.step_weights(jac))


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_or_empty_jacobian_gives_the_plain_sum(name):
    method = create_weighting(name, tasks=TASKS3)
    jac = _jacobian()
    jac[1, 2] = float("inf")  # fp16 overflow: the inf is passed on so the GradScaler skips the step
    assert torch.equal(method.step_weights(jac), torch.ones(3, dtype=torch.float64))
    assert torch.equal(method.step_weights(torch.zeros(3, 0)), torch.ones(3, dtype=torch.float64))
    assert method.steps == 2


@pytest.mark.parametrize("name", METHODS)
def test_gradient_methods_have_no_parameters_to_optimise(name):
    method = create_weighting(name, tasks=TASKS3)
    assert isinstance(method, GradientMethod)
    assert method.optimizer_groups(1e-3) == []


def test_trainer_writes_weights_times_jacobian_on_a_linear_toy():
    """A linear toy (``L_t = J_t·θ + h_t·φ_t``): ``θ.grad = wᵀJ``, each head ``φ_t.grad = h_t``."""
    jac = _jacobian()
    theta = torch.nn.Parameter(torch.zeros(5))
    heads = [torch.nn.Parameter(torch.zeros(2)) for _ in TASKS3]
    h = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    losses = {t: (jac[i] * theta).sum() + (h[i] * heads[i]).sum() for i, t in enumerate(TASKS3)}
    method = create_weighting("pcgrad", tasks=TASKS3)
    total, w = backward_losses(method, losses, [theta])
    assert torch.allclose(theta.grad, torch.tensor(OLD_COMBINED["pcgrad"]), atol=1e-6)
    for i in range(3):
        assert torch.equal(heads[i].grad, h[i])
    assert total == pytest.approx(0.0)
    assert list(w) == list(TASKS3)
