"""Checking a built config: value ranges, allowed names, registries and data paths.

**Paths.** A relative ``data.root`` / ``data.annotations`` / ``model.weights`` is resolved
against the current working directory first; if nothing exists there, against the given base
folders (for :func:`~medmtl.config.loading.load_config`: the repository root, i.e. the parent
of the folder that holds the config, e.g. ``configs/..``, then the config's own folder).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmtl.config.schema import (
    AMP_MODES,
    AUGMENT_STRENGTHS,
    MALIGNANCY_READOUTS,
    MODALITIES,
    MONITORS,
    OPTIMIZERS,
    SAMPLING_MODES,
    SCHEDULERS,
    TrainConfig,
    TrainSection,
)
from medmtl.errors import ConfigError, did_you_mean


def _resolve_path(value: str, key: str, base_dirs: Sequence[Path], *, must_exist: bool, source: str) -> str:
    p = Path(value).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [Path.cwd() / p] + [b / p for b in base_dirs]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    if must_exist:
        raise ConfigError(
            f"{key} '{value}' in {source} does not exist (looked in the working directory"
            f"{' and ' + ', '.join(str(b) for b in base_dirs) if base_dirs and not p.is_absolute() else ''});"
            " give an existing folder/file or generate data with `medmtl sample-data`"
        )
    return str(candidates[0].resolve())


def _check_range(ok: bool, key: str, value: Any, allowed: str, source: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} in {source} is out of range; allowed: {allowed}")


def _check_choice(value: str, key: str, allowed: Sequence[str], source: str) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{key} = '{value}' in {source} is not allowed; allowed: {', '.join(allowed)}.{did_you_mean(value, allowed)}"
        )


def validate_config(cfg: TrainConfig, *, source: str = "<config>", base_dirs: Sequence[Path] = ()) -> TrainConfig:
    """Check ranges, names and paths; resolve data paths to absolute ones (in place).

    Args:
        cfg: the config to check.
        source: where it came from (for messages).
        base_dirs: extra folders relative paths are tried against (after the CWD).

    Returns:
        ``cfg``, with ``data.root``, ``data.annotations`` and ``model.weights`` absolute.

    Raises:
        ConfigError: a value is out of range, a name unknown, a path missing.
        RegistryError: an unknown weighting, strategy or encoder (with a did-you-mean).
    """
    check_values(cfg, source=source)
    _resolve_paths(cfg, source, list(base_dirs))
    return cfg


def check_values(cfg: TrainConfig, *, source: str = "<config>") -> None:
    """Check every range and name of a config (no paths: also used on a model card's training config).

    Raises:
        ConfigError: a value is out of range or not allowed.
        RegistryError: an unknown weighting, strategy or encoder (with a did-you-mean).
    """
    _check_train(cfg.train, source)
    d, v = cfg.data, cfg.validation
    _check_range(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "[0, 1), e.g. 0.25", source)
    _check_range(0.0 < d.label_fraction <= 1.0, "data.label_fraction", d.label_fraction, "(0, 1]", source)
    _check_range(0.0 <= d.cache_rate <= 1.0, "data.cache_rate", d.cache_rate, "[0, 1]", source)
    _check_range(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0", source)
    _check_range(d.reference_scans >= 1, "data.reference_scans", d.reference_scans, ">= 1", source)
    _check_range(d.max_scans is None or d.max_scans >= 1, "data.max_scans", d.max_scans, ">= 1 or null", source)
    if (d.train_ids is None) != (d.val_ids is None) and d.train_ids is None:
        raise ConfigError(f"data.val_ids in {source} needs data.train_ids as well; give both lists or neither")
    _check_range(v.every >= 1, "validation.every", v.every, ">= 1", source)
    _check_range(0.0 <= v.overlap < 1.0, "validation.overlap", v.overlap, "[0, 1)", source)
    _check_range(v.sw_batch_size >= 1, "validation.sw_batch_size", v.sw_batch_size, ">= 1", source)
    _check_range(v.patience >= 0, "validation.patience", v.patience, ">= 0 (0 = off)", source)
    _check_choice(v.monitor, "validation.monitor", MONITORS, source)
    _check_range(0.0 < cfg.decode.threshold < 1.0, "decode.threshold", cfg.decode.threshold, "(0, 1)", source)
    _check_range(cfg.decode.nms_radius_mm > 0, "decode.nms_radius_mm", cfg.decode.nms_radius_mm, "> 0 mm", source)
    _check_range(cfg.decode.max_lesions >= 1, "decode.max_lesions", cfg.decode.max_lesions, ">= 1", source)
    for key in ("malignancy", "size"):
        value = getattr(cfg.decode, key)
        _check_choice(value, f"decode.{key}", MALIGNANCY_READOUTS, source)
        if value == "features" and cfg.preprocess.modality != "CT":
            raise ConfigError(f"decode.{key} 'features' in {source} reads HU and needs preprocess.modality CT, got "
                              f"{cfg.preprocess.modality}; use decode.{key}: head (or auto) for MR")
    _check_choice(cfg.preprocess.modality, "preprocess.modality", MODALITIES, source)
    if cfg.preprocess.spacing_mm is not None:
        _check_range(
            len(cfg.preprocess.spacing_mm) == 3 and all(s > 0 for s in cfg.preprocess.spacing_mm),
            "preprocess.spacing_mm", cfg.preprocess.spacing_mm, "3 positive spacings in mm or null", source,
        )
    _validate_names(cfg)


def _check_train(t: TrainSection, source: str) -> None:
    """Ranges and names of the ``train`` section."""
    _check_range(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0, e.g. 1e-3", source)
    _check_range(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0", source)
    _check_range(t.epochs >= 1, "train.epochs", t.epochs, ">= 1", source)
    _check_range(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1", source)
    _check_range(
        t.steps_per_epoch is None or t.steps_per_epoch >= 1, "train.steps_per_epoch", t.steps_per_epoch, ">= 1 or null", source
    )
    _check_range(
        len(t.patch_size) == 3 and all(s >= 8 for s in t.patch_size),
        "train.patch_size", t.patch_size, "3 sizes >= 8 voxels, e.g. [64, 64, 32]", source,
    )
    _check_range(t.samples_per_scan >= 1, "train.samples_per_scan", t.samples_per_scan, ">= 1", source)
    _check_range(0.0 <= t.pos_fraction <= 1.0, "train.pos_fraction", t.pos_fraction, "[0, 1]", source)
    _check_range(0.0 <= t.small_lesion_power <= 4.0, "train.small_lesion_power", t.small_lesion_power, "[0, 4]", source)
    _check_range(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 = off)", source)
    _check_range(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, ">= 0", source)
    _check_range(t.conflict_every >= 0, "train.conflict_every", t.conflict_every, ">= 0 (0 = off)", source)
    _check_choice(t.amp, "train.amp", AMP_MODES, source)
    _check_choice(t.optimizer, "train.optimizer", OPTIMIZERS, source)
    _check_choice(t.scheduler, "train.scheduler", SCHEDULERS, source)
    _check_choice(t.augment, "train.augment", AUGMENT_STRENGTHS, source)
    _check_choice(t.sampling, "train.sampling", SAMPLING_MODES, source)
    _check_range(t.patch_jitter >= 0, "train.patch_jitter", t.patch_jitter, ">= 0 voxels", source)
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        raise ConfigError(f"train.device = '{t.device}' in {source} is not allowed; allowed: auto, cpu, cuda, cuda:N")


def _resolve_paths(cfg: TrainConfig, source: str, bases: list[Path]) -> None:
    """Make ``data.root``, ``data.annotations`` and ``model.weights`` absolute (they must exist)."""
    d = cfg.data
    d.root = _resolve_path(d.root, "data.root", bases, must_exist=True, source=source)
    if not Path(d.root).is_dir():
        raise ConfigError(f"data.root '{d.root}' in {source} is not a folder; give the scan folder")
    if d.annotations is None:
        ann = Path(d.root) / "annotations.csv"
        if not ann.is_file():
            raise ConfigError(
                f"data.annotations is not set in {source} and '{ann}' does not exist; set data.annotations to the table"
            )
        d.annotations = str(ann)
    else:
        d.annotations = _resolve_path(d.annotations, "data.annotations", bases, must_exist=True, source=source)
    if cfg.model.weights is not None:
        cfg.model.weights = _resolve_path(cfg.model.weights, "model.weights", bases, must_exist=True, source=source)


def _validate_names(cfg: TrainConfig) -> None:
    """Check the weighting, strategy, encoder and adapter names against their registries."""
    from medmtl.errors import unknown_name
    from medmtl.models.registry import get_encoder_info, list_encoders
    from medmtl.mtl.strategies import STRATEGIES, setup_transfer
    from medmtl.mtl.weighting import create_weighting, list_weightings

    names = list_weightings()
    if cfg.weighting.name not in names:
        raise unknown_name("weighting (weighting.name)", cfg.weighting.name, names)
    create_weighting(cfg.weighting.name, tasks=("det", "size", "malig"), **cfg.weighting.params)
    if cfg.strategy.name not in STRATEGIES:
        raise unknown_name("strategy (strategy.name)", cfg.strategy.name, STRATEGIES)
    allowed = [p for p in inspect.signature(setup_transfer).parameters if p not in ("model", "strategy", "base_lr")]
    for key in cfg.strategy.params:
        if key not in allowed:
            raise ConfigError(
                f"unknown key 'strategy.params.{key}'; allowed: {', '.join(allowed)}.{did_you_mean(key, allowed)}"
            )
    encoders = [info.name for info in list_encoders()]
    if cfg.model.encoder not in encoders:
        raise unknown_name("encoder (model.encoder)", cfg.model.encoder, encoders)
    adapters = [a for a in get_encoder_info(cfg.model.encoder).adapters if a != "2d"]
    if cfg.model.adapter not in adapters:
        raise unknown_name(f"adapter (model.adapter) for {cfg.model.encoder}", cfg.model.adapter, adapters)


__all__ = ["check_values", "validate_config"]
