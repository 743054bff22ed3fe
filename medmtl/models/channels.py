"""Input-channel adaptation of a pretrained first convolution (pure functions).

ImageNet stems take RGB. Single-channel MRI uses the sum of the RGB kernels (so a grey image
replicated to RGB and the 1-channel image give the same response); ``N`` channels tile the
RGB kernels and rescale by ``3 / N`` to keep the activation scale (the rule of timm's
``adapt_input_conv``; Wightman 2019, "PyTorch Image Models").
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt an RGB kernel ``(O, 3, kh, kw)`` (or 3D ``(O, 3, ...)``) to ``in_channels`` inputs.

    Args:
        weight: the pretrained first-convolution kernel (not modified).
        in_channels: wanted input channels (>= 1).

    Returns:
        A new ``(O, in_channels, ...)`` kernel: the RGB sum for 1 channel, the kernel itself
        (a copy) for 3, RGB tiled cyclically and scaled by ``3 / in_channels`` otherwise.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    w = weight.detach().clone()
    src = w.shape[1]
    if in_channels == src:
        return w
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / src)
    tiled = w.repeat(1, reps, *([1] * (w.dim() - 2)))[:, :in_channels]
    return tiled * (src / in_channels)


def with_input_channels(net: nn.Module, conv_name: str, in_channels: int) -> nn.Module:
    """Return a copy of ``net`` whose convolution ``conv_name`` takes ``in_channels`` inputs.

    Args:
        net: a network (not modified).
        conv_name: qualified name of its first convolution, e.g. ``"conv1"``.
        in_channels: wanted input channels.

    Returns:
        A deep copy with that convolution's kernel adapted by :func:`adapt_first_conv`.
    """
    new = copy.deepcopy(net)
    conv = new.get_submodule(conv_name)
    if not isinstance(conv, nn.Conv2d | nn.Conv3d):
        raise ValueError(f"{conv_name} is not a convolution: {type(conv).__name__}")
    w = adapt_first_conv(conv.weight, in_channels)
    conv.weight = nn.Parameter(w)
    conv.in_channels = in_channels
    return new
