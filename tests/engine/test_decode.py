"""decode_lesions: peaks, sub-voxel refinement, world-mm NMS, diameter, calibrated malignancy, LPS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmtl.engine.decode import DecodeSettings, decode_lesions, nms_world
from medmtl.errors import ConfigError
from medmtl.io import coords

# A non-trivial RAS affine: flipped first axis, anisotropic spacing, offset origin.
AFFINE = np.array([[-2.0, 0, 0, 100.0], [0, 1.5, 0, -50.0], [0, 0, 3.0, -200.0], [0, 0, 0, 1.0]])
SHAPE = (40, 40, 30)


def gaussian_logits(centres: list[tuple[float, float, float]], peaks: list[float], sigma: float = 1.5) -> torch.Tensor:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).astype(float)
    prob = np.full(SHAPE, 1e-4)
    for c, p in zip(centres, peaks):
        prob = np.maximum(prob, p * np.exp(-np.sum((grid - np.asarray(c)) ** 2, axis=-1) / (2 * sigma**2)))
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    return torch.from_numpy(np.log(prob / (1 - prob))).float()[None, None]


def maps_for(heat: torch.Tensor, diameter_mm: float = 7.0, malig_logit: float = 2.0) -> dict[str, torch.Tensor]:
    return {
        "heatmap": heat,
        "log_diameter": torch.full_like(heat, math.log(diameter_mm)),
        "malignancy": torch.full_like(heat, malig_logit),
    }


def test_peak_position_diameter_and_calibrated_malignancy() -> None:
    centre = (12.3, 20.0, 9.6)  # fractional: sub-voxel refinement must get close
    dets = decode_lesions(maps_for(gaussian_logits([centre], [0.9])), AFFINE, seriesuid="s1",
                          settings=DecodeSettings(threshold=0.5, nms_radius_mm=5.0, max_lesions=5, temperature=2.0))
    assert len(dets) == 1
    d = dets[0]
    expected = coords.voxel_to_lps(centre, AFFINE)[0]
    assert np.linalg.norm(np.asarray(d.center_lps) - expected) < 0.5  # mm
    assert d.diameter_mm == pytest.approx(7.0, rel=1e-5)
    assert d.malignancy_prob == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-5)  # sigmoid(2 / T=2)
    assert 0.85 < d.probability <= 0.9 + 1e-6
    assert d.seriesuid == "s1"


def test_nms_threshold_and_max_lesions() -> None:
    # two peaks 2 voxels apart along i (4 mm), one far away, one below the threshold
    heat = gaussian_logits([(10, 10, 10), (12, 10, 10), (30, 30, 20), (5, 30, 5)], [0.9, 0.8, 0.7, 0.2], sigma=0.7)
    dets = decode_lesions(maps_for(heat), AFFINE, seriesuid="s",
                          settings=DecodeSettings(threshold=0.5, nms_radius_mm=6.0, max_lesions=10))
    assert [round(d.probability, 1) for d in dets] == [0.9, 0.7]  # 0.8 suppressed (4 mm < 6 mm), 0.2 < threshold
    dets2 = decode_lesions(maps_for(heat), AFFINE, seriesuid="s",
                           settings=DecodeSettings(threshold=0.5, nms_radius_mm=3.0, max_lesions=10))
    assert len(dets2) == 3  # 4 mm > 3 mm: both kept
    dets3 = decode_lesions(maps_for(heat), AFFINE, seriesuid="s",
                           settings=DecodeSettings(threshold=0.5, nms_radius_mm=3.0, max_lesions=1))
    assert len(dets3) == 1 and dets3[0].probability == pytest.approx(dets2[0].probability)


def test_empty_maps_and_bad_settings() -> None:
    heat = torch.full((1, 1, *SHAPE), -10.0)
    assert decode_lesions(maps_for(heat), AFFINE, seriesuid="s", settings=DecodeSettings(threshold=0.3)) == []
    with pytest.raises(ConfigError, match=r"decode.temperature = 0.0 is out of range; allowed: \(0, 1000\]"):
        DecodeSettings(threshold=0.3, temperature=0.0)
    with pytest.raises(ConfigError, match=r"decode.threshold = 1.5 is out of range; allowed: \(0, 1\)"):
        DecodeSettings(threshold=1.5)
    with pytest.raises(ConfigError, match=r"decode.max_lesions = 0 is out of range"):
        DecodeSettings(threshold=0.3, max_lesions=0)


def test_nms_world_keeps_the_strongest() -> None:
    pts = np.array([[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0]])
    assert nms_world(pts, np.array([0.5, 0.9, 0.4]), 2.0) == [1, 2]


def test_size_calibration_is_applied_to_detections_and_maps() -> None:
    from medmtl.engine.predict_io import world_maps

    heat = gaussian_logits([(12.0, 20.0, 9.0)], [0.9])
    settings = DecodeSettings(threshold=0.5, size_log_offset=0.5, size_log_slope=1.3)
    (det,) = decode_lesions(maps_for(heat, diameter_mm=7.0), AFFINE, seriesuid="s", settings=settings)
    expected = math.exp(0.5 + 1.3 * math.log(7.0))
    assert det.diameter_mm == pytest.approx(expected, rel=1e-5)
    # the saved diameter map carries the value a detection there would carry
    dmap = world_maps(maps_for(heat, diameter_mm=7.0), settings)["diameter"]
    assert float(dmap[12, 20, 9]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match=r"decode.size_log_slope = 5.0 is out of range; allowed: \[0.25, 4\]"):
        DecodeSettings(threshold=0.5, size_log_slope=5.0)


def _result(pred_mm: list[float], true_mm: list[float]):  # type: ignore[no-untyped-def]
    from medmtl.engine.validation import ValidationResult

    return ValidationResult(metrics={}, log_diameters=np.log(pred_mm), true_log_diameters=np.log(true_mm))


def test_size_calibration_undoes_a_shrinking_head() -> None:
    from medmtl.engine.validation import fit_size_calibration

    rng = np.random.default_rng(0)
    true = rng.uniform(3.0, 25.0, 30)
    # a head that shrinks sizes towards 8 mm in log space: log p = 0.5 log t + 0.5 log 8 (+ noise)
    pred = np.exp(0.5 * np.log(true) + 0.5 * math.log(8.0) + rng.normal(0, 0.02, true.size))
    offset, slope = fit_size_calibration(_result(list(pred), list(true)))
    assert slope == pytest.approx(2.0, rel=0.1) and offset == pytest.approx(-math.log(8.0), abs=0.25)
    settings = DecodeSettings(threshold=0.5, size_log_offset=offset, size_log_slope=slope)
    raw_mae = float(np.mean(np.abs(pred - true)))
    cal_mae = float(np.mean(np.abs([settings.diameter_mm(math.log(p)) - t for p, t in zip(pred, true)])))
    assert raw_mae > 3.0 and cal_mae < 0.5


def test_size_calibration_keeps_the_identity_when_it_cannot_fit() -> None:
    from medmtl.engine.validation import fit_size_calibration

    assert fit_size_calibration(_result([5.0] * 3, [4.0, 6.0, 9.0])) == (0.0, 1.0)  # too few lesions
    assert fit_size_calibration(_result([6.0] * 12, list(np.linspace(3, 20, 12)))) == (0.0, 1.0)  # no spread
    # a head whose reading is anti-correlated with size did not learn it: no line rescues it
    true = list(np.linspace(3, 20, 12))
    assert fit_size_calibration(_result(true[::-1], true)) == (0.0, 1.0)
