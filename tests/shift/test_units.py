"""Unit tests of the shift modules on small synthetic data (no sample data, no encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medmtl.errors import ShiftError
from medmtl.shift import bn_shift, fingerprint, logme, two_sample
from medmtl.shift.adabn import adabn, tile_patches
from medmtl.shift.dann import DomainClassifier, GradientReversal, grl_schedule, reverse_gradient
from medmtl.shift.tent import tent
from medmtl.transforms.harmonise import match_to_quantiles


class TinyNet(nn.Module):
    """Conv + BN + ReLU + two 1x1 heads: the smallest MultiTaskNet-like network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(4)
        self.heat = nn.Conv3d(4, 1, 1)
        self.malig = nn.Conv3d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.bn2(self.conv2(torch.relu(self.bn(self.conv(x))))))
        return {"heatmap": self.heat(h), "malignancy": self.malig(h), "log_diameter": self.heat(h)}


def _volumes(offset: float, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 12, 12, 10, generator=g) * 2.0 + offset for _ in range(n)]


def test_mmd_and_classifier_calibrated_on_gaussians() -> None:
    rng = np.random.default_rng(0)
    alarms_m = alarms_c = 0
    for i in range(20):
        x, y = rng.normal(size=(8, 20)), rng.normal(size=(8, 20))
        alarms_m += two_sample.mmd_test(x, y, n_permutations=100, seed=i)["p_value"] < 0.05
        alarms_c += two_sample.classifier_test(x, y, n_permutations=100, seed=i)["p_value"] < 0.05
    assert alarms_m / 20 <= 0.15 and alarms_c / 20 <= 0.15
    x, y = rng.normal(size=(8, 20)), rng.normal(size=(8, 20)) + 1.5
    assert two_sample.mmd_test(x, y, n_permutations=300)["p_value"] < 0.01
    res = two_sample.classifier_test(x, y, n_permutations=300)
    assert res["p_value"] < 0.01 and res["proxy_a_distance"] > 1.5
    assert len(res["target_score_target"]) == 8 and np.mean(res["target_score_target"]) > 0.5


def test_minimum_p_and_small_cohorts() -> None:
    assert two_sample.minimum_p(199) == pytest.approx(0.005)
    with pytest.raises(ShiftError, match="at least 2 scans"):
        two_sample.mmd_test(np.zeros((1, 3)), np.ones((4, 3)))
    with pytest.raises(ShiftError, match="at least 3 scans"):
        two_sample.classifier_test(np.zeros((2, 3)), np.ones((4, 3)))


def test_logistic_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 3))
    y = (z[:, 0] + 0.5 * rng.normal(size=30) > 0).astype(float)
    w = two_sample.fit_logistic(z, y, c=0.7)
    ref = LogisticRegression(C=0.7, tol=1e-10, max_iter=1000).fit(z, y)
    np.testing.assert_allclose(w[:-1], ref.coef_[0], atol=1e-3)


def test_hu_calibration_flags_offset() -> None:
    rng = np.random.default_rng(0)
    vol = np.full((40, 40, 20), -1000.0)
    vol[8:32, 8:32, :] = -100.0  # fat shell
    vol[12:28, 12:28, :] = 30.0  # soft tissue
    noisy = vol + rng.normal(0, 10, vol.shape)
    mask = fingerprint.body_mask(noisy, "CT")
    ok = fingerprint.hu_calibration(noisy, mask)
    assert not ok["flag"] and abs(ok["air"]["measured"] + 1000) < 5
    bad = fingerprint.hu_calibration(noisy + 60.0, fingerprint.body_mask(noisy + 60.0, "CT"))
    assert bad["flag"] and bad["offset_hu"] == pytest.approx(60, abs=8)
    assert fingerprint.noise_estimate(noisy, mask) == pytest.approx(10.0, rel=0.25)


def test_effect_sizes() -> None:
    a = [{"noise": float(v), "p50": 0.0} for v in np.linspace(10, 12, 8)]
    b = [{"noise": float(v), "p50": 0.0} for v in np.linspace(30, 32, 8)]
    rows = {r["field"]: r for r in fingerprint.effect_sizes(a, b)}
    assert rows["noise"]["hedges_g"] > 5 and rows["noise"]["mann_whitney_p"] < 0.01 and rows["noise"]["large"]
    assert rows["p50"]["hedges_g"] == 0.0


def test_bn_shift_measures_offset() -> None:
    net = TinyNet().eval()
    same = bn_shift.bn_shift(net, _volumes(0.0))
    moved = bn_shift.bn_shift(net, _volumes(3.0))
    assert [r["layer"] for r in moved] == ["bn", "bn2"]
    assert moved[0]["sym_kl"] > same[0]["sym_kl"]
    stats = bn_shift.collect_bn_inputs(net, _volumes(0.0, n=1))
    x = net.conv(_volumes(0.0, n=1)[0]).detach()
    np.testing.assert_allclose(stats["bn"][0], x.mean(dim=(0, 2, 3, 4)).numpy(), atol=1e-5)


def test_adabn_changes_only_bn_buffers() -> None:
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    vols = _volumes(5.0)
    n = adabn(net, vols, (8, 8, 8))
    assert n == len(vols) * len(list(tile_patches(vols[0], (8, 8, 8))))
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    buffers = {k for k, _ in net.named_buffers()}
    assert changed and changed <= buffers
    assert {"bn.running_mean", "bn.running_var"} <= changed
    # cumulative average over all patches: the running mean equals the patch-average mean
    assert net.bn.momentum == 0.1
    assert float(net.bn.running_mean.abs().mean()) > 0.1


def test_tent_changes_only_bn_affine() -> None:
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    losses = tent(net, _volumes(1.0, n=1), (8, 8, 8), steps=1, lr=1e-2)
    assert len(losses) >= 2
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"bn.weight", "bn.bias", "bn2.weight", "bn2.bias"}
    assert all(p.requires_grad for p in net.parameters())


def test_gradient_reversal_flips_sign() -> None:
    x = torch.randn(4, 5, requires_grad=True)
    (reverse_gradient(x, 0.5) * 3.0).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.5))
    y = torch.randn(4, 5, requires_grad=True)
    out = GradientReversal(1.0)(y)
    assert torch.equal(out, y)
    head = DomainClassifier(5)
    f = torch.randn(3, 5, requires_grad=True)
    head(f).sum().backward()
    g_rev = f.grad.clone()
    f.grad = None
    head.net(f).sum().backward()
    assert torch.allclose(g_rev, -f.grad)
    assert grl_schedule(0.0) == 0.0 and 0.99 < grl_schedule(1.0) < 1.0


def test_histmatch_brings_percentiles_to_reference() -> None:
    rng = np.random.default_rng(0)
    src = [np.where(rng.random((30, 30, 20)) < 0.6, rng.normal(30, 15, (30, 30, 20)), -1000.0) for _ in range(3)]
    quant = fingerprint.body_quantiles(src, "CT")
    tgt = np.where(rng.random((30, 30, 20)) < 0.5, rng.normal(80, 35, (30, 30, 20)), -960.0)
    out = match_to_quantiles(tgt, tgt > -500, quant)
    ref_p = np.interp([0.1, 0.5, 0.9], quant["levels"], quant["values"])
    got = np.percentile(out[tgt > -500], [10, 50, 90])
    np.testing.assert_allclose(got, ref_p, atol=3.0)  # tolerance: 3 HU
    assert np.median(out[tgt <= -500]) == pytest.approx(-960.0 + (quant["values"][0] - np.min(tgt[tgt > -500])), abs=1)


def test_logme_prefers_informative_features() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=60)
    good = np.stack([y + 0.1 * rng.normal(size=60), rng.normal(size=60)], axis=1)
    bad = rng.normal(size=(60, 2))
    assert logme.logme(good, y, regression=True) > logme.logme(bad, y, regression=True)
    lab = (y > 0).astype(int)
    assert logme.logme(good, lab, regression=False) > logme.logme(bad, lab, regression=False)
    with pytest.raises(ShiftError, match="both classes"):
        logme.logme(good, np.zeros(60), regression=False)


def test_verdict_points_to_resim_when_the_target_acquisition_is_coarser() -> None:
    from medmtl.shift.report import _details

    coarse = [{"field": "slice_thickness", "source_mean": 3.5, "target_mean": 7.0, "hedges_g": 9.0, "large": True},
              {"field": "noise", "source_mean": 16.0, "target_mean": 40.0, "hedges_g": 5.0, "large": True}]
    text = " ".join(_details("shift", coarse, []))
    assert "--method resim" in text and "(noise SD in homogeneous tissue (HU), slice thickness (mm))" in text
    assert "slice thickness (mm) 3.5 → 7 (g = 9.00)" in text
    finer = [{**coarse[0], "source_mean": 7.0, "target_mean": 3.5}]
    assert "resim" not in " ".join(_details("shift", finer, []))
    assert "resim" not in " ".join(_details("no_shift", coarse, []))  # no shift, no advice
    assert "resim" not in " ".join(_details("outside_domain", coarse, []))  # outside the domain: never adapt


def test_holm_and_permutation_statistics() -> None:
    from scipy import stats as st

    from medmtl.shift import descriptive as ds
    from medmtl.shift.verdict import label_sets

    assert ds.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ds.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5), rng.normal(size=6) + 2.0
    labels, exact = label_sets(5, 6, 1000, 0)
    assert exact and len(labels) == 462
    ks = ds.ks_stats(np.r_[a, b], labels)
    assert ks[0] == pytest.approx(st.ks_2samp(a, b).statistic)
    rs = ds.rank_sum_stats(np.r_[a, b], labels)
    u = st.mannwhitneyu(b, a).statistic  # U of the target = rank sum − n_t(n_t + 1)/2
    assert rs[0] == pytest.approx(abs(u + 6 * 7 / 2 - 6 * 12 / 2))
    p = ds.permutation_p(rs)
    assert p == pytest.approx(2 / 462) and p >= 1 / len(labels)  # all-target-high and all-target-low


def test_effect_size_text_never_shows_the_cap() -> None:
    from medmtl.shift.descriptive import g_text
    from medmtl.shift.fingerprint import G_CAP

    assert g_text(1.234) == "1.23" and g_text(-0.5) == "-0.50" and g_text(None) == "–"
    assert g_text(G_CAP, 0.0, 0.0) == "constant in each cohort"
    assert g_text(42.0, 1.0, 2.0) == "> 10" and g_text(-G_CAP, 0.5, 0.0) == "< −10"


def test_slice_thickness_is_the_dicom_tag_when_the_scan_is_dicom(sample_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A DICOM series with SliceThickness 3.0 mm on a 1.25 mm slice grid reports 3.0 mm (and says
    it is the tag); a NIfTI scan reports its slice spacing and says so."""
    import shutil

    import pydicom

    from medmtl.io.read import load_folder
    from medmtl.shift.descriptive import slice_label

    series = tmp_path / "dcm" / "series"
    shutil.copytree(sample_data / "dicom_example" / "ct_a_0000", series)
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.SliceThickness = "3.0"
        ds.save_as(f)
    dcm = fingerprint.scan_fingerprint(load_folder(tmp_path / "dcm", progress=False)[0][0])
    assert dcm["slice_thickness"] == pytest.approx(3.0) and dcm["slice_spacing"] == pytest.approx(1.25)
    assert dcm["slice_thickness_source"] == "dicom"
    nii_dir = tmp_path / "nii"
    nii_dir.mkdir()
    shutil.copy(sample_data / "ct_site_a" / "ct_a_0000.nii.gz", nii_dir)
    nii = fingerprint.scan_fingerprint(load_folder(nii_dir, progress=False)[0][0])
    assert nii["slice_thickness"] == pytest.approx(1.25) and nii["slice_thickness_source"] == "spacing"
    assert slice_label([dcm]) == "slice thickness, DICOM tag (mm)" and slice_label([nii]) == "slice spacing (mm)"
    assert slice_label([dcm, nii]) == "slice thickness (DICOM tag) or spacing (mm)"


def test_report_page_renders_code_spans_and_descriptive_rows_plainly() -> None:
    from medmtl.shift.html import render_report

    rows = [{"field": "p0_5", "label": "0.5th percentile intensity (HU)", "source_mean": -930.0, "source_sd": 1.5,
             "source_min": -932.0, "source_max": -928.0, "target_mean": -886.0, "target_sd": 2.3, "hedges_g": 20.0,
             "g_text": "> 10", "holm_p": 0.004, "n_target_outside_source_range": 4}]
    page = render_report({"verdict": {"kind": "shift", "reasons": ["p = 0.002."], "advice": "run `medmtl adapt`.",
                                      "details": [], "rule": "the `rule`"},
                          "tests": [], "fingerprint_table": rows, "fingerprint_p": {"n_rows": 1, "smallest_p": 0.001},
                          "alpha": 0.05})
    assert "<code>medmtl adapt</code>" in page and "<code>rule</code>" in page and "`" not in page
    assert "0.5th percentile intensity (HU)" in page and "&gt; 10</td>" in page
    assert "sig" not in page.split("<h2>Fingerprints")[1]  # descriptive p-values are never red
    assert "not part of the decision" in page or "the verdict does not use them" in page
