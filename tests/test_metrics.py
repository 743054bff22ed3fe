"""LUNA16 CPM / FROC, hit rule, size, AUC, calibration and bootstrap against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmtl import metrics
from medmtl.io.types import Detection, Lesion


def det(sid: str, x: float, p: float, d: float = 6.0, m: float = 0.5) -> Detection:
    return Detection(seriesuid=sid, center_lps=(x, 0.0, 0.0), probability=p, diameter_mm=d, malignancy_prob=m)


def les(sid: str, x: float, d: float, malig: float | None = None) -> Lesion:
    return Lesion(seriesuid=sid, center_lps=(x, 0.0, 0.0), diameter_mm=d, malignancy=malig)


LESIONS = [les("A", 0.0, 10.0, 1.0), les("A", 50.0, 6.0, 0.0)]
DETECTIONS = [
    det("A", 1.0, 0.9, d=8.0, m=0.8),  # hits lesion 1 (1 mm < 5 mm)
    det("A", 2.0, 0.8, d=100.0, m=0.0),  # second hit of lesion 1: ignored, not its best hit
    det("A", 100.0, 0.7),  # false positive
    det("A", 52.9, 0.5, d=6.0, m=0.3),  # hits lesion 2 (2.9 mm <= 3 mm)
    det("B", 0.0, 0.6),  # false positive in a scan without lesions
    det("A", 53.01, 0.4),  # 3.01 mm > radius 3 mm: false positive
]


def test_hit_rule_duplicates_and_false_positives() -> None:
    (ma, mb) = metrics.match_all(DETECTIONS, LESIONS)
    assert ma.scan_id == "A" and mb.scan_id == "B"
    np.testing.assert_allclose(ma.lesion_scores, [0.9, 0.5])
    np.testing.assert_allclose(sorted(ma.fp_scores), [0.4, 0.7])
    assert ma.n_ignored == 1
    np.testing.assert_allclose(mb.fp_scores, [0.6])


def test_froc_and_cpm_hand_computed() -> None:
    # curve points (fps/scan, sens): (0,0) (0,.5) (.5,.5) (1,.5) (1,1) (1.5,1) over 2 scans, 2 lesions
    fr = metrics.froc(DETECTIONS, LESIONS)
    assert fr.n_scans == 2 and fr.n_lesions == 2 and fr.n_false_positives == 3 and fr.n_detected == 2
    np.testing.assert_allclose(fr.fps, [0, 0, 0.5, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(fr.sensitivity, [0, 0.5, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(fr.sensitivity_at, [0.5, 0.5, 0.5, 1, 1, 1, 1])
    assert fr.cpm == pytest.approx(5.5 / 7)
    assert metrics.cpm(DETECTIONS, LESIONS) == pytest.approx(5.5 / 7)


def test_empty_scans_count_in_the_fp_rate() -> None:
    # two extra scans without lesions or detections: 3 FPs over 4 scans
    fr = metrics.froc(DETECTIONS, LESIONS, scan_ids=["A", "B", "C", "D"])
    assert fr.n_scans == 4
    np.testing.assert_allclose(fr.fps[-1], 0.75)
    # lesion 2 (score .5) is reached after the FPs .7 and .6 -> at 0.5 FP/scan
    np.testing.assert_allclose(fr.sensitivity_at, [0.5, 0.5, 1, 1, 1, 1, 1])


def test_missed_lesion_caps_sensitivity() -> None:
    lesions = [*LESIONS, les("C", 0.0, 8.0)]
    fr = metrics.froc(DETECTIONS, lesions)
    assert fr.n_lesions == 3 and fr.n_scans == 3
    assert max(fr.sensitivity_at) == pytest.approx(2 / 3)


def test_false_positives_only_and_no_detections() -> None:
    fr = metrics.froc([det("A", 0.0, 0.9)], [])
    assert math.isnan(fr.cpm) and fr.n_false_positives == 1
    fr2 = metrics.froc([], LESIONS)
    assert fr2.cpm == 0.0 and fr2.n_detected == 0


def test_linear_interpolation_between_points() -> None:
    # tie of a TP and an FP at the same score makes a diagonal step: 1 scan, 1 lesion
    fr = metrics.froc([det("A", 0.0, 0.5), det("A", 90.0, 0.5)], [les("A", 0.0, 4.0)])
    np.testing.assert_allclose(fr.fps, [0, 1.0])
    assert fr.sensitivity_at[0] == pytest.approx(0.125)
    assert fr.sensitivity_at[3] == pytest.approx(1.0)


def test_best_hit_size_and_malignancy() -> None:
    arr = metrics.lesion_level_arrays(metrics.match_all(DETECTIONS, LESIONS))
    np.testing.assert_allclose(arr["pred_diameter_mm"], [8.0, 6.0])  # the 100 mm duplicate is ignored
    assert metrics.diameter_mae(arr["pred_diameter_mm"], arr["true_diameter_mm"]) == pytest.approx(1.0)
    assert metrics.auc(arr["malignancy_prob"], arr["malignancy_label"]) == pytest.approx(1.0)
    summary = metrics.detection_metrics(DETECTIONS, LESIONS)
    assert summary["diameter_mae_mm"] == pytest.approx(1.0) and summary["cpm"] == pytest.approx(5.5 / 7)
    ba = metrics.bland_altman([8.0, 6.0], [10.0, 6.0])
    assert ba["bias"] == pytest.approx(-1.0) and ba["n"] == 2


def test_auc_is_none_with_one_class_and_nan_safe() -> None:
    assert metrics.auc([0.1, 0.9], [1, 1]) is None
    assert metrics.auc([0.1, np.nan, 0.9], [0, 1, 1]) == pytest.approx(1.0)
    assert metrics.diameter_mae([np.nan], [3.0]) is None


def test_expected_calibration_error_hand_computed() -> None:
    ece = metrics.expected_calibration_error([0.05, 0.05, 0.95, 0.95], [0, 0, 1, 1])
    assert ece == pytest.approx(0.05)
    ece2 = metrics.expected_calibration_error([0.7, 0.7, 0.7, 0.7], [1, 0, 0, 0])
    assert ece2 == pytest.approx(0.45)


def _ece_float64(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """The float64 reference: bins (left, right], 0 in the first, 1 in the last."""
    idx = np.clip(np.digitize(p, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], right=True), 0, n_bins - 1)
    return float(sum(abs(y[idx == b].mean() - p[idx == b].mean()) * (idx == b).sum()
                     for b in range(n_bins) if (idx == b).any()) / p.size)


@pytest.mark.parametrize("kind", ["uniform", "edges", "half_edges", "extremes"])
def test_expected_calibration_error_matches_the_float64_reference(kind: str) -> None:
    """MONAI's ECE (float32) equals the float64 one: exactly 0, 1, bin edges and empty bins included."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        if kind == "uniform":
            p = rng.random(n)
        elif kind == "extremes":  # mass near 0 and 1: most bins empty
            p = rng.beta(0.2, 0.2, n)
        else:  # exactly on the 10-bin edges (0, 0.1, …, 1) or on the half-bin points
            p = rng.choice(np.linspace(0, 1, 11 if kind == "edges" else 21), n)
        y = (rng.random(n) < p).astype(float)
        assert metrics.expected_calibration_error(p, y) == pytest.approx(_ece_float64(p, y, 10), abs=1e-6)
    bins = metrics.reliability_bins([0.0, 0.1, 0.3, 1.0], [0, 0, 1, 1])
    assert bins["count"] == [2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert math.isnan(bins["accuracy"][1]) and bins["confidence"][0] == pytest.approx(0.05)
    assert metrics.expected_calibration_error([np.nan], [1]) is None


def test_fit_temperature_recovers_the_scale() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 4000)
    labels = (rng.random(4000) < 1.0 / (1.0 + np.exp(-z))).astype(float)
    t = metrics.fit_temperature(3.0 * z, labels)  # over-confident logits: T ~ 3
    assert 2.6 < t < 3.4
    assert metrics.fit_temperature([1.0, 2.0], [1, 1]) == 1.0


def test_bootstrap_intervals_and_per_site() -> None:
    from medmtl.metrics_bootstrap import bootstrap_metrics, per_site_metrics

    matches = metrics.match_all(DETECTIONS, [*LESIONS, les("B", 30.0, 5.0)])
    ci = bootstrap_metrics(matches, n_bootstrap=200, seed=0)
    lo, hi = ci["cpm"]["ci95"]
    assert 0.0 <= lo <= ci["cpm"]["value"] <= hi <= 1.0
    again = bootstrap_metrics(matches, n_bootstrap=200, seed=0)
    assert again["cpm"]["ci95"] == ci["cpm"]["ci95"]  # deterministic per seed
    sites = per_site_metrics(matches, {"A": "site_a", "B": "site_b"})
    assert set(sites) == {"site_a", "site_b"}
    assert sites["site_b"]["n_scans"] == 1 and sites["site_b"]["cpm"] == 0.0
