"""The three verdicts of ``medmtl diagnose`` on real phantom cohorts (issue #16, Must show)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medmtl.cli import main


def _diagnose(source: Path, target: Path, out: Path) -> dict:
    res = CliRunner().invoke(main, ["diagnose", "--source", str(source), "--target", str(target), "-o", str(out),
                                    "--n-permutations", "500"])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _subset(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


def test_halves_of_one_site_give_no_shift(site_a_many: Path, tmp_path: Path) -> None:
    """Even- against odd-numbered scans of one site (6 vs 6 fresh site-A phantoms)."""
    files = sorted(p.name for p in site_a_many.glob("*.nii.gz"))
    assert len(files) == 12
    even = _subset(site_a_many, tmp_path / "even", files[0::2])
    odd = _subset(site_a_many, tmp_path / "odd", files[1::2])
    report = _diagnose(even, odd, tmp_path / "r")
    assert report["verdict"]["kind"] == "no_shift", report["verdict"]
    assert report["shift_test"]["p_value"] > 0.05 and not report["shift_test"]["exact"]


def test_halves_of_the_committed_site_a_scans_give_no_shift(sample_data: Path, tmp_path: Path) -> None:
    """The issue's own check: even- against odd-numbered committed site A scans (4 vs 4, exact test)."""
    files = sorted(p.name for p in (sample_data / "ct_site_a").glob("*.nii.gz"))
    assert len(files) == 8
    even = _subset(sample_data / "ct_site_a", tmp_path / "even", files[0::2])
    odd = _subset(sample_data / "ct_site_a", tmp_path / "odd", files[1::2])
    report = _diagnose(even, odd, tmp_path / "r")
    assert report["verdict"]["kind"] == "no_shift", report["verdict"]
    assert report["shift_test"]["p_value"] > 0.05 and report["shift_test"]["exact"]


def test_three_against_two_scans_are_too_few_to_test(sample_data: Path, tmp_path: Path) -> None:
    """3 vs 2 scans: the smallest attainable p-value is 0.1 > alpha, so the shift test is refused, not
    judged; the report is fingerprint-only."""
    files = sorted(p.name for p in (sample_data / "ct_site_a").glob("*.nii.gz"))[:5]
    even = _subset(sample_data / "ct_site_a", tmp_path / "even", files[0::2])
    odd = _subset(sample_data / "ct_site_a", tmp_path / "odd", files[1::2])
    res = CliRunner().invoke(main, ["diagnose", "--source", str(even), "--target", str(odd), "-o", str(tmp_path / "r")])
    assert res.exit_code == 0 and "smallest possible p-value is 0.1" in res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["verdict"]["kind"] == "not_tested" and report["tests"] == []


def test_site_a_against_site_b_is_a_shift_adaptation_can_address(sample_data: Path, tmp_path: Path) -> None:
    report = _diagnose(sample_data / "ct_site_a", sample_data / "ct_site_b", tmp_path / "r")
    assert report["verdict"]["kind"] == "shift", report["verdict"]
    assert report["shift_test"]["p_value"] <= 0.05 and "medmtl adapt" in report["verdict"]["advice"]
    # one method, named by the reading: site B is a coarser, noisier acquisition -> re-simulation
    from medmtl.shift.reading import recommend_method

    assert recommend_method(report)[0] == "resim" and "--method resim" in report["reading"]


def test_a_small_field_of_view_is_outside_the_training_domain(sample_data: Path, tmp_path: Path) -> None:
    """A 67 × 67 × 40 mm field of view (a small crop, as of another body region) against whole-chest CT."""
    import nibabel as nib

    crops = tmp_path / "crops"
    crops.mkdir()
    for f in sorted((sample_data / "ct_site_b").glob("*.nii.gz"))[:5]:
        img = nib.load(str(f))
        arr = np.asarray(img.dataobj)
        i0, j0, k0 = arr.shape[0] // 2 - 24, arr.shape[1] // 2 - 24, arr.shape[2] // 2 - 4
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ np.array([i0, j0, k0]) + img.affine[:3, 3]
        nib.save(nib.Nifti1Image(arr[i0:i0 + 48, j0:j0 + 48, k0:k0 + 8], affine, img.header), str(crops / f.name))
    report = _diagnose(sample_data / "ct_site_a", crops, tmp_path / "r")
    v = report["verdict"]
    assert v["kind"] == "outside_domain", v
    assert "fov_i_mm" in v["text"] and "do not adapt" in v["advice"]


@pytest.mark.parametrize("kind", ["no_shift", "shift", "outside_domain"])
def test_report_page_names_the_verdict(kind: str) -> None:
    from medmtl.shift.html import render_report

    page = render_report({"verdict": {"kind": kind, "shift": kind != "no_shift", "reasons": ["r."], "advice": "a.",
                                      "rule": "the rule"}, "tests": []})
    title = {"no_shift": "No shift detected", "shift": "Shift detected that adaptation can address",
             "outside_domain": "Outside the training domain"}[kind]
    assert title in page and "Decision rule: the rule" in page
