"""Detection, size and malignancy metrics with the LUNA16 rules.

Detection is scored as in the LUNA16 challenge (Setio et al., "Validation, comparison, and
combination of algorithms for automatic detection of pulmonary nodules in computed tomography
images: the LUNA16 challenge", Medical Image Analysis 42, 2017) and its evaluation script
``noduleCADEvaluationLUNA16.py``:

* a detection **hits** a lesion when its centre lies within the lesion's radius
  (Euclidean distance in world mm ``<= diameter_mm / 2``);
* a lesion hit by several detections keeps the highest score; the other detections that hit
  it are ignored (neither true nor false positives); a detection hitting several lesions
  counts for each of them;
* a detection that hits no lesion is a false positive;
* the FROC curve is sensitivity against the average number of false positives per scan, and
  the **CPM** (competition performance metric, Niemeijer et al., IEEE TMI 30(4), 2011) is the
  mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan.

Scans without lesions count in the number of scans: it is the union of the annotated and
predicted scan ids, or an explicit ``scan_ids`` list (pass it whenever scans without lesions
and without detections exist).

Size and malignancy use each lesion's highest-scoring hit. Calibration follows Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017 (expected calibration error with 10
equal-width bins, computed by MONAI's ``CalibrationErrorMetric``; temperature scaling). Bootstrap intervals and per-site breakdowns live in
:mod:`medmtl.metrics_bootstrap`.

Note:
    MONAI's ``compute_froc_score`` defaults to CAMELYON16's six FP rates and a mask-hit rule;
    it is deliberately not used here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medmtl.io.types import Detection, Lesion

#: The seven FROC operating points of LUNA16 (average false positives per scan).
LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

# Distances are compared with a tiny tolerance so a centre exactly on the sphere is a hit.
_HIT_EPS_MM = 1e-6


@dataclass
class ScanMatch:
    """The matching of one scan's detections against its lesions.

    Attributes:
        scan_id: the scan.
        lesion_scores: ``(n_lesions,)`` highest score of a detection hitting each lesion,
            ``NaN`` for missed lesions.
        fp_scores: ``(n_fp,)`` scores of the detections hitting no lesion.
        n_ignored: detections that only re-hit already-hit lesions (neither TP nor FP).
        true_diameter_mm: ``(n_lesions,)`` annotated diameters.
        pred_diameter_mm: ``(n_lesions,)`` diameter of the best hit, ``NaN`` if missed.
        malignancy_label: ``(n_lesions,)`` annotated malignancy (``NaN`` if unlabelled).
        malignancy_prob: ``(n_lesions,)`` malignancy probability of the best hit (``NaN`` if missed).
    """

    scan_id: str
    lesion_scores: NDArray[np.float64]
    fp_scores: NDArray[np.float64]
    n_ignored: int
    true_diameter_mm: NDArray[np.float64]
    pred_diameter_mm: NDArray[np.float64]
    malignancy_label: NDArray[np.float64]
    malignancy_prob: NDArray[np.float64]


@dataclass
class FrocResult:
    """A FROC curve and its CPM.

    Attributes:
        fps: ``(P,)`` average false positives per scan at each threshold (non-decreasing,
            starting at 0).
        sensitivity: ``(P,)`` fraction of lesions hit at each threshold.
        thresholds: ``(P,)`` score thresholds (``inf`` for the first point).
        fp_rates: the operating points.
        sensitivity_at: sensitivity interpolated at each of ``fp_rates``.
        cpm: mean of ``sensitivity_at`` (``NaN`` when there are no lesions).
        n_scans: scans counted in the FP rate.
        n_lesions: lesions in the denominator of the sensitivity.
        n_detected: lesions hit by any detection.
        n_false_positives: detections that hit no lesion.
    """

    fps: NDArray[np.float64]
    sensitivity: NDArray[np.float64]
    thresholds: NDArray[np.float64]
    fp_rates: tuple[float, ...]
    sensitivity_at: list[float]
    cpm: float
    n_scans: int
    n_lesions: int
    n_detected: int
    n_false_positives: int
    extra: dict[str, float] = field(default_factory=dict)


def _group(items: Iterable[Detection | Lesion]) -> dict[str, list]:
    out: dict[str, list] = {}
    for item in items:
        out.setdefault(item.seriesuid, []).append(item)
    return out


def match_scan(scan_id: str, detections: Sequence[Detection], lesions: Sequence[Lesion]) -> ScanMatch:
    """Match one scan's detections to its lesions with the LUNA16 hit rule.

    Args:
        scan_id: the scan id (only recorded).
        detections: that scan's detections (LPS mm).
        lesions: that scan's lesions (LPS mm, diameter in mm).

    Returns:
        The :class:`ScanMatch`.
    """
    n_l, n_d = len(lesions), len(detections)
    true_d = np.array([les.diameter_mm for les in lesions], dtype=np.float64)
    labels = np.array(
        [np.nan if les.malignancy is None else float(les.malignancy) for les in lesions], dtype=np.float64
    )
    scores = np.array([d.probability for d in detections], dtype=np.float64)
    lesion_scores = np.full(n_l, np.nan)
    pred_d = np.full(n_l, np.nan)
    pred_m = np.full(n_l, np.nan)
    if n_d == 0:
        return ScanMatch(scan_id, lesion_scores, np.zeros(0), 0, true_d, pred_d, labels, pred_m)
    if n_l == 0:
        return ScanMatch(scan_id, lesion_scores, scores, 0, true_d, pred_d, labels, pred_m)
    det_xyz = np.array([d.center_lps for d in detections], dtype=np.float64)
    les_xyz = np.array([les.center_lps for les in lesions], dtype=np.float64)
    dist = np.linalg.norm(det_xyz[:, None, :] - les_xyz[None, :, :], axis=-1)  # (D, L) mm
    hit = dist <= true_d[None, :] / 2.0 + _HIT_EPS_MM
    for j in range(n_l):
        hitters = np.flatnonzero(hit[:, j])
        if hitters.size:
            best = hitters[np.argmax(scores[hitters])]
            lesion_scores[j] = scores[best]
            pred_d[j] = detections[best].diameter_mm
            pred_m[j] = detections[best].malignancy_prob
    any_hit = hit.any(axis=1)
    # A hitting detection that is not the best hit of any lesion is a duplicate: ignored.
    best_of_some = np.zeros(n_d, dtype=bool)
    for j in range(n_l):
        hitters = np.flatnonzero(hit[:, j])
        if hitters.size:
            best_of_some[hitters[np.argmax(scores[hitters])]] = True
    n_ignored = int(np.sum(any_hit & ~best_of_some))
    return ScanMatch(scan_id, lesion_scores, scores[~any_hit], n_ignored, true_d, pred_d, labels, pred_m)


def match_all(
    detections: Iterable[Detection], lesions: Iterable[Lesion], *, scan_ids: Iterable[str] | None = None
) -> list[ScanMatch]:
    """Match detections to lesions for every scan.

    Args:
        detections: all detections (any scans).
        lesions: all lesions (any scans).
        scan_ids: the scans to count; default: union of the scan ids of both inputs. When
            given, detections and lesions of other scans are dropped.

    Returns:
        One :class:`ScanMatch` per scan, sorted by scan id.
    """
    det_by = _group(detections)
    les_by = _group(lesions)
    ids = sorted(set(scan_ids) if scan_ids is not None else set(det_by) | set(les_by))
    return [match_scan(s, det_by.get(s, []), les_by.get(s, [])) for s in ids]


def interpolate_sensitivity(
    fps: ArrayLike, sensitivity: ArrayLike, fp_rates: Sequence[float] = LUNA16_FP_RATES
) -> list[float]:
    """Sensitivity of a FROC curve at given FP rates (linear between curve points).

    The curve is a staircase from ``(0, 0)``; at a rate with several points (a vertical step)
    the highest sensitivity is taken; beyond the last point the last sensitivity holds (as
    ``numpy.interp`` does in the LUNA16 script).

    Args:
        fps: ``(P,)`` non-decreasing FP rates of the curve points.
        sensitivity: ``(P,)`` non-decreasing sensitivities.
        fp_rates: the query rates.

    Returns:
        One sensitivity per query rate.
    """
    x = np.asarray(fps, dtype=np.float64)
    y = np.asarray(sensitivity, dtype=np.float64)
    out: list[float] = []
    for f in fp_rates:
        le = np.flatnonzero(x <= f + 1e-12)
        if le.size == 0:
            out.append(0.0)
            continue
        i = int(le[-1])
        if i == len(x) - 1:
            out.append(float(y[i]))
            continue
        x0, y0, x1, y1 = x[i], y[i], x[i + 1], y[i + 1]
        t = (f - x0) / (x1 - x0) if x1 > x0 else 1.0
        out.append(float(y0 + t * (y1 - y0)))
    return out


def froc_from_matches(
    matches: Sequence[ScanMatch], *, fp_rates: Sequence[float] = LUNA16_FP_RATES
) -> FrocResult:
    """Build the FROC curve and the CPM from per-scan matches (scans may repeat: bootstrap).

    Args:
        matches: per-scan matches; every entry counts as one scan.
        fp_rates: FROC operating points (FP per scan).

    Returns:
        The :class:`FrocResult`.
    """
    n_scans = len(matches)
    les = np.concatenate([m.lesion_scores for m in matches]) if matches else np.zeros(0)
    fps_scores = np.concatenate([m.fp_scores for m in matches]) if matches else np.zeros(0)
    n_lesions = int(les.size)
    detected = les[np.isfinite(les)]
    thresholds = np.unique(np.concatenate([detected, fps_scores]))[::-1]
    tp_sorted = np.sort(detected)
    fp_sorted = np.sort(fps_scores)
    # count of scores >= t for each threshold t (descending thresholds → non-decreasing counts)
    tp_counts = tp_sorted.size - np.searchsorted(tp_sorted, thresholds, side="left")
    fp_counts = fp_sorted.size - np.searchsorted(fp_sorted, thresholds, side="left")
    denom_scans = max(n_scans, 1)
    fps = np.concatenate([[0.0], fp_counts / denom_scans])
    sens = np.concatenate([[0.0], tp_counts / n_lesions if n_lesions else np.zeros(thresholds.size)])
    thr = np.concatenate([[np.inf], thresholds])
    if n_lesions == 0:
        sens_at = [math.nan] * len(fp_rates)
        cpm_value = math.nan
    else:
        sens_at = interpolate_sensitivity(fps, sens, fp_rates)
        cpm_value = float(np.mean(sens_at))
    return FrocResult(
        fps=fps,
        sensitivity=sens,
        thresholds=thr,
        fp_rates=tuple(float(f) for f in fp_rates),
        sensitivity_at=sens_at,
        cpm=cpm_value,
        n_scans=n_scans,
        n_lesions=n_lesions,
        n_detected=int(detected.size),
        n_false_positives=int(fps_scores.size),
    )


def froc(
    detections: Iterable[Detection],
    lesions: Iterable[Lesion],
    *,
    scan_ids: Iterable[str] | None = None,
    fp_rates: Sequence[float] = LUNA16_FP_RATES,
) -> FrocResult:
    """FROC curve with the LUNA16 hit rule (see the module docstring).

    Args:
        detections: predicted lesions (LPS mm, ``probability`` is the score).
        lesions: annotated lesions (LPS mm, ``diameter_mm``).
        scan_ids: scans to count (default: union of both inputs' scan ids).
        fp_rates: operating points (FP per scan).

    Returns:
        The :class:`FrocResult` (``.cpm`` is the competition performance metric).

    Example:
        >>> froc([], [], scan_ids=["a"]).n_scans
        1
    """
    return froc_from_matches(match_all(detections, lesions, scan_ids=scan_ids), fp_rates=fp_rates)


def cpm(
    detections: Iterable[Detection], lesions: Iterable[Lesion], *, scan_ids: Iterable[str] | None = None
) -> float:
    """LUNA16 competition performance metric: mean sensitivity at 1/8 … 8 FP per scan.

    Args:
        detections: predicted lesions.
        lesions: annotated lesions.
        scan_ids: scans to count (default: union of both inputs' scan ids).

    Returns:
        CPM in [0, 1]; ``NaN`` when there are no lesions.
    """
    return froc(detections, lesions, scan_ids=scan_ids).cpm


def diameter_mae(pred_mm: ArrayLike, true_mm: ArrayLike) -> float | None:
    """Mean absolute diameter error in mm over pairs where both values are finite.

    Args:
        pred_mm: ``(N,)`` predicted diameters (NaN for missed lesions: skipped).
        true_mm: ``(N,)`` annotated diameters.

    Returns:
        MAE in mm, or ``None`` when no pair is usable.
    """
    p = np.asarray(pred_mm, dtype=np.float64).reshape(-1)
    t = np.asarray(true_mm, dtype=np.float64).reshape(-1)
    ok = np.isfinite(p) & np.isfinite(t)
    return float(np.mean(np.abs(p[ok] - t[ok]))) if ok.any() else None


def bland_altman(pred_mm: ArrayLike, true_mm: ArrayLike) -> dict[str, float | None]:
    """Bland-Altman agreement statistics of predicted vs annotated diameter (mm).

    Returns:
        ``bias`` (mean of pred − true), ``sd``, ``loa_low`` / ``loa_high`` (bias ∓ 1.96 SD) and
        ``n``; values are ``None`` when there is no usable pair.
    """
    p = np.asarray(pred_mm, dtype=np.float64).reshape(-1)
    t = np.asarray(true_mm, dtype=np.float64).reshape(-1)
    ok = np.isfinite(p) & np.isfinite(t)
    if not ok.any():
        return {"bias": None, "sd": None, "loa_low": None, "loa_high": None, "n": 0}
    diff = p[ok] - t[ok]
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "n": int(diff.size)}


def _binary_pairs(scores: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    ok = np.isfinite(s) & np.isfinite(y)
    return s[ok], (y[ok] >= 0.5).astype(np.int64)


def auc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``), NaN-safe.

    Args:
        scores: ``(N,)`` predicted probabilities or logits; NaN entries are skipped.
        labels: ``(N,)`` 0/1 labels (probabilities are thresholded at 0.5); NaN skipped.

    Returns:
        AUC in [0, 1], or ``None`` when either class is missing.
    """
    from sklearn.metrics import roc_auc_score

    s, y = _binary_pairs(scores, labels)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, s))


def _monai_pairs(probs: ArrayLike, labels: ArrayLike) -> tuple[Any, Any]:
    """NaN-free ``(1, 1, N)`` probability and 0/1 label tensors, the layout MONAI's calibration takes."""
    import torch

    p, y = _binary_pairs(probs, labels)
    return torch.from_numpy(p).reshape(1, 1, -1), torch.from_numpy(y.astype(np.float64)).reshape(1, 1, -1)


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> dict[str, list[float]]:
    """Per-bin confidence, accuracy and count for a reliability diagram (equal-width bins).

    A wrapper over MONAI's ``monai.metrics.calibration_binning`` (bins ``(left, right]``, 0 in
    the first bin, values above 1 in the last), the same binning as
    :func:`expected_calibration_error`.

    Args:
        probs: ``(N,)`` predicted probabilities in [0, 1]; NaN entries are skipped.
        labels: ``(N,)`` 0/1 labels (probabilities are thresholded at 0.5); NaN skipped.
        n_bins: equal-width confidence bins.

    Returns:
        ``edges`` (``n_bins + 1``), ``confidence``, ``accuracy`` (NaN for empty bins), ``count``.
    """
    from monai.metrics import calibration_binning

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    p, y = _monai_pairs(probs, labels)
    conf, acc, cnt = (t.reshape(-1).double().tolist() for t in calibration_binning(p, y, num_bins=n_bins))
    return {"edges": edges.tolist(), "confidence": conf, "accuracy": acc, "count": cnt}


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float | None:
    """Expected calibration error (Guo et al. 2017): ``Σ_b n_b/N · |acc_b − conf_b|``.

    A wrapper over MONAI's ``CalibrationErrorMetric`` (``calibration_reduction="expected"``).
    MONAI bins in float32: it equals the float64 computation to within 6e-8 on random inputs,
    exactly 0, 1, the bin edges k/n_bins and empty bins included; only a probability within
    float32 rounding (about 4e-8) of an inner bin edge may fall in the neighbouring bin.

    Args:
        probs: ``(N,)`` predicted probabilities in [0, 1]; NaN entries are skipped.
        labels: ``(N,)`` 0/1 labels (probabilities are thresholded at 0.5); NaN skipped.
        n_bins: equal-width confidence bins.

    Returns:
        ECE in [0, 1], or ``None`` without usable pairs.
    """
    from monai.metrics import CalibrationErrorMetric

    p, y = _monai_pairs(probs, labels)
    if p.numel() == 0:
        return None
    metric = CalibrationErrorMetric(num_bins=n_bins, calibration_reduction="expected")
    metric(y_pred=p, y=y)
    return float(metric.aggregate())  # type: ignore[arg-type]


def fit_temperature(logits: ArrayLike, labels: ArrayLike, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fit the temperature ``T`` of ``sigmoid(logit / T)`` by minimising the NLL (Guo et al. 2017).

    Args:
        logits: ``(N,)`` uncalibrated malignancy logits.
        labels: ``(N,)`` 0/1 labels (NaN entries skipped).
        bounds: search interval for ``T``.

    Returns:
        The fitted temperature (> 0); ``1.0`` when both classes are not present (nothing to fit).
    """
    from scipy.optimize import minimize_scalar

    z, y = _binary_pairs(logits, labels)
    if y.size == 0 or y.min() == y.max():
        return 1.0

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + exp(-s)) for y=1, log(1 + exp(s)) for y=0, computed stably
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded")
    return float(math.exp(res.x))


def lesion_level_arrays(matches: Sequence[ScanMatch]) -> dict[str, NDArray[np.float64]]:
    """Concatenate per-lesion arrays of several scans (best hit of each lesion).

    Returns:
        ``true_diameter_mm``, ``pred_diameter_mm``, ``malignancy_label``, ``malignancy_prob``,
        ``score`` (NaN where missed), each ``(n_lesions,)``.
    """
    def cat(name: str) -> NDArray[np.float64]:
        arrs = [getattr(m, name) for m in matches]
        return np.concatenate(arrs) if arrs else np.zeros(0)

    return {
        "true_diameter_mm": cat("true_diameter_mm"),
        "pred_diameter_mm": cat("pred_diameter_mm"),
        "malignancy_label": cat("malignancy_label"),
        "malignancy_prob": cat("malignancy_prob"),
        "score": cat("lesion_scores"),
    }


def summarize_matches(matches: Sequence[ScanMatch]) -> dict[str, float | None]:
    """Headline metrics of a set of matched scans.

    Returns:
        ``cpm``, ``sens@<rate>`` for each LUNA16 rate, ``diameter_mae_mm``,
        ``malignancy_auc``, ``malignancy_ece`` (``None`` where undefined).
    """
    fr = froc_from_matches(matches)
    arr = lesion_level_arrays(matches)
    out: dict[str, float | None] = {"cpm": None if math.isnan(fr.cpm) else fr.cpm}
    for rate, s in zip(fr.fp_rates, fr.sensitivity_at):
        out[f"sens@{rate:g}"] = None if math.isnan(s) else s
    out["diameter_mae_mm"] = diameter_mae(arr["pred_diameter_mm"], arr["true_diameter_mm"])
    out["malignancy_auc"] = auc(arr["malignancy_prob"], arr["malignancy_label"])
    out["malignancy_ece"] = expected_calibration_error(arr["malignancy_prob"], arr["malignancy_label"])
    return out


def detection_metrics(
    detections: Iterable[Detection], lesions: Iterable[Lesion], *, scan_ids: Iterable[str] | None = None
) -> dict[str, float | None]:
    """All headline metrics in one call (for validation loops): see :func:`summarize_matches`.

    Args:
        detections: predicted lesions.
        lesions: annotated lesions.
        scan_ids: scans to count (default: union of both inputs' scan ids).
    """
    return summarize_matches(match_all(detections, lesions, scan_ids=scan_ids))
