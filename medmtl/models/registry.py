"""Encoder registry and factory: ImageNet 2D backbones adapted to 3D CT/MRI volumes.

``create_encoder(name, adapter=...)`` builds a registered 2D backbone, loads its offline
ImageNet weights (see :mod:`medmtl.models.weights`), adapts the input channels and turns it
into a volume encoder with one of the adapters:

- ``"2d"``: the plain 2D network (``(B, C, H, W)`` in; also :meth:`Encoder.classify`);
- ``"2.5d"``: the 2D network on every axial slice (:mod:`medmtl.models.slicewise`);
- ``"inflate"``: I3D inflation (:mod:`medmtl.models.inflate`);
- ``"acs"``: axial/coronal/sagittal convolutions (:mod:`medmtl.models.acs`).

Encoders register with :func:`register_encoder` (timm-style decorator over a builder).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmtl.errors import ConfigError, unknown_name
from medmtl.models.load_report import LoadReport
from medmtl.models.weights import WeightSpec, find_weights, load_state_dict_file, resolve_weights

logger = logging.getLogger(__name__)

ADAPTERS = ("2d", "2.5d", "inflate", "acs")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Loader = Callable[..., LoadReport]


@dataclass(frozen=True)
class EncoderInfo:
    """A registered encoder: how to build it and where its weights come from.

    Attributes:
        name: registry name, e.g. ``"efficientnet-lite0"``.
        builder: builds the randomly initialised 2D backbone (3 input channels).
        loader: ``loader(model, state, encoder=, source=, sha256=) -> LoadReport`` fills it.
        weights: where pretrained weights may be found.
        source: description of the architecture and weights' origin.
        licence: licence of the pretrained weights.
        adapters: adapters supported.
        mean: input normalisation mean per channel (ImageNet RGB).
        std: input normalisation std per channel.
    """

    name: str
    builder: Callable[[], nn.Module]
    loader: Loader
    weights: WeightSpec
    source: str
    licence: str
    adapters: tuple[str, ...] = ADAPTERS
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


_REGISTRY: dict[str, EncoderInfo] = {}


def register_encoder(
    name: str, *, loader: Loader, weights: WeightSpec, source: str, licence: str
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator registering a backbone builder under ``name``.

    Example:
        >>> @register_encoder("my-net", loader=..., weights=WeightSpec("my-net", ("my-net.pth",)),
        ...                   source="...", licence="MIT")  # doctest: +SKIP
        ... def my_net() -> nn.Module: ...
    """

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} registered twice")
        _REGISTRY[name] = EncoderInfo(name=name, builder=fn, loader=loader, weights=weights,
                                      source=source, licence=licence)
        return fn

    return deco


def _ensure_registered() -> None:
    """Import the modules whose decorators register the built-in encoders (once)."""
    from medmtl.models import efficientnet, resnet  # noqa: F401


def list_encoders() -> list[EncoderInfo]:
    """All registered encoders, sorted by name."""
    _ensure_registered()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_encoder_info(name: str) -> EncoderInfo:
    """The registry record of ``name``.

    Raises:
        RegistryError: unknown name (with a did-you-mean).
    """
    _ensure_registered()
    if name not in _REGISTRY:
        raise unknown_name("encoder", name, _REGISTRY)
    return _REGISTRY[name]


@dataclass(frozen=True)
class EncoderConfig:
    """Frozen record of how an encoder was built; stored in checkpoints' model cards.

    Attributes:
        name: encoder name.
        source: architecture and weight origin.
        licence: licence of the pretrained weights.
        first_conv: qualified name of the first convolution (inside ``Encoder.backbone``).
        mean: per-channel input mean (ImageNet RGB; applied after CT windowing).
        std: per-channel input std.
        adapter: ``"2d"``, ``"2.5d"``, ``"inflate"`` or ``"acs"``.
        in_channels: channels of the encoder's input.
        pretrained: whether ImageNet weights were loaded.
        weights_sha256: SHA256 of the weight file (``""`` when random).
        depth_padding: ``"zeros"`` or ``"replicate"`` (inflate/acs, along ``K``).
        inflate_policy: layer policy of ``inflate``.
        context: 2.5D channel context, ``"windows"`` or ``"neighbours"``.
    """

    name: str
    source: str
    licence: str
    first_conv: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    adapter: str
    in_channels: int
    pretrained: bool
    weights_sha256: str = ""
    depth_padding: str = "zeros"
    inflate_policy: str = "full"
    context: str = "windows"

    def __post_init__(self) -> None:
        from medmtl.records import expect_type, number_in, one_of

        for key in ("name", "source", "licence", "first_conv", "weights_sha256", "depth_padding", "inflate_policy",
                    "context"):
            expect_type(getattr(self, key), str, f"encoder.{key}", error=ConfigError)
        one_of(self.adapter, ADAPTERS, "encoder.adapter", error=ConfigError)
        number_in(self.in_channels, "encoder.in_channels", low=1, high=64, integer=True, error=ConfigError)
        expect_type(self.pretrained, bool, "encoder.pretrained", error=ConfigError)
        for key in ("mean", "std"):
            values = expect_type(getattr(self, key), (tuple, list), f"encoder.{key}", error=ConfigError)
            for i, v in enumerate(values):
                number_in(v, f"encoder.{key}[{i}]", low=0.0 if key == "mean" else 1e-6, high=1e3, error=ConfigError)
            object.__setattr__(self, key, tuple(float(v) for v in values))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        """Inverse of :meth:`to_dict` (unknown keys are refused)."""
        from medmtl.records import check_keys

        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        check_keys(data, names, "encoder", required=required, error=ConfigError)
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)  # type: ignore[arg-type]


class Encoder(nn.Module):
    """A multi-scale feature encoder for images (``2d``) or volumes ``(B, C, I, J, K)``.

    Attributes:
        backbone: the (adapted) network.
        feature_info: per level ``{"channels": int, "stride": (si, sj, sk)}`` (2-tuples for 2d;
            ``sk == 1`` for 2.5d).
        config: the frozen :class:`EncoderConfig`.
        load_report: the :class:`~medmtl.models.load_report.LoadReport` of the weight load.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        config: EncoderConfig,
        feature_info: list[dict[str, Any]],
        load_report: LoadReport,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.feature_info = feature_info
        self.load_report = load_report
        self.slicewise: nn.Module | None = None
        if config.adapter == "2.5d":
            from medmtl.models.slicewise import SliceWise

            self.slicewise = SliceWise(backbone, context=config.context)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features.

        Args:
            x: ``(B, C, H, W)`` for ``2d``, else ``(B, C, I, J, K)``, normalised as
                ``config.mean``/``config.std`` say.

        Returns:
            One tensor per :attr:`feature_info` level, shape
            ``(B, channels, ceil(I / si), ceil(J / sj), ceil(K / sk))`` (2D: no ``K``).
        """
        want = 4 if self.config.adapter == "2d" else 5
        if x.dim() != want:
            layout = "(B, C, H, W)" if want == 4 else "(B, C, I, J, K)"
            raise ValueError(f"{self.config.adapter} encoder needs {layout} input, got shape {tuple(x.shape)}")
        if self.slicewise is not None:
            return self.slicewise(x)  # type: ignore[no-any-return]
        return self.backbone.forward_features(x)  # type: ignore[operator,no-any-return]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` of images ``(B, 3, H, W)`` (``2d`` adapter only)."""
        if self.config.adapter != "2d":
            raise ValueError(f"classify() needs the 2d adapter, this encoder is {self.config.adapter!r}")
        return self.backbone.forward_head(self.forward(x)[-1])  # type: ignore[operator,no-any-return]


def _state_keys(module: nn.Module) -> list[str]:
    return list(module.state_dict().keys())


def _check_encoder_args(
    info: EncoderInfo, *, adapter: str, in_channels: int, depth_padding: str, context: str
) -> None:
    """Validate the :func:`create_encoder` settings against ``info`` and each other.

    Raises:
        RegistryError: unknown adapter, padding or context.
        ConfigError: invalid ``in_channels`` / ``context`` combination.
    """
    from medmtl.models.padconv import DEPTH_PADDINGS
    from medmtl.models.slicewise import CONTEXTS

    if adapter not in info.adapters:
        raise unknown_name("adapter", adapter, info.adapters)
    if depth_padding not in DEPTH_PADDINGS:
        raise unknown_name("depth_padding", depth_padding, DEPTH_PADDINGS)
    if context not in CONTEXTS:
        raise unknown_name("context", context, CONTEXTS)
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    if context == "neighbours" and (adapter != "2.5d" or in_channels != 1):
        raise ConfigError(
            f"context='neighbours' needs adapter='2.5d' and in_channels=1, got adapter={adapter!r}, "
            f"in_channels={in_channels}; use context='windows' otherwise"
        )


def _load_backbone(
    info: EncoderInfo, net: nn.Module, *, pretrained: bool, weights: str | Path | None
) -> tuple[LoadReport, str]:
    """Fill ``net`` with ImageNet weights (or record a random init): ``(report, sha256)``."""
    if not pretrained:
        return LoadReport(encoder=info.name, source="random init", newly_initialised=_state_keys(net)), ""
    src = resolve_weights(info.weights, weights)
    state = load_state_dict_file(src.path)
    report = info.loader(net, state, encoder=info.name, source=str(src.path), sha256=src.sha256)
    return report, src.sha256


def _strip_head(net: nn.Module, report: LoadReport, *, pretrained: bool) -> None:
    """Remove the ImageNet classifier of ``net`` and drop its keys from ``report``."""
    removed = net.strip_head()  # type: ignore[operator]
    report.copied = [k for k in report.copied if k not in removed]
    report.newly_initialised = [k for k in report.newly_initialised if k not in removed]
    report.unused_source.extend(removed if pretrained else [])


def _adapt_to_volumes(
    net: nn.Module, report: LoadReport, *, adapter: str, first_conv: str, pretrained: bool,
    depth_padding: str, inflate_policy: str,
) -> nn.Module:
    """Turn the 2D ``net`` into a 3D one for ``inflate`` / ``acs`` (unchanged otherwise)."""
    if adapter == "inflate":
        from medmtl.models.inflate import inflate_module, reinit_3d

        net, inflated = inflate_module(net, policy=inflate_policy, depth_padding=depth_padding, stem=first_conv)
        if pretrained:
            report.inflated.extend(inflated)
        else:
            reinit_3d(net)
    elif adapter == "acs":
        from medmtl.models.acs import acs_module

        net = acs_module(net, depth_padding=depth_padding)
    return net


def _feature_info(adapter: str, channels: list[int], strides: list[int]) -> list[dict[str, Any]]:
    """Per level ``{"channels", "stride"}`` with the stride tuple the adapter gives."""

    def stride_of(s: int) -> tuple[int, ...]:
        return {"2d": (s, s), "2.5d": (s, s, 1)}.get(adapter, (s, s, s))

    return [{"channels": int(c), "stride": stride_of(int(s))} for c, s in zip(channels, strides)]


def create_encoder(
    name: str,
    *,
    adapter: str,
    pretrained: bool = True,
    in_channels: int = 3,
    weights: str | Path | None = None,
    depth_padding: str = "zeros",
    inflate_policy: str = "full",
    context: str = "windows",
) -> Encoder:
    """Build a registered encoder, load its ImageNet weights offline and adapt it.

    Args:
        name: registered encoder (see :func:`list_encoders`), e.g. ``"efficientnet-lite0"``.
        adapter: ``"2d"``, ``"2.5d"``, ``"inflate"`` or ``"acs"``.
        pretrained: load ImageNet weights; ``False`` gives the same architecture randomly
            initialised (the from-scratch baseline).
        in_channels: input channels (1 → RGB-summed stem; N → tiled, scaled by 3/N).
        weights: explicit state-dict file (``.pth``/``.safetensors``); else
            ``$MEDMTL_WEIGHTS_DIR`` or the package shipping the weights.
        depth_padding: ``"zeros"`` or ``"replicate"`` padding along ``K`` (inflate / acs).
        inflate_policy: see :data:`medmtl.models.inflate.INFLATE_POLICIES`.
        context: 2.5D only: ``"windows"`` (channels are CT windows) or ``"neighbours"``
            (1-channel input; slices k-1, k, k+1 become the three channels).

    Returns:
        The :class:`Encoder` (in training mode, like any new module).

    Raises:
        RegistryError: unknown encoder, adapter, policy or padding.
        WeightsError: no weight source found, or the file does not fit.
        ConfigError: invalid ``in_channels`` / ``context`` combination.

    Example:
        >>> enc = create_encoder("efficientnet-lite0", adapter="inflate")  # doctest: +SKIP
        >>> [f.shape for f in enc(torch.zeros(1, 3, 32, 32, 32))]  # doctest: +SKIP
    """
    info = get_encoder_info(name)
    _check_encoder_args(info, adapter=adapter, in_channels=in_channels, depth_padding=depth_padding, context=context)
    net = info.builder()
    first_conv: str = net.first_conv  # type: ignore[assignment]
    report, sha = _load_backbone(info, net, pretrained=pretrained, weights=weights)
    if adapter != "2d":  # the ImageNet classifier is only used by Encoder.classify (2d)
        _strip_head(net, report, pretrained=pretrained)
    net_in = 3 if context == "neighbours" else in_channels
    if net_in != 3:
        from medmtl.models.channels import with_input_channels

        net = with_input_channels(net, first_conv, net_in)
        report.channel_adapted.append(f"{first_conv}.weight")
    strides: list[int] = list(net.feature_strides)  # type: ignore[arg-type]
    channels: list[int] = list(net.feature_channels)  # type: ignore[arg-type]
    net = _adapt_to_volumes(net, report, adapter=adapter, first_conv=first_conv, pretrained=pretrained,
                            depth_padding=depth_padding, inflate_policy=inflate_policy)
    config = EncoderConfig(
        name=name, source=info.source, licence=info.licence, first_conv=f"backbone.{first_conv}",
        mean=info.mean, std=info.std, adapter=adapter, in_channels=in_channels, pretrained=pretrained,
        weights_sha256=sha, depth_padding=depth_padding, inflate_policy=inflate_policy, context=context,
    )
    report.log()
    return Encoder(net, config=config, feature_info=_feature_info(adapter, channels, strides), load_report=report)


def describe_encoders() -> list[dict[str, Any]]:
    """One JSON-ready row per encoder: adapters, weight source, found/missing, path, SHA256, licence.

    Hashing reads each found file once (tens of MB); nothing is loaded into a network.
    """
    from medmtl.models.weights import sha256_file

    rows: list[dict[str, Any]] = []
    for info in list_encoders():
        found = find_weights(info.weights)
        rows.append({
            "name": info.name,
            "adapters": list(info.adapters),
            "source": info.source,
            "weights_source": found[1] if found else info.weights.expected(),
            "found": found is not None,
            "path": str(found[0]) if found else "",
            "sha256": sha256_file(found[0]) if found else "",
            "licence": info.licence,
        })
    return rows


__all__ = [
    "ADAPTERS", "Encoder", "EncoderConfig", "EncoderInfo", "create_encoder", "describe_encoders",
    "get_encoder_info", "list_encoders", "register_encoder",
]
