"""Noisy-OR fusion of detectors, one scan at a time (:func:`medmtl.engine.fusion.fuse_scan`)."""

from __future__ import annotations

import pytest

from medmtl.engine.fusion import fuse_scan


def _les(x: float, p: float, d: float = 6.0, m: float = 0.3) -> dict[str, float]:
    return {"coordX": x, "coordY": 0.0, "coordZ": 0.0, "probability": p, "diameter_mm": d, "malignancy_prob": m}


def test_matched_detections_combine_by_noisy_or_and_keep_the_primary_attributes() -> None:
    model = [_les(0.0, 0.6, d=8.0, m=0.7)]
    classical = [_les(3.0, 0.5, d=5.0, m=0.1)]  # 3 mm away: the same nodule
    (fused,) = fuse_scan([model, classical], radius_mm=5.0)
    assert fused["probability"] == pytest.approx(1 - 0.4 * 0.5)
    assert (fused["coordX"], fused["diameter_mm"], fused["malignancy_prob"]) == (0.0, 8.0, 0.7)


def test_unmatched_detections_keep_their_own_score_and_attributes() -> None:
    fused = fuse_scan([[_les(0.0, 0.6)], [_les(20.0, 0.8, d=4.0)]], radius_mm=5.0)
    assert [(f["coordX"], f["probability"], f["diameter_mm"]) for f in fused] == [(20.0, 0.8, 4.0), (0.0, 0.6, 6.0)]


def test_radius_decides_what_is_one_candidate() -> None:
    systems = [[_les(0.0, 0.5)], [_les(4.0, 0.5)]]
    assert len(fuse_scan(systems, radius_mm=5.0)) == 1
    assert len(fuse_scan(systems, radius_mm=3.0)) == 2


def test_a_candidate_takes_at_most_one_detection_per_system() -> None:
    """Two classical detections next to one model detection: the stronger joins it, the other stays apart."""
    fused = fuse_scan([[_les(0.0, 0.5)], [_les(1.0, 0.2), _les(-1.0, 0.6)]], radius_mm=5.0)
    assert sorted(round(f["probability"], 6) for f in fused) == [0.2, round(1 - 0.5 * 0.4, 6)]
    # and two detections of the same system never merge with each other
    assert len(fuse_scan([[_les(0.0, 0.5), _les(1.0, 0.4)], []], radius_mm=5.0)) == 2


def test_three_systems_and_an_empty_one() -> None:
    fused = fuse_scan([[_les(0.0, 0.5)], [], [_les(1.0, 0.5)]], radius_mm=5.0)
    assert len(fused) == 1 and fused[0]["probability"] == pytest.approx(0.75)
    assert fuse_scan([[], []]) == []
