"""The multi-task network: shared encoder + UNet decoder + three dense heads.

One forward pass gives, per input voxel, a lesion-centre heatmap logit (detection), a
``log(diameter_mm)`` (size) and a malignancy logit — a CenterNet-style dense formulation
(Zhou, Wang & Krähenbühl 2019) on a shared backbone (hard parameter sharing, Caruana 1997).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medmtl.errors import ConfigError, did_you_mean
from medmtl.models.decoder import UNetDecoder
from medmtl.models.spec import ModelSpec

__all__ = [
    "HEADS",
    "TASK_TO_HEAD",
    "MultiTaskNet",
    "build_model",
    "model_spec",
    "required_divisor",
]

#: Output names of the network, one dense map each.
HEADS: tuple[str, ...] = ("heatmap", "log_diameter", "malignancy")
#: Loss task name → head name.
TASK_TO_HEAD: dict[str, str] = {"det": "heatmap", "size": "log_diameter", "malig": "malignancy"}

#: Prior probability of a lesion centre per voxel for the heatmap bias (focal loss init).
HEATMAP_PRIOR = 0.01
#: Initial diameter of the size head's bias, mm.
INIT_DIAMETER_MM = 10.0


def _max_stride(feature_info: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    out = [1, 1, 1]
    for info in feature_info:
        s = [int(v) for v in info["stride"]]
        if len(s) == 2:
            s = [s[0], s[1], 1]
        out = [max(a, b) for a, b in zip(out, s)]
    return (out[0], out[1], out[2])


class MultiTaskNet(nn.Module):
    """Encoder + decoder + heads ``heatmap`` / ``log_diameter`` / ``malignancy``.

    Args:
        encoder: an encoder with ``feature_info`` and ``forward(x) -> list[Tensor]`` (see
            :func:`medmtl.models.registry.create_encoder`).
        decoder_channels: decoder widths (see :class:`~medmtl.models.decoder.UNetDecoder`);
            ``None`` picks a default from ``feature_info``.
        norm: decoder normalisation, ``"instance"`` or ``"batch"``.
        input_skip: concatenate the input into the decoder's full-resolution block.

    Attributes:
        encoder, decoder: the shared trunk.
        heads: ``nn.ModuleDict`` of three ``1×1×1`` convolutions. ``heatmap`` bias is
            ``-log((1 - π) / π)`` with ``π = 0.01`` (Lin et al. 2017, focal loss), so the
            initial loss is not swamped by background; ``log_diameter`` bias is
            ``log(10 mm)``; ``malignancy`` bias 0.
    """

    def __init__(
        self, encoder: nn.Module, decoder_channels: Sequence[int] | None = None, norm: str = "instance",
        input_skip: bool = False,
    ) -> None:
        super().__init__()
        info = getattr(encoder, "feature_info", None)
        if not info:
            raise ConfigError("encoder has no feature_info; build it with medmtl.models.registry.create_encoder")
        self.encoder = encoder
        in_ch = int(getattr(getattr(encoder, "config", None), "in_channels", 3))
        self.decoder = UNetDecoder(info, decoder_channels, norm=norm, input_channels=in_ch if input_skip else 0)
        c = self.decoder.out_channels
        convs = {name: nn.Conv3d(c, 1, kernel_size=1) for name in HEADS}
        init_bias = {
            "heatmap": -math.log((1.0 - HEATMAP_PRIOR) / HEATMAP_PRIOR),
            "log_diameter": math.log(INIT_DIAMETER_MM),
            "malignancy": 0.0,
        }
        with torch.no_grad():
            for name, conv in convs.items():
                nn.init.normal_(conv.weight, std=0.01)
                if conv.bias is not None:  # always true: built with bias
                    conv.bias.fill_(init_bias[name])
        self.heads = nn.ModuleDict(convs)
        self.divisor = _max_stride(info)
        #: the :class:`ModelSpec` this net was built from (``None`` when hand-built)
        self.spec: ModelSpec | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            x: ``(B, C, I, J, K)`` preprocessed input; ``I, J, K`` divisible by
                :func:`required_divisor`.

        Returns:
            ``{"heatmap": logits, "log_diameter": log mm, "malignancy": logits}``, each
            ``(B, 1, I, J, K)``.

        Raises:
            ConfigError: wrong rank or a spatial size not divisible by the encoder's stride.
        """
        if x.dim() != 5:
            raise ConfigError(f"MultiTaskNet needs input (B, C, I, J, K), got shape {tuple(x.shape)}")
        size = tuple(int(s) for s in x.shape[-3:])
        if any(s % d for s, d in zip(size, self.divisor)):
            raise ConfigError(
                f"input spatial size {size} is not divisible by {self.divisor} (the encoder's largest stride per "
                "axis); choose a patch_size that is a multiple of it or pad the volume"
            )
        feats = self.encoder(x)
        y = self.decoder(feats, size, x)
        return {name: head(y) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by every task (encoder + decoder), including frozen ones."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters of one task's head.

        Args:
            task: a head name (``"heatmap"``, ``"log_diameter"``, ``"malignancy"``) or a loss
                task name (``"det"``, ``"size"``, ``"malig"``).
        """
        head = TASK_TO_HEAD.get(task, task)
        if head not in self.heads:
            allowed = [*HEADS, *TASK_TO_HEAD]
            raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(allowed)}.{did_you_mean(task, allowed)}")
        return list(self.heads[head].parameters())


def required_divisor(model: MultiTaskNet) -> tuple[int, int, int]:
    """Per-axis divisor every input spatial size must honour (the encoder's max stride)."""
    return model.divisor


def build_model(spec: ModelSpec, *, pretrained: bool) -> MultiTaskNet:
    """Build the network from its spec (what the model card stores).

    Args:
        spec: the :class:`~medmtl.models.spec.ModelSpec`.
        pretrained: load ImageNet weights into the encoder (``False`` when a checkpoint's
            weights will be loaded next).

    Returns:
        The :class:`MultiTaskNet` (its ``spec`` attribute is ``spec``).

    Raises:
        ConfigError: ``spec`` is not a :class:`ModelSpec`.
        RegistryError: unknown encoder or adapter.
    """
    from medmtl.models.registry import create_encoder

    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"build_model needs a ModelSpec, got {type(spec).__name__}; use ModelSpec.from_dict(...)")
    encoder = create_encoder(
        spec.encoder,
        adapter=spec.adapter,
        pretrained=pretrained,
        in_channels=spec.in_channels,
        weights=spec.weights if pretrained else None,
        depth_padding=spec.depth_padding,
        inflate_policy=spec.inflate_policy,
        context=spec.context,
    )
    net = MultiTaskNet(encoder, spec.decoder_channels, norm=spec.norm, input_skip=spec.input_skip)
    net.spec = spec
    return net


def model_spec(model: MultiTaskNet) -> ModelSpec:
    """The spec that rebuilds ``model`` with :func:`build_model`.

    Encoder fields come from ``model.encoder.config`` when present; decoder widths, norm and
    the input skip from the decoder itself, so the result is right for hand-built nets too.
    """
    base = model.spec.to_dict() if model.spec is not None else {}
    enc_cfg = getattr(model.encoder, "config", None)
    if enc_cfg is not None:
        for key in ("in_channels", "depth_padding", "inflate_policy", "context", "adapter"):
            if hasattr(enc_cfg, key):
                base[key] = getattr(enc_cfg, key)
        base["encoder"] = getattr(enc_cfg, "name", base.get("encoder"))
    base["decoder_channels"] = list(model.decoder.channels)
    base["norm"] = model.decoder.norm
    base["input_skip"] = model.decoder.input_channels > 0
    if base.get("weights") is not None:
        base["weights"] = str(base["weights"])
    return ModelSpec.from_dict(base)
