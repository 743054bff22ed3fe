"""The network's build record: one frozen :class:`ModelSpec` (what the model card stores).

:func:`medmtl.models.mtl_net.build_model` builds a :class:`~medmtl.models.mtl_net.MultiTaskNet`
from it, the trainer makes it from the config's ``model`` section (:meth:`ModelSpec.from_config`)
and a checkpoint rebuilds its network from the card's copy. :func:`check_patch_divisible` is the
one check that a patch (or sliding window) fits the encoder's strides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medmtl.errors import ConfigError
from medmtl.records import check_keys, expect_type, number_in, one_of

#: 2D → 3D adapters a multi-task net may use (``2d`` is for 2D encoders only).
NET_ADAPTERS = ("2.5d", "inflate", "acs")


@dataclass(frozen=True)
class ModelSpec:
    """How to build the multi-task network.

    Attributes:
        encoder: registered encoder name (``medmtl models list``).
        adapter: ``2.5d``, ``inflate`` or ``acs``.
        in_channels: input channels (3 for CT windows or replicated MRI, 1 for single MRI).
        decoder_channels: decoder widths per stage, ``None`` = from the encoder.
        depth_padding: ``zeros`` or ``replicate`` along the axial axis (inflate / acs).
        weights: optional local encoder state-dict file (only read when pretrained).
        inflate_policy: how 2D kernels are inflated (see :mod:`medmtl.models.inflate`).
        context: 2.5D only: ``windows`` or ``neighbours``.
        norm: decoder normalisation, ``instance`` or ``batch``.
        input_skip: the input joins the decoder's full-resolution block.
    """

    encoder: str
    adapter: str
    in_channels: int = 3
    decoder_channels: tuple[int, ...] | None = None
    depth_padding: str = "zeros"
    weights: str | None = None
    inflate_policy: str = "full"
    context: str = "windows"
    norm: str = "instance"
    input_skip: bool = False

    def __post_init__(self) -> None:
        from medmtl.models.decoder import NORMS
        from medmtl.models.padconv import DEPTH_PADDINGS
        from medmtl.models.slicewise import CONTEXTS

        w = "model"
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError(f"{w}.encoder = {self.encoder!r} must be a registered encoder name, e.g. efficientnet-lite0")
        one_of(self.adapter, NET_ADAPTERS, f"{w}.adapter", error=ConfigError)
        number_in(self.in_channels, f"{w}.in_channels", low=1, high=64, integer=True, error=ConfigError)
        if self.decoder_channels is not None:
            expect_type(self.decoder_channels, (list, tuple), f"{w}.decoder_channels", error=ConfigError)
            for i, c in enumerate(self.decoder_channels):
                number_in(c, f"{w}.decoder_channels[{i}]", low=1, high=4096, integer=True, error=ConfigError)
            object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        one_of(self.depth_padding, DEPTH_PADDINGS, f"{w}.depth_padding", error=ConfigError)
        expect_type(self.weights, (str, type(None)), f"{w}.weights", error=ConfigError)
        expect_type(self.inflate_policy, str, f"{w}.inflate_policy", error=ConfigError)
        one_of(self.context, CONTEXTS, f"{w}.context", error=ConfigError)
        one_of(self.norm, NORMS, f"{w}.norm", error=ConfigError)
        expect_type(self.input_skip, bool, f"{w}.input_skip", error=ConfigError)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists instead of tuples)."""
        out = dataclasses.asdict(self)
        out["decoder_channels"] = list(self.decoder_channels) if self.decoder_channels is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown keys fail with a did-you-mean.

        Raises:
            ConfigError: unknown or missing key, wrong type or value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(data, names, "model", required=("encoder", "adapter"), error=ConfigError)
        return cls(**dict(data))

    @classmethod
    def from_config(cls, section: Any, in_channels: int) -> ModelSpec:
        """The spec of a config ``model`` section (its build fields; ``pretrained`` is a training choice).

        Args:
            section: :class:`medmtl.config.schema.ModelConfig`.
            in_channels: channels of the input spec.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(section).items() if k in names}
        return cls.from_dict({**values, "in_channels": int(in_channels)})


def check_patch_divisible(patch: Sequence[int], divisor: Sequence[int], what: str) -> None:
    """Raise unless every axis of ``patch`` is a positive multiple of the encoder's stride.

    Args:
        patch: ``(I, J, K)`` voxels.
        divisor: the network's largest stride per axis.
        what: the setting's name for the message (e.g. ``"train.patch_size"``).

    Raises:
        ConfigError: an axis is not a multiple (the message suggests the nearest one).
    """
    if any(int(p) < 1 or int(p) % int(d) for p, d in zip(patch, divisor)):
        fixed = [max(int(d), (int(p) // int(d)) * int(d)) for p, d in zip(patch, divisor)]
        raise ConfigError(
            f"{what} {list(patch)} must be divisible by {list(divisor)} (the encoder's stride per axis); e.g. {fixed}"
        )


__all__ = ["NET_ADAPTERS", "ModelSpec", "check_patch_divisible"]
