"""``medmtl diagnose`` through the CLI: a self-contained HTML report, prediction-level tests with
``--checkpoint``, LogME ranking with ``--rank-encoders``, and clear bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import re
from html.parser import HTMLParser
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


class _Page(HTMLParser):
    """The parts of a report page a reader sees: text (outside ``<style>``), ``<code>`` spans,
    images' ``alt`` texts and table cells by their CSS class."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.code: list[str] = []
        self.alts: list[str | None] = []
        self.red_cells: list[str] = []
        self._stack: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.alts.append(dict(attrs).get("alt"))
            return
        self._stack.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if self._stack and self._stack[-1][0] == tag:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        tags = [t for t, _ in self._stack]
        if "style" in tags:
            return
        self.text.append(data)
        if "code" in tags:
            self.code.append(data)
        if self._stack and "sig" in (self._stack[-1][1].get("class") or ""):
            self.red_cells.append(data)

    @property
    def visible(self) -> str:
        return " ".join(self.text)


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
    assert len(srcs) >= 5  # example slices, histogram, spacing, embedding, BN shift
    names = [t["name"] for t in report["tests"]]
    assert any("MMD" in n for n in names) and any("classifier" in n for n in names)
    for t in report["tests"]:
        assert t["p_value"] is not None
    for t in report["tests"]:
        if t["family"] == "feature":
            assert t["name"].split(" (")[0] in page
    assert page.count("<tr>") >= len(report["tests"])
    assert "verdict" in report and isinstance(report["verdict"]["shift"], bool)
    check_readable_page(page, report)
    reading = report["reading"]  # the plain-language reading opens both pages (tests/shift/test_reading.py)
    assert reading.split(":")[0] in ("No shift", "Shift that adaptation can address", "Outside the training domain")
    assert "HU-miscalibrated: air and fat are shifted" in reading  # site B's scale offset, not enhancement
    assert page.index("<b>Reading.</b>") < page.index("class='verdict")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Domain-shift report") and f"**Reading.** {reading}" in md
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["b"]), "-o", str(out),
                       "--n-permutations", "50", "-q"])
    assert code == 0, text  # a rerun replaces medmtl's own report.md


def check_readable_page(page: str, report: dict) -> None:
    """What a radiologist reads (issue #14): no literal markdown, real alt texts, named PCA axes,
    human field names with units, descriptive rows never coloured as decisions, capped effect
    sizes said as such, p-values never below what the permutations can reach, a BN reading."""
    seen = _Page(page)
    assert "`" not in seen.visible  # code spans are rendered, not shown as backticks
    assert seen.alts and all(a and a != "figure" and len(a) > 40 for a in seen.alts), seen.alts
    assert any(a.startswith("Middle axial slice of the source scan") and "W 1500 / L -600 HU" in a
               for a in seen.alts if a)
    axes = report["embedding"]["axes"]
    assert re.fullmatch(r"PC1 \(\d+\.\d% of the variance\)", axes[0]) and axes[1].startswith("PC2 (")
    assert any(axes[0] in a and axes[1] in a for a in seen.alts if a)
    rows = report["fingerprint_table"]
    labels = {r["field"]: r["label"] for r in rows}
    assert labels["p0_5"] == "0.5th percentile intensity (HU)" and labels["fov_i_mm"] == "field of view, i axis (mm)"
    assert labels["slice_thickness"] == "slice spacing (mm)"  # NIfTI: no SliceThickness tag
    for field, label in labels.items():
        assert label in seen.visible
        if "_" in field or any(c.isdigit() for c in field):  # p0_5, fov_i_mm …: never shown raw
            assert not re.search(rf"\b{field}\b", seen.visible), field
    decision = [f"{t['p_value']:.3g}" for t in report["tests"] if t["family"] == "feature"]
    assert all(cell in decision for cell in seen.red_cells), seen.red_cells  # only decision p-values in red
    floor = report["fingerprint_p"]["smallest_p"]
    assert floor == report["shift_test"]["smallest_p"]
    assert all(r["holm_p"] >= floor - 1e-12 for r in rows) and all(
        t["p_value"] >= floor - 1e-12 for t in report["tests"] if t.get("descriptive"))
    numbers = [float(r["g_text"].replace("−", "-")) for r in rows if re.fullmatch(r"[−-]?\d+(\.\d+)?", r["g_text"])]
    assert numbers and all(abs(g) < 10 for g in numbers)  # |g| > 10 is written "> 10" / "< −10", never 99.4
    assert all(r["g_text"] in ("constant in each cohort", "> 10", "< −10") for r in rows
               if r["hedges_g"] is not None and abs(r["hedges_g"]) > 10)
    assert "descriptive effect sizes: the verdict does not use them" in seen.visible
    assert "Reading: the target's activations are" in seen.visible


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


def test_cohorts_too_small_to_reach_alpha_get_a_fingerprint_only_report(cohorts: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """3 vs 3 scans can never reach p <= 0.05: the test is refused (said in the verdict), the
    descriptive part is written."""
    out = tmp_path / "r"
    code, text = _run(["diagnose", "--source", str(cohorts["b3"]), "--target", str(cohorts["b3"]), "-o", str(out)])
    assert code == 0, text
    assert text.startswith("NOT TESTED: ") and "with 3 source and 3 target scans" in text
    assert "at least 4 per side" in text and "Traceback" not in text
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["verdict"]["kind"] == "not_tested" and report["verdict"]["shift"] is None
    assert report["tests"] == [] and report["shift_test"] is None and report["fingerprint_table"]


def test_one_scan_target_gets_a_fingerprint_only_report(cohorts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    code, text = _run(["diagnose", "--source", str(cohorts["a"]), "--target", str(cohorts["one"]), "-o", str(out)])
    assert code == 0, text
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    v = report["verdict"]
    assert v["kind"] == "not_tested" and v["p_value"] is None
    assert v["reasons"] == ["No shift test was run: the target cohort has 1 scan; shift tests need at least 2 scans "
                            "per cohort (3 for the domain-classifier test); add scans to the target."]
    assert report["tests"] == [] and report["mmd"] is None and report["classifier"] is None
    rows = {r["field"]: r for r in report["fingerprint_table"]}
    assert rows["noise"]["target_sd"] is None and rows["noise"]["source_sd"] is not None  # one scan: no SD
    assert rows["spacing_k"]["n_target_outside_source_range"] == 1  # site B's 5 mm slices vs site A's 1.25 mm
    page = (out / "report.html").read_text(encoding="utf-8")
    seen = _Page(page)
    assert "Not tested: fingerprint only." in seen.visible and "No shift test was run" in seen.visible
    assert "Decision: feature-level tests" not in seen.visible and "`" not in seen.visible
    assert "slice spacing (mm)" in seen.visible and "Hedges' g" in seen.visible
    assert seen.alts and all(a and len(a) > 40 for a in seen.alts)
    assert any(a.startswith("Middle axial slice of the source scan") and "target scan ct_b_0000" in a
               for a in seen.alts if a)


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
    # prediction rows are descriptive: the decision uses the two feature tests only (both must reject)
    assert all(t.get("descriptive") for t in pred)
    assert report["classifier"] is not None
    assert report["shift_test"]["p_value"] == max(report["mmd"]["p_value"], report["classifier"]["p_value"])


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


def test_checkpoint_source_and_one_target_scan(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint's reference statistics against one target scan: fingerprint-only, said plainly."""
    ckpt = make_checkpoint(tmp_path / "ckpt", cohorts["a"])
    out = tmp_path / "r"
    code, text = _run(["diagnose", "--source", str(ckpt), "--target", str(cohorts["one"]), "-o", str(out)])
    assert code == 0, text
    v = json.loads((out / "report.json").read_text(encoding="utf-8"))["verdict"]
    assert v["kind"] == "not_tested" and "the target scan lies outside the source's range in" in v["text"]
    assert "slice spacing (mm)" in v["text"]
    seen = _Page((out / "report.html").read_text(encoding="utf-8"))
    assert any(a and a.startswith("Middle axial slice of the target scan") for a in seen.alts)  # no source scan
