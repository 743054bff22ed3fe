"""Per-epoch validation on whole volumes, and malignancy temperature calibration.

Each validation volume (preprocessed, :class:`~medmtl.data.dataset.VolumeItem`) goes through
gaussian-blended sliding windows (:func:`medmtl.engine.inference.sliding_window_maps`, the
training patch as window), the dense task losses are computed against its targets, and the
maps are decoded into lesions (:func:`medmtl.engine.decode.decode_lesions`) and scored with
the LUNA16 rules (:func:`medmtl.metrics.detection_metrics`): CPM (mean sensitivity at 1/8 …
8 false positives per scan), diameter MAE (mm) and malignancy AUC.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) is
fitted on the malignancy logits read at the annotated centres of labelled validation lesions,
so it does not depend on whether the detector found them. The size calibration is fitted the
same way: a least-squares line ``log d_true = a + b · log d_net`` over the validation lesions,
with ``log d_net`` read as the decoder reads it (median over the 3×3×3 neighbourhood).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medmtl.data.dataset import VolumeItem
from medmtl.engine.decode import DecodeSettings

logger = logging.getLogger(__name__)

#: Fewer labelled validation lesions than this (or one class only) keep ``T = 1``.
MIN_CALIBRATION_LESIONS = 8


@dataclass
class ValidationResult:
    """Metrics of one validation pass.

    Attributes:
        metrics: ``val_loss``, ``val_det``, ``val_size``, ``val_malig`` (dense losses, mean over
            volumes), ``cpm``, ``diameter_mae_mm``, ``malignancy_auc`` (``None`` if undefined),
            ``n_detections``.
        logits: malignancy logits at labelled lesion centres ``(N,)``.
        labels: their 0/1 labels ``(N,)``.
        log_diameters: the network's log-diameter (log mm) at every lesion centre ``(M,)``.
        true_log_diameters: the annotated ``log(diameter_mm)`` of the same lesions ``(M,)``.
    """

    metrics: dict[str, float | None]
    logits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_diameters: np.ndarray = field(default_factory=lambda: np.zeros(0))
    true_log_diameters: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _centre_voxels(
    vol_map: torch.Tensor, affine_ras: Any, lesions: Sequence[Any]
) -> tuple[torch.Tensor, list[tuple[Any, np.ndarray]]]:
    """The map as ``(I, J, K)`` and each lesion's nearest voxel ``(i, j, k)`` (clipped to the grid)."""
    from medmtl.io import coords

    vol = vol_map.reshape(vol_map.shape[-3:]).float()
    aff = np.asarray(affine_ras.detach().cpu() if hasattr(affine_ras, "detach") else affine_ras, dtype=np.float64)
    hi = np.asarray(vol.shape) - 1
    return vol, [(les, np.clip(np.rint(coords.lps_to_voxel(les.center_lps, aff)[0]).astype(int), 0, hi))
                 for les in lesions]


def logits_at_lesions(malignancy: torch.Tensor, affine_ras: Any, lesions: Sequence[Any]) -> tuple[list[float], list[float]]:
    """Malignancy logits at the voxels nearest to labelled lesion centres.

    Args:
        malignancy: logit map ``(1, 1, I, J, K)`` or ``(I, J, K)``.
        affine_ras: 4×4 voxel → RAS affine of the map's grid.
        lesions: lesions (LPS mm); unlabelled ones are skipped.

    Returns:
        ``(logits, labels)`` lists of equal length.
    """
    vol, at = _centre_voxels(malignancy, affine_ras, [les for les in lesions if les.malignancy is not None])
    logits = [float(vol[ijk[0], ijk[1], ijk[2]]) for _, ijk in at]
    labels = [1.0 if float(les.malignancy) >= 0.5 else 0.0 for les, _ in at]
    return logits, labels


def log_diameters_at_lesions(
    log_diameter: torch.Tensor, affine_ras: Any, lesions: Sequence[Any]
) -> tuple[list[float], list[float]]:
    """The network's log-diameter at each lesion centre, read as the decoder reads it.

    Args:
        log_diameter: log-diameter map (log mm) ``(1, 1, I, J, K)`` or ``(I, J, K)``.
        affine_ras: 4×4 voxel → RAS affine of the map's grid.
        lesions: lesions (LPS mm) with their annotated ``diameter_mm``.

    Returns:
        ``(predicted, annotated)`` log-diameters (log mm), lists of equal length.
    """
    from medmtl.engine.decode import neighbourhood_median

    vol, at = _centre_voxels(log_diameter, affine_ras, [les for les in lesions if float(les.diameter_mm or 0) > 0])
    return [neighbourhood_median(vol, ijk) for _, ijk in at], [math.log(float(les.diameter_mm)) for les, _ in at]


def _volume_maps(
    model: torch.nn.Module,
    vol: VolumeItem,
    *,
    patch_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    amp: str,
) -> dict[str, torch.Tensor]:
    """Sliding-window maps ``(1, 1, I, J, K)`` of one validation volume."""
    from medmtl.engine.inference import sliding_window_maps

    image = vol.image.as_tensor() if hasattr(vol.image, "as_tensor") else vol.image
    return sliding_window_maps(
        model,
        image[None],
        roi_size=patch_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        device=device,
        amp=amp,
    )


def _add_losses(losses: dict[str, list[float]], maps: dict[str, torch.Tensor], vol: VolumeItem) -> None:
    """Append the dense task losses of ``maps`` against ``vol``'s targets to ``losses``."""
    from medmtl.mtl.losses import task_losses

    targets = {k: (v.as_tensor() if hasattr(v, "as_tensor") else v)[None].float() for k, v in vol.targets.items()}
    with torch.no_grad():
        tl = task_losses(maps, targets)
    for k in losses:
        if k in tl:
            losses[k].append(float(tl[k]))


def _summary_metrics(
    losses: dict[str, list[float]], detections: list[Any], lesions: list[Any], scan_ids: list[str]
) -> dict[str, float | None]:
    """The :attr:`ValidationResult.metrics` of a pass: mean losses and the LUNA16 scores."""
    from medmtl.metrics import detection_metrics

    scores = detection_metrics(detections, lesions, scan_ids=scan_ids)
    metrics: dict[str, float | None] = {f"val_{k}": (float(np.mean(v)) if v else None) for k, v in losses.items()}
    parts = [metrics[f"val_{k}"] for k in losses]
    metrics["val_loss"] = float(sum(p for p in parts if p is not None))
    metrics["cpm"] = _finite_or_none(scores.get("cpm"))
    metrics["diameter_mae_mm"] = _finite_or_none(scores.get("diameter_mae_mm"))
    metrics["malignancy_auc"] = _finite_or_none(scores.get("malignancy_auc"))
    metrics["n_detections"] = float(len(detections))
    return metrics


def validate(
    model: torch.nn.Module,
    volumes: Sequence[VolumeItem],
    *,
    patch_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    amp: str,
    decode: DecodeSettings,
    progress: bool = False,
) -> ValidationResult:
    """Run the model over whole validation volumes and score it.

    Args:
        model: the multi-task net (put in ``eval()`` here, restored afterwards).
        volumes: preprocessed validation volumes with targets and lesions.
        patch_size: sliding-window size (voxels).
        overlap: window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        device: forward device.
        amp: ``bf16``, ``fp16`` or ``off``.
        decode: how maps become lesions (threshold, NMS radius in mm, cap, temperature).
        progress: a progress bar over the volumes (:func:`medmtl.progress.bar`).

    Returns:
        A :class:`ValidationResult`.
    """
    from medmtl.engine.decode import decode_lesions
    from medmtl.progress import bar

    was_training = model.training
    model.eval()
    detections = []
    lesions = []
    losses: dict[str, list[float]] = {"det": [], "size": [], "malig": []}
    all_logits: list[float] = []
    all_labels: list[float] = []
    pred_logd: list[float] = []
    true_logd: list[float] = []
    try:
        for vol in bar(volumes, desc="validate", unit="scan", leave=False, enabled=progress):
            maps = _volume_maps(model, vol, patch_size=patch_size, overlap=overlap, sw_batch_size=sw_batch_size,
                                device=device, amp=amp)
            _add_losses(losses, maps, vol)
            detections.extend(
                decode_lesions(maps, vol.image.affine, seriesuid=vol.scan_id, settings=decode)
            )
            lesions.extend(vol.lesions)
            lg, lb = logits_at_lesions(maps["malignancy"], vol.image.affine, vol.lesions)
            all_logits += lg
            all_labels += lb
            pd, td = log_diameters_at_lesions(maps["log_diameter"], vol.image.affine, vol.lesions)
            pred_logd += pd
            true_logd += td
    finally:
        model.train(was_training)
    metrics = _summary_metrics(losses, detections, lesions, [v.scan_id for v in volumes])
    return ValidationResult(metrics=metrics, logits=np.asarray(all_logits), labels=np.asarray(all_labels),
                            log_diameters=np.asarray(pred_logd), true_log_diameters=np.asarray(true_logd))


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def fit_malignancy_temperature(result: ValidationResult) -> float:
    """Temperature ``T`` of ``sigmoid(logit / T)`` fitted on the validation lesions.

    Returns ``1.0`` (no change) when fewer than :data:`MIN_CALIBRATION_LESIONS` labelled
    lesions or a single class are available: a temperature fitted on a handful of lesions
    would be noise.
    """
    from medmtl.metrics import fit_temperature

    n = int(result.logits.size)
    if n < MIN_CALIBRATION_LESIONS or len(set(result.labels.tolist())) < 2:
        logger.warning(
            "malignancy temperature kept at 1.0: %d labelled validation lesions (need >= %d, both classes)",
            n, MIN_CALIBRATION_LESIONS,
        )
        return 1.0
    t = float(fit_temperature(result.logits, result.labels))
    logger.info("malignancy temperature %.3f from %d labelled validation lesions", t, result.logits.size)
    return t


def fit_size_calibration(result: ValidationResult) -> tuple[float, float]:
    """Size calibration ``(a, b)`` of ``log d = a + b · log d_net`` fitted on the validation lesions.

    Ordinary least squares of the annotated log-diameter on the network's, i.e. the
    conditional mean of the true size given the head's reading: it undoes the head's
    shrinkage towards the middle of the training sizes. Returns the identity ``(0, 1)`` when
    fewer than :data:`MIN_CALIBRATION_LESIONS` lesions are available, when the head's
    readings do not vary, or when the fitted slope falls outside
    :data:`medmtl.engine.decode.SIZE_SLOPE_RANGE` (a head that did not learn size is not
    rescued by a line).
    """
    from medmtl.engine.decode import SIZE_SLOPE_RANGE

    x, y = result.log_diameters.astype(np.float64), result.true_log_diameters.astype(np.float64)
    n = int(x.size)
    if n < MIN_CALIBRATION_LESIONS or float(np.std(x)) < 1e-3:
        logger.warning("size calibration kept at the identity: %d validation lesions (need >= %d with varied sizes)",
                       n, MIN_CALIBRATION_LESIONS)
        return 0.0, 1.0
    slope, offset = (float(v) for v in np.polyfit(x, y, 1))
    if not SIZE_SLOPE_RANGE[0] <= slope <= SIZE_SLOPE_RANGE[1]:
        logger.warning("size calibration kept at the identity: fitted slope %.3f outside %s", slope, SIZE_SLOPE_RANGE)
        return 0.0, 1.0
    logger.info("size calibration log d = %.3f + %.3f log d_net from %d validation lesions", offset, slope, n)
    return offset, slope


__all__ = ["MIN_CALIBRATION_LESIONS", "ValidationResult", "fit_malignancy_temperature", "fit_size_calibration",
           "log_diameters_at_lesions", "logits_at_lesions", "validate"]
