"""Annotation tables: CSV and datalist reading, validation messages, writing, inside checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medmtl.errors import AnnotationError, PathEscapeError
from medmtl.io.annotations import (
    check_lesions_inside,
    check_lesions_inside_geometry,
    group_by_scan,
    read_annotations,
    write_annotations_csv,
)
from medmtl.io.discover import discover_scans
from medmtl.io.read import read_scan
from medmtl.io.types import Lesion

from .conftest import LESION_LPS

HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm"


def _csv(tmp_path, text, name="annotations.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_luna16_subset(tmp_path):
    path = _csv(tmp_path, f"{HEADER}\n1.3.6.1.4.1.14519,-128.69,-175.31,-298.38,5.65\n")
    (les,) = read_annotations(path)
    assert les.seriesuid == "1.3.6.1.4.1.14519"
    assert les.center_lps == (-128.69, -175.31, -298.38)
    assert les.diameter_mm == 5.65 and les.malignancy is None and les.extra == {}


def test_full_table_partial_labels_and_extra_columns(tmp_path):
    text = (
        "\ufeffseriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,lesion_id,site,bayes_malignancy_prob,margin\n"
        "a,1,2,3,4,1,a-1,site_a,0.83,spiculated\n"
        "a,5,6,7,8,,a-2,site_a,,smooth\n"
        "b,0.5,0.25,-1,12,0.3,,,0.1,lobulated\n"
    )
    lesions = read_annotations(_csv(tmp_path, text))
    assert [les.malignancy for les in lesions] == [1.0, None, 0.3]
    assert [les.lesion_id for les in lesions] == ["a-1", "a-2", None]
    assert lesions[0].site == "site_a" and lesions[2].site is None
    assert lesions[0].extra == {"bayes_malignancy_prob": 0.83, "margin": "spiculated"}
    assert lesions[1].extra["bayes_malignancy_prob"] is None
    groups = group_by_scan(lesions)
    assert list(groups) == ["a", "b"] and len(groups["a"]) == 2


def test_write_then_read_round_trip(tmp_path):
    lesions = [
        Lesion("s1", (1.123456789, -2.5, 3.0), 6.25, 1.0, "l1", "site_b", {"bayes_malignancy_prob": 0.7}),
        Lesion("s2", (0.0, 0.0, -10.0), 3.0),
    ]
    path = write_annotations_csv(tmp_path / "out" / "annotations.csv", lesions)
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == f"{HEADER},malignancy,lesion_id,site,bayes_malignancy_prob"
    back = read_annotations(path)
    assert back[0] == lesions[0]
    assert back[1].center_lps == lesions[1].center_lps and back[1].malignancy is None
    assert back[1].extra == {"bayes_malignancy_prob": None}
    assert [p.name for p in path.parent.iterdir()] == ["annotations.csv"]  # no temp file left


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("seriesuid,coordX,coordY,diameter_mm\na,1,2,4\n", r"missing column\(s\) coordZ; found: seriesuid, coordX, coordY, diameter_mm"),
        (f"{HEADER}\na,1,2,3,4\na,1,abc,3,4\n", r"annotations\.csv row 2 \(line 3\), column coordY: 'abc' is not a number; expected a coordinate in mm"),
        (f"{HEADER}\na,1,2,nan,4\n", r"row 1 .*column coordZ: 'nan' is not a number"),
        (f"{HEADER}\na,1,2,3,0\n", r"row 1 .*column diameter_mm: '0' is not > 0"),
        (f"{HEADER}\na,1,2,3,-2\n", r"column diameter_mm: '-2' is not > 0"),
        (f"{HEADER},malignancy\na,1,2,3,4,1.5\n", r"column malignancy: '1\.5' is outside \[0, 1\]"),
        (f"{HEADER}\n,1,2,3,4\n", r"column seriesuid: value is empty"),
        (f"{HEADER}\na,1,2,3,4,9\n", r"row 1 .*6 fields for 5 columns"),
        (f"{HEADER}\na,1,2\n", r"row 1 .*fewer fields than the 5 columns"),
        ("", r"is empty; expected a header row"),
    ],
)
def test_csv_validation_errors(tmp_path, text, pattern):
    with pytest.raises(AnnotationError, match=pattern):
        read_annotations(_csv(tmp_path, text))


def test_unknown_suffix(tmp_path):
    with pytest.raises(AnnotationError, match=r"suffix '\.txt' not supported; allowed: \.csv, \.json"):
        read_annotations(_csv(tmp_path, HEADER, name="a.txt"))


def _datalist(tmp_path, data):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_monai_datalist(tmp_path):
    data = {
        "training": [
            {"image": "images/scan_01.nii.gz", "box": [[10.0, -20.0, 30.0, 4.0, 6.0, 8.0]], "label": [0]},
            {"image": "scan_02.mha", "box": [], "label": []},
        ],
        "validation": [{"image": "scan_03.nii.gz", "box": [[1, 2, 3, 3, 3, 3]], "label": [0], "malignancy": [1]}],
    }
    lesions = read_annotations(_datalist(tmp_path, data))
    assert [les.seriesuid for les in lesions] == ["scan_01", "scan_03"]
    assert lesions[0].center_lps == (10.0, -20.0, 30.0)  # cccwhd in LPS (ITK) world mm, unchanged
    assert lesions[0].diameter_mm == pytest.approx(6.0) and lesions[0].malignancy is None
    assert lesions[1].malignancy == 1.0 and lesions[0].extra == {"label": 0}


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ({"image": "a.nii.gz", "box": [[1, 2, 3, 4]], "label": [0]}, r"training\[0\] box 0: .* expected \[cx, cy, cz, w, h, d\]"),
        ({"image": "a.nii.gz", "box": [[1, "x", 3, 4, 4, 4]], "label": [0]}, r"training\[0\] box 0, cy: 'x' is not a number"),
        ({"image": "a.nii.gz", "box": [[1, 2, 3, 4, 0, 4]], "label": [0]}, r"has a size <= 0"),
        ({"image": "a.nii.gz", "box": [[1, 2, 3, 4, 4, 4]], "label": []}, r"'box' and 'label' must be lists of the same length"),
        ({"box": []}, r"training\[0\]: entry has no 'image' path"),
    ],
)
def test_datalist_validation_errors(tmp_path, entry, pattern):
    with pytest.raises(AnnotationError, match=pattern):
        read_annotations(_datalist(tmp_path, {"training": [entry]}))


def test_datalist_path_escape_refused(tmp_path):
    path = _datalist(tmp_path, {"training": [{"image": "../x.nii.gz", "box": [], "label": []}]})
    with pytest.raises(PathEscapeError, match=r"manifest path '\.\./x\.nii\.gz' resolves to .*outside the manifest folder"):
        read_annotations(path)


def test_check_lesions_inside(scene, caplog):
    refs, _ = discover_scans(scene.root)
    scans = [read_scan(r) for r in refs if r.format in ("mha", "nifti")]
    inside = [Lesion(s.scan_id, LESION_LPS, 5.0) for s in scans]
    assert check_lesions_inside(inside, scans) == []
    unknown = [*inside, Lesion("nobody", (0.0, 0.0, 0.0), 5.0)]
    warnings = check_lesions_inside(unknown, scans)
    assert warnings == ["1 lesion(s) refer to seriesuid nobody, which matches no scan"]
    assert "matches no scan" in caplog.text
    # a RAS-signed coordinate (x, y negated) falls outside: the classic convention mistake
    ras_like = (-LESION_LPS[0], -LESION_LPS[1], LESION_LPS[2])
    bad = [*inside, Lesion("scene", ras_like, 5.0, lesion_id="n7")]
    with pytest.raises(AnnotationError, match=r"lesion 3 \(lesion_id n7\) of scan scene at LPS \(108\.60, -89\.05, -277\.50\) mm lies outside the scan \(LPS extent x -120\.8\.\.-92\.8"):
        check_lesions_inside(bad, scans)


def test_check_lesions_inside_geometry_half_voxel_margin():
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-oriented 1 mm grid at the origin
    geometry = {"s": (affine, (10, 10, 10))}
    assert check_lesions_inside_geometry([Lesion("s", (9.49, -0.49, 4.0), 1.0)], geometry) == []
    with pytest.raises(AnnotationError, match="lesion 1 of scan s"):
        check_lesions_inside_geometry([Lesion("s", (9.51, 0.0, 4.0), 1.0)], geometry)
