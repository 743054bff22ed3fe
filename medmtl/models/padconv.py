"""Convolutions that pad their own input: TensorFlow "same" or symmetric, 2D and 3D.

The EfficientNet-Lite weights were trained in TensorFlow with ``"same"`` padding (asymmetric for
stride 2 on even sizes). MONAI's :class:`~monai.networks.nets.EfficientNet` computes that padding
once for a fixed image size; the modules here compute it from the actual input size, so the
same network runs on any 2D image or 3D volume. The 3D modules pad the last spatial axis
(``K``, the axial/slice axis of medmtl's ``(B, C, I, J, K)`` layout) with zeros (default) or by
replicating the border slices, the latter making I3D inflation exact on depth-constant inputs
(Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEPTH_PADDINGS = ("zeros", "replicate")


def same_padding_1d(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow ``"same"`` padding of one axis.

    Args:
        size: input length (voxels).
        kernel: kernel size.
        stride: stride.
        dilation: dilation.

    Returns:
        ``(before, after)`` so the output length is ``ceil(size / stride)``.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def axis_paddings(
    sizes: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    same: bool,
) -> list[tuple[int, int]]:
    """Per-axis ``(before, after)`` paddings, TF-"same" or symmetric ``(k - 1) * d // 2``."""
    if same:
        return [same_padding_1d(n, k, s, d) for n, k, s, d in zip(sizes, kernel, stride, dilation)]
    return [((k - 1) * d // 2, (k - 1) * d // 2) for k, d in zip(kernel, dilation)]


def pad_input(x: torch.Tensor, pads: Sequence[tuple[int, int]], depth_padding: str = "zeros") -> torch.Tensor:
    """Pad the spatial axes of ``x``; the last axis of a 3D input uses ``depth_padding``.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, I, J, K)``.
        pads: ``(before, after)`` per spatial axis, in axis order.
        depth_padding: ``"zeros"`` or ``"replicate"``; applies to axis ``K`` of 3D inputs only.

    Returns:
        A new padded tensor (or ``x`` itself when no padding is needed).
    """
    spatial = x.dim() - 2
    pads = list(pads)
    if spatial == 3 and depth_padding == "replicate" and any(pads[-1]):
        x = F.pad(x, (pads[-1][0], pads[-1][1], 0, 0, 0, 0), mode="replicate")
        pads[-1] = (0, 0)
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat) if any(flat) else x


class PaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` that pads its input itself (TF-"same" when ``same`` else symmetric).

    Parameters and state-dict keys are those of ``nn.Conv2d`` (``weight``, ``bias``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        same: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad then convolve ``x`` ``(B, C, H, W)``."""
        pads = axis_paddings(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.same)  # type: ignore[arg-type]
        return super().forward(pad_input(x, pads))


class PaddedConv3d(nn.Conv3d):
    """``nn.Conv3d`` that pads its input itself; axis ``K`` padded with zeros or replicated slices."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        dilation: tuple[int, int, int] = (1, 1, 1),
        groups: int = 1,
        bias: bool = True,
        same: bool = True,
        depth_padding: str = "zeros",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0,
            dilation=dilation, groups=groups, bias=bias,
        )
        if depth_padding not in DEPTH_PADDINGS:
            raise ValueError(f"depth_padding must be one of {DEPTH_PADDINGS}, got {depth_padding!r}")
        self.same = same
        self.depth_padding = depth_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad then convolve ``x`` ``(B, C, I, J, K)``."""
        pads = axis_paddings(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.same)  # type: ignore[arg-type]
        return super().forward(pad_input(x, pads, self.depth_padding))
