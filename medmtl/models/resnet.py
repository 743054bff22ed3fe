"""ResNet-18/34/50 in the torchvision state-dict layout, as multi-scale 2D backbones.

He et al. 2016, "Deep Residual Learning for Image Recognition" (CVPR), in torchvision's
"v1.5" form (stride on the 3×3 convolution of bottlenecks). The parameter names equal
torchvision's ``resnet18/34/50`` so a torchvision ImageNet state-dict file (``.pth`` or
``.safetensors``) loads as is; medmtl never downloads it: pass ``weights=`` or put
``resnet18.pth`` etc. in ``$MEDMTL_WEIGHTS_DIR``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medmtl.errors import WeightsError
from medmtl.models.load_report import LoadReport
from medmtl.models.registry import register_encoder
from medmtl.models.weights import WeightSpec


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(_conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block on ``(B, C, ...)`` (2D or, once inflated, 3D)."""
        idn = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idn)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 bottleneck, expansion 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, out, 1)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(_conv(cin, out, 1, stride), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck on ``(B, C, ...)``."""
        idn = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idn)


class ResNet(nn.Module):
    """torchvision-layout ResNet with multi-scale features (strides 2, 4, 8, 16, 32).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: classifier outputs.
    """

    first_conv = "conv1"

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        stages: list[nn.Sequential] = []
        for idx, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks: list[nn.Module] = []
            for b in range(n):
                blocks.append(block(cin, planes, 2 if (b == 0 and idx > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_channels = [64] + [p * block.expansion for p in (64, 128, 256, 512)]
        self.feature_strides = [2, 4, 8, 16, 32]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature maps of ``x`` ``(B, 3, H, W)`` (or 3D once adapted), strides 2…32."""
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f0, f1, f2, f3, self.layer4(f3)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, num_classes)`` from the last feature map."""
        return self.fc(self.avgpool(x).flatten(1))

    def strip_head(self) -> list[str]:
        """Drop the classifier (``fc``) in place; returns the removed state-dict keys."""
        before = set(self.state_dict())
        self.fc = nn.Identity()  # type: ignore[assignment]
        return sorted(before - set(self.state_dict()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of ``(B, 3, H, W)``."""
        return self.forward_head(self.forward_features(x)[-1])


def load_torchvision_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, encoder: str, source: str, sha256: str
) -> LoadReport:
    """Copy a torchvision ResNet state dict by name (shapes checked); the source is not modified.

    Tensors absent from the file stay randomly initialised (listed as ``newly_initialised``);
    file tensors the model lacks are listed as ``unused_source``.

    Raises:
        WeightsError: a shape differs, or nothing at all could be copied.
    """
    target = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        if key not in target:
            continue
        if tuple(val.shape) != tuple(target[key].shape):
            raise WeightsError(
                f"weights file {source}: '{key}' has shape {tuple(val.shape)} but {encoder} needs "
                f"{tuple(target[key].shape)}; pass the torchvision {encoder} state dict"
            )
        new[key] = val
    if not new:
        raise WeightsError(
            f"weights file {source} copied nothing into {encoder} (no matching names, e.g. "
            f"'conv1.weight'); pass a torchvision-format {encoder} state dict"
        )
    model.load_state_dict(new, strict=False)
    return LoadReport(
        encoder=encoder, source=source, sha256=sha256, copied=list(new),
        newly_initialised=[k for k in target if k not in new],
        unused_source=[k for k in state if k not in new],
    )


_SRC = "ResNet (He et al. 2016), torchvision layout; ImageNet weights from a torchvision state-dict file"
_LIC = "BSD-3-Clause (torchvision weights)"


def _spec(name: str) -> WeightSpec:
    return WeightSpec(encoder=name, filenames=(f"{name}.pth", f"{name}.safetensors"), fmt="torchvision")


@register_encoder("resnet18", loader=load_torchvision_state_dict, weights=_spec("resnet18"), source=_SRC, licence=_LIC)
def resnet18() -> nn.Module:
    """ResNet-18 (11.7 M parameters)."""
    return ResNet(BasicBlock, (2, 2, 2, 2))


@register_encoder("resnet34", loader=load_torchvision_state_dict, weights=_spec("resnet34"), source=_SRC, licence=_LIC)
def resnet34() -> nn.Module:
    """ResNet-34 (21.8 M parameters)."""
    return ResNet(BasicBlock, (3, 4, 6, 3))


@register_encoder("resnet50", loader=load_torchvision_state_dict, weights=_spec("resnet50"), source=_SRC, licence=_LIC)
def resnet50() -> nn.Module:
    """ResNet-50 (25.6 M parameters)."""
    return ResNet(Bottleneck, (3, 4, 6, 3))
