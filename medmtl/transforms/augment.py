"""Training augmentations that mimic scanner differences (TorchIO style, MONAI pieces).

Every random transform here first **samples its parameters** (from MONAI's per-transform
``RandomState``, so ``Compose.set_random_state(seed)`` makes runs reproducible), records them
in ``data["aug_params"][<name>]`` (fixed keys and shapes, so batches collate), then calls a
**deterministic** transform with them — Pérez-García et al. 2021 (TorchIO). A sample can be
replayed with :func:`replay`.

Intensity artifacts act on the image keys only; spatial ones (flip, rotation, anisotropic
resampling) act jointly on the image **and** target keys (targets with nearest-neighbour
interpolation, so masks stay binary and heatmap peaks stay 1).

* noise — Gaussian noise (quantum / electronic noise, dose);
* blur — Gaussian smoothing (reconstruction kernel), MONAI ``GaussianSmooth``;
* bias — smooth multiplicative polynomial field (MRI coil inhomogeneity; Van Leemput et
  al. 1999 model, as in MONAI ``RandBiasField`` / TorchIO ``RandomBiasField``);
* gamma — intensity gamma, MONAI ``AdjustContrast``;
* anisotropy — thick-slice simulation along one axis (TorchIO ``RandomAnisotropy``);
* flip — MONAI ``Flip``; rotation — small rotations, MONAI ``Affine``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from medmtl.errors import ConfigError, did_you_mean
from medmtl.transforms.intensity import like

__all__ = [
    "AUG_KEY",
    "STRENGTHS",
    "GaussianNoise",
    "BiasField",
    "AnisotropicResample",
    "RandNoised",
    "RandBlurd",
    "RandBiasFieldd",
    "RandGammad",
    "RandAnisotropyd",
    "RandFlipd",
    "RandRotated",
    "train_augmentations",
    "replay",
]

#: Dict key where sampled parameters are recorded.
AUG_KEY = "aug_params"
#: Named strengths → factor on probabilities and magnitudes.
STRENGTHS: dict[str, float] = {"none": 0.0, "light": 0.5, "medium": 1.0, "strong": 1.5}


def _tensor(img: Any) -> torch.Tensor:
    t = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    return t.float()


# ----------------------------------------------------------------- deterministic transforms
class GaussianNoise(Transform):
    """Add ``N(0, std²)`` noise drawn from a seeded generator (replayable).

    Args:
        std: standard deviation in image units.
        seed: generator seed.
    """

    def __init__(self, std: float, seed: int) -> None:
        self.std, self.seed = float(std), int(seed)

    def __call__(self, img: Any) -> torch.Tensor:
        """``(C, I, J, K)`` → same shape."""
        x = _tensor(img)
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        return like(x + self.std * noise, img)


def _poly_field(shape: Sequence[int], coeffs: Sequence[float], degree: int) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.linspace(-1.0, 1.0, int(n)) for n in shape], indexing="ij")
    field = torch.zeros(tuple(int(n) for n in shape))
    idx = 0
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                field = field + coeffs[idx] * grids[0] ** i * grids[1] ** j * grids[2] ** k
                idx += 1
    return torch.exp(field)


def n_bias_coefficients(degree: int) -> int:
    """Number of monomials ``x^i y^j z^k`` with ``i + j + k <= degree``."""
    return (degree + 1) * (degree + 2) * (degree + 3) // 6


class BiasField(Transform):
    """Multiply by ``exp(polynomial)`` over normalised coordinates ``[-1, 1]³``.

    Applied around each channel's minimum (``(x - min)·b + min``) so it also acts sensibly on
    mean/std-normalised inputs that take negative values.

    Args:
        coefficients: one per monomial (:func:`n_bias_coefficients`).
        degree: polynomial degree.
    """

    def __init__(self, coefficients: Sequence[float], degree: int = 3) -> None:
        if len(coefficients) != n_bias_coefficients(degree):
            raise ConfigError(f"bias field of degree {degree} needs {n_bias_coefficients(degree)} coefficients")
        self.coefficients, self.degree = [float(c) for c in coefficients], int(degree)

    def __call__(self, img: Any) -> torch.Tensor:
        """``(C, I, J, K)`` → same shape."""
        x = _tensor(img)
        b = _poly_field(x.shape[1:], self.coefficients, self.degree).to(x.device)
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        return like((x - lo) * b + lo, img)


class AnisotropicResample(Transform):
    """Downsample along one axis by ``factor`` (area averaging = a thick slice), then back.

    MONAI has no per-axis equivalent: ``RandSimulateLowResolution`` zooms all axes by one
    factor, while scanners differ mainly in slice thickness along a single axis — hence this
    transform (as TorchIO's ``RandomAnisotropy``).

    Args:
        axis: spatial axis 0, 1 or 2.
        factor: downsampling factor ``>= 1``.
        mode: upsampling interpolation (``"trilinear"`` for images, ``"nearest"`` for targets).
    """

    def __init__(self, axis: int, factor: float, mode: str = "trilinear") -> None:
        self.axis, self.factor, self.mode = int(axis), float(factor), mode

    def __call__(self, img: Any) -> torch.Tensor:
        """``(C, I, J, K)`` → same shape."""
        x = _tensor(img)
        size = list(x.shape[1:])
        small = list(size)
        small[self.axis] = max(1, int(round(size[self.axis] / self.factor)))
        if self.mode == "nearest":
            y = F.interpolate(F.interpolate(x[None], size=small, mode="nearest"), size=size, mode="nearest")
        else:
            y = F.interpolate(F.interpolate(x[None], size=small, mode="area"), size=size, mode="trilinear", align_corners=False)
        return like(y[0], img)


# ---------------------------------------------------------------------- random wrappers
class _RandAug(Randomizable, MapTransform):
    """``randomize()`` draws once per sample; the recorded parameters are then applied
    deterministically to the relevant keys (TorchIO / MONAI style: any sample can be replayed)."""

    name = ""
    spatial = False

    def __init__(
        self,
        keys: KeysCollection,
        prob: float,
        target_keys: KeysCollection = (),
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"{type(self).__name__} prob={prob!r} invalid; must be in [0, 1]")
        self.prob = float(prob)
        self.target_keys: list[Hashable] = (
            [target_keys] if isinstance(target_keys, str) else list(target_keys)  # type: ignore[arg-type]
        )

    def randomize(self, data: Any = None) -> None:
        """Draw this sample's parameters with ``self.R`` (kept in :attr:`params`; the RNG use is
        the same as before: one uniform for the probability, then :meth:`sample` if applied)."""
        self.params: dict[str, Any] = (
            {"applied": True, **self.sample()} if self.R.rand() < self.prob else {"applied": False, **self.identity()}
        )

    def sample(self) -> dict[str, Any]:
        """Draw parameters with ``self.R``."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Parameters meaning "not applied" (same keys and shapes as :meth:`sample`)."""
        raise NotImplementedError

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        """Deterministic application of ``params`` to one array."""
        raise NotImplementedError

    def apply_params(self, data: Mapping[Hashable, Any], params: Mapping[str, Any]) -> dict[Hashable, Any]:
        """Apply recorded ``params`` (replay)."""
        d = dict(data)
        if params.get("applied"):
            for key in self.key_iterator(d):
                d[key] = self.apply(d[key], params, False)
            if self.spatial:
                for key in self.target_keys:
                    if key in d:
                        d[key] = self.apply(d[key], params, True)
        rec = dict(d.get(AUG_KEY, {}))
        rec[self.name] = dict(params)
        d[AUG_KEY] = rec
        return d

    def __call__(self, data: Mapping[Hashable, Any], randomize: bool = True) -> dict[Hashable, Any]:
        """Draw (unless ``randomize=False``: replay the last draw) and apply deterministically."""
        if randomize or not hasattr(self, "params"):
            self.randomize(data)
        return self.apply_params(data, self.params)


class RandNoised(_RandAug):
    """Gaussian noise, ``std ~ U(0, max_std)`` (image units)."""

    name = "noise"

    def __init__(self, keys: KeysCollection, prob: float = 0.3, max_std: float = 0.1, **kw: Any) -> None:
        super().__init__(keys, prob, **kw)
        self.max_std = float(max_std)

    def sample(self) -> dict[str, Any]:
        return {"std": float(self.R.uniform(0.0, self.max_std)), "seed": int(self.R.randint(0, 2**31 - 1))}

    def identity(self) -> dict[str, Any]:
        return {"std": 0.0, "seed": 0}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        return GaussianNoise(params["std"], params["seed"])(img)


class RandBlurd(_RandAug):
    """Gaussian blur with per-axis ``sigma ~ U(min, max)`` voxels (MONAI ``GaussianSmooth``)."""

    name = "blur"

    def __init__(self, keys: KeysCollection, prob: float = 0.2, sigma: tuple[float, float] = (0.25, 1.0), **kw: Any) -> None:
        super().__init__(keys, prob, **kw)
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def sample(self) -> dict[str, Any]:
        return {"sigma": [float(self.R.uniform(*self.sigma)) for _ in range(3)]}

    def identity(self) -> dict[str, Any]:
        return {"sigma": [0.0, 0.0, 0.0]}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        from monai.transforms import GaussianSmooth

        out = GaussianSmooth(sigma=[float(s) for s in params["sigma"]])(img)
        return like(_tensor(out), img)


class RandBiasFieldd(_RandAug):
    """Smooth multiplicative bias field, coefficients ``~ U(-c, c)`` (see :class:`BiasField`)."""

    name = "bias"

    def __init__(self, keys: KeysCollection, prob: float = 0.2, coeff: float = 0.3, degree: int = 3, **kw: Any) -> None:
        super().__init__(keys, prob, **kw)
        self.coeff, self.degree = float(coeff), int(degree)

    def sample(self) -> dict[str, Any]:
        n = n_bias_coefficients(self.degree)
        return {"coefficients": [float(v) for v in self.R.uniform(-self.coeff, self.coeff, n)]}

    def identity(self) -> dict[str, Any]:
        return {"coefficients": [0.0] * n_bias_coefficients(self.degree)}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        return BiasField(params["coefficients"], self.degree)(img)


class RandGammad(_RandAug):
    """Gamma ``exp(U(-g, g))`` on the min-max range (MONAI ``AdjustContrast``)."""

    name = "gamma"

    def __init__(self, keys: KeysCollection, prob: float = 0.3, log_gamma: float = 0.3, **kw: Any) -> None:
        super().__init__(keys, prob, **kw)
        self.log_gamma = float(log_gamma)

    def sample(self) -> dict[str, Any]:
        return {"gamma": float(np.exp(self.R.uniform(-self.log_gamma, self.log_gamma)))}

    def identity(self) -> dict[str, Any]:
        return {"gamma": 1.0}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        from monai.transforms import AdjustContrast

        return like(_tensor(AdjustContrast(gamma=float(params["gamma"]))(img)), img)


class RandAnisotropyd(_RandAug):
    """Thick-slice simulation along one of ``axes`` by ``factor ~ U(lo, hi)`` (image and targets)."""

    name = "anisotropy"
    spatial = True

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        factor: tuple[float, float] = (1.5, 4.0),
        axes: Sequence[int] = (2,),
        **kw: Any,
    ) -> None:
        super().__init__(keys, prob, **kw)
        self.factor, self.axes = (float(factor[0]), float(factor[1])), [int(a) for a in axes]

    def sample(self) -> dict[str, Any]:
        return {"axis": int(self.R.choice(self.axes)), "factor": float(self.R.uniform(*self.factor))}

    def identity(self) -> dict[str, Any]:
        return {"axis": 0, "factor": 1.0}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        if is_target:
            return img  # targets stay on the true grid: the lesion did not move
        return AnisotropicResample(params["axis"], params["factor"])(img)


class RandFlipd(_RandAug):
    """Flip each spatial axis with probability ``axis_prob`` (MONAI ``Flip``), image and targets."""

    name = "flip"
    spatial = True

    def __init__(self, keys: KeysCollection, prob: float = 1.0, axis_prob: float = 0.5, **kw: Any) -> None:
        super().__init__(keys, prob, **kw)
        self.axis_prob = float(axis_prob)

    def sample(self) -> dict[str, Any]:
        return {"axes": [bool(self.R.rand() < self.axis_prob) for _ in range(3)]}

    def identity(self) -> dict[str, Any]:
        return {"axes": [False, False, False]}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        from monai.transforms import Flip

        axes = [i for i, f in enumerate(params["axes"]) if f]
        return Flip(spatial_axis=axes)(img) if axes else img


class RandRotated(_RandAug):
    """Small rotations ``~ U(-max, max)`` radians per axis (MONAI ``Affine``), image and targets."""

    name = "rotation"
    spatial = True

    def __init__(self, keys: KeysCollection, prob: float = 0.3, max_angle: float = float(np.deg2rad(10.0)), **kw: Any) -> None:
        super().__init__(keys, prob, **kw)
        self.max_angle = float(max_angle)

    def sample(self) -> dict[str, Any]:
        return {"angles": [float(self.R.uniform(-self.max_angle, self.max_angle)) for _ in range(3)]}

    def identity(self) -> dict[str, Any]:
        return {"angles": [0.0, 0.0, 0.0]}

    def apply(self, img: Any, params: Mapping[str, Any], is_target: bool) -> Any:
        from monai.transforms import Affine

        t = Affine(
            rotate_params=[float(a) for a in params["angles"]],
            mode="nearest" if is_target else "bilinear",
            padding_mode="zeros" if is_target else "border",
            image_only=True,
        )
        return t(img)


def _strength(strength: float | str) -> float:
    if isinstance(strength, str):
        if strength not in STRENGTHS:
            raise ConfigError(
                f"augmentation strength {strength!r} invalid; allowed: {', '.join(STRENGTHS)} or a number in [0, 2]."
                f"{did_you_mean(strength, STRENGTHS)}"
            )
        return STRENGTHS[strength]
    s = float(strength)
    if not 0.0 <= s <= 2.0:
        raise ConfigError(f"augmentation strength {strength!r} invalid; must be in [0, 2] or one of {', '.join(STRENGTHS)}")
    return s


def train_augmentations(
    spec: Any = None,
    keys_image: Sequence[str] = ("image",),
    keys_targets: Sequence[str] = ("heatmap", "log_diameter", "size_mask", "malignancy", "malig_mask"),
    strength: float | str = "medium",
) -> Any:
    """The training augmentation pipeline (after preprocessing and patch cropping).

    Args:
        spec: the :class:`~medmtl.transforms.presets.InputSpec` (MRI gets a stronger bias
            field; CT none by default, CT has no coil bias).
        keys_image: image keys (intensity and spatial augmentations).
        keys_targets: target-map keys (spatial augmentations only, nearest interpolation).
        strength: ``"none" | "light" | "medium" | "strong"`` or a factor in ``[0, 2]`` on
            probabilities and magnitudes.

    Returns:
        A MONAI ``Compose``; seed it with ``.set_random_state(seed)``.
    """
    from monai.transforms import Compose

    s = _strength(strength)
    p = lambda base: min(1.0, base * s)  # noqa: E731
    img, tgt = list(keys_image), list(keys_targets)
    is_mr = getattr(spec, "modality", "CT") == "MR"
    steps = [
        RandFlipd(img, prob=p(1.0), target_keys=tgt),
        RandRotated(img, prob=p(0.3), max_angle=float(np.deg2rad(10.0 * s)), target_keys=tgt),
        RandAnisotropyd(img, prob=p(0.2), factor=(1.5, 1.5 + 2.5 * s), target_keys=tgt),
        RandBlurd(img, prob=p(0.2), sigma=(0.25, 0.25 + 0.75 * s)),
        RandNoised(img, prob=p(0.3), max_std=0.1 * s),
        RandBiasFieldd(img, prob=p(0.4 if is_mr else 0.1), coeff=(0.3 if is_mr else 0.1) * s),
        RandGammad(img, prob=p(0.3), log_gamma=0.3 * s),
    ]
    return Compose(steps)


def replay(transforms: Any, data: Mapping[Hashable, Any], aug_params: Mapping[str, Mapping[str, Any]]) -> dict[Hashable, Any]:
    """Re-apply recorded augmentation parameters to ``data`` (TorchIO-style replay).

    Args:
        transforms: the ``Compose`` (or list) of this module's random transforms.
        data: the un-augmented sample.
        aug_params: ``sample["aug_params"]`` of an augmented sample.

    Returns:
        The same augmented sample, deterministically.
    """
    items = getattr(transforms, "transforms", transforms)
    d = dict(data)
    for t in items:
        if isinstance(t, _RandAug) and t.name in aug_params:
            d = t.apply_params(d, aug_params[t.name])
    return d
