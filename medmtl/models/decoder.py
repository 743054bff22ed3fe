"""UNet-style decoder over an encoder's multi-scale features (Ronneberger et al. 2015).

The decoder reads the encoder's ``feature_info`` (channels and per-axis stride of each level)
and, from the deepest level up: upsamples to the next level's grid (the stride ratio per
axis, so 2.5D strides ``(s, s, 1)`` work), concatenates that level's skip features and runs
a ``conv3d → norm → ReLU`` ×2 block. A last block runs after upsampling to the input
resolution, so dense heads predict one value per input voxel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError, did_you_mean

__all__ = ["NORMS", "ConvBlock", "UNetDecoder", "default_decoder_channels"]

NORMS = ("batch", "instance")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


class ConvBlock(nn.Sequential):
    """Two ``3×3×3 conv → norm → ReLU`` layers, ``(B, c_in, ...) → (B, c_out, ...)``."""

    def __init__(self, c_in: int, c_out: int, norm: str = "instance") -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


def _stride3(info: Mapping[str, Any]) -> tuple[int, int, int]:
    s = tuple(int(v) for v in info["stride"])
    if len(s) == 2:  # a 2d stride: no downsampling along K
        s = (s[0], s[1], 1)
    if len(s) != 3:
        raise ConfigError(f"feature_info stride {info['stride']!r} invalid; need 3 ints (si, sj, sk)")
    return s  # type: ignore[return-value]


def default_decoder_channels(feature_info: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """One width per decoder block (deep → shallow, then the full-resolution block).

    Each block fusing level ``l`` gets ``clamp(channels_l, 16, 128)``; the last gets 16.
    """
    levels = list(feature_info)
    widths = [min(128, max(16, int(info["channels"]))) for info in reversed(levels[:-1])]
    return tuple([*widths, 16])


class UNetDecoder(nn.Module):
    """Decode encoder features to a full-resolution feature map.

    Args:
        feature_info: the encoder's levels ``[{"channels": c, "stride": (si, sj, sk)}, ...]``,
            shallow → deep (strides non-decreasing per axis).
        channels: block widths, ``len(feature_info)`` entries: one per skip fusion
            (deepest first) and one for the final full-resolution block. ``None`` →
            :func:`default_decoder_channels`.
        norm: ``"instance"`` (default, robust with 3D batch sizes of 1–2) or ``"batch"``.
        input_channels: channels of the network input concatenated into the final
            full-resolution block (a stride-1 skip; 0 = none). The encoder's finest level is
            at stride 2, so without it a lesion of 2–4 voxels is located from features one
            octave coarser than itself.

    Attributes:
        out_channels: channels of the output map.
    """

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, Any]],
        channels: Sequence[int] | None = None,
        norm: str = "instance",
        input_channels: int = 0,
    ) -> None:
        super().__init__()
        levels = list(feature_info)
        if not levels:
            raise ConfigError("encoder feature_info is empty; the decoder needs at least one feature level")
        if norm not in NORMS:
            raise ConfigError(f"decoder norm {norm!r} invalid; allowed: {', '.join(NORMS)}.{did_you_mean(norm, NORMS)}")
        chans = tuple(int(c) for c in (channels if channels is not None else default_decoder_channels(levels)))
        if len(chans) != len(levels) or any(c < 1 for c in chans):
            raise ConfigError(
                f"decoder_channels {list(chans)} invalid: need {len(levels)} positive widths for an encoder with "
                f"{len(levels)} feature levels (one per skip fusion, deepest first, plus the full-resolution block), "
                f"e.g. {list(default_decoder_channels(levels))}"
            )
        self.strides = [_stride3(info) for info in levels]
        for a, b in zip(self.strides, self.strides[1:]):
            if any(sb < sa for sa, sb in zip(a, b)):
                raise ConfigError(f"feature_info strides must not decrease from level to level, got {self.strides}")
        self.feature_channels = [int(info["channels"]) for info in levels]
        self.channels = chans
        self.norm = norm
        blocks = []
        c_prev = self.feature_channels[-1]
        for i, lvl in enumerate(range(len(levels) - 2, -1, -1)):
            blocks.append(ConvBlock(c_prev + self.feature_channels[lvl], chans[i], norm))
            c_prev = chans[i]
        self.blocks = nn.ModuleList(blocks)
        self.input_channels = int(input_channels)
        self.final = ConvBlock(c_prev + self.input_channels, chans[-1], norm)
        self.out_channels = chans[-1]

    def forward(
        self, features: Sequence[torch.Tensor], out_size: Sequence[int], image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fuse features and upsample to ``out_size``.

        Args:
            features: the encoder's outputs, shallow → deep, ``(B, c_l, I/si, J/sj, K/sk)``.
            out_size: the input's spatial size ``(I, J, K)``.
            image: the network input ``(B, input_channels, I, J, K)``; required when the
                decoder was built with ``input_channels > 0``, ignored otherwise.

        Returns:
            ``(B, out_channels, I, J, K)``.
        """
        if len(features) != len(self.feature_channels):
            raise ValueError(f"decoder expects {len(self.feature_channels)} feature maps, got {len(features)}")
        x = features[-1]
        for block, lvl in zip(self.blocks, range(len(features) - 2, -1, -1)):
            skip = features[lvl]
            x = F.interpolate(x, size=skip.shape[-3:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=tuple(int(s) for s in out_size), mode="trilinear", align_corners=False)
        if self.input_channels:
            if image is None:
                raise ValueError("this decoder has an input skip; pass the network input as `image`")
            x = torch.cat([x, image.to(x.dtype)], dim=1)
        return self.final(x)  # type: ignore[no-any-return]
