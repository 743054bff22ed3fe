from __future__ import annotations

import math

import pytest
import torch

from medmtl.engine.train_loop import backward_losses
from medmtl.errors import ConfigError, RegistryError
from medmtl.mtl.conflict import per_task_shared_grads
from medmtl.mtl.gradient_methods import GradientMethod
from medmtl.mtl.losses import task_losses
from medmtl.mtl.weighting import LossWeighting, create_weighting, list_weightings

TASKS = ("det", "size", "malig")


def test_registry_has_required_methods():
    assert {"fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "upgrad", "cagrad"} <= set(list_weightings())


@pytest.mark.parametrize("name", list_weightings())
def test_each_weighting_runs_three_steps_with_finite_weights(name, tiny_model, tiny_batch):
    """Must show: every registered weighting runs 3 steps (bf16 autocast) with finite weights."""
    x, targets = tiny_batch
    weighting = create_weighting(name, tasks=TASKS)
    assert isinstance(weighting, (LossWeighting, GradientMethod))
    groups = [{"params": list(tiny_model.parameters())}, *weighting.optimizer_groups(1e-3)]
    opt = torch.optim.SGD(groups, lr=1e-3)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = task_losses(tiny_model(x), targets)
        total, weights = backward_losses(weighting, losses, tiny_model.shared_parameters())
        assert math.isfinite(total)
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


def _two_toy_jacobian():
    # two task gradients on a shared θ ∈ R² that conflict (g1·g2 < 0)
    g1, g2 = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.2])
    assert torch.dot(g1, g2) < 0
    return torch.stack([g1, g2]), g1, g2


def test_pcgrad_projects_away_the_conflict():
    """Must show: PCGrad's update has a non-negative dot product with each task gradient."""
    jac, g1, g2 = _two_toy_jacobian()
    w = create_weighting("pcgrad", tasks=("a", "b")).step_weights(jac)
    d = w.float() @ jac
    assert torch.dot(d, g1) >= -1e-6 and torch.dot(d, g2) >= -1e-6
    # exact PCGrad result: each gradient projected on the normal plane of the other
    p1 = g1 - torch.dot(g1, g2) / g2.norm() ** 2 * g2
    p2 = g2 - torch.dot(g2, g1) / g1.norm() ** 2 * g1
    assert torch.allclose(d, p1 + p2, atol=1e-6)


def test_pcgrad_leaves_agreeing_gradients_alone():
    jac = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    w = create_weighting("pcgrad", tasks=("a", "b")).step_weights(jac)
    assert torch.equal(w, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["upgrad", "cagrad"])
def test_gradient_methods_do_not_conflict(name):
    jac, g1, g2 = _two_toy_jacobian()
    d = create_weighting(name, tasks=("a", "b")).step_weights(jac).float() @ jac
    assert torch.dot(d, g1) >= -1e-4 and torch.dot(d, g2) >= -1e-4


def test_upgrad_matches_torchjd_reference_example():
    # torchjd's documented example: UPGrad([[-4, 1, 1], [6, 1, 1]]) = [0.2929, 1.9004, 1.9004]
    jac = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    d = create_weighting("upgrad", tasks=("a", "b")).step_weights(jac).float() @ jac
    assert torch.allclose(d, torch.tensor([0.2929, 1.9004, 1.9004]), atol=2e-3)


def test_trainer_backward_reuses_precomputed_grads_and_gives_heads_their_own(tiny_model, tiny_batch):
    """The trainer writes ``wᵀJ`` on the shared parameters and each head its own loss's gradient."""
    x, targets = tiny_batch
    losses = task_losses(tiny_model(x), targets)
    shared = tiny_model.shared_parameters()
    grads = per_task_shared_grads(losses, shared)
    method = create_weighting("pcgrad", tasks=TASKS)
    _, w = backward_losses(method, losses, shared, task_grads=grads)
    jac = torch.stack([grads[t] for t in TASKS])
    combined = torch.tensor([w[t] for t in TASKS]).to(jac) @ jac
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in shared]), combined)
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


def test_gradnorm_gives_its_weights_a_gradient_through_the_one_backward():
    """GradNorm's balancing loss rides in ``total`` with zero value; the trainer's backward
    gives the network ``Σ w_t ∇L_t`` and the weights ``∇_w L_grad`` (Chen et al. 2018, eq. 2)."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 4)
    x = torch.randn(6, 3)

    def losses_of() -> dict[str, torch.Tensor]:
        f = shared(x)
        return {"a": f[:, :2].pow(2).mean(), "b": (f[:, 2:] - 1).pow(2).mean() * 3.0}

    w = create_weighting("gradnorm", tasks=("a", "b"), alpha=1.5)
    losses = losses_of()
    total, weights = w.combine(losses, list(shared.parameters()))
    assert weights == {"a": 1.0, "b": 1.0}
    assert float(total.detach()) == pytest.approx(float((losses["a"] + losses["b"]).detach()))
    total.backward()
    # the network: the plain weighted sum (weights detached)
    ref = losses_of()
    grads = torch.autograd.grad(ref["a"] + ref["b"], [shared.weight, shared.bias], retain_graph=True)
    assert torch.allclose(shared.weight.grad, grads[0]) and torch.allclose(shared.bias.grad, grads[1])
    # the weights: d/dw Σ|w_t G_t − mean(wG) r_t^α| at r = 1 (first step), G_t = ‖∇_W L_t‖
    g = torch.stack([torch.autograd.grad(ref[t], shared.weight, retain_graph=True)[0].norm() for t in ("a", "b")])
    sign = torch.sign(g - g.mean())
    assert torch.allclose(w.task_weights.grad, sign * g, atol=1e-6)
    # the trainer steps them (its optimizer, this weighting's lr); the next combine renormalises
    [group] = w.optimizer_groups(1e-3)
    assert group["params"] == [w.task_weights] and group["lr"] == 0.025 and group["weight_decay"] == 0.0
    torch.optim.SGD(group["params"], lr=group["lr"]).step()
    assert float(w.task_weights.detach().sum()) != pytest.approx(2.0, abs=1e-9)
    _, after = w.combine(losses_of(), list(shared.parameters()))
    assert sum(after.values()) == pytest.approx(2.0) and after["b"] < 1.0 < after["a"]


@pytest.mark.parametrize("name", list_weightings())
def test_optimizer_groups_cover_exactly_the_weighting_parameters(name):
    w = create_weighting(name, tasks=TASKS)
    groups = w.optimizer_groups(3e-4)
    assert [p for g in groups for p in g["params"]] == list(w.parameters())
    assert all(g["weight_decay"] == 0.0 for g in groups)
    if name == "uncertainty":
        assert groups[0]["lr"] == 3e-4
