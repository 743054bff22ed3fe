"""Training-patch croppers: lesion-centred, lesion-anywhere, and the hard-negative map they use.

MONAI's convention throughout: the array forms (:class:`LesionCentredCrop`,
:class:`LesionAnywhereCrop`, :class:`HardNegativeMap`) hold the logic; the ``...d`` dict
transforms are thin wrappers with ``keys`` / ``allow_missing_keys`` that crop every key at
the same place. A random cropper draws its patch starts in ``randomize()`` (from its seeded
``self.R``) and then crops deterministically, so a set of drawn starts can be replayed
(``__call__(..., randomize=False)``, as in MONAI's ``RandCropByPosNegLabel``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, SpatialCrop, Transform

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.transforms.presets import InputSpec

__all__ = [
    "DENSE_HU",
    "HARD_NEIGHBOURHOOD_VOX",
    "LUNG_HU",
    "HardNegativeMap",
    "HardNegativeMapd",
    "LesionAnywhereCrop",
    "LesionAnywhereCropd",
    "LesionCentredCrop",
    "LesionCentredCropd",
    "crop_patches",
    "heatmap_peaks",
    "patch_starts",
]

#: CT: HU below which a voxel is aerated lung, and above which it is a dense structure.
LUNG_HU, DENSE_HU = -700.0, -500.0
#: How far (voxels) a dense voxel may lie from aerated lung to count as a hard negative.
HARD_NEIGHBOURHOOD_VOX = 3


def _plain(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def heatmap_peaks(heatmap: Any) -> np.ndarray:
    """``(N, 3)`` voxel indices of a ``(1, I, J, K)`` heatmap's exact peaks (value 1: the lesion centres)."""
    return torch.nonzero(_plain(heatmap)[0] >= 1.0 - 1e-6).cpu().numpy()


def patch_starts(centres: np.ndarray, shape: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """First voxel of patches centred on ``centres``, shifted to lie inside the volume.

    Args:
        centres: ``(N, 3)`` voxel indices (integers or fractional).
        shape: spatial shape ``(I, J, K)`` of the volume (at least ``patch`` per axis).
        patch: patch size ``(pi, pj, pk)``.

    Returns:
        ``(N, 3)`` integer start indices with ``0 <= start <= shape - patch``.
    """
    c = np.rint(np.asarray(centres, dtype=np.float64).reshape(-1, 3)).astype(int)
    p = np.asarray(patch, dtype=int)
    return np.clip(c - p // 2, 0, np.asarray(shape, dtype=int) - p)


def _crop_all(img: Any, starts: np.ndarray, size: Sequence[int]) -> list[Any]:
    size_arr = np.asarray(size, dtype=int)
    return [
        SpatialCrop(roi_start=s.tolist(), roi_end=(s + size_arr).tolist())(img) for s in np.asarray(starts, dtype=int)
    ]


def crop_patches(
    data: Mapping[Hashable, Any], starts: np.ndarray, size: Sequence[int], keys: Sequence[Hashable]
) -> list[dict[Hashable, Any]]:
    """One shallow copy of ``data`` per start voxel, with ``keys`` cropped to ``size`` (MONAI ``SpatialCrop``)."""
    out = [dict(data) for _ in range(len(np.asarray(starts).reshape(-1, 3)))]
    for key in keys:
        for d, patch in zip(out, _crop_all(data[key], starts, size)):
            d[key] = patch
    return out


class LesionCentredCrop(Randomizable, Transform):
    """Array form: one patch centred on every lesion (heatmap peak), optionally jittered.

    :meth:`randomize` finds the centres (the exact peaks of the heatmap; the central voxel
    when there is none) and, with ``jitter > 0``, draws a uniform integer offset in
    ``[-jitter, jitter]`` voxels per axis and centre, so the network cannot learn that
    lesions sit in the middle of every patch; it stores the patch starts (:attr:`starts`),
    shifted to lie inside the volume.

    Args:
        spatial_size: patch size ``[I, J, K]`` in voxels.
        jitter: maximum shift of a patch centre per axis, voxels (0 = exactly centred).
    """

    def __init__(self, spatial_size: Sequence[int], jitter: int = 0) -> None:
        self.spatial_size = [int(s) for s in spatial_size]
        self.jitter = int(jitter)
        self.starts = np.zeros((0, 3), dtype=int)

    @staticmethod
    def centres(heatmap: Any) -> np.ndarray:
        """``(N, 3)`` voxel indices of the lesion centres (the central voxel when there is none)."""
        peaks = heatmap_peaks(heatmap)
        if len(peaks) == 0:
            peaks = (np.asarray(heatmap.shape[-3:]) // 2)[None]
        return peaks

    def randomize(self, data: Any) -> None:
        """Draw this item's patch starts from its ``(1, I, J, K)`` heatmap ``data``."""
        shape = tuple(int(s) for s in data.shape[-3:])
        centres = self.centres(data)
        if self.jitter > 0:
            centres = centres + self.R.randint(-self.jitter, self.jitter + 1, size=centres.shape)
        self.starts = patch_starts(centres, shape, self.spatial_size)

    def __call__(self, img: Any, heatmap: Any = None, randomize: bool = True) -> list[Any]:  # type: ignore[override]
        """Crops of ``img`` at the drawn starts (drawn first from ``heatmap`` unless ``randomize=False``)."""
        if randomize:
            self.randomize(img if heatmap is None else heatmap)
        return _crop_all(img, self.starts, self.spatial_size)


class LesionCentredCropd(Randomizable, MapTransform):
    """Dict wrapper of :class:`LesionCentredCrop`: every key cropped at the same patches.

    Returns a list of dicts, like ``RandCropByPosNegLabeld``; an item without lesions gives
    its central patch.

    Args:
        keys: keys to crop (all share the spatial grid of ``peak_key``).
        spatial_size: patch size ``[I, J, K]`` in voxels.
        peak_key: the heatmap key whose exact peaks are the lesion centres.
        jitter: maximum shift of a patch centre per axis, voxels (0 = exactly centred).
        allow_missing_keys: skip keys the item lacks.
    """

    def __init__(
        self, keys: Sequence[str], spatial_size: Sequence[int], peak_key: str = "heatmap", jitter: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys=list(keys), allow_missing_keys=allow_missing_keys)
        self.peak_key = peak_key
        self.cropper = LesionCentredCrop(spatial_size, jitter=jitter)

    @property
    def spatial_size(self) -> list[int]:
        return self.cropper.spatial_size

    @property
    def jitter(self) -> int:
        return self.cropper.jitter

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def centres(self, data: Mapping[Hashable, Any]) -> np.ndarray:
        """``(N, 3)`` voxel indices of the lesion centres (the central voxel when there is none)."""
        return self.cropper.centres(data[self.peak_key])

    def randomize(self, data: Mapping[Hashable, Any]) -> None:
        """Draw the patch starts of one item (see :meth:`LesionCentredCrop.randomize`)."""
        self.cropper.randomize(data[self.peak_key])

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:  # type: ignore[override]
        d = dict(data)
        self.randomize(d)
        return crop_patches(d, self.cropper.starts, self.spatial_size, list(self.key_iterator(d)))


class LesionAnywhereCrop(Randomizable, Transform):
    """Array form: positive and negative patches with no preferred lesion position.

    :meth:`randomize` draws ``num_samples`` patch starts (:attr:`starts`). Each patch is
    positive with probability ``pos_fraction``: it picks one lesion centre (an exact heatmap
    peak) uniformly and places it at a position drawn uniformly over the patch, ``margin``
    voxels away from its faces (so the network sees lesions everywhere a sliding window will
    leave them, not only at the centre, which is what MONAI's ``RandCropByPosNegLabeld``
    does). A negative patch is centred, with probability ``hard_fraction``, on a random
    hard-negative voxel (:class:`HardNegativeMap`: vessels, pleura), else on a uniform random
    voxel. Patches are shifted to lie inside the volume; a lesion-free scan gives negatives.

    Args:
        spatial_size: patch size ``[I, J, K]`` in voxels.
        num_samples: patches per item.
        pos_fraction: probability that a patch is positive, in [0, 1].
        hard_fraction: share of negatives centred on hard negatives, in [0, 1].
        margin: minimum distance (voxels) of a positive's lesion centre from the patch faces;
            capped at a quarter of the patch.
        small_lesion_power: ``γ ≥ 0``: a positive patch picks lesion ``i`` with probability
            ``∝ d_i^-γ`` (``d`` its diameter, read from the ``log_diameter`` target at the peak),
            so small nodules, which a short training learns last, are seen more often; ``0``
            (default) picks lesions uniformly, as does a call without the size map.
    """

    def __init__(
        self, spatial_size: Sequence[int], *, num_samples: int, pos_fraction: float, hard_fraction: float = 0.5,
        margin: int = 4, small_lesion_power: float = 0.0,
    ) -> None:
        self.spatial_size = np.asarray([int(v) for v in spatial_size], dtype=int)
        self.num_samples = int(num_samples)
        self.pos_fraction = float(pos_fraction)
        self.hard_fraction = float(hard_fraction)
        self.margin = np.minimum(int(margin), self.spatial_size // 4)
        self.small_lesion_power = float(small_lesion_power)
        self.starts = np.zeros((0, 3), dtype=int)

    def _lesion_weights(self, peaks: np.ndarray, log_diameter: Any) -> np.ndarray | None:
        """Selection probabilities ``∝ d^-γ`` of the ``(N, 3)`` peaks, ``None`` for uniform."""
        if self.small_lesion_power == 0.0 or log_diameter is None or not len(peaks):
            return None
        logd = torch.as_tensor(log_diameter)[0][tuple(torch.as_tensor(peaks).T)].double().cpu().numpy()
        w = np.exp(-self.small_lesion_power * (logd - logd.max()))
        return w / w.sum()

    def randomize(self, data: Any, hard: Any = None, log_diameter: Any = None) -> None:
        """Draw ``num_samples`` patch starts from a ``(1, I, J, K)`` heatmap ``data``, ``hard`` map and
        ``(1, I, J, K)`` ``log_diameter`` target (ln mm; only read when ``small_lesion_power > 0``)."""
        heat = torch.as_tensor(data)[0]
        shape = np.asarray(heat.shape, dtype=int)
        peaks = torch.nonzero(heat >= 1.0 - 1e-6).cpu().numpy()
        weights = self._lesion_weights(peaks, log_diameter)
        hard_idx = torch.nonzero(torch.as_tensor(hard)[0]).cpu().numpy() if hard is not None else np.zeros((0, 3))
        p = self.spatial_size
        out = []
        for _ in range(self.num_samples):
            if len(peaks) and self.R.rand() < self.pos_fraction:
                peak = peaks[self.R.randint(len(peaks)) if weights is None else self.R.choice(len(peaks), p=weights)]
                offset = np.array([self.R.randint(m, s - m) for m, s in zip(self.margin, p)])
                start = peak - offset
            elif len(hard_idx) and self.R.rand() < self.hard_fraction:
                start = hard_idx[self.R.randint(len(hard_idx))] - p // 2
            else:
                start = np.array([self.R.randint(0, max(1, n - s + 1)) for n, s in zip(shape, p)])
            out.append(np.clip(start, 0, np.maximum(shape - p, 0)))
        self.starts = np.asarray(out, dtype=int)

    def __call__(  # type: ignore[override]
        self, img: Any, heatmap: Any = None, hard: Any = None, randomize: bool = True
    ) -> list[Any]:
        """Crops of ``img`` at the drawn starts (drawn first unless ``randomize=False``)."""
        if randomize:
            self.randomize(img if heatmap is None else heatmap, hard)
        return _crop_all(img, self.starts, self.spatial_size.tolist())


class LesionAnywhereCropd(Randomizable, MapTransform):
    """Dict wrapper of :class:`LesionAnywhereCrop`: every key cropped at the same patches.

    Args:
        keys: keys to crop (all on the grid of ``peak_key``).
        spatial_size: patch size ``[I, J, K]`` in voxels.
        num_samples: patches per call.
        pos_fraction: probability that a patch is positive, in [0, 1].
        hard_fraction: share of negatives centred on hard negatives, in [0, 1].
        margin: minimum distance (voxels) of a positive's lesion centre from the patch faces.
        small_lesion_power: ``γ``: lesions picked ``∝ d^-γ`` (:class:`LesionAnywhereCrop`).
        peak_key: the heatmap key (its exact peaks are the lesion centres).
        hard_key: the hard-negative map key (:class:`HardNegativeMapd`; optional in the item).
        allow_missing_keys: skip keys the item lacks.
    """

    def __init__(
        self, keys: Sequence[str], spatial_size: Sequence[int], *, num_samples: int, pos_fraction: float,
        hard_fraction: float = 0.5, margin: int = 4, small_lesion_power: float = 0.0, peak_key: str = "heatmap",
        hard_key: str = "hard", size_key: str = "log_diameter", allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys=list(keys), allow_missing_keys=allow_missing_keys)
        self.peak_key, self.hard_key, self.size_key = peak_key, hard_key, size_key
        self.cropper = LesionAnywhereCrop(
            spatial_size, num_samples=num_samples, pos_fraction=pos_fraction, hard_fraction=hard_fraction,
            margin=margin, small_lesion_power=small_lesion_power,
        )

    @property
    def spatial_size(self) -> np.ndarray:
        return self.cropper.spatial_size

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, data: Mapping[Hashable, Any]) -> None:
        """Draw the patch starts of one item (see :meth:`LesionAnywhereCrop.randomize`)."""
        self.cropper.randomize(data[self.peak_key], data.get(self.hard_key), data.get(self.size_key))

    def starts(self, data: Mapping[Hashable, Any]) -> np.ndarray:
        """Draw and return the ``(num_samples, 3)`` patch start voxels of one item."""
        self.randomize(data)
        return self.cropper.starts.copy()

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:  # type: ignore[override]
        d = dict(data)
        self.randomize(d)
        return crop_patches(d, self.cropper.starts, self.spatial_size.tolist(), list(self.key_iterator(d)))


class HardNegativeMap(Transform):
    """Array form: the hard negatives of a preprocessed CT, dense structures next to aerated lung.

    Vessels seen in cross-section, vessel crossings, fissures and the pleura are what a
    nodule detector confuses with nodules. A voxel is a hard negative when it is dense
    (> :data:`DENSE_HU`), lies within :data:`HARD_NEIGHBOURHOOD_VOX` voxels of aerated lung
    (< :data:`LUNG_HU`) and the heatmap target there is below 0.01 (not a lesion). HU are read
    back from the first (lung-window) channel through the spec's window and mean/std. For MR
    the map is all zero (no HU scale), so negatives are drawn uniformly.

    Args:
        spec: the input spec the image was preprocessed with.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, img: Any, heatmap: Any) -> torch.Tensor:  # type: ignore[override]
        """``(1, I, J, K)`` uint8 map of ``img`` ``(C, I, J, K)`` given its ``(1, I, J, K)`` heatmap."""
        heat = torch.as_tensor(heatmap)
        if self.spec.modality != "CT":
            return torch.zeros_like(heat, dtype=torch.uint8)
        image = _plain(img)
        centre, width = self.spec.windows[0]
        hu = (centre - width / 2.0) + (image[0].float() * self.spec.std[0] + self.spec.mean[0]) * width
        lung = (hu < LUNG_HU).float()[None, None]
        k = 2 * HARD_NEIGHBOURHOOD_VOX + 1
        near_lung = torch.nn.functional.max_pool3d(lung, k, stride=1, padding=HARD_NEIGHBOURHOOD_VOX)[0, 0] > 0
        hard = (hu > DENSE_HU) & near_lung & (heat[0] < 0.01)
        return hard[None].to(torch.uint8)


class HardNegativeMapd(MapTransform):
    """Dict wrapper of :class:`HardNegativeMap`: reads the image key and ``heatmap_key``, writes ``hard``.

    Args:
        spec: the input spec the image was preprocessed with.
        keys: the image key (one).
        heatmap_key: the heatmap target's key.
        output_key: where the ``(1, I, J, K)`` uint8 map goes.
        allow_missing_keys: pass an item without the image key through unchanged.
    """

    def __init__(
        self, spec: InputSpec, keys: Sequence[str] = ("image",), heatmap_key: str = "heatmap",
        output_key: str = "hard", allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys=list(keys), allow_missing_keys=allow_missing_keys)
        self.heatmap_key, self.output_key = heatmap_key, output_key
        self.mapper = HardNegativeMap(spec)

    @property
    def spec(self) -> InputSpec:
        return self.mapper.spec

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.mapper(d[key], d[self.heatmap_key])
        return d
