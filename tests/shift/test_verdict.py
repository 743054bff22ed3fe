"""The decision rule of the shift verdict: exact min-P combination, its level, and the three verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmtl.errors import ShiftError
from medmtl.shift.verdict import (
    ALPHA,
    check_resolvable,
    decide,
    label_sets,
    outside_range,
    shift_test,
    smallest_p,
)


def test_small_cohorts_are_enumerated_exactly() -> None:
    labels, exact = label_sets(4, 4, n_permutations=500, seed=0)
    assert exact and labels.shape == (math.comb(8, 4), 8)
    assert labels[0].tolist() == [False] * 4 + [True] * 4  # the observed labelling first
    assert len({tuple(r) for r in labels}) == len(labels) and (labels.sum(axis=1) == 4).all()
    big, exact_big = label_sets(12, 12, n_permutations=200, seed=0)
    assert not exact_big and big.shape == (201, 24)


def test_sizes_that_cannot_reach_alpha_are_refused() -> None:
    assert smallest_p(4, 4, 1000) == pytest.approx(2 / 70)  # symmetric statistics: half the 70 labellings
    assert smallest_p(3, 3, 1000) == pytest.approx(0.1)
    check_resolvable(4, 4, 1000)
    with pytest.raises(ShiftError, match=r"with 3 source and 3 target scans .* smallest possible p-value is 0.1, "
                                         r"above alpha = 0.05.*at least 4 per side"):
        check_resolvable(3, 3, 1000)
    with pytest.raises(ShiftError, match="2 source and 3 target"):
        shift_test(np.zeros((2, 5)), np.ones((3, 5)))


def test_level_is_controlled_on_exchangeable_data() -> None:
    """Same-distribution cohorts: the verdict's false-alarm rate stays at alpha (exact test, 5 vs 5)."""
    rng = np.random.default_rng(0)
    flagged = [shift_test(rng.normal(size=(5, 6)), rng.normal(size=(5, 6)), seed=i)["shift"] for i in range(120)]
    rate = float(np.mean(flagged))
    assert rate <= 0.1, rate  # alpha = 0.05; the binomial 99 % upper bound of 120 draws at 0.05 is ~0.11


def test_a_shift_is_found_and_the_report_is_complete() -> None:
    rng = np.random.default_rng(1)
    res = shift_test(rng.normal(size=(8, 6)), rng.normal(size=(8, 6)) + 1.5, n_permutations=300)
    assert res["shift"] and res["p_value"] <= ALPHA and not res["exact"] and res["n_label_sets"] == 301
    for name in ("mmd", "classifier"):
        assert res[name]["n_source"] == 8 and res[name]["n_target"] == 8
    # intersection-union: shift needs both tests; the combined p is the larger one
    assert res["p_value"] == pytest.approx(max(res["mmd"]["p_value"], res["classifier"]["p_value"]))
    by_rule = res["p_by_rule"]
    assert set(by_rule) == {"intersection-union", "min-p", "holm"} and by_rule["intersection-union"] == res["p_value"]
    assert by_rule["holm"] == pytest.approx(min(1.0, 2 * min(res["mmd"]["p_value"], res["classifier"]["p_value"])))
    assert min(res["mmd"]["p_value"], res["classifier"]["p_value"]) <= by_rule["min-p"] <= by_rule["holm"] + 1e-12
    assert res["classifier"]["auc"] > 0.9 and len(res["classifier"]["target_score_target"]) == 8


def test_mmd_alone_below_three_scans_per_side() -> None:
    rng = np.random.default_rng(2)
    res = shift_test(rng.normal(size=(2, 4)), rng.normal(size=(8, 4)))  # C(10, 2) = 45 labellings: p >= 1/45
    assert res["classifier"] is None and res["exact"] and res["smallest_p"] == pytest.approx(1 / 45)


def _fp(scan_id: str, fov: float, body: float = 0.4) -> dict[str, object]:
    return {"scan_id": scan_id, "fov_i_mm": fov, "fov_j_mm": fov, "fov_k_mm": fov, "body_fraction": body}


def test_three_verdicts() -> None:
    src = [_fp(f"s{i}", 150.0 + i) for i in range(6)]
    same_fov = [_fp(f"t{i}", 160.0 + i) for i in range(6)]
    small_fov = [_fp(f"t{i}", 60.0) for i in range(6)]
    no = {"p_value": 0.4, "shift": False, "alpha": ALPHA, "classifier": {"auc": 0.5}}
    yes = {"p_value": 0.002, "shift": True, "alpha": ALPHA, "classifier": {"auc": 1.0}}
    kw = {"source_modality": "CT", "target_modality": "CT"}
    assert decide(no, source_fps=src, target_fps=small_fov, **kw).kind == "no_shift"
    assert decide(yes, source_fps=src, target_fps=same_fov, **kw).kind == "shift"
    out = decide(yes, source_fps=src, target_fps=small_fov, **kw)
    assert out.kind == "outside_domain" and "fov_i_mm (6/6 scans)" in out.text() and "do not adapt" in out.advice
    partial = {**yes, "classifier": {"auc": 0.8}}  # not separable: an acquisition shift, adaptable
    assert decide(partial, source_fps=src, target_fps=small_fov, **kw).kind == "shift"
    mr = decide(None, source_fps=src, target_fps=same_fov, source_modality="CT", target_modality="MR")
    assert mr.kind == "outside_domain" and mr.p_value is None and "labelled MR" in mr.advice
    rows = {r["field"]: r for r in outside_range(src, small_fov)}
    assert rows["fov_i_mm"]["n_outside"] == 6 and rows["body_fraction"]["n_outside"] == 0
    assert rows["fov_i_mm"]["allowed"] == pytest.approx([100.0, 232.5])
