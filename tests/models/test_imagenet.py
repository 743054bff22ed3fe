"""The embedded Lite0 ImageNet weights classify natural photos correctly (2d adapter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, transform

from medmtl.models.registry import Encoder
from medmtl.models.weights import KNOWN_SHA256


def _imagenet_input(img: np.ndarray) -> torch.Tensor:
    x = transform.resize(img, (224, 224), anti_aliasing=True).astype(np.float32)
    x = (x - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", range(281, 286)), ("coffee", range(967, 968))])
def test_lite0_top1(lite0_2d: Encoder, photo: str, classes: range) -> None:
    with torch.no_grad():
        logits = lite0_2d.classify(_imagenet_input(getattr(data, photo)()))
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in classes


def test_lite0_record(lite0_2d: Encoder) -> None:
    rep = lite0_2d.load_report
    assert len(rep.copied) == 296 and not rep.newly_initialised and not rep.inflated
    assert lite0_2d.config.weights_sha256 == KNOWN_SHA256["efficientnet-lite0"]
    cfg = lite0_2d.config.to_dict()
    assert cfg["licence"] == "Apache-2.0" and cfg["mean"] == [0.485, 0.456, 0.406]
    assert type(lite0_2d.config).from_dict(cfg) == lite0_2d.config
    assert "296 tensors copied" in rep.summary()
