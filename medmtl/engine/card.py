"""The model card: one typed, versioned record of everything prediction needs (DESIGN.md → Checkpoint).

:class:`ModelCard` is a tree of frozen dataclasses — the encoder's
:class:`~medmtl.models.registry.EncoderConfig`, the network's
:class:`~medmtl.models.spec.ModelSpec`, the :class:`~medmtl.transforms.presets.InputSpec`, the
patch size, :class:`~medmtl.engine.decode.DecodeSettings`, the intensity
:class:`~medmtl.transforms.harmonise.Harmonisation`, the training data's
:class:`ReferenceStats`, the :class:`AdaptationRecord` history, the training config, the
:class:`TrainingInfo` and the :class:`Provenance` (versions, weights hash, time).

:meth:`ModelCard.from_dict` validates every value when a card is read — unknown keys (with a
did-you-mean), wrong types and out-of-range values are one :class:`~medmtl.errors.CheckpointError`
naming the key, before any scan is touched — and :meth:`ModelCard.to_dict` round-trips.
Cards written by medmtl 0.1 (``format_version`` 1, no ``card_version``) load through
:func:`migrate_card`. No module reads the card's JSON keys itself: it reads this record.

Example:
    >>> card = ModelCard.from_dict(json.loads(text), where="model_card.json")  # doctest: +SKIP
    >>> card.decode.threshold, card.patch_size  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmtl.config.schema import TrainConfig
from medmtl.engine.decode import DecodeSettings
from medmtl.engine.lesion_readout import LesionReadout
from medmtl.errors import CheckpointError, MedmtlError
from medmtl.models.registry import EncoderConfig
from medmtl.models.spec import ModelSpec
from medmtl.records import check_keys, expect_type, number_in, one_of
from medmtl.transforms.harmonise import Harmonisation
from medmtl.transforms.presets import InputSpec

#: Version of the card layout this medmtl writes (0.1 cards: :func:`migrate_card`).
CARD_VERSION = 2
#: A patch (sliding window) larger than this many voxels does not fit the inference memory
#: budget: 256³ voxels × 3 channels × 4 windows of float32 activations already exceed 8 GB.
MAX_PATCH_VOXELS = 256**3
#: Smallest and largest patch edge (voxels).
PATCH_EDGE = (8, 512)
#: Layout tag of :class:`ReferenceStats`.
REFERENCE_FORMAT = "medmtl.reference_stats/1"
_E = CheckpointError


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    expect_type(value, (list, tuple), where, error=_E)
    for i, v in enumerate(value):
        expect_type(v, str, f"{where}[{i}]", error=_E)
    return tuple(value)


@dataclass(frozen=True)
class TrainingInfo:
    """How the checkpoint's weights were chosen.

    Attributes:
        epoch: the saved epoch (1-based; 0 before the first).
        epochs: epochs of the run.
        metrics: validation metrics of that epoch (name → value or ``None``).
        train_ids, val_ids: scan ids of the split.
        monitor: the metric that picked the checkpoint (``cpm`` or ``loss``).
    """

    epoch: int
    epochs: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    train_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()
    monitor: str = "cpm"

    def __post_init__(self) -> None:
        number_in(self.epoch, "training.epoch", low=0, integer=True, error=_E)
        number_in(self.epochs, "training.epochs", low=1, integer=True, error=_E)
        expect_type(self.metrics, Mapping, "training.metrics", error=_E)
        object.__setattr__(self, "train_ids", _str_list(self.train_ids, "training.train_ids"))
        object.__setattr__(self, "val_ids", _str_list(self.val_ids, "training.val_ids"))
        one_of(self.monitor, ("cpm", "loss"), "training.monitor", error=_E)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"epoch": self.epoch, "epochs": self.epochs, "metrics": dict(self.metrics),
                "train_ids": list(self.train_ids), "val_ids": list(self.val_ids), "monitor": self.monitor}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingInfo:
        """Inverse of :meth:`to_dict`."""
        check_keys(data, _fields(cls), "training", required=("epoch", "epochs"), error=_E)
        return cls(**dict(data))


@dataclass(frozen=True)
class AdaptationRecord:
    """One label-free adaptation applied to the checkpoint (``medmtl adapt``).

    Attributes:
        method: registered adaptation method (``adabn``, ``tent``, ``histmatch`` ...).
        parameters_changed: state-dict tensors (or ``card.harmonisation``) it changed.
        n_tensors_changed: how many tensors changed.
        params: the method's settings and results.
        target_scans: ids of the unlabelled target scans.
        n_target_scans: their number.
        target_folder: where they were read.
        source_checkpoint: the checkpoint that was adapted.
        seed: random seed.
        date: ISO time (UTC).
    """

    method: str
    parameters_changed: tuple[str, ...] = ()
    n_tensors_changed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    target_scans: tuple[str, ...] = ()
    n_target_scans: int = 0
    target_folder: str = ""
    source_checkpoint: str = ""
    seed: int = 0
    date: str = ""

    def __post_init__(self) -> None:
        w = "adaptation[]"
        expect_type(self.method, str, f"{w}.method", error=_E)
        object.__setattr__(self, "parameters_changed", _str_list(self.parameters_changed, f"{w}.parameters_changed"))
        number_in(self.n_tensors_changed, f"{w}.n_tensors_changed", low=0, integer=True, error=_E)
        expect_type(self.params, Mapping, f"{w}.params", error=_E)
        object.__setattr__(self, "target_scans", _str_list(self.target_scans, f"{w}.target_scans"))
        number_in(self.n_target_scans, f"{w}.n_target_scans", low=0, integer=True, error=_E)
        for name in ("target_folder", "source_checkpoint", "date"):
            expect_type(getattr(self, name), str, f"{w}.{name}", error=_E)
        number_in(self.seed, f"{w}.seed", integer=True, error=_E)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        out = dataclasses.asdict(self)
        out.update(parameters_changed=list(self.parameters_changed), target_scans=list(self.target_scans),
                   params=dict(self.params))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptationRecord:
        """Inverse of :meth:`to_dict`."""
        check_keys(data, _fields(cls), "adaptation[]", required=("method",), error=_E)
        return cls(**dict(data))


@dataclass(frozen=True)
class ReferenceStats:
    """The training data summarised for later shift checks without the training scans.

    Built by :func:`medmtl.shift.reference.compute_reference_stats`.

    Attributes:
        format: layout tag (:data:`REFERENCE_FORMAT`).
        modality: ``CT`` or ``MR``.
        n_scans: scans summarised.
        scan_ids: their ids.
        fingerprints: per-scan acquisition fingerprints (spacing, noise, HU calibration ...).
        cohort: the fingerprints' cohort summary.
        percentiles: ``{"levels", "per_scan"}`` intensity percentiles.
        histogram: the cohort's intensity histogram (``{"edges", "density", ...}``).
        quantiles: the body quantile function ``{"levels", "values", ...}`` (histogram matching).
        features: ``{"extractor": identity, "dim": F, "matrix": N × F}`` pooled features.
        predictions: per-scan prediction summaries, or ``None`` (no network).
    """

    format: str
    modality: str
    n_scans: int
    scan_ids: tuple[str, ...]
    fingerprints: tuple[Mapping[str, Any], ...]
    cohort: Mapping[str, Any]
    percentiles: Mapping[str, Any]
    histogram: Mapping[str, Any]
    quantiles: Mapping[str, Any]
    features: Mapping[str, Any]
    predictions: tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        w = "reference_stats"
        one_of(self.format, (REFERENCE_FORMAT,), f"{w}.format", error=_E)
        one_of(self.modality, ("CT", "MR"), f"{w}.modality", error=_E)
        n = int(number_in(self.n_scans, f"{w}.n_scans", low=1, integer=True, error=_E))
        object.__setattr__(self, "scan_ids", _str_list(self.scan_ids, f"{w}.scan_ids"))
        expect_type(self.fingerprints, (list, tuple), f"{w}.fingerprints", error=_E)
        object.__setattr__(self, "fingerprints", tuple(self.fingerprints))
        if len(self.scan_ids) != n or len(self.fingerprints) != n:
            raise _E(f"{w}: n_scans = {n} but {len(self.scan_ids)} scan_ids and {len(self.fingerprints)} fingerprints;"
                     " the statistics are inconsistent, recompute them")
        for name in ("cohort", "percentiles", "histogram", "quantiles", "features"):
            expect_type(getattr(self, name), Mapping, f"{w}.{name}", error=_E)
        check_keys(self.features, ("extractor", "dim", "matrix"), f"{w}.features",
                   required=("extractor", "dim", "matrix"), error=_E)
        dim = int(number_in(self.features["dim"], f"{w}.features.dim", low=1, integer=True, error=_E))
        matrix = self.features["matrix"]
        if not isinstance(matrix, (list, tuple)) or len(matrix) != n or any(len(r) != dim for r in matrix):
            raise _E(f"{w}.features.matrix must be {n} rows of {dim} numbers (n_scans × dim); recompute the statistics")
        q = self.quantiles
        if len(q.get("levels") or []) < 2 or len(q.get("levels") or []) != len(q.get("values") or []):
            raise _E(f"{w}.quantiles must hold 'levels' and 'values' of equal length (>= 2)")
        if self.predictions is not None:
            expect_type(self.predictions, (list, tuple), f"{w}.predictions", error=_E)
            object.__setattr__(self, "predictions", tuple(self.predictions))

    @property
    def extractor(self) -> Mapping[str, Any]:
        """Identity of the feature extractor (``kind``, ``encoder``, ``adapter``, ``weights_hash`` ...)."""
        return self.features["extractor"]  # type: ignore[no-any-return]

    def feature_matrix(self) -> np.ndarray:
        """The stored pooled features ``(n_scans, dim)`` float32."""
        return np.asarray(self.features["matrix"], dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        out = {f: getattr(self, f) for f in _fields(type(self))}
        out.update(scan_ids=list(self.scan_ids), fingerprints=[dict(f) for f in self.fingerprints],
                   predictions=None if self.predictions is None else [dict(p) for p in self.predictions])
        for name in ("cohort", "percentiles", "histogram", "quantiles", "features"):
            out[name] = dict(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceStats:
        """Inverse of :meth:`to_dict`."""
        names = _fields(cls)
        check_keys(data, names, "reference_stats", required=[n for n in names if n != "predictions"], error=_E)
        return cls(**dict(data))


@dataclass(frozen=True)
class Provenance:
    """Who wrote the checkpoint, when, and the SHA-256 of its weights file.

    Attributes:
        medmtl_version: medmtl that wrote it.
        versions: Python, torch, MONAI, NumPy and medmtl versions.
        weights_sha256: hex SHA-256 of ``model.safetensors``.
        created: ISO time (UTC).
    """

    medmtl_version: str
    versions: Mapping[str, str]
    weights_sha256: str
    created: str

    def __post_init__(self) -> None:
        expect_type(self.medmtl_version, str, "provenance.medmtl_version", error=_E)
        expect_type(self.versions, Mapping, "provenance.versions", error=_E)
        sha = self.weights_sha256
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _E(f"provenance.weights_sha256 = {sha!r} must be 64 lowercase hex digits (SHA-256)")
        expect_type(self.created, str, "provenance.created", error=_E)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"medmtl_version": self.medmtl_version, "versions": dict(self.versions),
                "weights_sha256": self.weights_sha256, "created": self.created}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        """Inverse of :meth:`to_dict`."""
        names = _fields(cls)
        check_keys(data, names, "provenance", required=names, error=_E)
        return cls(**dict(data))


def _check_patch(patch: Any) -> tuple[int, int, int]:
    expect_type(patch, (list, tuple), "patch_size", error=_E)
    if len(patch) != 3:
        raise _E(f"patch_size = {list(patch)!r} must hold 3 voxel counts (I, J, K), e.g. [32, 32, 32]")
    lo, hi = PATCH_EDGE
    out = tuple(int(number_in(v, f"patch_size[{i}]", low=lo, high=hi, integer=True, error=_E))
                for i, v in enumerate(patch))
    if math.prod(out) > MAX_PATCH_VOXELS:
        raise _E(f"patch_size = {list(out)} has {math.prod(out)} voxels, over the memory budget of "
                 f"{MAX_PATCH_VOXELS} (256³); use a smaller sliding window")
    return (out[0], out[1], out[2])


def _sub(kind: Callable[[Mapping[str, Any]], Any], value: Any, name: str) -> Any:
    """Parse a sub-record, naming the card key in any error."""
    try:
        return kind(value)
    except CheckpointError:
        raise
    except (MedmtlError, TypeError) as exc:
        raise _E(f"key '{name}': {exc}") from exc


def _train_config(value: Mapping[str, Any]) -> TrainConfig:
    """The training config of a card: types, ranges and names checked (its paths may have moved)."""
    from medmtl.config.loading import config_from_dict
    from medmtl.config.validation import check_values

    cfg = config_from_dict(dict(value), source="model card 'train_config'")
    check_values(cfg, source="model card 'train_config'")
    return cfg


@dataclass(frozen=True)
class ModelCard:
    """Everything prediction needs, and where the weights came from.

    Attributes:
        encoder: the encoder's config record (source, first conv, mean/std, licence, adapter).
        model: the network's build spec.
        input_spec: how a scan becomes network input.
        patch_size: training patch = sliding window ``(I, J, K)`` in preprocessed voxels.
        decode: threshold, NMS radius (mm), lesion cap and malignancy temperature.
        harmonisation: intensity step applied before preprocessing, or ``None``.
        reference_stats: training-data summary for shift checks, or ``None``.
        adaptation: adaptations applied after training, oldest first.
        train_config: the resolved training config, or ``None`` (hand-made checkpoints).
        training: epoch, metrics and split of the saved weights, or ``None``.
        provenance: versions, weights SHA-256 and time; ``None`` until saved.
        lesion_readout: the per-lesion size and malignancy models on HU descriptors that
            re-measure each detection at prediction (CT only), or ``None`` (the heads' values);
            cards written before it existed have none.
        card_version: layout version (:data:`CARD_VERSION`).
    """

    encoder: EncoderConfig
    model: ModelSpec
    input_spec: InputSpec
    patch_size: tuple[int, int, int]
    decode: DecodeSettings
    harmonisation: Harmonisation | None = None
    reference_stats: ReferenceStats | None = None
    adaptation: tuple[AdaptationRecord, ...] = ()
    train_config: TrainConfig | None = None
    training: TrainingInfo | None = None
    provenance: Provenance | None = None
    lesion_readout: LesionReadout | None = None
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", _check_patch(self.patch_size))
        object.__setattr__(self, "adaptation", tuple(self.adaptation))
        if self.model.encoder != self.encoder.name:
            raise _E(f"key 'model.encoder' = {self.model.encoder!r} differs from 'encoder.name' = "
                     f"{self.encoder.name!r}; the card is inconsistent")
        if self.model.in_channels != self.input_spec.channels:
            raise _E(f"key 'model.in_channels' = {self.model.in_channels} but the input spec gives "
                     f"{self.input_spec.channels} channels; the card is inconsistent")
        ref = self.reference_stats
        if ref is not None and ref.modality != self.input_spec.modality:
            raise _E(f"key 'reference_stats.modality' = {ref.modality!r} differs from 'input_spec.modality' = "
                     f"{self.input_spec.modality!r}")
        if self.lesion_readout is not None and self.input_spec.modality != "CT":
            raise _E(f"key 'lesion_readout' is set but 'input_spec.modality' is {self.input_spec.modality!r}; "
                     "the readout reads HU and exists for CT only")

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file (``""`` before the card is saved)."""
        return self.provenance.weights_sha256 if self.provenance is not None else ""

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def adapted(self, record: AdaptationRecord, **changes: Any) -> ModelCard:
        """The card of an adapted checkpoint: ``record`` appended, provenance cleared."""
        return dataclasses.replace(self, adaptation=(*self.adaptation, record), provenance=None, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the file layout); :meth:`from_dict` inverts it."""
        return {
            "card_version": self.card_version,
            "encoder": self.encoder.to_dict(),
            "model": self.model.to_dict(),
            "input_spec": self.input_spec.to_dict(),
            "patch_size": list(self.patch_size),
            "decode": self.decode.to_dict(),
            "harmonisation": self.harmonisation.to_dict() if self.harmonisation is not None else None,
            "reference_stats": self.reference_stats.to_dict() if self.reference_stats is not None else None,
            "adaptation": [a.to_dict() for a in self.adaptation],
            "train_config": self.train_config.to_dict() if self.train_config is not None else None,
            "training": self.training.to_dict() if self.training is not None else None,
            "provenance": self.provenance.to_dict() if self.provenance is not None else None,
            "lesion_readout": self.lesion_readout.to_dict() if self.lesion_readout is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model card") -> ModelCard:
        """Validate and build a card (0.1 cards are migrated first).

        Args:
            data: the parsed JSON.
            where: the card file, named in every error.

        Raises:
            CheckpointError: one line naming ``where``, the key, the bad value and what is allowed.
        """
        try:
            return cls._parse(migrate_card(data))
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from exc

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> ModelCard:
        names = _fields(cls)
        check_keys(d, names, "the card", required=("card_version", "encoder", "model", "input_spec",
                                                   "patch_size", "decode"), error=_E)
        if d["card_version"] != CARD_VERSION:
            raise _E(f"card_version = {d['card_version']!r} is not readable by this medmtl (reads {CARD_VERSION} "
                     "and 0.1 cards); upgrade medmtl")

        def opt(name: str, kind: Callable[[Mapping[str, Any]], Any]) -> Any:
            return None if d.get(name) is None else _sub(kind, d[name], name)

        adaptation = d.get("adaptation") or []
        expect_type(adaptation, (list, tuple), "adaptation", error=_E)
        return cls(
            encoder=_sub(EncoderConfig.from_dict, d["encoder"], "encoder"),
            model=_sub(ModelSpec.from_dict, d["model"], "model"),
            input_spec=_sub(InputSpec.from_dict, d["input_spec"], "input_spec"),
            patch_size=d["patch_size"],
            decode=_sub(DecodeSettings.from_dict, d["decode"], "decode"),
            harmonisation=opt("harmonisation", Harmonisation.from_dict),
            reference_stats=opt("reference_stats", ReferenceStats.from_dict),
            adaptation=tuple(_sub(AdaptationRecord.from_dict, a, f"adaptation[{i}]") for i, a in enumerate(adaptation)),
            train_config=opt("train_config", _train_config),
            training=opt("training", TrainingInfo.from_dict),
            provenance=opt("provenance", Provenance.from_dict),
            lesion_readout=opt("lesion_readout", LesionReadout.from_dict),
        )


#: Top-level keys of a card written by medmtl 0.1 (``format_version`` 1).
V01_KEYS = ("format_version", "medmtl_version", "encoder", "model", "input_spec", "patch_size", "decode",
            "train_config", "reference_stats", "adaptation", "versions", "weights_sha256", "created",
            "training", "harmonisation")


def migrate_card(data: Any) -> Mapping[str, Any]:
    """The current layout of a card dict: 0.1 cards are converted, current ones returned as they are.

    0.1 cards (``format_version`` 1, no ``card_version``) kept provenance at the top level
    (``medmtl_version``, ``versions``, ``weights_sha256``, ``created``) and could lack
    ``model.input_skip`` (then ``false``: the network had no input skip).

    Raises:
        CheckpointError: not a JSON object, or neither layout.
    """
    if not isinstance(data, Mapping):
        raise _E(f"the card must be a JSON object, got {type(data).__name__}")
    if "card_version" in data:
        return data
    if data.get("format_version") != 1:
        raise _E(f"neither 'card_version' nor format_version 1 (medmtl 0.1) found (format_version = "
                 f"{data.get('format_version')!r}); this is not a medmtl model card")
    check_keys(data, V01_KEYS, "the 0.1 card", required=("encoder", "model", "input_spec", "patch_size", "decode",
                                                         "weights_sha256"), error=_E)
    d = {k: v for k, v in data.items() if k not in ("format_version", "medmtl_version", "versions",
                                                    "weights_sha256", "created")}
    model = dict(d["model"]) if isinstance(d["model"], Mapping) else d["model"]
    if isinstance(model, dict):
        model.setdefault("input_skip", False)
    d["model"] = model
    d["card_version"] = CARD_VERSION
    d["provenance"] = {"medmtl_version": str(data.get("medmtl_version", "0.1.0")),
                       "versions": dict(data.get("versions") or {}),
                       "weights_sha256": data["weights_sha256"], "created": str(data.get("created", ""))}
    return d


def new_provenance(weights_sha256: str) -> Provenance:
    """Provenance of weights saved now by this process."""
    from medmtl import __version__
    from medmtl.engine.checkpoint import library_versions

    return Provenance(medmtl_version=__version__, versions=library_versions(), weights_sha256=weights_sha256,
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def card_for(
    model: Any,
    *,
    input_spec: InputSpec,
    patch_size: Sequence[int],
    decode: DecodeSettings,
    **fields_: Any,
) -> ModelCard:
    """A card for a network in memory (its encoder config and model spec read from the network).

    Args:
        model: a :class:`~medmtl.models.mtl_net.MultiTaskNet`.
        input_spec, patch_size, decode: as in :class:`ModelCard`.
        **fields_: any other :class:`ModelCard` field (``train_config``, ``training`` ...).
    """
    from medmtl.models.mtl_net import model_spec

    return ModelCard(encoder=model.encoder.config, model=model_spec(model), input_spec=input_spec,
                     patch_size=tuple(int(v) for v in patch_size), decode=decode, **fields_)  # type: ignore[arg-type]


__all__ = [
    "CARD_VERSION",
    "MAX_PATCH_VOXELS",
    "AdaptationRecord",
    "ModelCard",
    "Provenance",
    "REFERENCE_FORMAT",
    "ReferenceStats",
    "TrainingInfo",
    "card_for",
    "migrate_card",
    "new_provenance",
]
