"""Tiny models for the multi-task tests (a fake encoder honouring the registry contract)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmtl.models.mtl_net import MultiTaskNet


class TinyEncoder(nn.Module):
    """Three stages (strides 2, 4, 8) with BatchNorm, ``feature_info`` and ``stages()``."""

    def __init__(self, in_channels: int = 3, two_half_d: bool = False) -> None:
        super().__init__()
        k = (2, 2, 1) if two_half_d else (2, 2, 2)
        self.stem = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv3d(4, 8, 3, stride=k, padding=1), nn.BatchNorm3d(8), nn.ReLU()),
                nn.Sequential(nn.Conv3d(8, 8, 3, stride=k, padding=1), nn.BatchNorm3d(8), nn.ReLU()),
                nn.Sequential(nn.Conv3d(8, 16, 3, stride=k, padding=1), nn.BatchNorm3d(16), nn.ReLU()),
            ]
        )
        s = [tuple(v**i for v in k) for i in (1, 2, 3)]
        self.feature_info = [{"channels": c, "stride": st} for c, st in zip((8, 8, 16), s)]

    def stages(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for b in self.blocks:
            x = b(x)
            out.append(x)
        return out


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors run fastest on one thread (and do not spin-wait on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model() -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet(TinyEncoder(), decoder_channels=(8, 8, 8))


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16, 16)
    heat = torch.zeros(2, 1, 16, 16, 16)
    heat[0, 0, 8, 8, 8] = 1.0
    heat[0, 0, 7:10, 7:10, 7:10] = torch.maximum(heat[0, 0, 7:10, 7:10, 7:10], torch.tensor(0.5))
    heat[0, 0, 8, 8, 8] = 1.0
    size_mask = (heat > 0.4).float()
    targets = {
        "heatmap": heat,
        "log_diameter": size_mask * 2.0,
        "size_mask": size_mask,
        "malignancy": size_mask.clone(),
        "malig_mask": size_mask.clone(),
    }
    return x, targets
