"""Acquisition re-simulation: the target acquisition is measured without labels and imposed on
source scans (spacing, noise level, HU offset), keeping the world geometry of the lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medmtl.errors import ShiftError
from medmtl.io.read import load_folder
from medmtl.shift.resim import estimate_acquisition, simulate_acquisition
from medmtl.shift.source_patches import LabelledPatches


@pytest.fixture(scope="module")
def cohorts(sample_data: Path) -> dict[str, list]:
    a, _ = load_folder(sample_data / "ct_site_a", progress=False)
    b, _ = load_folder(sample_data / "ct_site_b", progress=False)
    return {"a": a[:4], "b": b[:4]}


def test_estimate_acquisition_reads_the_sites(cohorts: dict[str, list]) -> None:
    a, b = estimate_acquisition(cohorts["a"]), estimate_acquisition(cohorts["b"])
    assert a.spacing_ras == pytest.approx((0.9, 0.9, 1.25), abs=0.01)  # site A: 0.9 x 0.9 x 1.25 mm (RAS order)
    assert b.spacing_ras == pytest.approx((1.4, 1.4, 5.0), abs=0.01)  # site B stores LPS; same world axes
    assert b.noise > 1.3 * a.noise  # site B: sigma 30 HU, more correlated, vs 20 HU
    assert a.hu_offset is not None and b.hu_offset is not None
    assert 20.0 < b.hu_offset - a.hu_offset < 70.0  # the generator's +40 HU (blur biases the reading)
    with pytest.raises(ShiftError, match="empty cohort"):
        estimate_acquisition([])


def test_simulated_source_scan_reads_like_the_target(cohorts: dict[str, list]) -> None:
    a, b = estimate_acquisition(cohorts["a"]), estimate_acquisition(cohorts["b"])
    rng = np.random.default_rng(0)
    src = cohorts["a"][0]
    sim, rec = simulate_acquisition(src, source=a, target=b, blur_mm=2.0, rng=rng)
    assert rec["spacing_mm"] == pytest.approx([1.4, 1.4, 5.0], abs=0.01)
    assert rec["offset_added"] == pytest.approx(b.hu_offset - a.hu_offset)
    assert rec["slice_fwhm_mm"][2] == pytest.approx((5.0 ** 2 - 1.25 ** 2) ** 0.5, abs=0.01)
    # the same stretch of the world: the volume centre stays put within one target voxel
    def centre(scan) -> np.ndarray:
        aff = np.asarray(scan.image.affine, dtype=float)
        ijk = (np.asarray(scan.image.shape[1:], dtype=float) - 1) / 2
        return aff[:3, :3] @ ijk + aff[:3, 3]
    assert np.linalg.norm(centre(sim) - centre(src)) < 5.0
    sims = [simulate_acquisition(s, source=a, target=b, blur_mm=2.0, rng=rng)[0] for s in cohorts["a"]]
    got = estimate_acquisition(sims)
    assert got.spacing_ras == pytest.approx(b.spacing_ras, abs=0.01)
    assert got.noise == pytest.approx(b.noise, rel=0.15)  # the fingerprint's noise reading is matched
    assert got.hu_offset == pytest.approx(b.hu_offset, abs=15.0)
    # a target like the source changes nothing but the (re-measured) noise draw: no resampling, no offset
    same, rec2 = simulate_acquisition(src, source=a, target=a, blur_mm=0.0, rng=rng)
    assert same.image.shape == src.image.shape and rec2["offset_added"] == 0.0
    assert np.allclose(np.asarray(same.image.affine), np.asarray(src.image.affine))


def test_labelled_patches_sample_batches() -> None:
    vol = torch.randn(1, 1, 20, 40, 40)  # shorter than a patch along one axis: padded
    maps = {"heatmap": torch.zeros(1, 1, 20, 40, 40), "mask": torch.ones(1, 1, 20, 40, 40)}
    maps["heatmap"][0, 0, 10, 20, 20] = 1.0
    lp = LabelledPatches([(vol, maps, [[10, 20, 20]])], [32, 32, 32], lesion_share=1.0)
    x, t = lp.sample(torch.Generator().manual_seed(0), 3)
    assert x.shape == (3, 1, 32, 32, 32) and t["heatmap"].shape == (3, 1, 32, 32, 32)
    assert all(float(t["heatmap"][i].max()) == 1.0 for i in range(3))  # lesion-centred: the peak is inside
    with pytest.raises(ValueError, match="at least one"):
        LabelledPatches([], [32, 32, 32])


def test_mri_noise_is_matched_relative_to_the_body_intensity(sample_data: Path) -> None:
    scans, _ = load_folder(sample_data / "mri", progress=False)
    src, tgt = estimate_acquisition(scans[:2]), estimate_acquisition(scans[2:4])
    assert src.modality == "MR" and src.hu_offset is None
    # a target twice as noisy (relative to its body intensity) as the source cohort
    noisier = type(tgt)(spacing_ras=src.spacing_ras, noise=4 * src.noise, body_median=2 * src.body_median,
                        hu_offset=None, modality="MR", n_scans=2)
    sim, rec = simulate_acquisition(scans[0], source=src, target=noisier, blur_mm=0.0, rng=np.random.default_rng(1))
    assert rec["offset_added"] == 0.0 and rec["noise_added"] > 0
    got = estimate_acquisition([sim])
    assert got.noise / got.body_median == pytest.approx(noisier.noise / noisier.body_median, rel=0.3)
