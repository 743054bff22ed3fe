"""Typed training configuration loaded from YAML.

A config is a tree of dataclasses (:class:`TrainConfig` at the root). :func:`load_config`
reads a YAML file, applies ``--set key.sub=value`` overrides (values parsed as YAML scalars,
so ``1e-3``, ``true``, ``[32, 32, 32]`` and ``null`` work), rejects unknown keys at every
level with a did-you-mean, type-checks every value and validates the ranges and the names
(weighting, strategy, encoder) against their registries.

**Paths.** A relative ``data.root`` / ``data.annotations`` / ``model.weights`` is resolved
against the current working directory first; if nothing exists there, against the repository
root (the parent of the folder that holds the config, e.g. ``configs/..``), then against the
config's own folder. The resolved, absolute paths are what the run folder's ``config.yaml``
records. Every key is documented in ``configs/README.md``.

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["train.epochs=2"])  # doctest: +SKIP
    >>> cfg.train.learning_rate  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.errors import ConfigError, MedmtlError, did_you_mean

AMP_MODES = ("auto", "bf16", "fp16", "off")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "constant", "step")
MONITORS = ("cpm", "loss")
AUGMENT_STRENGTHS = ("none", "light", "medium", "strong")
SAMPLING_MODES = ("random", "lesions")
MODALITIES = ("CT", "MR")


@dataclass
class DataConfig:
    """Where the scans and labels are and how they are split.

    Attributes:
        root: scan folder (NIfTI / MHA / NRRD / DICOM), see the module doc for path rules.
        annotations: annotation table (CSV or MONAI datalist JSON); default
            ``<root>/annotations.csv``.
        val_fraction: share of scans held out for validation, in [0, 1) (0 = no validation).
        train_ids: explicit training scan ids (overrides ``val_fraction`` with ``val_ids``).
        val_ids: explicit validation scan ids.
        max_scans: use at most this many scans (after sorting by id), ``null`` = all.
        label_fraction: share of lesions that keep their size and malignancy labels, (0, 1]
            (the others keep only detection), for label-efficiency studies.
        cache_rate: share of preprocessed training items kept in memory by ``CacheDataset``.
        num_workers: data-loader workers (0 = in the main process; deterministic on CPU).
        resample_nonuniform: resample scans with non-uniform slice spacing instead of skipping.
        reference_scans: training scans summarised into the card's reference statistics
            (for later shift checks without the training data).
    """

    root: str = "sample_data/ct_site_a"
    annotations: str | None = None
    val_fraction: float = 0.25
    train_ids: list[str] | None = None
    val_ids: list[str] | None = None
    max_scans: int | None = None
    label_fraction: float = 1.0
    cache_rate: float = 1.0
    num_workers: int = 0
    resample_nonuniform: bool = False
    reference_scans: int = 32


@dataclass
class ModelConfig:
    """The network: a registered encoder, its 2D→3D adapter and the decoder.

    Attributes:
        encoder: registered encoder name (``medmtl models list``).
        adapter: ``inflate``, ``2.5d`` or ``acs``.
        pretrained: start from ImageNet weights (embedded, offline).
        weights: optional local state-dict file for the encoder (``.safetensors`` / ``.pth``).
        decoder_channels: widths of the UNet-style decoder stages (``null`` = from the encoder).
        depth_padding: ``zeros`` or ``replicate`` padding along the axial axis (inflate / acs).
        inflate_policy: how 2D kernels are inflated (see ``medmtl.models.inflate``).
        context: 2.5D only: ``windows`` or ``neighbours``.
        norm: decoder normalisation, ``instance`` or ``batch``.
    """

    encoder: str = "efficientnet-lite0"
    adapter: str = "inflate"
    pretrained: bool = True
    weights: str | None = None
    decoder_channels: list[int] | None = None
    depth_padding: str = "zeros"
    inflate_policy: str = "full"
    context: str = "windows"
    norm: str = "instance"

    def build_config(self, in_channels: int) -> dict[str, Any]:
        """The ``build_model`` config (what the model card stores under ``model``)."""
        return {
            "encoder": self.encoder,
            "adapter": self.adapter,
            "in_channels": int(in_channels),
            "decoder_channels": list(self.decoder_channels) if self.decoder_channels is not None else None,
            "depth_padding": self.depth_padding,
            "weights": self.weights,
            "inflate_policy": self.inflate_policy,
            "context": self.context,
            "norm": self.norm,
        }


@dataclass
class PreprocessConfig:
    """Input spec (same at training and prediction; saved in the model card).

    Attributes:
        modality: ``CT`` or ``MR``; picks the preset (``default_ct_spec`` / ``default_mri_spec``).
        spacing_mm: target voxel spacing (mm, 3 values) or ``null`` for the preset's.
        windows: CT windows ``[[center, width], ...]`` in HU or ``null`` for the preset's.
    """

    modality: str = "CT"
    spacing_mm: list[float] | None = None
    windows: list[list[float]] | None = None


@dataclass
class TrainSection:
    """Optimisation settings.

    Attributes:
        epochs: number of epochs.
        steps_per_epoch: optimizer steps per epoch (``null`` = one pass over the patches).
        batch_size: patches per step.
        patch_size: training patch ``[I, J, K]`` in preprocessed voxels.
        samples_per_scan: patches drawn from a scan each time it is visited.
        pos_fraction: share of patches centred on a lesion (pos:neg = f : 1-f), in [0, 1].
        sampling: how training patches are drawn: ``random`` (``samples_per_scan`` patches,
            positive/negative by ``pos_fraction``, ``RandCropByPosNegLabeld``) or ``lesions``
            (one patch centred on every lesion of the scan, shifted to fit inside the volume,
            no jitter; a lesion-free scan gives its central patch). ``lesions`` is a fixed
            set of patches, e.g. to check that the network can overfit a few scans.
        patch_jitter: ``lesions`` sampling only: random shift of each patch centre, up to
            this many voxels per axis (``0`` = exactly centred).
        learning_rate: peak learning rate (> 0).
        weight_decay: AdamW/SGD weight decay (≥ 0).
        optimizer: ``adamw``, ``adam`` or ``sgd``.
        scheduler: ``cosine``, ``constant`` or ``step`` (halves every quarter of the run).
        warmup_steps: linear warm-up steps.
        grad_clip: max global gradient norm (``0`` = off).
        amp: ``auto`` (bf16 on CUDA, off on CPU), ``bf16``, ``fp16`` or ``off``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        augment: strength of the scanner-artifact augmentations of training patches:
            ``none``, ``light``, ``medium`` or ``strong``.
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)``.
        freeze_bn: keep the encoder's BatchNorm layers in eval mode while training (the
            pretrained running statistics normalise; their affine parameters still train).
            Avoids the train/eval mismatch of batch statistics from 2–4 small 3D patches.
        conflict_every: measure gradient conflict every N steps (0 = off).
        progress: show tqdm progress bars.
    """

    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 32])
    samples_per_scan: int = 2
    pos_fraction: float = 0.5
    sampling: str = "random"
    patch_jitter: int = 0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 5.0
    amp: str = "auto"
    device: str = "auto"
    augment: str = "medium"
    deterministic: bool = True
    freeze_bn: bool = False
    conflict_every: int = 10
    progress: bool = True


@dataclass
class WeightingConfig:
    """Task weighting (``medmtl.mtl.weighting``): a registered name and its parameters."""

    name: str = "fixed"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StrategyConfig:
    """Transfer strategy (``medmtl.mtl.strategies``): a registered name and its parameters.

    Attributes:
        name: ``full``, ``linear-probe``, ``partial``, ``lp-ft``, ``gradual``, ...
        params: strategy parameters (e.g. ``probe_epochs``, ``n_stages``, ``layer_decay``,
            ``pretrained_lr_scale``, ``l2sp``), checked by the strategy itself.
    """

    name: str = "full"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValidationConfig:
    """Per-epoch validation on whole volumes and early stopping.

    Attributes:
        every: validate every N epochs (the last epoch always validates).
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        monitor: ``cpm`` (higher is better) or ``loss`` (validation loss, lower is better).
        patience: epochs without improvement before stopping (0 = never stop early).
        min_delta: smallest change counted as an improvement.
        calibrate: fit a malignancy temperature on validation lesions at the end.
    """

    every: int = 1
    overlap: float = 0.25
    sw_batch_size: int = 2
    monitor: str = "cpm"
    patience: int = 0
    min_delta: float = 0.0
    calibrate: bool = True


@dataclass
class DecodeConfig:
    """Turning maps into lesions (stored in the card; used by prediction).

    Attributes:
        threshold: minimum detection probability.
        nms_radius_mm: peaks closer than this (mm) are merged.
        max_lesions: at most this many lesions per scan.
    """

    threshold: float = 0.1
    nms_radius_mm: float = 8.0
    max_lesions: int = 50


@dataclass
class TrainConfig:
    """The root of a training config.

    Attributes:
        data, model, preprocess, train, weighting, strategy, validation, decode: sections.
        seed: global seed (Python, NumPy, torch, data split, augmentation).
        name: a free label recorded in the card.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainSection = field(default_factory=TrainSection)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 0
    name: str = "medmtl"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"'{key}' in {source} has an invalid value {value!r}; expected {_type_name(tp)}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' in {source} must be a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' in {source} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(
        f"'{key}' in {source} has an invalid value {value!r}; expected {_type_name(tp)}"
    )


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        out.append(name)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_all_keys(hints[f.name], name + "."))
    return out


def _unknown_key(key: str, source: str) -> ConfigError:
    hint = did_you_mean(key, _all_keys(TrainConfig)).replace(" Did", " did").strip()
    suffix = f"; {hint}" if hint else "; see configs/README.md for the keys"
    return ConfigError(f"unknown key '{key}' in {source}{suffix}")


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"section '{prefix.rstrip('.') or '<root>'}' in {source} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(f"{prefix}{key}", source)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", source)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}", source)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.learning_rate=1e-3"`` into ``(["train", "learning_rate"], 0.001)``.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value, e.g. train.epochs=2")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key; use key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({exc.__class__.__name__})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (a new dict is returned)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def config_from_dict(raw: dict[str, Any], *, source: str = "<dict>") -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested dict (unknown keys fail; no validation)."""
    return typing.cast(TrainConfig, _build(TrainConfig, raw, "", source))


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
    t, d, v = cfg.train, cfg.data, cfg.validation
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
    _check_range(0.0 <= cfg.decode.threshold <= 1.0, "decode.threshold", cfg.decode.threshold, "[0, 1]", source)
    _check_range(cfg.decode.nms_radius_mm > 0, "decode.nms_radius_mm", cfg.decode.nms_radius_mm, "> 0 mm", source)
    _check_range(cfg.decode.max_lesions >= 1, "decode.max_lesions", cfg.decode.max_lesions, ">= 1", source)
    _check_choice(cfg.preprocess.modality, "preprocess.modality", MODALITIES, source)
    if cfg.preprocess.spacing_mm is not None:
        _check_range(
            len(cfg.preprocess.spacing_mm) == 3 and all(s > 0 for s in cfg.preprocess.spacing_mm),
            "preprocess.spacing_mm", cfg.preprocess.spacing_mm, "3 positive spacings in mm or null", source,
        )
    _validate_names(cfg)
    bases = list(base_dirs)
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
    return cfg


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


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read, override, check and resolve a training config.

    Args:
        path: YAML file.
        overrides: ``key.sub=value`` strings (values parsed as YAML).

    Returns:
        The validated :class:`TrainConfig` with absolute data paths.

    Raises:
        ConfigError: unreadable file, unknown key (with did-you-mean), wrong type or value.
        RegistryError: unknown weighting, strategy or encoder.
    """
    import yaml

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"config file '{path}' is not valid YAML ({first}); fix the syntax") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    cfg = config_from_dict(raw, source=source)
    folder = path.resolve().parent
    return validate_config(cfg, source=source, base_dirs=[folder.parent, folder])


def save_resolved_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from medmtl.io.writers import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "MedmtlError",
    "ModelConfig",
    "PreprocessConfig",
    "StrategyConfig",
    "TrainConfig",
    "TrainSection",
    "ValidationConfig",
    "WeightingConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "save_resolved_config",
    "validate_config",
]
