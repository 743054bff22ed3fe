"""Fixtures of the encoder tests: one cached pretrained Lite0 per adapter (building is the slow part)."""

from __future__ import annotations

import pytest
import torch

from medmtl.models.registry import Encoder, create_encoder


@pytest.fixture(scope="session")
def lite0_2d() -> Encoder:
    """Pretrained EfficientNet-Lite0, 2d adapter, eval mode."""
    torch.manual_seed(0)
    return create_encoder("efficientnet-lite0", adapter="2d").eval()


@pytest.fixture(scope="session")
def depth_constant() -> tuple[torch.Tensor, torch.Tensor]:
    """A 2D image ``(1, 3, 40, 32)`` and the same image repeated along K: ``(1, 3, 40, 32, 8)``."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 40, 32, generator=g)
    return img, img.unsqueeze(-1).repeat(1, 1, 1, 1, 8)
