"""Training and validation data: scans + annotations → preprocessed volumes, targets, patches.

The deterministic part (the modality preset's preprocessing, then target building) runs once
per scan inside a MONAI ``CacheDataset``; the random part (positive/negative patch sampling
with ``RandCropByPosNegLabeld``, then the scanner-artifact augmentations) runs after the
cache on every visit. Random transforms are reseeded from ``(seed, epoch)`` at the start of
each epoch, so an epoch's patches do not depend on what happened before it (this is what
makes ``--resume`` reach the same weights as an uninterrupted run).

Dict keys of a training patch: ``image (C, I, J, K)`` and the targets of
:func:`medmtl.data.targets.build_targets` (``heatmap``, ``log_diameter``, ``size_mask``,
``malignancy``, ``malig_mask``; each ``(1, I, J, K)``), all plain ``torch.Tensor``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, RandCropByPosNegLabeld, Randomizable

from medmtl.errors import ConfigError
from medmtl.io.types import Lesion

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.config import TrainConfig
    from medmtl.transforms.presets import InputSpec

logger = logging.getLogger(__name__)

#: Target keys produced by ``build_targets`` (each ``(1, I, J, K)``).
TARGET_KEYS = ("heatmap", "log_diameter", "size_mask", "malignancy", "malig_mask")
#: Every tensor key of a training patch.
PATCH_KEYS = ("image", *TARGET_KEYS)
#: Heatmap level above which a voxel counts as "positive" for patch sampling.
POS_LEVEL = 0.5


@dataclass
class VolumeItem:
    """One preprocessed whole volume (validation, reference statistics).

    Attributes:
        scan_id: the scan's id.
        image: ``MetaTensor (C, I, J, K)`` after preprocessing (affine: voxel → RAS mm).
        targets: dense targets, each ``(1, I, J, K)``.
        lesions: the scan's annotated lesions (LPS mm).
    """

    scan_id: str
    image: Any
    targets: dict[str, torch.Tensor]
    lesions: list[Lesion] = field(default_factory=list)


@dataclass
class TrainingData:
    """What :func:`load_training_data` returns.

    Attributes:
        spec: the input spec (saved in the model card).
        train_items: raw dict items for the training ``CacheDataset``.
        val_items: raw dict items for validation.
        scans: every loaded scan (for reference statistics), id-sorted.
        train_ids: training scan ids.
        val_ids: validation scan ids.
        skipped: files that could not be read (path, reason).
    """

    spec: InputSpec
    train_items: list[dict[str, Any]]
    val_items: list[dict[str, Any]]
    scans: list[Any]
    train_ids: list[str]
    val_ids: list[str]
    skipped: list[Any]


def input_spec_from_config(cfg: TrainConfig) -> InputSpec:
    """Build the :class:`~medmtl.transforms.presets.InputSpec` of a config.

    The modality picks the preset; ``preprocess.spacing_mm`` / ``windows`` override it.
    """
    from medmtl.transforms.presets import default_ct_spec, default_mri_spec

    spec = default_ct_spec() if cfg.preprocess.modality == "CT" else default_mri_spec()
    changes: dict[str, Any] = {}
    if cfg.preprocess.spacing_mm is not None:
        changes["spacing_mm"] = tuple(float(s) for s in cfg.preprocess.spacing_mm)
    if cfg.preprocess.windows is not None:
        if cfg.preprocess.modality != "CT":
            raise ConfigError("preprocess.windows is set but preprocess.modality is MR; windows are for CT only")
        changes["windows"] = tuple((float(c), float(w)) for c, w in cfg.preprocess.windows)
    return dataclasses.replace(spec, **changes) if changes else spec


def split_scan_ids(
    ids: Sequence[str],
    *,
    val_fraction: float,
    seed: int,
    train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split scan ids into training and validation sets (by scan, never by lesion).

    Args:
        ids: available scan ids.
        val_fraction: share held out, in [0, 1); at least one scan is held out when > 0,
            and at least one always trains.
        seed: split seed (same seed, same split).
        train_ids: explicit training ids (with ``val_ids``); overrides the fraction.
        val_ids: explicit validation ids.

    Returns:
        ``(train_ids, val_ids)``, each sorted.

    Raises:
        ConfigError: explicit ids that do not exist, overlap, or no training scan left.
    """
    all_ids = sorted(ids)
    if train_ids is not None:
        val = sorted(val_ids or [])
        train = sorted(train_ids)
        unknown = [i for i in train + val if i not in set(all_ids)]
        if unknown:
            raise ConfigError(
                f"data.train_ids/val_ids name scan '{unknown[0]}' that is not in data.root; known: {', '.join(all_ids[:5])}..."
            )
        if set(train) & set(val):
            raise ConfigError(f"scan '{sorted(set(train) & set(val))[0]}' is in both data.train_ids and data.val_ids")
    else:
        n_val = 0 if val_fraction <= 0 else max(1, int(round(val_fraction * len(all_ids))))
        n_val = min(n_val, len(all_ids) - 1)
        order = np.random.default_rng(seed).permutation(len(all_ids))
        val = sorted(all_ids[i] for i in order[:n_val])
        train = sorted(all_ids[i] for i in order[n_val:])
    if not train:
        raise ConfigError("no training scan left after the train/validation split; lower data.val_fraction")
    return train, val


def labelled_mask(lesions: Sequence[Lesion], fraction: float, seed: int) -> list[bool]:
    """Which lesions keep their size and malignancy labels (``round(fraction * n)`` of them).

    The choice is seeded and made over the lesions sorted by (scan, position), so it does
    not depend on the table's row order.
    """
    n = len(lesions)
    if fraction >= 1.0 or n == 0:
        return [True] * n
    order = sorted(range(n), key=lambda i: (lesions[i].seriesuid, lesions[i].center_lps))
    keep = max(1, int(round(fraction * n)))
    chosen = np.random.default_rng(seed + 7919).permutation(n)[:keep]
    keep_set = {order[i] for i in chosen}
    return [i in keep_set for i in range(n)]


def _without_labels(lesion: Lesion) -> Lesion:
    return dataclasses.replace(lesion, malignancy=None)


class BuildTargetsd(MapTransform):
    """Build dense targets (and the ``pos`` sampling map) from an item's ``lesions``.

    Reads ``image`` (``MetaTensor (C, I, J, K)``, preprocessed) and ``lesions``
    (:class:`~medmtl.io.types.Lesion` list) plus ``labelled`` (bools, optional); writes
    :data:`TARGET_KEYS` and ``pos`` (``(1, I, J, K)`` 0/1: heatmap ≥ 0.5) and drops
    ``lesions`` / ``labelled`` so the item collates.
    """

    def __init__(self, keep_lesions: bool = False) -> None:
        super().__init__(keys=["image"])
        self.keep_lesions = keep_lesions

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medmtl.data.targets import build_targets

        d = dict(data)
        image = d["image"]
        lesions: list[Lesion] = list(d.get("lesions", []))
        labelled: list[bool] = list(d.get("labelled", [True] * len(lesions)))
        targets = build_targets(image, lesions)
        if not all(labelled):
            kept = [les for les, ok in zip(lesions, labelled) if ok]
            partial = build_targets(image, kept)
            for key in ("log_diameter", "size_mask", "malignancy", "malig_mask"):
                targets[key] = partial[key]
        for key in TARGET_KEYS:
            d[key] = torch.as_tensor(targets[key], dtype=torch.float32)
        d["pos"] = (d["heatmap"] >= POS_LEVEL).to(torch.uint8)
        if not self.keep_lesions:
            d.pop("lesions", None)
        d.pop("labelled", None)
        return d


#: CT: HU below which a voxel is aerated lung, and above which it is a dense structure.
LUNG_HU, DENSE_HU = -700.0, -500.0
#: How far (voxels) a dense voxel may lie from aerated lung to count as a hard negative.
HARD_NEIGHBOURHOOD_VOX = 3


class HardNegativeMapd(MapTransform):
    """Mark the hard negatives of a preprocessed CT: dense structures next to aerated lung.

    Vessels seen in cross-section, vessel crossings, fissures and the pleura are what a
    nodule detector confuses with nodules. A voxel is a hard negative when it is dense
    (> ``DENSE_HU``), lies within ``HARD_NEIGHBOURHOOD_VOX`` voxels of aerated lung
    (< ``LUNG_HU``) and the heatmap target there is below 0.01 (not a lesion). HU are read back
    from the first (lung-window) channel through the spec's window and mean/std. Writes
    ``hard`` ``(1, I, J, K)`` uint8; for MR it is all zero (no HU scale), so negatives are
    drawn uniformly.

    Args:
        spec: the input spec the image was preprocessed with.
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(keys=["image"])
        self.spec = spec

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d["image"]
        img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        heat = torch.as_tensor(d["heatmap"])
        if self.spec.modality != "CT":
            d["hard"] = torch.zeros_like(heat, dtype=torch.uint8)
            return d
        centre, width = self.spec.windows[0]
        hu = (centre - width / 2.0) + (img[0].float() * self.spec.std[0] + self.spec.mean[0]) * width
        lung = (hu < LUNG_HU).float()[None, None]
        k = 2 * HARD_NEIGHBOURHOOD_VOX + 1
        near_lung = torch.nn.functional.max_pool3d(lung, k, stride=1, padding=HARD_NEIGHBOURHOOD_VOX)[0, 0] > 0
        hard = (hu > DENSE_HU) & near_lung & (heat[0] < 0.01)
        d["hard"] = hard[None].to(torch.uint8)
        return d


def deterministic_transforms(spec: InputSpec, *, keep_lesions: bool = False) -> Compose:
    """Preprocessing of the spec, then target building and the hard-negative map (cacheable)."""
    from medmtl.transforms.presets import preprocess_transforms

    # Flattened: MONAI's Compose is itself Randomizable, so a nested Compose would make
    # CacheDataset treat the whole chain as random and cache nothing (every visit re-read,
    # re-resampled and rebuilt the targets of the scan).
    return Compose([preprocess_transforms(spec), BuildTargetsd(keep_lesions=keep_lesions), HardNegativeMapd(spec)]).flatten()


class _ToPlaind(MapTransform):
    """Keep only the patch keys, as plain ``float32`` tensors (no MetaTensor in batches)."""

    def __init__(self) -> None:
        super().__init__(keys=list(PATCH_KEYS))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out: dict[Hashable, Any] = {}
        for key in PATCH_KEYS:
            v = data[key]
            v = v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)
            out[key] = v.to(torch.float32).contiguous()
        return out


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


def crop_patches(
    data: Mapping[Hashable, Any], starts: np.ndarray, size: Sequence[int], keys: Sequence[Hashable]
) -> list[dict[Hashable, Any]]:
    """One shallow copy of ``data`` per start voxel, with ``keys`` cropped to ``size`` (MONAI ``SpatialCrop``)."""
    from monai.transforms import SpatialCrop

    out = []
    for start in np.asarray(starts, dtype=int):
        crop = SpatialCrop(roi_start=start.tolist(), roi_end=(start + np.asarray(size, dtype=int)).tolist())
        d = dict(data)
        for key in keys:
            d[key] = crop(d[key])
        out.append(d)
    return out


class LesionCentredCropd(Randomizable, MapTransform):
    """One patch centred on every lesion of an item, optionally shifted by a random jitter.

    The lesion centres are the exact peaks of the item's ``heatmap`` target (the voxel
    nearest to each centre is ``1``). Each patch is shifted to lie inside the volume; an item
    without lesions gives its central patch. Returns a list of dicts, like
    ``RandCropByPosNegLabeld``. With ``jitter > 0`` each centre moves by a uniform integer
    offset in ``[-jitter, jitter]`` voxels per axis (drawn from the transform's seeded RNG),
    so the network cannot learn that lesions sit in the middle of every patch.

    Args:
        keys: keys to crop (all share the spatial grid of ``heatmap``).
        spatial_size: patch size ``[I, J, K]`` in voxels.
        peak_key: the heatmap key whose exact peaks are the lesion centres.
        jitter: maximum shift of a patch centre per axis, voxels (0 = exactly centred).
    """

    def __init__(
        self, keys: Sequence[str], spatial_size: Sequence[int], peak_key: str = "heatmap", jitter: int = 0
    ) -> None:
        MapTransform.__init__(self, keys=list(keys))
        self.spatial_size = [int(s) for s in spatial_size]
        self.peak_key = peak_key
        self.jitter = int(jitter)

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw up front; offsets are drawn per call (see :meth:`__call__`)."""

    def centres(self, data: Mapping[Hashable, Any]) -> np.ndarray:
        """``(N, 3)`` voxel indices of the lesion centres (the central voxel when there is none)."""
        heat = data[self.peak_key]
        arr = heat.as_tensor() if hasattr(heat, "as_tensor") else torch.as_tensor(heat)
        peaks = torch.nonzero(arr[0] >= 1.0 - 1e-6).cpu().numpy()
        if len(peaks) == 0:
            peaks = (np.asarray(arr.shape[-3:]) // 2)[None]
        return peaks

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:  # type: ignore[override]
        shape = tuple(int(s) for s in data[self.peak_key].shape[-3:])
        centres = self.centres(data)
        if self.jitter > 0:
            centres = centres + self.R.randint(-self.jitter, self.jitter + 1, size=centres.shape)
        return crop_patches(data, patch_starts(centres, shape, self.spatial_size), self.spatial_size,
                            list(self.key_iterator(dict(data))))


class LesionAnywhereCropd(Randomizable, MapTransform):
    """Positive and negative training patches with no preferred lesion position.

    Each of ``num_samples`` patches is positive with probability ``pos_fraction``. A positive
    patch picks one lesion centre (an exact peak of ``heatmap``) uniformly, then places it at
    a position drawn uniformly over the patch, ``margin`` voxels away from its faces (so
    the network sees lesions everywhere a sliding window will leave them, not only at the
    centre, which is what MONAI's ``RandCropByPosNegLabeld`` does). A negative patch is
    centred, with probability ``hard_fraction``, on a random hard-negative voxel (``hard``
    map of :class:`HardNegativeMapd`: vessels, pleura), else on a uniform random voxel.
    Patches are shifted to lie inside the volume. A lesion-free scan gives negatives only.

    Args:
        keys: keys to crop (all on the grid of ``heatmap``).
        spatial_size: patch size ``[I, J, K]`` in voxels.
        num_samples: patches per call.
        pos_fraction: probability that a patch is positive, in [0, 1].
        hard_fraction: share of negatives centred on hard negatives, in [0, 1].
        margin: minimum distance (voxels) of a positive's lesion centre from the patch faces;
            capped at a quarter of the patch.
    """

    def __init__(
        self, keys: Sequence[str], spatial_size: Sequence[int], *, num_samples: int, pos_fraction: float,
        hard_fraction: float = 0.5, margin: int = 4,
    ) -> None:
        MapTransform.__init__(self, keys=list(keys))
        self.spatial_size = np.asarray([int(v) for v in spatial_size], dtype=int)
        self.num_samples = int(num_samples)
        self.pos_fraction = float(pos_fraction)
        self.hard_fraction = float(hard_fraction)
        self.margin = np.minimum(int(margin), self.spatial_size // 4)

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw up front; every draw happens per call (see :meth:`starts`)."""

    def starts(self, data: Mapping[Hashable, Any]) -> np.ndarray:
        """``(num_samples, 3)`` patch start voxels drawn for one item."""
        heat = torch.as_tensor(data["heatmap"])[0]
        shape = np.asarray(heat.shape, dtype=int)
        peaks = torch.nonzero(heat >= 1.0 - 1e-6).cpu().numpy()
        hard = data.get("hard")
        hard_idx = torch.nonzero(torch.as_tensor(hard)[0]).cpu().numpy() if hard is not None else np.zeros((0, 3))
        p = self.spatial_size
        out = []
        for _ in range(self.num_samples):
            if len(peaks) and self.R.rand() < self.pos_fraction:
                peak = peaks[self.R.randint(len(peaks))]
                offset = np.array([self.R.randint(m, s - m) for m, s in zip(self.margin, p)])
                start = peak - offset
            elif len(hard_idx) and self.R.rand() < self.hard_fraction:
                start = hard_idx[self.R.randint(len(hard_idx))] - p // 2
            else:
                start = np.array([self.R.randint(0, max(1, n - s + 1)) for n, s in zip(shape, p)])
            out.append(np.clip(start, 0, np.maximum(shape - p, 0)))
        return np.asarray(out, dtype=int)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:  # type: ignore[override]
        return crop_patches(data, self.starts(data), self.spatial_size.tolist(), list(self.key_iterator(dict(data))))


def random_transforms(cfg: TrainConfig, spec: InputSpec) -> Compose:
    """Patch sampling and augmentation.

    ``train.sampling = random``: ``samples_per_scan`` patches, positive with probability
    ``pos_fraction``, the lesion anywhere in the patch, half the negatives on hard negatives
    (:class:`LesionAnywhereCropd`); ``centred``: MONAI's ``RandCropByPosNegLabeld`` (positive
    patches centred on a lesion voxel: the position bias, kept for comparison);
    ``lesions``: one patch centred on each lesion (:class:`LesionCentredCropd`).
    """
    t = cfg.train
    keys = [*PATCH_KEYS, "pos"]
    crop: Any
    if t.sampling == "lesions":
        crop = LesionCentredCropd(keys=keys, spatial_size=list(t.patch_size), jitter=t.patch_jitter)
    elif t.sampling == "random":
        crop = LesionAnywhereCropd(
            keys=list(PATCH_KEYS), spatial_size=list(t.patch_size), num_samples=t.samples_per_scan,
            pos_fraction=t.pos_fraction,
        )
    else:
        crop = RandCropByPosNegLabeld(
            keys=keys,
            label_key="pos",
            spatial_size=list(t.patch_size),
            pos=t.pos_fraction,
            neg=1.0 - t.pos_fraction,
            num_samples=t.samples_per_scan,
        )
    steps: list[Any] = [crop]
    if t.augment != "none":
        from medmtl.transforms.augment import train_augmentations

        steps.append(train_augmentations(spec, keys_image=("image",), keys_targets=TARGET_KEYS, strength=t.augment))
    steps.append(_ToPlaind())
    return Compose(steps)


class PatchDataset(torch.utils.data.Dataset):
    """Cached preprocessed scans → ``samples_per_scan`` random patches per ``__getitem__``.

    Args:
        cache: a MONAI ``CacheDataset`` over the deterministic transforms.
        random: the random transforms (crop + augmentation).
        seed: base seed; :meth:`set_epoch` reseeds the random transforms per epoch.
    """

    def __init__(self, cache: Any, random: Compose, seed: int) -> None:
        self.cache = cache
        self.random = random
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the random transforms from ``(seed, epoch)``."""
        self.random.set_random_state(seed=(self.seed * 100_003 + epoch * 7_919 + 12_345) % (2**32))

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> list[dict[str, torch.Tensor]]:
        out = self.random(self.cache[index])
        return out if isinstance(out, list) else [out]


def _read_lesions(path: Path) -> list[Lesion]:
    from medmtl.io.annotations import read_annotations

    return read_annotations(path)


def load_training_data(cfg: TrainConfig, *, progress: bool = False) -> TrainingData:
    """Load scans and annotations of a config and split them (nothing preprocessed yet).

    Args:
        cfg: a validated :class:`~medmtl.config.TrainConfig` (absolute data paths).
        progress: progress bar while reading.

    Returns:
        :class:`TrainingData` with raw dict items ``{"image", "lesions", "labelled", "scan_id"}``.

    Raises:
        ConfigError: scans of the wrong modality, or a bad split.
        AnnotationError: lesions outside their scans (from ``check_lesions_inside``).
    """
    from medmtl.io.annotations import check_lesions_inside, group_by_scan
    from medmtl.io.read import load_folder

    d = cfg.data
    scans, skipped = load_folder(Path(d.root), resample_nonuniform=d.resample_nonuniform, progress=progress)
    for s in skipped:
        if getattr(s, "failed", False):
            logger.warning("could not read %s: %s", s.path, s.reason)
        else:
            logger.debug("skipped %s: %s", s.path, s.reason)
    scans = sorted(scans, key=lambda s: s.scan_id)
    if d.max_scans is not None:
        scans = scans[: d.max_scans]
    wrong = [s.scan_id for s in scans if s.modality != cfg.preprocess.modality]
    if wrong:
        raise ConfigError(
            f"scan '{wrong[0]}' in data.root is {[s for s in scans if s.scan_id == wrong[0]][0].modality},"
            f" but preprocess.modality is {cfg.preprocess.modality}; set preprocess.modality to match the data"
        )
    ids = {s.scan_id for s in scans}
    lesions = [les for les in _read_lesions(Path(str(d.annotations))) if les.seriesuid in ids]
    check_lesions_inside(lesions, scans)
    flags = labelled_mask(lesions, d.label_fraction, cfg.seed)
    by_scan = group_by_scan(lesions)
    flag_of = {id(les): f for les, f in zip(lesions, flags)}
    train_ids, val_ids = split_scan_ids(
        [s.scan_id for s in scans], val_fraction=d.val_fraction, seed=cfg.seed, train_ids=d.train_ids, val_ids=d.val_ids
    )
    items: dict[str, dict[str, Any]] = {}
    for scan in scans:
        les = list(by_scan.get(scan.scan_id, []))
        items[scan.scan_id] = {
            "image": scan.image,
            "lesions": les,
            "labelled": [flag_of.get(id(x), True) for x in les],
            "scan_id": scan.scan_id,
        }
    return TrainingData(
        spec=input_spec_from_config(cfg),
        train_items=[items[i] for i in train_ids],
        val_items=[items[i] for i in val_ids],
        scans=scans,
        train_ids=train_ids,
        val_ids=val_ids,
        skipped=list(skipped),
    )


def check_patch_fits(shape: Sequence[int], patch: Sequence[int], scan_id: str) -> None:
    """Refuse a training patch larger than a preprocessed scan.

    Raises:
        ConfigError: naming the patch, the scan and its preprocessed shape.
    """
    spatial = list(shape[-3:])
    if any(p > s for p, s in zip(patch, spatial)):
        raise ConfigError(
            f"train.patch_size {list(patch)} is larger than scan '{scan_id}' after preprocessing {spatial};"
            f" use a patch of at most {spatial} voxels (or a finer preprocess.spacing_mm)"
        )


def build_train_dataset(cfg: TrainConfig, data: TrainingData, *, progress: bool = False) -> PatchDataset:
    """The training dataset: ``CacheDataset`` (deterministic) + random patches after it.

    Raises:
        ConfigError: the patch is larger than a preprocessed training scan.
    """
    from monai.data import CacheDataset

    cache = CacheDataset(
        data=data.train_items,
        transform=deterministic_transforms(data.spec),
        cache_rate=cfg.data.cache_rate,
        num_workers=0,
        progress=progress,
        # No deep copy per visit (tens of MB for a thin-slice scan): the random transforms
        # crop into new dicts and never write into the cached volumes.
        copy_cache=False,
    )
    n_cached = int(round(cfg.data.cache_rate * len(data.train_items)))
    for i in range(n_cached):
        item = cache[i]
        check_patch_fits(item["image"].shape, cfg.train.patch_size, str(item["scan_id"]))
    return PatchDataset(cache, random_transforms(cfg, data.spec), seed=cfg.seed)


def preprocess_volumes(items: Sequence[dict[str, Any]], spec: InputSpec) -> list[VolumeItem]:
    """Preprocess whole volumes and build their targets (validation, calibration)."""
    det = deterministic_transforms(spec, keep_lesions=True)
    out = []
    for it in items:
        d = det(dict(it))
        out.append(
            VolumeItem(
                scan_id=str(it["scan_id"]),
                image=d["image"],
                targets={k: d[k] for k in TARGET_KEYS},
                lesions=list(it["lesions"]),
            )
        )
    return out


def first_item(batch: list[Any]) -> Any:
    """``collate_fn`` of the patch loader: each dataset item is already a list of patches."""
    return batch[0]


def stack_patches(patches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack patch dicts into a batch: ``image (B, C, I, J, K)``, targets ``(B, 1, I, J, K)``."""
    return {k: torch.stack([p[k] for p in patches]) for k in PATCH_KEYS}


__all__ = [
    "BuildTargetsd",
    "HardNegativeMapd",
    "LesionAnywhereCropd",
    "LesionCentredCropd",
    "PATCH_KEYS",
    "PatchDataset",
    "TARGET_KEYS",
    "TrainingData",
    "VolumeItem",
    "build_train_dataset",
    "check_patch_fits",
    "deterministic_transforms",
    "first_item",
    "input_spec_from_config",
    "labelled_mask",
    "load_training_data",
    "patch_starts",
    "preprocess_volumes",
    "random_transforms",
    "split_scan_ids",
    "stack_patches",
]
