"""The config schema: one dataclass per YAML section, their defaults and allowed names.

:class:`TrainConfig` is the root; every other class is one of its sections. The tuples
(``AMP_MODES``, ``OPTIMIZERS``, ...) are the allowed values that
:func:`medmtl.config.validation.validate_config` checks the string settings against. Every key
is documented in ``configs/README.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

AMP_MODES = ("auto", "bf16", "fp16", "off")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "constant", "step")
MONITORS = ("cpm", "loss")
AUGMENT_STRENGTHS = ("none", "light", "medium", "strong")
SAMPLING_MODES = ("random", "centred", "lesions")
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
        input_skip: feed the preprocessed input itself into the decoder's full-resolution
            block (a stride-1 skip), so lesions of 2–4 voxels can be located and sized; the
            encoder's finest level is at stride 2.
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
    input_skip: bool = True

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
            "input_skip": bool(self.input_skip),
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
            positive/negative by ``pos_fraction``, each lesion anywhere in its patch, half the
            negatives on vessels/pleura: ``LesionAnywhereCropd``), ``centred`` (MONAI's
            ``RandCropByPosNegLabeld``: positives centred on the lesion — position-biased,
            kept for comparison) or ``lesions``
            (one patch centred on every lesion of the scan, shifted to fit inside the volume,
            no jitter; a lesion-free scan gives its central patch). ``lesions`` is a fixed
            set of patches, e.g. to check that the network can overfit a few scans.
        small_lesion_power: ``random`` sampling only: a positive patch picks lesion ``i`` with
            probability ``∝ d_i^-γ`` (``γ`` this value, ``d`` the diameter in mm; ``0`` = uniform),
            so the small nodules a short training learns last are seen more often.
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
            Ignored when ``model.pretrained`` is false (random statistics are not worth keeping).
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
    small_lesion_power: float = 0.0
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
        calibrate: fit the malignancy temperature and the size calibration on validation lesions
            at the end.
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
        malignancy: how a lesion's malignancy is read: ``head`` (the network's malignancy
            logit, temperature-scaled), ``features`` (a logistic model on twelve HU descriptors
            of the lesion, fitted on the labelled training lesions at set-up:
            :mod:`medmtl.engine.lesion_readout`; CT only; needs >= 10 malignant and 10
            benign labelled training lesions; when ``annotations.csv`` records ``margin`` /
            ``texture`` / ``calcification``, a two-stage model — attribute classifiers, then
            malignancy from size and attribute probabilities, :mod:`medmtl.engine.attribute_readout`)
            or ``auto`` (``features`` for CT when there are enough labels, else ``head``, with a log
            line saying which).
        size: how a lesion's diameter is read: ``head`` (the size head at the peak), ``features``
            (a robust linear regression on the same descriptors read around the head's diameter,
            fitted on the training lesions at set-up; CT only; >= 10 lesions) or ``auto``.
    """

    threshold: float = 0.1
    nms_radius_mm: float = 8.0
    max_lesions: int = 50
    malignancy: str = "auto"
    size: str = "auto"


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


#: Allowed ``decode.malignancy`` and ``decode.size`` readouts.
MALIGNANCY_READOUTS: tuple[str, ...] = ("auto", "features", "head")

__all__ = [
    "AMP_MODES",
    "MALIGNANCY_READOUTS",
    "AUGMENT_STRENGTHS",
    "DataConfig",
    "DecodeConfig",
    "MODALITIES",
    "MONITORS",
    "ModelConfig",
    "OPTIMIZERS",
    "PreprocessConfig",
    "SAMPLING_MODES",
    "SCHEDULERS",
    "StrategyConfig",
    "TrainConfig",
    "TrainSection",
    "ValidationConfig",
    "WeightingConfig",
]
