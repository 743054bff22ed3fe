"""The plain-language reading of a shift report (issue #14, item 4) and the HU check that tells
contrast enhancement from miscalibration, on synthetic volumes built here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medmtl.shift import fingerprint, html, reading, report_md
from medmtl.shift.descriptive import describe_fingerprints
from medmtl.shift.report import _hu_rows, hu_sentences
from medmtl.shift.verdict import decide


def _body(rng: np.random.Generator, *, soft: float = 30.0, offset: float = 0.0) -> np.ndarray:
    """A CT-like volume: air outside, a fat shell, soft tissue at ``soft`` HU inside, then
    ``offset`` HU added to every voxel (a miscalibrated scale)."""
    vol = np.full((40, 40, 20), -1000.0)
    vol[8:32, 8:32, :] = -100.0
    vol[12:28, 12:28, :] = soft
    return vol + offset + rng.normal(0, 10, vol.shape)


def _hu(vol: np.ndarray) -> dict[str, Any]:
    return fingerprint.hu_calibration(vol, fingerprint.body_mask(vol, "CT"))


def test_contrast_enhancement_is_not_miscalibration() -> None:
    rng = np.random.default_rng(0)
    plain = _hu(_body(rng))
    assert plain["status"] == "calibrated" and not plain["flag"] and not plain["contrast_enhanced"]
    shifted = _hu(_body(rng, offset=60.0))  # the whole scale moved: air and fat too
    assert shifted["status"] == "miscalibrated" and shifted["flag"]
    assert shifted["air"]["flag"] and shifted["fat"]["flag"] and shifted["offset_hu"] == pytest.approx(60, abs=8)
    for soft in (110.0, 180.0):  # enhanced soft tissue / blood pool, air and fat in place
        enhanced = _hu(_body(rng, soft=soft))
        assert enhanced["status"] == "contrast_enhanced" and enhanced["contrast_enhanced"] and not enhanced["flag"]
        assert enhanced["soft_tissue"]["measured"] == pytest.approx(soft, abs=6)
        assert abs(enhanced["air"]["offset"]) < 5 and abs(enhanced["fat"]["offset"]) < 6
        assert abs(enhanced["offset_hu"]) < 6  # the enhancement is no offset (resim adds this one)


def test_report_says_enhancement_or_miscalibration() -> None:
    rng = np.random.default_rng(1)
    src = [{"hu_calibration": _hu(_body(rng))} for _ in range(3)]
    enhanced = [{"hu_calibration": _hu(_body(rng, soft=150.0))} for _ in range(3)]
    shifted = [{"hu_calibration": _hu(_body(rng, offset=-50.0))} for _ in range(3)]
    rows = _hu_rows({"source": src, "target": enhanced})
    assert rows[1]["n_flagged"] == 0 and rows[1]["n_contrast_enhanced"] == 3
    said = " ".join(hu_sentences(rows))
    assert "Contrast enhancement, not miscalibration: 3 of 3 target scans" in said and "HU miscalibration" not in said
    assert f"{rows[1]['median_soft_tissue_hu']:.0f} HU" in said
    said = " ".join(hu_sentences(_hu_rows({"source": src, "target": shifted})))
    assert said.startswith("HU miscalibration: 3 of 3 target scans have air or fat off") and "−" not in said
    assert "median offset -5" in said and "Contrast" not in said


def _fps(n: int, *, spacing: float, fov: float, noise: float, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fp: dict[str, Any] = {"scan_id": f"s{seed}_{i}", "modality": "CT", "spacing_i": 0.9, "spacing_j": 0.9,
                              "spacing_k": spacing, "slice_thickness": spacing, "fov_i_mm": fov, "fov_j_mm": fov,
                              "fov_k_mm": fov, "noise": noise + rng.normal(0, 0.5), "body_fraction": 0.4,
                              "p50": 20.0 + rng.normal(0, 2)}
        out.append(fp)
    return out


def _report(src: list[dict[str, Any]], tgt: list[dict[str, Any]], test: dict[str, Any] | None,
            tgt_modality: str = "CT") -> dict[str, Any]:
    effects, rows, _ = describe_fingerprints(src, tgt, tgt_modality, 200, 0)
    v = decide(test, source_fps=src, target_fps=tgt, source_modality="CT", target_modality=tgt_modality).to_dict()
    rep = {"verdict": v, "alpha": 0.05, "modality": tgt_modality, "source_modality": "CT",
           "source": {"n_scans": len(src)}, "target": {"n_scans": len(tgt)}, "fingerprint_table": rows,
           "hu_calibration": [], "tests": []}
    rep["reading"] = reading.plain_reading(rep)
    return rep


def _test(p: float, auc: float = 0.7) -> dict[str, Any]:
    return {"p_value": p, "shift": p <= 0.05, "alpha": 0.05, "classifier": {"auc": auc}}


def test_reading_no_shift_names_the_test_and_says_use_as_validated() -> None:
    src, tgt = _fps(6, spacing=1.25, fov=150, noise=10, seed=0), _fps(6, spacing=1.25, fov=150, noise=10, seed=1)
    rep = _report(src, tgt, _test(0.41))
    text = rep["reading"]
    assert text.startswith("No shift: the 6 target CT scans and the 6 source CT scans look alike")
    assert "p = 0.41 > α = 0.05" in text and text.endswith("The model can be used as validated.")


def test_reading_shift_says_in_what_how_much_and_the_method() -> None:
    src, tgt = _fps(6, spacing=1.25, fov=150, noise=10, seed=0), _fps(6, spacing=5.0, fov=160, noise=25, seed=1)
    rep = _report(src, tgt, _test(0.002))
    text = rep["reading"]
    assert text.startswith("Shift that adaptation can address:") and "p = 0.002 ≤ α = 0.05" in text
    noise = next(r for r in rep["fingerprint_table"] if r["field"] == "noise")
    assert f"noise SD in homogeneous tissue {noise['source_mean']:.3g} HU → {noise['target_mean']:.3g} HU" in text
    assert "voxel spacing, k axis 1.25 mm → 5 mm" in text
    assert "Try `medmtl adapt --method resim`" in text and "coarser or noisier" in text
    page = html.render_report(rep)
    assert "<b>Reading.</b> Shift that adaptation can address" in page and "<code>medmtl adapt --method resim</code>" in page
    assert page.index("Reading.") < page.index("class='verdict")
    md = report_md.render_markdown(rep)
    assert f"**Reading.** {text}" in md and md.index("**Reading.**") < md.index("## Verdict")


def test_reading_shift_without_acquisition_change_recommends_adabn() -> None:
    src, tgt = _fps(6, spacing=1.25, fov=150, noise=10, seed=0), _fps(6, spacing=1.25, fov=150, noise=10, seed=1)
    rep = _report(src, tgt, _test(0.01))
    assert "Try `medmtl adapt --method adabn`" in rep["reading"]
    rep["hu_calibration"] = [{"cohort": "target", "n_scans": 6, "n_flagged": 5, "n_contrast_enhanced": 0,
                              "median_offset_hu": 45.0}]
    assert reading.recommend_method(rep)[0] == "histmatch"
    assert "5 of 6 target scans look HU-miscalibrated: air and fat are shifted by +45 HU" in reading.plain_reading(rep)
    rep["hu_calibration"][0].update(n_flagged=0, n_contrast_enhanced=6, median_soft_tissue_hu=140.0)
    text = reading.plain_reading(rep)
    assert "6 of 6 target scans are contrast-enhanced (soft tissue around 140 HU)" in text
    assert "not an HU miscalibration" in text and "--method adabn" in text


def test_reading_outside_domain_says_do_not_adapt() -> None:
    src, tgt = _fps(6, spacing=1.25, fov=150, noise=10, seed=0), _fps(6, spacing=1.25, fov=420, noise=10, seed=1)
    rep = _report(src, tgt, _test(0.002, auc=1.0))
    assert rep["verdict"]["kind"] == "outside_domain"
    text = rep["reading"]
    assert text.startswith("Outside the training domain:") and "field of view, i axis 150 mm → 420 mm" in text
    assert text.endswith("Do not adapt; retrain or fine-tune the model with labelled scans of this domain.")
    mr = _report(src, [dict(f, modality="MR") for f in tgt], None, tgt_modality="MR")["reading"]
    assert "the target is MR, the model was trained on CT" in mr and "Do not adapt" in mr
