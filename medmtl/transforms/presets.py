"""Preprocessing presets: one :class:`InputSpec` saved with the model, used at train and predict.

CT: orientation RAS → spacing → three HU windows → three channels in ``[0, 1]`` → ImageNet
mean/std. MRI: orientation RAS → optional N4 (Tustison et al. 2010) → spacing → percentile
normalisation → replicated channels → ImageNet mean/std. Built from MONAI pieces
(``Orientationd``, ``Spacingd``, ``RepeatChanneld``, ``NormalizeIntensityd``) plus the
intensity transforms of :mod:`medmtl.transforms.intensity`; the ``MetaTensor`` affine is
kept (and updated by the spatial steps) throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from medmtl.errors import ConfigError, did_you_mean
from medmtl.transforms.intensity import validate_windows

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from medmtl.io.types import Scan
    from medmtl.transforms.harmonise import Harmonisation

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_CT_WINDOWS",
    "InputSpec",
    "default_ct_spec",
    "default_mri_spec",
    "preprocess_transforms",
    "preprocess_scan",
]

#: ImageNet channel statistics (torchvision / timm convention), applied last.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Lung, mediastinum and bone windows as (center, width) in HU.
DEFAULT_CT_WINDOWS: tuple[tuple[float, float], ...] = ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0))

_MODALITIES = ("CT", "MR")
_MR_CHANNELS = ("replicate", "single")


@dataclass(frozen=True)
class InputSpec:
    """How a scan becomes network input (stored in the model card).

    Attributes:
        modality: ``"CT"`` or ``"MR"``.
        orientation: axis code after reorientation; only ``"RAS"`` is supported.
        spacing_mm: target voxel spacing ``(si, sj, sk)`` in mm.
        windows: CT only: ``((center_HU, width_HU), ...)``, one output channel each, scaled to
            ``[0, 1]``.
        n4: MR only: run N4 bias-field correction before resampling.
        percentiles: MR only: ``(lower, upper)`` percentiles mapped to ``0`` and ``1``.
        mr_channels: MR only: ``"replicate"`` (→ 3 identical channels for an RGB encoder) or
            ``"single"`` (1 channel, for a sum-adapted first convolution).
        mean: per-channel mean subtracted last (ImageNet by default).
        std: per-channel std divided last (ImageNet by default).
    """

    modality: str = "CT"
    orientation: str = "RAS"
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    windows: tuple[tuple[float, float], ...] = DEFAULT_CT_WINDOWS
    n4: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)
    mr_channels: str = "replicate"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.modality not in _MODALITIES:
            raise ConfigError(
                f"input_spec.modality {self.modality!r} invalid; allowed: CT, MR."
                f"{did_you_mean(str(self.modality).upper(), _MODALITIES)}"
            )
        if self.orientation != "RAS":
            raise ConfigError(f"input_spec.orientation {self.orientation!r} invalid; allowed: RAS")
        sp = tuple(self.spacing_mm)
        if len(sp) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in sp):
            raise ConfigError(
                f"input_spec.spacing_mm {self.spacing_mm!r} invalid; need 3 positive numbers in mm, e.g. [1.5, 1.5, 1.5]"
            )
        object.__setattr__(self, "spacing_mm", tuple(float(v) for v in sp))
        object.__setattr__(self, "windows", validate_windows(self.windows, "input_spec.windows"))
        p = tuple(self.percentiles)
        if len(p) != 2 or not (0.0 <= float(p[0]) < float(p[1]) <= 100.0):
            raise ConfigError(
                f"input_spec.percentiles {self.percentiles!r} invalid; need 0 <= lower < upper <= 100, e.g. [0.5, 99.5]"
            )
        object.__setattr__(self, "percentiles", (float(p[0]), float(p[1])))
        if self.mr_channels not in _MR_CHANNELS:
            raise ConfigError(
                f"input_spec.mr_channels {self.mr_channels!r} invalid; allowed: replicate, single."
                f"{did_you_mean(str(self.mr_channels), _MR_CHANNELS)}"
            )
        if not isinstance(self.n4, bool):
            raise ConfigError(f"input_spec.n4 {self.n4!r} invalid; must be true or false")
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != self.channels or len(std) != self.channels:
            raise ConfigError(
                f"input_spec.mean/std have {len(mean)}/{len(std)} values but the input has {self.channels} "
                "channels; give one value per channel"
            )
        if not all(v > 0 and math.isfinite(v) for v in std):
            raise ConfigError(f"input_spec.std {std!r} invalid; every value must be > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        """Number of network input channels this spec produces."""
        if self.modality == "CT":
            return len(self.windows)
        return 3 if self.mr_channels == "replicate" else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists instead of tuples)."""
        d = asdict(self)
        d["spacing_mm"] = list(self.spacing_mm)
        d["windows"] = [list(w) for w in self.windows]
        d["percentiles"] = list(self.percentiles)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Build and validate a spec from :meth:`to_dict` output (or a YAML section).

        Raises:
            ConfigError: unknown keys (with a did-you-mean) or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"input_spec must be a mapping, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"unknown input_spec key {key!r}; allowed: {', '.join(names)}.{did_you_mean(str(key), names)}"
                )
        kw: dict[str, Any] = dict(data)
        for key in ("spacing_mm", "percentiles", "mean", "std"):
            if key in kw and isinstance(kw[key], (list, tuple)):
                kw[key] = tuple(kw[key])
        if "windows" in kw and isinstance(kw["windows"], (list, tuple)):
            kw["windows"] = tuple(tuple(w) if isinstance(w, (list, tuple)) else w for w in kw["windows"])
        return cls(**kw)


def default_ct_spec(spacing: Sequence[float] = (3.0, 3.0, 3.0)) -> InputSpec:
    """CT preset: RAS, ``spacing`` mm, lung/mediastinum/bone windows, ImageNet mean/std.

    The default 3 mm matches the small committed phantoms (in-plane ~3 mm), so a 32³ patch
    covers ~10 cm.
    """
    return InputSpec(modality="CT", spacing_mm=tuple(float(s) for s in spacing))  # type: ignore[arg-type]


def default_mri_spec(spacing: Sequence[float] = (2.0, 2.0, 2.0), n4: bool = True) -> InputSpec:
    """MRI preset: RAS, ``spacing`` mm, optional N4, 0.5/99.5 percentiles, 3 replicated channels."""
    return InputSpec(modality="MR", spacing_mm=tuple(float(s) for s in spacing), n4=n4)  # type: ignore[arg-type]


def preprocess_transforms(
    spec: InputSpec, harmonisation: Harmonisation | None = None, keys: Sequence[str] = ("image",)
) -> Compose:
    """MONAI ``Compose`` turning ``{"image": MetaTensor (1, I, J, K)}`` into network input.

    The one preprocessing path of prediction, adaptation and feature extraction.

    Args:
        spec: the input spec.
        harmonisation: the model card's intensity harmonisation (histogram matching or N4 of
            the raw scan, :mod:`medmtl.transforms.harmonise`), applied first; ``None``: none.
        keys: dict keys holding images (``(1, I, J, K)`` ``MetaTensor`` with RAS affine).

    Returns:
        A ``Compose`` whose output images are ``(spec.channels, I', J', K')`` float32
        ``MetaTensor`` s in RAS orientation at ``spec.spacing_mm``, affine kept and updated.
    """
    from monai.transforms import Compose, NormalizeIntensityd, Orientationd, RepeatChanneld, Spacingd

    from medmtl.transforms.intensity import CTWindowsd, MRNormalized, N4BiasCorrectiond

    ks = list(keys)
    steps: list[Any] = []
    if harmonisation is not None:
        from medmtl.transforms.harmonise import Harmonised

        steps.append(Harmonised(keys=ks, record=harmonisation, modality=spec.modality))
    steps += [Orientationd(keys=ks, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if spec.modality == "CT":
        steps.append(Spacingd(keys=ks, pixdim=spec.spacing_mm, mode="bilinear", padding_mode="border"))
        steps.append(CTWindowsd(keys=ks, windows=spec.windows))
    else:
        if spec.n4:
            steps.append(N4BiasCorrectiond(keys=ks))
        steps.append(Spacingd(keys=ks, pixdim=spec.spacing_mm, mode="bilinear", padding_mode="border"))
        steps.append(MRNormalized(keys=ks, lower=spec.percentiles[0], upper=spec.percentiles[1]))
        if spec.mr_channels == "replicate":
            steps.append(RepeatChanneld(keys=ks, repeats=3))
    steps.append(NormalizeIntensityd(
            keys=ks, subtrahend=np.asarray(spec.mean), divisor=np.asarray(spec.std), channel_wise=True
        ))
    return Compose(steps)


def preprocess_scan(scan: Scan, spec: InputSpec, harmonisation: Harmonisation | None = None) -> MetaTensor:
    """Preprocess one loaded scan with ``spec`` (after the card's harmonisation, if any).

    Args:
        scan: a :class:`~medmtl.io.types.Scan` (image ``(1, I, J, K)`` with RAS affine).
        spec: the input spec; its modality must match the scan's.
        harmonisation: see :func:`preprocess_transforms`.

    Returns:
        ``MetaTensor`` ``(spec.channels, I', J', K')`` with the resampled RAS affine.

    Raises:
        ConfigError: when the scan's modality differs from the spec's.
    """
    if scan.modality != spec.modality:
        raise ConfigError(
            f"scan {scan.scan_id!r} has modality {scan.modality!r} but the input spec expects "
            f"{spec.modality!r}; use a model/spec trained for {scan.modality}"
        )
    out = preprocess_transforms(spec, harmonisation)({"image": scan.image})
    return out["image"]  # type: ignore[no-any-return]
