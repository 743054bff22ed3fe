"""Intensity transforms of the preprocessing presets (MONAI style: array + ``...d`` pairs).

* :class:`CTWindows` / :class:`CTWindowsd` — one HU window per output channel, each scaled
  to ``[0, 1]`` (the "CT windows → RGB channels" input mapping of DESIGN.md).
* :class:`MRNormalize` / :class:`MRNormalized` — percentile normalisation to ``[0, 1]``
  (MRI has no absolute intensity scale; Nyúl & Udupa 1999 use percentile landmarks, and
  nnU-Net clips at the 0.5 / 99.5 percentiles, Isensee et al. 2021).
* :class:`N4BiasCorrection` / :class:`N4BiasCorrectiond` — N4 bias-field correction
  (Tustison et al. 2010) through SimpleITK.

Array transforms take and return ``(C, I, J, K)`` tensors; a ``MetaTensor`` keeps its affine
and meta data. Dict wrappers are thin (``keys``, ``allow_missing_keys``).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medmtl.errors import ConfigError
from medmtl.io import coords

log = logging.getLogger(__name__)

__all__ = [
    "ArrayWrapperd",
    "CTWindows",
    "CTWindowsd",
    "MRNormalize",
    "MRNormalized",
    "N4BiasCorrection",
    "N4BiasCorrectiond",
    "body_mask",
    "like",
    "n4_bias_correct",
]


def like(out: torch.Tensor, ref: Any) -> torch.Tensor:
    """Return ``out`` as a ``MetaTensor`` carrying ``ref``'s affine and meta (if ``ref`` has them).

    Args:
        out: new data, ``(C, I, J, K)`` with the same spatial grid as ``ref``.
        ref: the input the data came from (``MetaTensor`` or plain tensor / array).

    Returns:
        ``out`` wrapped with ``ref``'s geometry, or ``out`` unchanged for plain inputs.
    """
    if isinstance(ref, MetaTensor):
        data = out.as_tensor() if isinstance(out, MetaTensor) else out
        return MetaTensor(
            data,
            affine=ref.affine.clone(),
            meta={k: v for k, v in ref.meta.items() if k != "affine"},
            applied_operations=list(ref.applied_operations),
        )
    return out


def _as_float_tensor(img: Any) -> torch.Tensor:
    t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
    return t.float()


def validate_windows(windows: Sequence[Sequence[float]], name: str = "windows") -> tuple[tuple[float, float], ...]:
    """Check CT windows ``[(center_HU, width_HU), ...]`` and return them as float tuples.

    Raises:
        ConfigError: if empty, not pairs, or a width is not positive.
    """
    out: list[tuple[float, float]] = []
    try:
        items = list(windows)
    except TypeError:
        raise ConfigError(
            f"{name} must be a list of (center_HU, width_HU) pairs, got {windows!r}; "
            "e.g. [[-600, 1500], [40, 400], [400, 1800]]"
        ) from None
    if not items:
        raise ConfigError(f"{name} is empty; give at least one (center_HU, width_HU) pair, e.g. [[-600, 1500]]")
    for w in items:
        try:
            c, width = (float(v) for v in w)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} entry {w!r} is not a (center_HU, width_HU) pair of numbers; e.g. [-600, 1500]"
            ) from None
        if not np.isfinite(c) or not np.isfinite(width) or width <= 0:
            raise ConfigError(f"{name} entry {w!r} needs a finite center and a width > 0 HU; e.g. [-600, 1500]")
        out.append((c, width))
    return tuple(out)


class CTWindows(Transform):
    """Map one HU channel to one channel per window, each scaled to ``[0, 1]``.

    For a window ``(c, w)`` the output is ``clip((x - (c - w / 2)) / w, 0, 1)``.

    Args:
        windows: ``[(center_HU, width_HU), ...]``; the default of the presets is lung
            (-600, 1500), mediastinum (40, 400), bone (400, 1800).
    """

    def __init__(self, windows: Sequence[Sequence[float]]) -> None:
        self.windows = validate_windows(windows)

    def __call__(self, img: Any) -> torch.Tensor:
        """Apply the windows.

        Args:
            img: ``(1, I, J, K)`` HU (a ``MetaTensor`` keeps its affine).

        Returns:
            ``(len(windows), I, J, K)`` float32 in ``[0, 1]``.
        """
        x = _as_float_tensor(img)
        if x.shape[0] != 1:
            raise ConfigError(
                f"CT windows need a single-channel HU image (1, I, J, K), got shape {tuple(x.shape)}; "
                "apply them before any channel mapping"
            )
        chans = [((x[0] - (c - w / 2.0)) / w).clamp(0.0, 1.0) for c, w in self.windows]
        return like(torch.stack(chans, dim=0), img)


class ArrayWrapperd(MapTransform):
    """A dict transform that applies its array transform ``self.t`` to every key (MONAI's thin
    ``...d`` wrapper pattern, written once for the wrappers of this package)."""

    t: Any

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply ``self.t`` to each present key (a new dict; the input is not modified)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d


class CTWindowsd(ArrayWrapperd):
    """Dict wrapper of :class:`CTWindows`."""

    def __init__(
        self, keys: KeysCollection, windows: Sequence[Sequence[float]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = CTWindows(windows)


class MRNormalize(Transform):
    """Percentile normalisation to ``[0, 1]`` per channel.

    ``y = clip((x - p_lo) / (p_hi - p_lo), 0, 1)`` with percentiles taken over the foreground
    (voxels ``> 0`` when ``nonzero``, as brain MRI background is 0) — Nyúl & Udupa 1999,
    nnU-Net (Isensee et al. 2021).

    Args:
        lower: lower percentile in ``[0, 100)``.
        upper: upper percentile in ``(lower, 100]``.
        nonzero: compute percentiles over voxels ``> 0`` only (falls back to all voxels when
            fewer than 10 are non-zero).
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5, nonzero: bool = True) -> None:
        if not (0.0 <= lower < upper <= 100.0):
            raise ConfigError(
                f"MRI percentiles ({lower}, {upper}) invalid; need 0 <= lower < upper <= 100, e.g. (0.5, 99.5)"
            )
        self.lower = float(lower)
        self.upper = float(upper)
        self.nonzero = nonzero

    def __call__(self, img: Any) -> torch.Tensor:
        """Normalise ``(C, I, J, K)`` intensities to ``[0, 1]`` (shape kept)."""
        x = _as_float_tensor(img)
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            v = x[c].reshape(-1)
            if self.nonzero:
                fg = v[v > 0]
                if fg.numel() >= 10:
                    v = fg
            q = torch.quantile(v.double()[:: max(1, v.numel() // 2_000_000)], torch.tensor([self.lower, self.upper], dtype=torch.float64) / 100.0)
            lo, hi = float(q[0]), float(q[1])
            scale = hi - lo if hi > lo else 1.0
            out[c] = ((x[c] - lo) / scale).clamp(0.0, 1.0)
        return like(out, img)


class MRNormalized(ArrayWrapperd):
    """Dict wrapper of :class:`MRNormalize`."""

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        nonzero: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = MRNormalize(lower, upper, nonzero)


class N4BiasCorrection(Transform):
    """N4 bias-field correction (Tustison et al. 2010, IEEE TMI) with SimpleITK.

    The field is estimated on a ``shrink``-times downsampled copy inside an Otsu foreground
    mask, then evaluated at full resolution and divided out. Voxel spacing comes from the
    ``MetaTensor`` affine (mm), so the B-spline control grid is physical.

    Args:
        shrink: downsampling factor for the estimation (>= 1).
        iterations: maximum iterations per fitting level.
    """

    def __init__(self, shrink: int = 2, iterations: Sequence[int] = (20, 20, 10)) -> None:
        if int(shrink) < 1:
            raise ConfigError(f"N4 shrink factor {shrink!r} invalid; must be an integer >= 1, e.g. 2")
        self.shrink = int(shrink)
        self.iterations = [int(i) for i in iterations]

    def __call__(self, img: Any) -> torch.Tensor:
        """Correct each channel of ``(C, I, J, K)`` (shape and geometry kept)."""
        x = _as_float_tensor(img)
        spacing = coords.spacing_from_affine(img.affine.numpy()) if isinstance(img, MetaTensor) else (1.0, 1.0, 1.0)
        out = torch.stack([torch.from_numpy(n4_bias_correct(x[c].numpy(), spacing, shrink=self.shrink,
                                                            iterations=self.iterations))
                           for c in range(x.shape[0])])
        return like(out, img)


class N4BiasCorrectiond(ArrayWrapperd):
    """Dict wrapper of :class:`N4BiasCorrection`."""

    def __init__(
        self,
        keys: KeysCollection,
        shrink: int = 2,
        iterations: Sequence[int] = (20, 20, 10),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = N4BiasCorrection(shrink, iterations)


def body_mask(arr: np.ndarray, modality: str) -> np.ndarray:
    """Mask of the patient's body.

    CT: voxels above −500 HU, largest connected component, holes filled slice-wise (the lungs
    are inside the body). MR: Otsu threshold (Otsu, "A threshold selection method from
    gray-level histograms", 1979), largest component, holes filled.

    Args:
        arr: ``(I, J, K)`` intensities (HU for CT).
        modality: ``"CT"`` or ``"MR"``.

    Returns:
        ``(I, J, K)`` boolean mask (never empty: falls back to the whole volume).
    """
    from scipy import ndimage

    if modality == "CT":
        mask = arr > -500.0
    else:
        from skimage.filters import threshold_otsu

        finite = arr[np.isfinite(arr)]
        thr = float(threshold_otsu(finite)) if finite.size and finite.min() < finite.max() else -np.inf
        mask = arr > thr
    labels, n = ndimage.label(mask)
    if n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        mask = labels == int(np.argmax(counts))
    if mask.any():
        filled = np.zeros_like(mask)
        for k in range(mask.shape[2]):
            filled[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
        mask = filled
    if not mask.any():
        mask = np.ones_like(mask, dtype=bool)
    return mask


def n4_bias_correct(
    vol: np.ndarray,
    spacing: Sequence[float],
    *,
    mask: np.ndarray | None = None,
    shrink: int = 2,
    iterations: Sequence[int] = (20, 20, 10),
) -> np.ndarray:
    """N4 bias-field correction of one ``(I, J, K)`` volume (Tustison et al. 2010; SimpleITK).

    The intensities are shifted to be positive (N4 needs it), the field is estimated on a
    ``shrink``-times downsampled copy inside ``mask`` (default: an Otsu foreground mask),
    evaluated at full resolution and divided out; the shift is undone.

    Args:
        vol: ``(I, J, K)`` intensities.
        spacing: voxel spacing (mm), so the B-spline control grid is physical.
        mask: ``(I, J, K)`` voxels where the field is estimated (e.g. the body mask).
        shrink: downsampling factor of the estimation (>= 1).
        iterations: maximum iterations per fitting level.

    Returns:
        The corrected ``(I, J, K)`` float32 volume (a new array).
    """
    import SimpleITK as sitk  # heavy, optional at import time

    offset = float(vol.min())
    shifted = (vol - offset + 1.0).astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(shifted.transpose(2, 1, 0)))  # (k, j, i)
    img.SetSpacing([float(s) for s in spacing])
    if mask is None:
        sitk_mask = sitk.OtsuThreshold(img, 0, 1, 200)
    else:
        sitk_mask = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)))
        sitk_mask.CopyInformation(img)
    small = sitk.Shrink(img, [shrink] * 3) if shrink > 1 else img
    small_mask = sitk.Shrink(sitk_mask, [shrink] * 3) if shrink > 1 else sitk_mask
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).transpose(2, 1, 0)
    return (shifted / np.exp(field) + offset - 1.0).astype(np.float32)
