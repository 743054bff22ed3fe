"""`medmtl evaluate`: report files, hand-checked CPM, malformed tables named by row/column/value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medmtl.cli import main

ANNOTATIONS = """seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,site
A,0,0,0,10,1,s1
A,50,0,0,6,0,s1
C,0,0,0,8,,s2
"""
PREDICTIONS = """seriesuid,coordX,coordY,coordZ,probability,diameter_mm,malignancy_prob
A,1,0,0,0.9,8,0.8
A,2,0,0,0.8,100,0.0
A,100,0,0,0.7,5,0.5
A,52.9,0,0,0.5,6,0.3
B,0,0,0,0.6,5,0.5
"""


@pytest.fixture()
def tables(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "ann.csv").write_text(ANNOTATIONS, encoding="utf-8")
    (tmp_path / "pred.csv").write_text(PREDICTIONS, encoding="utf-8")
    return tmp_path / "pred.csv", tmp_path / "ann.csv"


def test_evaluate_writes_the_report(tables: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ann = tables
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--annotations", str(ann), "-o", str(out),
                                  "--n-bootstrap", "50", "--seed", "1"])
    assert r.exit_code == 0, r.output
    for name in ("metrics.json", "metrics.md", "froc.png", "bland_altman.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    # scans A, B, C; lesions: A1 (0.9), A2 (0.5), C missed; FPs 0.7, 0.6 over 3 scans
    assert m["counts"] == {"n_scans": 3, "n_lesions": 3, "n_predictions": 5, "n_detected": 2,
                           "n_false_positives": 2, "n_ignored": 1, "n_scans_without_lesions": 1}
    # curve: (0,1/3) (1/3,1/3) (2/3,1/3) (2/3,2/3): sens@1/8..1/2 = 1/3, @1..8 = 2/3
    assert m["overall"]["cpm"]["value"] == pytest.approx((3 * (1 / 3) + 4 * (2 / 3)) / 7)
    assert m["overall"]["diameter_mae_mm"]["value"] == pytest.approx(1.0)
    assert m["overall"]["malignancy_auc"]["value"] == pytest.approx(1.0)
    lo, hi = m["overall"]["cpm"]["ci95"]
    assert lo <= m["overall"]["cpm"]["value"] <= hi
    assert set(m["per_site"]) == {"s1", "s2", "unknown"}
    assert "| cpm |" in (out / "metrics.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("seriesuid,coordX,coordY,probability\nA,1,2,0.5\n", "lacks column(s) ['coordZ']"),
        ("seriesuid,coordX,coordY,coordZ,probability\nA,1,2,3,0.5\nA,1,abc,3,0.5\n",
         "row 3 column 'coordY' has 'abc'"),
        ("seriesuid,coordX,coordY,coordZ,probability,malignancy_prob\nA,1,2,3,0.5,1.7\n",
         "row 2 column 'malignancy_prob' has 1.7"),
        ("seriesuid,coordX,coordY,coordZ,probability\nZ,1,2,3,0.5\n", "share no scan id"),
    ],
)
def test_malformed_predictions_give_one_error_line(tables: tuple[Path, Path], tmp_path: Path, content: str,
                                                   message: str) -> None:
    _, ann = tables
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    r = CliRunner().invoke(main, ["evaluate", "--predictions", str(bad), "--annotations", str(ann),
                                  "-o", str(tmp_path / "e"), "--n-bootstrap", "0"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and message in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_evaluate_json_carries_the_numbers_of_metrics_json(tmp_path: Path, sample_data: Path) -> None:
    import json

    from click.testing import CliRunner

    from medmtl.cli import main

    ann = sample_data / "ct_site_b" / "annotations.csv"
    rows = [ln.split(",") for ln in ann.read_text(encoding="utf-8").splitlines()[1:]]
    pred = tmp_path / "predictions.csv"
    pred.write_text("seriesuid,coordX,coordY,coordZ,probability\n"
                    + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]},0.9\n" for r in rows), encoding="utf-8")
    res = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--annotations", str(ann),
                                    "-o", str(tmp_path / "e"), "--n-bootstrap", "20", "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    written = json.loads((tmp_path / "e" / "metrics.json").read_text(encoding="utf-8"))
    assert printed["overall"]["cpm"]["value"] == written["overall"]["cpm"]["value"] == 1.0


def test_one_lesion_shows_n_and_no_interval(tmp_path: Path) -> None:
    """With a single lesion every metric says n = 1 and that no interval can be estimated; no
    Bland-Altman plot is drawn (a note instead), and the reliability diagram counts its bins."""
    from PIL import Image

    (tmp_path / "ann.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy\nA,0,0,0,10,1\n",
                                      encoding="utf-8")
    (tmp_path / "pred.csv").write_text("seriesuid,coordX,coordY,coordZ,probability,diameter_mm,malignancy_prob\n"
                                       "A,1,0,0,0.9,8,0.8\nB,40,0,0,0.4,5,0.1\n", encoding="utf-8")
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--annotations",
                                  str(tmp_path / "ann.csv"), "-o", str(out), "--n-bootstrap", "50"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "CPM 1.000 (n = 1 lesion; interval not estimable (n = 1))", r.output
    assert lines[1] == "diameter MAE 2.000 mm (n = 1 detected lesion; interval not estimable (n = 1))"
    assert lines[2] == "malignancy AUC n/a (n = 1 detected lesion with a malignancy label)"
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("cpm", "diameter_mae_mm", "malignancy_ece"):
        entry = m["overall"][key]
        assert entry["n"] == 1 and entry["ci95"] is None and entry["ci_note"] == "interval not estimable (n = 1)"
    assert m["bland_altman"]["note"].startswith("Bland-Altman plot not drawn: n = 1 detected lesion")
    md = (out / "metrics.md").read_text(encoding="utf-8")
    assert "| cpm | 1.000 (interval not estimable (n = 1)) | 1 lesion |" in md and m["bland_altman"]["note"] in md
    with Image.open(out / "bland_altman.png") as im:  # the note, not a plot of one point
        assert im.size[1] < 250


def test_n_beside_each_metric_and_intervals_when_estimable(tables: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ann = tables
    r = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--annotations", str(ann),
                                  "-o", str(tmp_path / "e"), "--n-bootstrap", "50"])
    assert r.exit_code == 0, r.output
    cpm_line = r.output.splitlines()[0]
    assert cpm_line.startswith("CPM 0.524 [") and cpm_line.endswith("(n = 3 lesions)"), cpm_line
    # both detected lesions lie in scan A: resampling scans cannot vary them
    assert ("diameter MAE 1.000 mm (n = 2 detected lesions; interval not estimable (all n = 2 in one scan))"
            in r.output)
    assert "3 scans, 3 lesions, 5 detections; report in" in r.output


def test_plots_count_bins_and_refuse_degenerate_bland_altman() -> None:
    from medmtl.engine import plots
    from medmtl.metrics import bland_altman, reliability_bins

    probs, labels = [0.02, 0.05, 0.08, 0.55, 0.9], [0, 0, 1, 1, 1]
    fig = plots.reliability_figure(reliability_bins(probs, labels), ece=0.1)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["n=1", "n=1", "n=3"] and "(n = 5 lesions)" in fig.axes[0].get_title()
    two = plots.bland_altman_figure([5.0, 6.0], [5.5, 6.5], bland_altman([5.0, 6.0], [5.5, 6.5]))
    assert not two.axes and "n = 2 detected lesions" in two.texts[0].get_text()
    three = plots.bland_altman_figure([5.0, 6.0, 7.0], [5.5, 6.5, 7.0], bland_altman([5.0, 6.0, 7.0], [5.5, 6.5, 7.0]))
    assert three.axes and "(n = 3)" in three.axes[0].get_title()
