from __future__ import annotations

import math

import pytest
import torch

from medmtl.errors import ConfigError
from medmtl.mtl.losses import heatmap_focal_loss, malignancy_loss, size_loss, task_losses


def test_focal_loss_zero_lesions_is_finite_and_small_for_confident_background():
    logits = torch.full((1, 1, 8, 8, 8), -8.0, requires_grad=True)
    loss = heatmap_focal_loss(logits, torch.zeros(1, 1, 8, 8, 8))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() < 1e-3
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_normalised_by_lesion_count():
    target = torch.zeros(1, 1, 8, 8, 8)
    logits = torch.full_like(target, -10.0)
    target[0, 0, 2, 2, 2] = 1.0
    one = heatmap_focal_loss(logits, target)
    target[0, 0, 6, 6, 6] = 1.0
    two = heatmap_focal_loss(logits, target)
    assert two.item() == pytest.approx(one.item(), rel=1e-4)  # per-lesion loss is the same
    # a confident correct peak costs far less than a missed one
    logits2 = logits.clone()
    logits2[0, 0, 2, 2, 2] = logits2[0, 0, 6, 6, 6] = 10.0
    assert heatmap_focal_loss(logits2, target).item() < 0.01 * two.item()


def test_masked_losses_empty_mask_zero_with_graph():
    pred = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    empty = torch.zeros(1, 1, 4, 4, 4)
    for loss in (size_loss(pred, pred.detach() + 1, empty), malignancy_loss(pred, empty, empty)):
        assert loss.item() == 0.0 and loss.requires_grad
        (g,) = torch.autograd.grad(loss, pred)
        assert torch.equal(g, torch.zeros_like(g))


def test_size_loss_value():
    pred = torch.zeros(1, 1, 2, 2, 2)
    tgt = torch.full_like(pred, math.log(10.0))
    mask = torch.zeros_like(pred)
    mask[0, 0, 0, 0, 0] = 1
    expected = math.log(10.0) - 0.05  # smooth-L1 with beta 0.1 beyond the quadratic zone
    assert size_loss(pred, tgt, mask).item() == pytest.approx(expected, rel=1e-5)


def test_lesion_with_empty_malignancy_contributes_zero_gradient():
    """Must show: a lesion without a malignancy label gives no malignancy gradient."""
    from monai.data import MetaTensor

    from medmtl.io import coords
    from medmtl.io.types import Lesion
    from medmtl.transforms.targets import build_targets

    aff = torch.eye(4, dtype=torch.float64) * 2.0
    aff[3, 3] = 1.0
    img = MetaTensor(torch.zeros(1, 16, 16, 16), affine=aff)
    labelled = coords.voxel_to_lps([[4.0, 4.0, 4.0]], aff.numpy())[0]
    unlabelled = coords.voxel_to_lps([[11.0, 11.0, 11.0]], aff.numpy())[0]
    t = build_targets(img, [Lesion("s", tuple(labelled), 8.0, 1.0), Lesion("s", tuple(unlabelled), 8.0, None)])
    logits = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    batch = {k: v[None] for k, v in t.items()}
    loss = malignancy_loss(logits, batch["malignancy"], batch["malig_mask"])
    (g,) = torch.autograd.grad(loss, logits)
    around_unlabelled = g[0, 0, 9:14, 9:14, 9:14]
    assert batch["size_mask"][0, 0, 11, 11, 11] == 1  # the lesion is supervised for size...
    assert torch.count_nonzero(around_unlabelled) == 0  # ...but not for malignancy
    assert torch.count_nonzero(g[0, 0, 2:7, 2:7, 2:7]) > 0

    # only-unlabelled: the whole malignancy loss is an exact zero
    t2 = build_targets(img, [Lesion("s", tuple(unlabelled), 8.0, None)])
    loss2 = malignancy_loss(logits, t2["malignancy"][None], t2["malig_mask"][None])
    (g2,) = torch.autograd.grad(loss2, logits)
    assert loss2.item() == 0.0 and torch.count_nonzero(g2) == 0


def test_task_losses_keys_and_errors(tiny_model, tiny_batch):
    x, targets = tiny_batch
    losses = task_losses(tiny_model(x), targets)
    assert set(losses) == {"det", "size", "malig"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    with pytest.raises(ConfigError, match="targets lack 'size_mask'"):
        task_losses(tiny_model(x), {k: v for k, v in targets.items() if k != "size_mask"})
    with pytest.raises(ConfigError, match="differs from target shape"):
        task_losses(tiny_model(x), {k: v[..., :8] for k, v in targets.items()})


def test_losses_under_bf16_autocast(tiny_model, tiny_batch):
    x, targets = tiny_batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = task_losses(tiny_model(x), targets)
    total = sum(losses.values())
    total.backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
