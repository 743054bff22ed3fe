"""The trainer alone writes ``.grad`` and steps, for every kind of weighting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmtl.engine.ddp import DistInfo
from medmtl.engine.train_loop import StepContext, backward_losses, train_step
from medmtl.mtl.conflict import per_task_shared_grads
from medmtl.mtl.losses import task_losses
from medmtl.mtl.weighting import Weighting, create_weighting, list_weightings

TASKS = ("det", "size", "malig")


class _Toy(nn.Module):
    """A 1×1×1-conv trunk and three 1×1×1-conv heads (the net's output contract)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv3d(1, 4, 1)
        self.heads = nn.ModuleDict({k: nn.Conv3d(4, 1, 1) for k in ("heatmap", "log_diameter", "malignancy")})

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.relu(self.trunk(x))
        return {k: h(f) for k, h in self.heads.items()}


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    heat = torch.zeros(2, 1, 4, 4, 4)
    heat[0, 0, 1:3, 1:3, 1:3] = 0.6
    heat[0, 0, 2, 2, 2] = 1.0
    mask = (heat > 0.4).float()
    return {"image": torch.randn(2, 1, 4, 4, 4, generator=g), "heatmap": heat, "log_diameter": 2.0 * mask,
            "size_mask": mask, "malignancy": mask.clone(), "malig_mask": mask.clone()}


def _context(name: str) -> tuple[_Toy, StepContext]:
    torch.manual_seed(0)
    model = _Toy()
    weighting = create_weighting(name, tasks=TASKS)
    groups = [{"params": list(model.parameters())}, *weighting.optimizer_groups(1e-2)]
    opt = torch.optim.SGD(groups, lr=1e-2)
    ctx = StepContext(model=model, optimizer=opt, scheduler=None, scaler=None, weighting=weighting,
                      shared_params=model.shared_parameters(),
                      params=[p for g in opt.param_groups for p in g["params"]], device=torch.device("cpu"),
                      amp_dtype=None, grad_clip=0.0, dist=DistInfo())
    return model, ctx


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "cagrad"])
def test_train_step_writes_weights_times_jacobian_for_gradient_methods(name):
    model, ctx = _context(name)
    batch = _batch()
    losses = task_losses(model(batch["image"]), batch)
    grads = per_task_shared_grads(losses, model.shared_parameters())
    jac = torch.stack([grads[t] for t in TASKS])
    own = {t: torch.autograd.grad(losses[t], model.heads[h].parameters(), retain_graph=True)
           for t, h in zip(TASKS, ("heatmap", "log_diameter", "malignancy"))}
    values, weights, _ = train_step(ctx, batch, step=0)
    w = torch.tensor([weights[t] for t in TASKS], dtype=torch.float64)
    assert torch.equal(w, create_weighting(name, tasks=TASKS).step_weights(jac))
    written = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    assert torch.equal(written, w.float() @ jac)
    for t, h in zip(TASKS, ("heatmap", "log_diameter", "malignancy")):
        for p, g in zip(model.heads[h].parameters(), own[t]):
            assert torch.allclose(p.grad, g, atol=1e-7)
    assert values["total"] == pytest.approx(sum(weights[t] * values[t] for t in TASKS))


def test_train_step_steps_gradnorm_weights_with_its_own_optimizer():
    """GradNorm is no longer self-stepping: its weights move by the trainer's optimizer step."""
    model, ctx = _context("gradnorm")
    weighting = ctx.weighting
    before = weighting.task_weights.detach().clone()
    _, w0, _ = train_step(ctx, _batch(), step=0)
    assert w0 == {t: 1.0 for t in TASKS}
    assert not torch.equal(weighting.task_weights.detach(), before)  # stepped by ctx.optimizer
    _, w1, _ = train_step(ctx, _batch(), step=1)
    assert sum(w1.values()) == pytest.approx(3.0) and w1 != w0


@pytest.mark.parametrize("name", list_weightings())
def test_every_registered_weighting_trains_through_the_same_step(name):
    model, ctx = _context(name)
    before = [p.detach().clone() for p in model.parameters()]
    values, weights, norm = train_step(ctx, _batch(), step=0)
    assert set(weights) == set(TASKS) and norm > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_weighting_of_neither_kind_is_refused():
    class Odd(Weighting):
        pass

    model = _Toy()
    batch = _batch()
    losses = task_losses(model(batch["image"]), batch)
    with pytest.raises(TypeError, match="neither a LossWeighting nor a GradientMethod"):
        backward_losses(Odd(TASKS), losses, model.shared_parameters())
