"""``medmtl diagnose`` through the CLI: a self-contained HTML report, and clear bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from medmtl.cli import main

_spec = importlib.util.spec_from_file_location("medmtl_tests_shift_helpers_d", Path(__file__).parent / "shift" / "helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
copy_scans, make_checkpoint = helpers.copy_scans, helpers.make_checkpoint


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output  # click >= 8.2: stdout and stderr interleaved


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def cohorts(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohorts")
    return {
        "a": copy_scans(sample_data / "ct_site_a", root / "a", 3),
        "b": copy_scans(sample_data / "ct_site_b", root / "b", 3),
        "one": copy_scans(sample_data / "ct_site_b", root / "one", 1),
        "mri": copy_scans(sample_data / "mri", root / "mri", 2),
    }


def test_report_is_self_contained(cohorts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["b"]), "-o", str(out),
                       "--n-permutations", "50"])
    assert code == 0, text
    page = (out / "report.html").read_text()
    report = json.loads((out / "report.json").read_text())
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) >= 4  # histogram, spacing, embedding, BN shift
    names = [t["name"] for t in report["tests"]]
    assert any("MMD" in n for n in names) and any("classifier" in n for n in names)
    for t in report["tests"]:
        assert t["p_value"] is not None
        assert t["name"].split(" (")[0] in page
    assert page.count("<tr>") >= len(report["tests"])
    assert "verdict" in report and isinstance(report["verdict"]["shift"], bool)


def test_different_modality_is_refused(cohorts: dict[str, Path], tmp_path: Path) -> None:
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["mri"]),
                       "-o", str(tmp_path / "r")])
    assert code != 0
    errs = _error_lines(text)
    assert len(errs) == 1 and "modality" in errs[0] and "CT" in errs[0] and "MR" in errs[0]
    assert "Traceback" not in text and not (tmp_path / "r" / "report.json").exists()


def test_one_scan_cohort_is_refused(cohorts: dict[str, Path], tmp_path: Path) -> None:
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["one"]),
                       "-o", str(tmp_path / "r")])
    assert code != 0
    errs = _error_lines(text)
    assert len(errs) == 1 and "1 scan" in errs[0] and "at least 2" in errs[0] and "3 for the domain-classifier" in errs[0]


def test_checkpoint_without_reference_stats(cohorts: dict[str, Path], tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", None)
    code, text = _run(["diagnose", "--source", str(ckpt), "--target", str(cohorts["b"]), "-o", str(tmp_path / "r")])
    assert code != 0
    errs = _error_lines(text)
    assert len(errs) == 1 and "no reference statistics" in errs[0] and "compute_reference_stats" in errs[0]
