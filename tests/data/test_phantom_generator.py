"""Phantom generator: site differences, lesion geometry, the malignancy model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from medmtl.data.malignancy import CT_MALIGNANCY_MODEL, MRI_MALIGNANCY_MODEL, auc, bayes_auc
from medmtl.data.phantom import CT_TISSUES, MRI_TISSUES, generate_ct, generate_mri
from medmtl.data.phantom_ct import sample_nodule_attributes
from medmtl.errors import ConfigError
from medmtl.io.coords import orientation_code, spacing_from_affine, voxel_to_lps


@pytest.fixture(scope="module")
def ct_pair():
    """The same seed at both CT sites (default shapes)."""
    return generate_ct(11, "a"), generate_ct(11, "b")


def _liver_stats(ph) -> tuple[float, float]:
    """Mean and std (HU) over the eroded liver: a uniform 60 HU region in the truth."""
    region = binary_erosion(ph.tissue == CT_TISSUES["liver"], iterations=2)
    assert region.sum() > 100
    vals = ph.volume[region]
    return float(vals.mean()), float(vals.std())


def test_sites_differ_like_two_scanners(ct_pair):
    a, b = ct_pair
    sa, sb = spacing_from_affine(a.affine_ras), spacing_from_affine(b.affine_ras)
    assert sa == pytest.approx((0.9, 0.9, 1.25)) and sb == pytest.approx((1.4, 1.4, 5.0))
    assert sb[2] / sa[2] == pytest.approx(4.0)
    # Site A is a thin-slice nodule CT: the smallest nodule (3 mm) spans >= 3 voxels in-plane.
    assert 3.0 / max(sa[0], sa[1]) >= 3.0
    assert orientation_code(a.affine_ras) == "RAS" and orientation_code(b.affine_ras) == "LPS"
    fov_a = np.array(a.volume.shape) * np.array(sa)
    fov_b = np.array(b.volume.shape) * np.array(sb)
    assert fov_b[0] > fov_a[0] + 5.0  # wider in-plane field of view
    mean_a, std_a = _liver_stats(a)
    mean_b, std_b = _liver_stats(b)
    assert std_a == pytest.approx(20.0, abs=4.0)
    assert std_b == pytest.approx(30.0, abs=7.0)
    assert mean_b - mean_a == pytest.approx(40.0, abs=10.0)  # HU calibration offset
    assert mean_a == pytest.approx(60.0, abs=8.0)


def test_ct_anatomy_hu_ranges(ct_pair):
    a, _ = ct_pair
    t = CT_TISSUES
    lung = a.volume[binary_erosion(a.tissue == t["lung"], iterations=1)]
    bone = a.volume[a.tissue == t["bone"]]
    air = a.volume[binary_erosion(a.tissue == t["air"], iterations=2)]
    assert -950 < np.median(lung) < -750
    assert np.median(bone) > 250
    assert np.median(air) < -950
    assert (a.tissue == t["vessel"]).sum() > 50  # vessels: the false-positive bait
    assert a.volume.dtype == np.float32 and np.array_equal(a.volume, np.rint(a.volume))


@pytest.mark.parametrize("site", ["a", "b"])
def test_lesion_mask_centre_maps_to_lps_centre(site):
    n_checked = 0
    for seed in (1, 2):
        ph = generate_ct(seed, site)
        spacing = np.array(spacing_from_affine(ph.affine_ras))
        for n, les in enumerate(ph.lesions, start=1):
            com = np.argwhere(ph.label_mask == n).mean(axis=0)
            lps = voxel_to_lps(com, ph.affine_ras)[0]
            assert np.all(np.abs(lps - np.array(les.center_lps)) <= 0.5 * spacing), (seed, n, les)
            assert 3.0 <= les.diameter_mm <= 30.0
            # nodules sit in the lungs
            assert ph.tissue[tuple(np.rint(com).astype(int))] in (CT_TISSUES["lesion"], CT_TISSUES["lung"])
            n_checked += 1
    assert n_checked >= 3


def test_mri_phantom_has_tumours_bias_and_scale():
    ph = generate_mri(5)
    assert ph.modality == "MR" and 1 <= len(ph.lesions) <= 2
    assert ph.volume.min() >= 0
    for les in ph.lesions:
        assert 8.0 <= les.diameter_mm <= 30.0
        assert les.extra["texture"] in ("solid", "necrotic", "cystic")
    wm = ph.volume[binary_erosion(ph.tissue == MRI_TISSUES["white_matter"], iterations=2)]
    gm = ph.volume[ph.tissue == MRI_TISSUES["grey_matter"]]
    assert np.median(wm) > np.median(gm)
    other = generate_mri(6, (48, 48, 40))
    wm2 = other.volume[binary_erosion(other.tissue == MRI_TISSUES["white_matter"], iterations=2)]
    assert abs(np.log(np.median(wm) / np.median(wm2))) > 0.01  # arbitrary intensity scale


def test_label_model_high_probability_lesions_are_more_often_malignant():
    rng = np.random.default_rng(0)
    probs, labels = [], []
    for _ in range(3000):
        d, margin, texture, calc = sample_nodule_attributes(rng)
        probs.append(CT_MALIGNANCY_MODEL.bayes_probability(d, margin, texture, calc))
        labels.append(CT_MALIGNANCY_MODEL.draw_label(rng, d, margin, texture, calc))
    p, y = np.array(probs), np.array(labels)
    lo, hi = np.quantile(p, [1 / 3, 2 / 3])
    assert y[p >= hi].mean() > y[p <= lo].mean() + 0.2
    # the recorded probability is calibrated for the noisy labels
    assert abs(y.mean() - p.mean()) < 0.03
    assert 0.6 < auc(p, y) < 0.95


def test_models_document_their_coefficients():
    for model in (CT_MALIGNANCY_MODEL, MRI_MALIGNANCY_MODEL):
        assert 0 < model.label_noise < 0.5
        assert model.b_margin["spiculated"] > model.b_margin["smooth"]
        assert model.b_calc["calcified"] < 0
    assert CT_MALIGNANCY_MODEL.clean_probability(10.0, "smooth", "solid", "none") == pytest.approx(
        1 / (1 + np.exp(0.8))
    )


def test_bayes_auc_skips_unlabelled_rows():
    rows = [
        {"malignancy": "1", "bayes_malignancy_prob": "0.9"},
        {"malignancy": "0", "bayes_malignancy_prob": "0.2"},
        {"malignancy": "", "bayes_malignancy_prob": "0.1"},
        {"malignancy": "0", "bayes_malignancy_prob": "0.95"},
    ]
    assert bayes_auc(rows) == pytest.approx(0.5)
    assert np.isnan(bayes_auc(rows[:1]))


def test_generator_is_deterministic_in_memory():
    a1, a2 = generate_ct(3, "b", (24, 24, 16)), generate_ct(3, "b", (24, 24, 16))
    assert np.array_equal(a1.volume, a2.volume) and a1.lesions == a2.lesions


@pytest.mark.parametrize("bad", [(8, 8, 8), (64, 64), (600, 64, 64), (32.5, 32, 32)])
def test_bad_shape_is_refused(bad):
    with pytest.raises(ConfigError, match="shape"):
        generate_ct(0, "a", bad)


def test_bad_site_is_refused():
    with pytest.raises(ConfigError, match="site must be one of a, b, got 'c'"):
        generate_ct(0, "c")
