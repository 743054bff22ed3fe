"""``medmtl diagnose`` through the CLI: a self-contained HTML report, prediction-level tests with
``--checkpoint``, LogME ranking with ``--rank-encoders``, and clear bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medmtl.cli import main

_spec = importlib.util.spec_from_file_location("medmtl_tests_shift_helpers_d", Path(__file__).parent / "shift" / "helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
copy_scans, make_checkpoint = helpers.copy_scans, helpers.make_checkpoint


@pytest.fixture(scope="module")
def shared(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 annotated site-A scans, 2 site-B scans and a coarse (6 mm) checkpoint (built once per session)."""
    return helpers.shared_setup(sample_data, tmp_path_factory)


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output  # click >= 8.2: stdout and stderr interleaved


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def cohorts(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohorts")
    return {
        "a": copy_scans(sample_data / "ct_site_a", root / "a", 4, annotations=True),
        "b": copy_scans(sample_data / "ct_site_b", root / "b", 4),
        "b3": copy_scans(sample_data / "ct_site_b", root / "b3", 3),
        "one": copy_scans(sample_data / "ct_site_b", root / "one", 1),
        "mri": copy_scans(sample_data / "mri", root / "mri", 4),
    }


def test_report_is_self_contained(cohorts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["b"]), "-o", str(out),
                       "--n-permutations", "50"])
    assert code == 0, text
    page = (out / "report.html").read_text(encoding="utf-8")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
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


def test_another_modality_is_outside_the_training_domain(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """An MRI cohort against a CT source: a fingerprint report whose verdict is ``outside_domain``."""
    out = tmp_path / "r"
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["mri"]), "-o", str(out)])
    assert code == 0, text
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    v = report["verdict"]
    assert v["kind"] == "outside_domain" and v["shift"] and "labelled MR" in v["advice"]
    assert "The target is MR, the source CT." in v["text"] and report["tests"] == [] and report["mmd"] is None
    assert "Outside the training domain" in (out / "report.html").read_text(encoding="utf-8")
    res = CliRunner().invoke(main, ["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["mri"]),
                                    "-o", str(tmp_path / "r2"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["verdict"]["kind"] == "outside_domain"


def test_cohorts_too_small_to_reach_alpha_are_refused(cohorts: dict[str, Path], tmp_path: Path) -> None:
    code, text = _run(["diagnose", "--source", str(cohorts["b3"]), "--target", str(cohorts["b3"]),
                       "-o", str(tmp_path / "r")])
    assert code != 0
    errs = _error_lines(text)
    assert len(errs) == 1 and "with 3 source and 3 target scans" in errs[0] and "at least 4 per side" in errs[0]
    assert "Traceback" not in text and not (tmp_path / "r").exists()


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
    assert len(errs) == 1 and "no reference statistics" in errs[0] and "add_reference_stats" in errs[0]


def test_checkpoint_gives_prediction_level_tests(shared: dict[str, Path], cohorts: dict[str, Path],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["b"]), "-o", str(out),
                       "--checkpoint", str(shared["ckpt"]), "--n-permutations", "200"])
    assert code == 0, text
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["feature_extractor"]["kind"] == "checkpoint"
    assert report["bn_shift"]["network"] == "checkpoint encoder"
    pred = [t for t in report["tests"] if t["family"] == "prediction"]
    fields = {r["field"] for r in report["prediction_shift"]}
    assert len(pred) == len(report["prediction_shift"]) >= 3, fields
    assert all(0.0 < t["p_value"] <= 1.0 and 0.0 <= t["statistic"] <= 1.0 for t in pred)  # KS statistic and p
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(t["name"].split(" (")[0] in page for t in pred)
    # prediction rows are descriptive: the decision uses the two feature tests only (min-P)
    assert all(t.get("descriptive") for t in pred)
    assert report["mmd"]["adjusted_p"] >= report["mmd"]["p_value"] and report["classifier"] is not None


def test_rank_encoders(shared: dict[str, Path], cohorts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rank"
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["b"]), "-o", str(out),
                       "--checkpoint", str(shared["ckpt"]), "--rank-encoders", "--n-permutations", "20"])
    assert code == 0, text
    rows = json.loads((out / "report.json").read_text(encoding="utf-8"))["encoder_ranking"]
    scored = [r for r in rows if "error" not in r]
    # the embedded encoder has weights: every 3D adapter of it is ranked
    assert {(r["encoder"], r["adapter"]) for r in scored} >= {("efficientnet-lite0", a) for a in ("inflate", "acs", "2.5d")}
    means = [r["logme_mean"] for r in scored]
    assert all(m is not None and np.isfinite(m) for m in means) and means == sorted(means, reverse=True)
    assert all(r["n_lesions"] >= 2 and np.isfinite(r["logme_size"]) for r in scored)
