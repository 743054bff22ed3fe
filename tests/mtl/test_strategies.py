from __future__ import annotations

import pytest
import torch

from medmtl.errors import ConfigError
from medmtl.mtl.strategies import STRATEGIES, apply_strategy, encoder_stages, setup_transfer


def _ids(params):
    return {id(p) for p in params}


def _stage_flags(model):
    return [all(p.requires_grad for p in s) for s in encoder_stages(model.encoder)]


def _opt_ids(groups):
    return {id(p) for g in groups for p in g["params"]}


def test_stages_come_from_encoder_and_cover_everything(tiny_model):
    stages = encoder_stages(tiny_model.encoder)
    assert len(stages) == 3
    assert _ids(p for s in stages for p in s) == _ids(tiny_model.encoder.parameters())
    assert id(tiny_model.encoder.stem.weight) in _ids(stages[0])  # stem joins the first stage


EXPECTED_EPOCH0 = {
    "linear-probe": [False, False, False],
    "partial": [False, True, True],
    "full": [True, True, True],
    "lp-ft": [False, False, False],
    "gradual": [False, False, False],
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_freezes_exactly_what_it_claims(strategy, tiny_model):
    """Must show: requires_grad and the optimizer's groups match the strategy."""
    groups = apply_strategy(tiny_model, strategy=strategy, base_lr=1e-3, partial_stages=2)
    flags = _stage_flags(tiny_model)
    assert flags == EXPECTED_EPOCH0[strategy]
    stages = encoder_stages(tiny_model.encoder)
    # decoder and heads always train and are in the optimizer
    for mod in (tiny_model.decoder, tiny_model.heads):
        assert all(p.requires_grad for p in mod.parameters())
        assert _ids(mod.parameters()) <= _opt_ids(groups)
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    opt_ids = _opt_ids(groups)
    assert len(opt_ids) == sum(len(g["params"]) for g in groups)  # no parameter twice
    for i, s in enumerate(stages):
        in_opt = _ids(s) <= opt_ids
        ever_trains = strategy in ("full", "lp-ft", "gradual") or flags[i]
        assert in_opt == ever_trains, (strategy, i)
        assert (f"encoder.stage{i}" in names) == ever_trains
    # a real optimizer step changes only trainable parameters
    opt = torch.optim.SGD(groups, lr=1e-3)
    before = {id(p): p.detach().clone() for p in tiny_model.parameters()}
    x = torch.randn(2, 3, 8, 8, 8)
    sum(v.mean() for v in tiny_model(x).values()).backward()
    opt.step()
    for p in tiny_model.encoder.parameters():
        changed = not torch.equal(before[id(p)], p)
        if not p.requires_grad:
            assert not changed


def test_frozen_batchnorm_stays_in_eval(tiny_model):
    plan = setup_transfer(tiny_model, strategy="linear-probe", base_lr=1e-3)
    plan.schedule.train(tiny_model)
    bns = [m for m in tiny_model.encoder.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and all(not m.training for m in bns)
    assert tiny_model.decoder.training
    stats = bns[0].running_mean.clone()
    tiny_model(torch.randn(2, 3, 8, 8, 8) * 5 + 3)
    assert torch.equal(stats, bns[0].running_mean)


def test_lp_ft_unfreezes_after_probe_epochs(tiny_model):
    plan = setup_transfer(tiny_model, strategy="lp-ft", base_lr=1e-3, probe_epochs=2)
    opt = torch.optim.AdamW(plan.param_groups, lr=1e-3)
    for epoch, expected in [(0, [False] * 3), (1, [False] * 3), (2, [True] * 3), (5, [True] * 3)]:
        plan.schedule.on_epoch_start(epoch, tiny_model, opt)
        assert _stage_flags(tiny_model) == expected
    plan.schedule.train(tiny_model)
    assert all(m.training for m in tiny_model.encoder.modules())


def test_gradual_unfreezes_one_stage_per_epoch_from_the_top(tiny_model):
    plan = setup_transfer(tiny_model, strategy="gradual", base_lr=1e-3)
    seen = []
    for epoch in range(5):
        plan.schedule.on_epoch_start(epoch, tiny_model)
        seen.append(_stage_flags(tiny_model))
    assert seen == [
        [False, False, False],
        [False, False, True],
        [False, True, True],
        [True, True, True],
        [True, True, True],
    ]


def test_optimizer_missing_params_is_reported(tiny_model):
    plan = setup_transfer(tiny_model, strategy="lp-ft", base_lr=1e-3, probe_epochs=1)
    opt = torch.optim.SGD([g for g in plan.param_groups if not g["name"].startswith("encoder")], lr=1e-3)
    with pytest.raises(ConfigError, match="not in the optimizer at epoch 1"):
        plan.schedule.on_epoch_start(1, tiny_model, opt)


def test_learning_rates_pretrained_mult_and_layer_decay(tiny_model):
    groups = apply_strategy(tiny_model, strategy="full", base_lr=1.0, pretrained_lr_mult=0.1, layer_decay=0.5)
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["decoder"] == lr["heads"] == 1.0
    assert lr["encoder.stage2"] == pytest.approx(0.1 * 0.5)
    assert lr["encoder.stage1"] == pytest.approx(0.1 * 0.25)
    assert lr["encoder.stage0"] == pytest.approx(0.1 * 0.125)


def test_l2sp_pulls_towards_pretrained_weights(tiny_model):
    plan = setup_transfer(tiny_model, strategy="full", base_lr=1e-3, l2sp=0.5)
    assert plan.l2sp is not None
    assert all(g.get("weight_decay") == 0.0 for g in plan.param_groups if g["name"].startswith("encoder"))
    assert plan.l2sp().item() == 0.0
    w = tiny_model.encoder.stem.weight
    with torch.no_grad():
        w.add_(1.0)
    assert plan.l2sp().item() == pytest.approx(0.5 * 0.5 * w.numel())
    plan.l2sp().backward()
    assert torch.allclose(w.grad, torch.full_like(w, 0.5))
    ref = plan.l2sp.reference_tensors()
    assert len(ref) == len(list(tiny_model.encoder.parameters()))
    current = {f"l2sp.{i}": p.detach() for i, p in enumerate(tiny_model.encoder.parameters())}
    plan.l2sp.load_reference_tensors(current)  # e.g. restored from a checkpoint
    assert plan.l2sp().item() == pytest.approx(0.0)


def test_bad_values_fail_clearly(tiny_model):
    with pytest.raises(ConfigError, match="unknown transfer strategy 'linear_probe'.*Did you mean 'linear-probe'"):
        apply_strategy(tiny_model, strategy="linear_probe", base_lr=1e-3)
    with pytest.raises(ConfigError, match="base_lr=-1"):
        apply_strategy(tiny_model, strategy="full", base_lr=-1)
    with pytest.raises(ConfigError, match="layer_decay=1.5"):
        apply_strategy(tiny_model, strategy="full", base_lr=1e-3, layer_decay=1.5)
