"""bench/shift_calibration: the binomial intervals and one size of the split loop on synthetic pools."""

from __future__ import annotations

import numpy as np
import pytest

from bench import shift_calibration as S


def test_clopper_pearson() -> None:
    assert S.clopper_pearson(10, 200) == pytest.approx((0.0242, 0.0901), abs=5e-4)
    lo, hi = S.clopper_pearson(0, 200)
    assert lo == 0.0 and hi == pytest.approx(0.0183, abs=5e-4)
    assert S.clopper_pearson(200, 200)[1] == 1.0


def _pool(rng: np.random.Generator, shift: float, n: int = 20) -> dict:
    fps = [{"scan_id": f"s{i}", "fov_i_mm": 150.0, "fov_j_mm": 150.0, "fov_k_mm": 150.0, "body_fraction": 0.4}
           for i in range(n)]
    return {"features": rng.normal(size=(n, 8)) + shift, "fingerprints": fps}


def test_run_size_counts_false_alarms_and_power() -> None:
    rng = np.random.default_rng(0)
    pools = {"ct_a": _pool(rng, 0.0), "ct_b": _pool(rng, 3.0), "mri": _pool(rng, 0.0)}
    rows = S.run_size(pools, 4, splits=20, n_permutations=100, seed=0, power_splits=10)
    kinds = [(r["kind"], r["pool"]) for r in rows]
    assert kinds == [("false_alarm", "ct_a"), ("false_alarm", "ct_b"), ("false_alarm", "mri"), ("power", "ct_a vs ct_b")]
    # a 3-sd shift at 4 vs 4: the rule needs the domain classifier too, the weaker test with 8 scans
    assert rows[3]["n_splits"] == 10 and rows[3]["rate"] >= 0.5
    assert all(r["rate"] <= 0.2 for r in rows[:3])
    assert f"| 4 | power | ct_a vs ct_b | {rows[3]['rate']:.3f} |" in S.markdown({"rows": rows})
    # the rules compared on the same splits: at 4 vs 4 (35 distinct exact p-values, smallest 2/70) the
    # Holm global p is at least 2 x 0.029 > alpha, so Holm can never flag; the rule flags no more than min-P
    by_rule = rows[3]["by_rule"]
    assert set(by_rule) == {"intersection-union", "min-p", "holm"} and by_rule["holm"]["flagged"] == 0
    assert by_rule["intersection-union"]["rate"] == rows[3]["rate"] <= by_rule["min-p"]["rate"]
    assert "| 4 | power | ct_a vs ct_b | " in S.markdown({"rows": rows}).split("by combination rule")[1]
    # from 6 per side both tests see it: always flagged, and same-site splits stay quiet
    six = S.run_size(pools, 6, splits=20, n_permutations=100, seed=0, power_splits=10)
    assert six[3]["rate"] == 1.0 and all(r["rate"] <= 0.1 for r in six[:3])
