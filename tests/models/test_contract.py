"""Contract over every registered encoder × adapter: shapes match feature_info, gradients are finite."""

from __future__ import annotations

import math

import pytest
import torch

from medmtl.models.registry import ADAPTERS, create_encoder, list_encoders
from medmtl.models.weights import find_weights

NAMES = [info.name for info in list_encoders()]


def test_registry_lists_the_builtin_encoders() -> None:
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
            "resnet18", "resnet34", "resnet50"} <= set(NAMES)
    assert all(info.adapters == ADAPTERS for info in list_encoders())


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("name", NAMES)
def test_shapes_match_feature_info_and_grads_are_finite(name: str, adapter: str) -> None:
    info = next(i for i in list_encoders() if i.name == name)
    pretrained = find_weights(info.weights) is not None
    torch.manual_seed(0)
    # eval mode: BN uses running statistics, so batch 1 with 1-voxel deep levels is allowed (fast)
    enc = create_encoder(name, adapter=adapter, pretrained=pretrained).eval()
    size = (1, 3, 32, 32) if adapter == "2d" else ((1, 3, 16, 16, 2) if adapter == "2.5d" else (1, 3, 16, 16, 8))
    x = torch.randn(*size, requires_grad=True)
    feats = enc(x)
    assert len(feats) == len(enc.feature_info)
    for f, fi in zip(feats, enc.feature_info):
        want = (size[0], fi["channels"], *(math.ceil(n / s) for n, s in zip(size[2:], fi["stride"])))
        assert tuple(f.shape) == want
    loss = sum(f.float().pow(2).mean() for f in feats)
    if adapter == "2d":  # the ImageNet head is part of the 2d encoder
        loss = loss + enc.classify(x).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert enc.config.adapter == adapter and enc.config.pretrained == pretrained
