"""Intensity harmonisation as a transform: histogram matching or N4, applied before preprocessing.

* ``histmatch``: histogram matching (Nyúl & Udupa, "On standardizing the MR image intensity
  scale", MRM 1999; here with scikit-image's ``match_histograms``) of each target scan's
  body intensities to the source cohort's reference quantile table (the average body
  quantile function of the training scans, stored in the record). Voxels outside the body
  follow the same monotone map, extended with slope 1 beyond the matched range (air keeps
  its offset correction, not a squashed value).
* ``n4``: N4 bias-field correction for MRI (Tustison et al. 2010) — the one implementation of
  :func:`medmtl.transforms.intensity.n4_bias_correct`, here estimated inside the body mask.

A :class:`Harmonisation` record (written into the model card by ``medmtl adapt --method
histmatch|n4``) becomes :class:`Harmonised`, the first step of
:func:`medmtl.transforms.presets.preprocess_transforms`, so prediction, adaptation and feature
extraction all apply it the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from numpy.typing import NDArray

from medmtl.errors import ConfigError
from medmtl.io import coords
from medmtl.records import check_keys, one_of
from medmtl.transforms.intensity import ArrayWrapperd

#: Harmonisation methods.
HARMONISATION_METHODS = ("histmatch", "n4")
#: Samples drawn from a stored quantile function to match against.
REFERENCE_SAMPLES = 20000
N4_SHRINK = 2
N4_ITERATIONS = (30, 20, 10)


@dataclass(frozen=True)
class Harmonisation:
    """An intensity harmonisation step stored in the model card.

    Attributes:
        method: ``histmatch`` or ``n4``.
        params: ``histmatch``: ``{"quantiles": {"levels", "values", ...}, "modality"}``;
            ``n4``: ``{"shrink", "iterations"}``.
        reference: where the matched distribution came from (provenance text).
    """

    method: str
    params: Mapping[str, Any]
    reference: str | None = None

    def __post_init__(self) -> None:
        one_of(self.method, HARMONISATION_METHODS, "harmonisation.method", error=ConfigError)
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"harmonisation.params must be a JSON object, got {type(self.params).__name__}")
        if self.method == "histmatch":
            q = self.params.get("quantiles")
            if not isinstance(q, Mapping) or len(q.get("levels") or []) < 2 \
                    or len(q.get("levels") or []) != len(q.get("values") or []):
                raise ConfigError("harmonisation.params.quantiles must hold 'levels' and 'values' of equal length "
                                  "(>= 2); re-run `medmtl adapt --method histmatch`")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"method": self.method, "params": dict(self.params), "reference": self.reference}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Harmonisation:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown key, unknown method, malformed quantile table.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(data, names, "harmonisation", required=("method", "params"), error=ConfigError)
        return cls(**dict(data))

    @classmethod
    def for_method(cls, method: str, quantiles: Mapping[str, Any] | None, modality: str) -> Harmonisation:
        """The record of ``method``; ``histmatch`` needs the source cohort's quantile table.

        Raises:
            ConfigError: unknown method, or ``histmatch`` without a quantile table.
        """
        one_of(method, HARMONISATION_METHODS, "harmonisation method", error=ConfigError)
        if method == "histmatch":
            if quantiles is None:
                raise ConfigError("histmatch needs the checkpoint's reference_stats (quantile table); the card has "
                                  "none — add them with medmtl.api.add_reference_stats(...), or use --method adabn.")
            return cls("histmatch", {"quantiles": dict(quantiles), "modality": modality},
                       reference="card.reference_stats.quantiles")
        return cls("n4", {"shrink": N4_SHRINK, "iterations": list(N4_ITERATIONS)})


def _reference_sample(quantiles: Mapping[str, Any], n: int = REFERENCE_SAMPLES) -> NDArray[np.float64]:
    """A sample whose empirical distribution is the stored quantile function."""
    levels = np.asarray(quantiles["levels"], dtype=np.float64)
    values = np.asarray(quantiles["values"], dtype=np.float64)
    u = (np.arange(n) + 0.5) / n
    return np.interp(u, levels, values)


def match_to_quantiles(arr: NDArray[np.floating[Any]], mask: NDArray[np.bool_],
                       quantiles: Mapping[str, Any]) -> NDArray[np.float32]:
    """Histogram-match the body voxels of ``arr`` to a reference quantile table.

    Args:
        arr: ``(I, J, K)`` intensities (HU for CT).
        mask: body mask (the voxels that are matched).
        quantiles: ``{"levels": [0..1], "values": [...]}`` reference quantile function.

    Returns:
        The harmonised ``(I, J, K)`` float32 array (a new array; ``arr`` is not modified).
    """
    from skimage.exposure import match_histograms

    body = arr[mask].astype(np.float64)
    out = arr.astype(np.float64).copy()
    if body.size == 0:
        return out.astype(np.float32)
    out[mask] = match_histograms(body, _reference_sample(quantiles))
    # the same monotone map for the voxels outside the body, extended with slope 1
    levels = np.asarray(quantiles["levels"], dtype=np.float64)
    src = np.quantile(body, levels)
    dst = np.asarray(quantiles["values"], dtype=np.float64)
    src, idx = np.unique(src, return_index=True)
    dst = dst[idx]
    outside = ~mask
    v = out[outside]
    mapped = np.interp(v, src, dst)
    mapped = np.where(v < src[0], v + (dst[0] - src[0]), mapped)
    mapped = np.where(v > src[-1], v + (dst[-1] - src[-1]), mapped)
    out[outside] = mapped
    return out.astype(np.float32)


def harmonise_array(arr: NDArray[np.floating[Any]], modality: str, spacing: Sequence[float],
                    record: Harmonisation) -> NDArray[np.float32]:
    """Apply a harmonisation record to one ``(I, J, K)`` array (a new array is returned).

    Args:
        arr: raw intensities (HU for CT).
        modality: ``CT`` or ``MR`` (picks the body mask).
        spacing: voxel spacing (mm) of ``arr``.
        record: the step.
    """
    from medmtl.transforms.intensity import body_mask, n4_bias_correct

    mask = body_mask(np.asarray(arr, dtype=np.float32), modality)
    if record.method == "histmatch":
        return match_to_quantiles(arr, mask, record.params["quantiles"])
    return n4_bias_correct(np.asarray(arr, dtype=np.float32), spacing, mask=mask,
                           shrink=int(record.params.get("shrink", N4_SHRINK)),
                           iterations=tuple(int(v) for v in record.params.get("iterations", N4_ITERATIONS)))


class Harmonise(Transform):
    """Array form: harmonise a channel-first ``(1, I, J, K)`` MetaTensor (affine kept).

    Args:
        record: the harmonisation step.
        modality: ``CT`` or ``MR``.
    """

    def __init__(self, record: Harmonisation, modality: str) -> None:
        self.record = record
        self.modality = modality

    def __call__(self, img: Any) -> Any:
        """Return a harmonised copy of ``img`` (``img`` is not modified)."""
        arr = np.asarray(img[0].detach().cpu().numpy() if isinstance(img, torch.Tensor) else img[0], dtype=np.float32)
        spacing = coords.spacing_from_affine(np.asarray(img.affine)) if hasattr(img, "affine") else (1.0, 1.0, 1.0)
        harmonised = harmonise_array(arr, self.modality, spacing, self.record)
        if not isinstance(img, torch.Tensor):
            out_arr = np.array(img, dtype=np.float32, copy=True)
            out_arr[0] = harmonised
            return out_arr
        out = img.clone()
        out[0] = torch.as_tensor(harmonised, dtype=out.dtype)
        return out


class Harmonised(ArrayWrapperd):
    """Dict form of :class:`Harmonise`.

    Args:
        keys: image keys.
        record: the harmonisation step.
        modality: ``CT`` or ``MR``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, record: Harmonisation, modality: str,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = Harmonise(record, modality)


__all__ = [
    "HARMONISATION_METHODS",
    "Harmonisation",
    "Harmonise",
    "Harmonised",
    "harmonise_array",
    "match_to_quantiles",
]
