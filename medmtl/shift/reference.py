"""Reference statistics of a training cohort, stored in a checkpoint's model card.

:func:`compute_reference_stats` summarises the training scans once, when a checkpoint is
saved, so that a new site can later be compared with the training data *without the
training data* (``medmtl diagnose --source CKPT``), the batch drift gate can run at
prediction time (:mod:`medmtl.shift.gate`), and target scans can be histogram-matched to the
source intensities (:mod:`medmtl.transforms.harmonise`). The result is the card's typed
:class:`~medmtl.engine.card.ReferenceStats` record.

Everything stored is JSON-safe and small: the cohort fingerprint, per-scan body-intensity
percentiles, a pooled body-intensity histogram and quantile table, the pooled encoder feature
matrix (``n_scans × F`` floats, 6 significant digits) with the feature extractor's identity,
and per-scan prediction summaries when the model has heads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from medmtl.errors import ShiftError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from medmtl.engine.card import ModelCard, ReferenceStats
    from medmtl.io.types import Scan
    from medmtl.shift.features import FeatureExtractor
    from medmtl.transforms.presets import InputSpec

logger = logging.getLogger(__name__)


def _round(v: float) -> float:
    """Round to 6 significant digits (float32 precision is ~7)."""
    return float(f"{float(v):.6g}")


def select_scans(scans: Sequence[Scan], max_scans: int) -> list[Scan]:
    """Deterministic, evenly spread subset of at most ``max_scans`` scans (sorted by id)."""
    ordered = sorted(scans, key=lambda s: s.scan_id)
    if len(ordered) <= max_scans:
        return ordered
    idx = np.unique(np.linspace(0, len(ordered) - 1, max_scans).round().astype(int))
    return [ordered[int(i)] for i in idx]


def has_heads(model: nn.Module | None) -> bool:
    """Whether ``model`` is a multi-task network (has an ``encoder`` and returns a dict)."""
    return model is not None and hasattr(model, "encoder")


def model_pass(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Run a ``MultiTaskNet`` once; return its outputs and the pooled encoder features.

    The encoder's output (list of levels) is captured with a forward hook, so features and
    predictions come from the same pass.

    Args:
        model: ``MultiTaskNet`` in eval mode.
        x: ``(1, C, I, J, K)`` prepared volume.

    Returns:
        ``(outputs, features (F,))``.
    """
    import torch

    from medmtl.shift.features import pool_levels

    encoder = cast("nn.Module", model.encoder)
    captured: list[Any] = []
    handle = encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            outputs = model(x)
            feats = captured[0] if captured else encoder(x)
    finally:
        handle.remove()
    return outputs, pool_levels(feats)[0]


def cohort_features_and_predictions(
    model: nn.Module | None, extractor: FeatureExtractor, scans: Sequence[Scan]
) -> tuple[np.ndarray, list[dict[str, float]] | None]:
    """Pooled features ``(N, F)`` of scans, and per-scan prediction summaries when ``model``
    is a multi-task network whose encoder is the extractor's (one pass per scan)."""
    from medmtl.shift.bn_shift import prediction_summary

    if not has_heads(model) or getattr(model, "encoder", None) is not extractor.encoder:
        return extractor.pooled_many(scans), None
    assert model is not None  # noqa: S101 (narrowing for mypy)
    was_training = model.training
    model.eval()
    feats: list[np.ndarray] = []
    preds: list[dict[str, float]] = []
    try:
        for scan in scans:
            x = extractor.prepare(scan)
            out, vec = model_pass(model, x)
            extractor.store(scan, vec)
            feats.append(vec)
            preds.append(prediction_summary(out))
    finally:
        model.train(was_training)
    return np.stack(feats), preds


def compute_reference_stats(
    *,
    model: nn.Module | None,
    scans: Sequence[Scan],
    input_spec: InputSpec,
    max_scans: int = 32,
) -> ReferenceStats:
    """Reference statistics of a (training) cohort for shift diagnostics (JSON-safe values).

    Args:
        model: the trained ``MultiTaskNet`` (its encoder extracts the features and its heads
            give prediction summaries), a bare encoder, or ``None`` for the default
            ImageNet-pretrained extractor (:func:`medmtl.shift.features.default_extractor`).
        scans: the cohort (e.g. the training scans), raw HU / intensities.
        input_spec: the preprocessing spec, as used in training.
        max_scans: at most this many scans are summarised (an evenly spread subset by id).

    Returns:
        ``{"format", "modality", "n_scans", "scan_ids", "fingerprints" (per scan),
        "cohort" (summary), "percentiles" {"levels", "per_scan"}, "histogram",
        "quantiles" (histogram-matching table), "features" {"extractor", "dim", "matrix"},
        "predictions" (per-scan summaries or None)}``.

    Raises:
        ShiftError: no scans, or scans of several modalities.
    """
    from medmtl.engine.card import REFERENCE_FORMAT, ReferenceStats
    from medmtl.shift.features import default_extractor, model_extractor
    from medmtl.shift.fingerprint import (
        PERCENTILES,
        _pkey,
        body_quantiles,
        cohort_summary,
        image_array,
        intensity_histogram,
        scan_fingerprint,
    )

    if not scans:
        raise ShiftError("compute_reference_stats: 'scans' is empty; pass at least one training scan.")
    modalities = sorted({s.modality for s in scans})
    if len(modalities) != 1:
        raise ShiftError(
            f"compute_reference_stats: scans mix modalities {modalities}; reference statistics need one modality."
        )
    spec = input_spec
    chosen = select_scans(scans, max_scans)
    fps = [scan_fingerprint(s) for s in chosen]
    arrays = [image_array(s) for s in chosen]
    if model is None:
        extractor = default_extractor(spec)
    else:
        device = str(next(model.parameters()).device)
        extractor = model_extractor(model, spec, device=device)
    feats, preds = cohort_features_and_predictions(model, extractor, chosen)
    ref = ReferenceStats(
        format=REFERENCE_FORMAT,
        modality=modalities[0],
        n_scans=len(chosen),
        scan_ids=tuple(s.scan_id for s in chosen),
        fingerprints=tuple(fps),
        cohort=cohort_summary(fps),
        percentiles={
            "levels": list(PERCENTILES),
            "per_scan": [[_round(fp[_pkey(p)]) for p in PERCENTILES] for fp in fps],
        },
        histogram=intensity_histogram(arrays, modalities[0]),
        quantiles=body_quantiles(arrays, modalities[0]),
        features={
            "extractor": extractor.identity,
            "dim": int(feats.shape[1]),
            "matrix": [[_round(v) for v in row] for row in feats.astype(np.float32)],
        },
        predictions=None if preds is None else tuple(preds),
    )
    logger.info("reference statistics: %d scans, %d features", len(chosen), feats.shape[1])
    return ref


def require_reference(card: ModelCard, where: str) -> ReferenceStats:
    """The card's reference statistics, or a :class:`ShiftError` saying how to add them.

    Args:
        card: a model card.
        where: the checkpoint folder, for the message.
    """
    if card.reference_stats is None:
        raise ShiftError(
            f"checkpoint '{where}' has no reference statistics (model_card.json 'reference_stats' is empty); "
            "pass the training scan folder as --source instead, or add them with "
            "medmtl.api.add_reference_stats(checkpoint=..., scan_dir=<the training scans>)."
        )
    return card.reference_stats


def reference_extractor(ref: ReferenceStats, model: nn.Module, input_spec: InputSpec) -> FeatureExtractor:
    """The feature extractor that computed ``ref``'s features: the stored ImageNet encoder, or
    ``model``'s own encoder (on its current device) with the extractor's preprocessing."""
    from medmtl.shift.features import default_extractor, model_extractor
    from medmtl.transforms.presets import InputSpec

    ident = ref.extractor
    if ident.get("kind") == "pretrained":
        return default_extractor(InputSpec.from_dict(ident["input_spec"]), encoder_name=ident["encoder"],
                                 adapter=ident["adapter"], max_shape=ident["max_shape"],
                                 device=str(next(model.parameters()).device))
    spec = InputSpec.from_dict(ident["input_spec"]) if "input_spec" in ident else input_spec
    return model_extractor(model, spec, max_shape=ident.get("max_shape", (128, 128, 128)),
                           device=str(next(model.parameters()).device))
