"""`medmtl fuse`: a model's and the classical detector's folders of the same scans into one table."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medmtl.cli import main

IDS = ("ct_a_0000", "ct_a_0001")


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory, sample_data: Path, tiny_checkpoint: Path) -> dict[str, Path]:
    """Real `medmtl predict` (tiny checkpoint) and `medmtl classical` folders of two site A scans."""
    root = tmp_path_factory.mktemp("fuse")
    scans = root / "scans"
    scans.mkdir()
    for sid in IDS:
        shutil.copy(sample_data / "ct_site_a" / f"{sid}.nii.gz", scans)
    model, classical = root / "model", root / "classical"
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(tiny_checkpoint), str(scans), "-o", str(model),
                                  "--device", "cpu", "--overlap", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["classical", str(scans), "-o", str(classical), "--no-progress"])
    assert r.exit_code == 0, r.output
    return {"scans": scans, "model": model, "classical": classical}


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _xyz(r: dict[str, str]) -> tuple[float, float, float]:
    return float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])


def test_fuse_keeps_every_detection_and_scores_matches_by_noisy_or(systems: dict[str, Path], tmp_path: Path,
                                                                  sample_data: Path) -> None:
    out = tmp_path / "fused"
    r = CliRunner().invoke(main, ["fuse", str(systems["model"]), str(systems["classical"]), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n_done"] == len(IDS)
    model, classical, fused = _rows(systems["model"]), _rows(systems["classical"]), _rows(out)
    assert len(fused) <= len(model) + len(classical)
    for src in (model, classical):  # every input detection is in the fused table, within 5 mm, no weaker
        for det in src:
            near = [f for f in fused if f["seriesuid"] == det["seriesuid"] and math.dist(_xyz(f), _xyz(det)) <= 5.0]
            assert near and max(float(f["probability"]) for f in near) >= float(det["probability"]) - 1e-9
    for det in model:  # the model's rows keep their centre and attributes
        same = [f for f in fused if f["seriesuid"] == det["seriesuid"] and _xyz(f) == pytest.approx(_xyz(det))]
        assert same and same[0]["diameter_mm"] == det["diameter_mm"]
    run = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["run"]
    assert run["method"] == "fusion" and run["rule"] == "noisy-or"
    assert [i["method"] for i in run["inputs"]] == ["predict", "classical"]
    ev = CliRunner().invoke(main, ["evaluate", "--predictions", str(out / "predictions.csv"), "--annotations",
                                   str(sample_data / "ct_site_a" / "annotations.csv"), "-o", str(tmp_path / "ev"),
                                   "--n-bootstrap", "0", "-q"])
    assert ev.exit_code == 0, ev.output
    # the fused folder exports like a predict folder: each scan's source is found again from the record
    ex = CliRunner().invoke(main, ["export", str(out), "--format", "monai-json", "-o", str(tmp_path / "monai")])
    assert ex.exit_code == 0, ex.output
    # a rerun with the same inputs is accepted; other inputs into the same folder are refused
    assert CliRunner().invoke(main, ["fuse", str(systems["model"]), str(systems["classical"]), "-o", str(out)]).exit_code == 0
    other = CliRunner().invoke(main, ["fuse", str(systems["classical"]), str(systems["model"]), "-o", str(out)])
    assert other.exit_code != 0 and "already holds predictions of another run" in other.output


def test_a_scan_one_input_lacks_is_a_failure_naming_that_input(systems: dict[str, Path], tmp_path: Path) -> None:
    partial = tmp_path / "classical_one"
    one = tmp_path / "one_scan"
    one.mkdir()
    shutil.copy(systems["scans"] / f"{IDS[0]}.nii.gz", one)
    assert CliRunner().invoke(main, ["classical", str(one), "-o", str(partial), "-q"]).exit_code == 0
    out = tmp_path / "fused"
    r = CliRunner().invoke(main, ["fuse", str(systems["model"]), str(partial), "-o", str(out)])
    assert r.exit_code == 1
    assert "1 of 2 scans failed" in r.output
    failures = json.loads((out / "failures.json").read_text(encoding="utf-8"))
    assert [f["seriesuid"] for f in failures] == [IDS[1]] and str(partial) in failures[0]["reason"]
    assert {row["seriesuid"] for row in _rows(out)} <= {IDS[0]}


@pytest.mark.parametrize(("args", "words"), [
    (["{model}"], "at least 2 prediction folders"),
    (["{model}", "{model}"], "given twice"),
    (["{model}", "{scans}"], "holds no predictions.json"),
])
def test_bad_inputs_get_one_error_line_and_no_output(systems: dict[str, Path], tmp_path: Path, args: list[str],
                                                     words: str) -> None:
    out = tmp_path / "fused"
    r = CliRunner().invoke(main, ["fuse", *(a.format(**{k: str(v) for k, v in systems.items()}) for a in args),
                                  "-o", str(out)])
    assert r.exit_code != 0 and words in r.output, r.output
    assert not out.exists()


def test_a_broken_predictions_json_is_one_error_line(systems: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(systems["classical"], broken)
    data = json.loads((broken / "predictions.json").read_text(encoding="utf-8"))
    sid = sorted(data["scans"])[0]
    data["scans"][sid]["lesions"] = [{"coordX": 1.0, "coordY": 2.0}]
    (broken / "predictions.json").write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "fused"
    r = CliRunner().invoke(main, ["fuse", str(systems["model"]), str(broken), "-o", str(out)])
    assert r.exit_code == 1 and f"scan '{sid}' lesion 1 lacks" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_out_may_not_be_an_input(systems: dict[str, Path]) -> None:
    r = CliRunner().invoke(main, ["fuse", str(systems["model"]), str(systems["classical"]), "-o", str(systems["model"])])
    assert r.exit_code != 0 and "is one of the input folders" in r.output


def test_bench_fusion_scores_the_three_systems_on_the_same_scans(systems: dict[str, Path], tmp_path: Path,
                                                                  sample_data: Path) -> None:
    """`python -m bench.fusion`: its CPMs equal `medmtl evaluate`'s, and a paired difference is a difference."""
    from bench import fusion

    ann = sample_data / "ct_site_a" / "annotations.csv"
    assert fusion.main(["--model", str(systems["model"]), "--classical", str(systems["classical"]),
                        "--annotations", str(ann), "--out", str(tmp_path), "--n-boot", "50"]) == 0
    res = json.loads((tmp_path / "fusion.json").read_text(encoding="utf-8"))
    for name, folder in (("fused", tmp_path / "fused"), ("classical", systems["classical"])):
        ev = CliRunner().invoke(main, ["evaluate", "--predictions", str(folder / "predictions.csv"), "--annotations",
                                       str(ann), "-o", str(tmp_path / f"ev_{name}"), "--n-bootstrap", "0", "--json"])
        assert ev.exit_code == 0, ev.output
        cpm = json.loads((tmp_path / f"ev_{name}" / "metrics.json").read_text(encoding="utf-8"))["overall"]["cpm"]["value"]
        assert res["cpm"][name][0] == pytest.approx(cpm)
    diff = res["diff"]["fused - classical"]
    assert diff[0] == pytest.approx(res["cpm"]["fused"][0] - res["cpm"]["classical"][0]) and diff[1] <= diff[2]
