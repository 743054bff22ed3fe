"""Must-show: calibration and power of the feature-space shift tests on the sample data.

Features are extracted once per module (ImageNet EfficientNet-Lite0, inflate adapter, at a
coarse 6 mm grid to stay cheap); the repeated same-site splits then only re-run the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmtl.shift.two_sample import classifier_test, mmd_test
from medmtl.shift.verdict import shift_test

N_SPLITS = 30
ALPHA = 0.05


@pytest.fixture(scope="module")
def site_features(sample_data: Path, site_a_many: Path) -> tuple[np.ndarray, np.ndarray]:
    from medmtl.io.read import load_folder
    from medmtl.shift.features import default_extractor
    from medmtl.transforms.presets import default_ct_spec

    a, _ = load_folder(site_a_many, progress=False)
    b, _ = load_folder(sample_data / "ct_site_b", progress=False)
    assert len(a) >= 12 and len(b) >= 8
    ex = default_extractor(default_ct_spec(spacing=(6.0, 6.0, 6.0)))
    return ex.pooled_many(a), ex.pooled_many(b)


def test_false_alarm_rate_same_site_splits(site_features: tuple[np.ndarray, np.ndarray]) -> None:
    xa, _ = site_features
    rng = np.random.default_rng(0)
    alarms = {"mmd": 0, "classifier": 0}
    for i in range(N_SPLITS):
        perm = rng.permutation(len(xa))
        half = len(xa) // 2
        s, t = xa[perm[:half]], xa[perm[half:]]
        alarms["mmd"] += mmd_test(s, t, n_permutations=200, seed=i)["p_value"] < ALPHA
        alarms["classifier"] += classifier_test(s, t, n_permutations=200, seed=i)["p_value"] < ALPHA
    rates = {k: v / N_SPLITS for k, v in alarms.items()}
    assert rates["mmd"] < 0.10, rates
    assert rates["classifier"] < 0.10, rates


def test_site_a_vs_b_eight_per_side(site_features: tuple[np.ndarray, np.ndarray]) -> None:
    xa, xb = site_features
    mmd = mmd_test(xa[:8], xb[:8], n_permutations=400, seed=1)
    clf = classifier_test(xa[:8], xb[:8], n_permutations=400, seed=1)
    assert mmd["p_value"] < 0.01, mmd
    assert clf["p_value"] < 0.01, {k: v for k, v in clf.items() if "score" not in k}
    assert clf["proxy_a_distance"] > 1.0
    # the "looks like target" score ranks target scans above source scans
    assert np.mean(clf["target_score_target"]) > np.mean(clf["target_score_source"])


def test_verdict_false_alarms_on_same_site_splits(site_features: tuple[np.ndarray, np.ndarray]) -> None:
    """The combined rule (both tests must reject) on the same 6-vs-6 splits: at most alpha, plus noise."""
    xa, _ = site_features
    rng = np.random.default_rng(0)
    alarms = 0
    for i in range(N_SPLITS):
        perm = rng.permutation(len(xa))
        alarms += shift_test(xa[perm[:6]], xa[perm[6:12]], n_permutations=200, seed=i)["shift"]
    assert alarms / N_SPLITS < 0.10, alarms
