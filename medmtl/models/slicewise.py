"""2.5D: a 2D network run on every axial slice of a volume, features restacked as volumes.

Slices are taken along the last axis ``K`` (axial after RAS orientation). The three input
channels hold either the CT windows of the slice (``context="windows"``) or, for one-channel
inputs, the slices ``k-1, k, k+1`` (``context="neighbours"``; border slices replicated), as in
Roth et al. 2014, "A New 2.5D Representation for Lymph Node Detection using Random Sets of
Deep Convolutional Neural Network Observations" (MICCAI).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONTEXTS = ("windows", "neighbours")


def neighbour_slices(x: torch.Tensor) -> torch.Tensor:
    """Stack slices ``k-1, k, k+1`` of a one-channel volume as three channels.

    Args:
        x: ``(B, 1, I, J, K)``.

    Returns:
        ``(B, 3, I, J, K)``; the first and last slices are replicated at the borders.
    """
    if x.dim() != 5 or x.shape[1] != 1:
        raise ValueError(f"neighbours context needs (B, 1, I, J, K), got {tuple(x.shape)}")
    padded = F.pad(x, (1, 1, 0, 0, 0, 0), mode="replicate")
    return torch.cat([padded[..., :-2], padded[..., 1:-1], padded[..., 2:]], dim=1)


class SliceWise(nn.Module):
    """Run a 2D backbone on every ``K`` slice and restack its multi-scale features.

    Args:
        backbone: a 2D network with ``forward_features((N, C, H, W)) -> list[Tensor]``.
        context: ``"windows"`` (input channels are used as is) or ``"neighbours"``.
        max_slices: slices per 2D forward pass (bounds memory; results do not depend on it).
    """

    def __init__(self, backbone: nn.Module, context: str = "windows", max_slices: int = 64) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        self.backbone = backbone
        self.context = context
        self.max_slices = max_slices

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of ``x`` ``(B, C, I, J, K)`` as a list of ``(B, C_l, I/s_l, J/s_l, K)``."""
        if x.dim() != 5:
            raise ValueError(f"2.5d input must be (B, C, I, J, K), got shape {tuple(x.shape)}")
        if self.context == "neighbours":
            x = neighbour_slices(x)
        b, c, i, j, k = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * k, c, i, j)
        chunks = [self.backbone.forward_features(s) for s in slices.split(self.max_slices)]  # type: ignore[operator]
        out: list[torch.Tensor] = []
        for level in range(len(chunks[0])):
            f = torch.cat([ch[level] for ch in chunks], dim=0)
            f = f.reshape(b, k, *f.shape[1:]).permute(0, 2, 3, 4, 1)
            out.append(f)
        return out
