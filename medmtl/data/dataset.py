"""Training and validation data: scans + annotations → preprocessed volumes, targets, patches.

The deterministic part (the modality preset's preprocessing, then target building) runs once
per scan inside a MONAI ``CacheDataset``; the random part (positive/negative patch sampling
with ``RandCropByPosNegLabeld``, then the scanner-artifact augmentations) runs after the
cache on every visit. Random transforms are reseeded from ``(seed, epoch)`` at the start of
each epoch, so an epoch's patches do not depend on what happened before it (this is what
makes ``--resume`` reach the same weights as an uninterrupted run).

Dict keys of a training patch: ``image (C, I, J, K)`` and the targets of
:func:`medmtl.transforms.targets.build_targets` (``heatmap``, ``log_diameter``, ``size_mask``,
``malignancy``, ``malig_mask``; each ``(1, I, J, K)``), all plain ``torch.Tensor``. The
transforms themselves (target building, hard-negative map, the lesion croppers) live in
:mod:`medmtl.transforms.targets` and :mod:`medmtl.transforms.crops`.
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
from monai.transforms import Compose, MapTransform, RandCropByPosNegLabeld

from medmtl.errors import ConfigError
from medmtl.io.types import Lesion
from medmtl.transforms.crops import HardNegativeMapd, LesionAnywhereCropd, LesionCentredCropd
from medmtl.transforms.targets import TARGET_KEYS, BuildTargetsd

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.config import TrainConfig
    from medmtl.transforms.presets import InputSpec

logger = logging.getLogger(__name__)

#: Every tensor key of a training patch (the image and :data:`~medmtl.transforms.targets.TARGET_KEYS`).
PATCH_KEYS = ("image", *TARGET_KEYS)


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
            pos_fraction=t.pos_fraction, small_lesion_power=t.small_lesion_power,
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
    "preprocess_volumes",
    "random_transforms",
    "split_scan_ids",
    "stack_patches",
]
