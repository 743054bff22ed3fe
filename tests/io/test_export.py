"""DICOM SEG / SR and MONAI detection JSON export (issue #14): written files read back with
pydicom, highdicom and MONAI, checked against the prediction table."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("highdicom")
import highdicom as hd  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from medmtl.engine.export import export_predictions  # noqa: E402
from medmtl.errors import ConfigError, ExportError  # noqa: E402
from medmtl.io import coords  # noqa: E402
from medmtl.io.dicom_export import Algorithm, build_seg, read_source_series, sphere_masks  # noqa: E402
from medmtl.io.dicom_write import write_dicom_series  # noqa: E402
from medmtl.io.types import Detection  # noqa: E402

_spec = importlib.util.spec_from_file_location("medmtl_tests_export_helpers", Path(__file__).with_name("export_helpers.py"))
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

ALL = ["dicom-seg", "dicom-sr", "monai-json"]


def _source() -> list[pydicom.Dataset]:
    return [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(helpers.DICOM_SERIES.glob("*.dcm"))]


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path, dict]:
    pred = helpers.example_folder(tmp_path / "pred")
    out = tmp_path / "out"
    summary = export_predictions(pred_dir=pred, out_dir=out, formats=ALL)
    return pred, out, summary


def _one(out: Path, suffix: str) -> Path:
    files = sorted(out.glob(f"*{suffix}"))
    assert len(files) == 1, files
    return files[0]


def test_seg_reads_back_with_one_segment_per_lesion_and_the_source_instances(exported) -> None:
    pred, out, summary = exported
    rows = helpers.read_table(pred)
    seg = hd.seg.segread(str(_one(out, "_seg.dcm")))
    src = _source()
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.number_of_segments == len(rows) == 2
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Nodule 1", "Nodule 2"]
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_type == codes.SCT.Nodule
    assert desc.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert desc.algorithm_identification[0].AlgorithmName == summary["algorithm"]["name"]
    assert desc.algorithm_identification[0].AlgorithmVersion == summary["algorithm"]["version"]
    assert helpers.WEIGHTS[:16] in summary["algorithm"]["version"]
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src[0].SeriesInstanceUID == rows[0]["seriesuid"]
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {d.SOPInstanceUID for d in src}
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID and seg.SeriesInstanceUID != src[0].SeriesInstanceUID


def test_seg_spheres_sit_at_the_predicted_centres_with_the_predicted_volume(exported) -> None:
    pred, out, _ = exported
    rows = helpers.read_table(pred)
    vol = hd.seg.segread(str(_one(out, "_seg.dcm"))).get_volume(combine_segments=False)
    voxel_mm3 = 0.9 * 0.9 * 1.25
    for n, row in enumerate(rows):
        idx = np.argwhere(vol.array[..., n] > 0)
        lps = (np.c_[idx, np.ones(len(idx))] @ vol.affine.T)[:, :3]  # highdicom's affine: LPS mm
        centre = [float(row[c]) for c in ("coordX", "coordY", "coordZ")]
        np.testing.assert_allclose(lps.mean(axis=0), centre, atol=0.25)
        d = float(row["diameter_mm"])
        assert np.linalg.norm(lps - centre, axis=1).max() <= d / 2 + 1e-6
        assert len(idx) * voxel_mm3 == pytest.approx(np.pi / 6 * d**3, rel=0.15)


def test_sr_points_diameters_and_probabilities_equal_the_table(exported) -> None:
    pred, out, _ = exported
    rows = helpers.read_table(pred)
    sr = hd.sr.srread(str(_one(out, "_sr.dcm")))
    seg = hd.seg.segread(str(_one(out, "_seg.dcm")))
    src = _source()
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(rows)
    for n, (group, row) in enumerate(zip(groups, rows)):
        assert group.tracking_identifier == f"Nodule {n + 1}"
        assert group.tracking_uid == seg.get_segment_description(n + 1).tracking_uid
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        assert group.roi.frame_of_reference_uid == src[0].FrameOfReferenceUID
        np.testing.assert_allclose(group.roi.value[0], [float(row[c]) for c in ("coordX", "coordY", "coordZ")],
                                   atol=1e-4)  # SCOORD3D is float32
        values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values[codes.SCT.Diameter.value] == (pytest.approx(float(row["diameter_mm"])), "mm")
        assert values[codes.DCM.CertaintyOfFinding.value] == (pytest.approx(float(row["probability"])), "1")
        assert values[codes.DCM.ProbabilityOfCancer.value] == (pytest.approx(float(row["malignancy_prob"])), "1")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence} == {d.SOPInstanceUID for d in src}


def test_no_patient_data_beyond_the_source(exported) -> None:
    _, out, _ = exported
    src = _source()[0]
    for path in (_one(out, "_seg.dcm"), _one(out, "_sr.dcm")):
        ds = pydicom.dcmread(str(path))
        for elem in ds.group_dataset(0x0010):
            if elem.value not in ("", None):
                assert elem.tag in src and src[elem.tag].value == elem.value, elem


def test_monai_json_boxes_are_the_table_in_cccwhd_lps_and_load_in_monai(exported) -> None:
    from monai.data import load_decathlon_datalist
    from monai.data.box_utils import convert_box_mode

    pred, out, _ = exported
    rows = helpers.read_table(pred)
    items = load_decathlon_datalist(str(out / "monai_detection.json"), is_segmentation=True,
                                    data_list_key="validation", base_dir=str(out))
    assert len(items) == 1 and Path(items[0]["image"]) == helpers.DICOM_SERIES.resolve()
    boxes = np.asarray(items[0]["box"], dtype=float)
    corners = np.asarray(convert_box_mode(boxes, src_mode="cccwhd", dst_mode="xyzxyz"))
    for box, corner, row in zip(boxes, corners, rows):
        centre, d = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")]), float(row["diameter_mm"])
        np.testing.assert_allclose(box, [*centre, d, d, d])
        np.testing.assert_allclose((corner[:3] + corner[3:]) / 2, centre)
        np.testing.assert_allclose(corner[3:] - corner[:3], [d, d, d])
    assert items[0]["label"] == [0, 0]
    assert items[0]["score"] == [pytest.approx(float(r["probability"])) for r in rows]
    assert items[0]["malignancy"] == [pytest.approx(float(r["malignancy_prob"])) for r in rows]
    assert items[0]["seriesuid"] == rows[0]["seriesuid"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
def test_dciodvfy_finds_no_error(exported) -> None:
    _, out, _ = exported
    for path in (_one(out, "_seg.dcm"), _one(out, "_sr.dcm")):
        res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        report = res.stdout + res.stderr
        assert not [ln for ln in report.splitlines() if ln.startswith("Error")], report


def test_same_predictions_give_the_same_objects(exported, tmp_path: Path) -> None:
    pred, out, _ = exported
    again = tmp_path / "again"
    export_predictions(pred_dir=pred, out_dir=again, formats=["dicom-seg", "dicom-sr"])
    for suffix in ("_seg.dcm", "_sr.dcm"):
        a, b = pydicom.dcmread(str(_one(out, suffix))), pydicom.dcmread(str(_one(again, suffix)))
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID


def test_rerun_into_its_own_folder_replaces_only_its_files(exported) -> None:
    pred, out, _ = exported
    before = {p.name for p in out.iterdir()}
    export_predictions(pred_dir=pred, out_dir=out, formats=ALL)
    assert {p.name for p in out.iterdir()} == before


def _oblique_series(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A CT series with oblique, rotated axes and a bright 3×3×3 cube; ``(folder, affine, cube voxels)``."""
    a, b = np.radians(30), np.radians(10)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.7, 2.0])
    affine[:3, 3] = (-20.0, 35.0, -90.0)
    vol = np.full((40, 36, 20), -800, dtype=np.int16)
    vol[19:22, 14:17, 9:12] = 900
    folder = write_dicom_series(tmp_path / "oblique", vol, affine, modality="CT", series_uid="1.2.826.0.1.3680043.8.498.777")
    return folder, affine, np.argwhere(vol > 0)


def test_seg_sphere_covers_the_bright_cube_of_an_oblique_series(tmp_path: Path) -> None:
    folder, affine, cube = _oblique_series(tmp_path)
    centre = coords.voxel_to_lps(cube.mean(axis=0)[None], affine)[0]
    det = Detection("1.2.826.0.1.3680043.8.498.777", tuple(float(v) for v in centre), 0.9, 5.0, 0.5)
    datasets = read_source_series(sorted(folder.glob("*.dcm")), det.seriesuid)
    seg = build_seg(datasets, [det], Algorithm("medmtl test", "1", "0" * 64, "0.1.0"))
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(str(seg_path))
    vol = hd.seg.segread(str(seg_path)).get_volume(combine_segments=False)
    inv = np.linalg.inv(vol.affine)
    for ijk in coords.voxel_to_lps(cube, affine):  # every bright voxel lies in the 5 mm sphere
        idx = np.rint(inv @ np.r_[ijk, 1.0])[:3].astype(int)
        assert vol.array[tuple(idx)][0] > 0
    masks = sphere_masks(datasets, [det])
    assert masks.sum() == int((vol.array > 0).sum())


def test_tiny_lesion_keeps_its_nearest_voxel() -> None:
    src = _source()
    det = helpers.example_lesions()[0]
    tiny = Detection(det.seriesuid, det.center_lps, 0.5, 0.1, 0.5)
    assert sphere_masks(src, [tiny]).sum() == 1


def test_nifti_source_is_refused_for_dicom_formats(tmp_path: Path) -> None:
    det = helpers.example_lesions()[0]
    nifti = helpers.REPO / "sample_data" / "dicom_example_nifti" / f"{det.seriesuid}.nii.gz"
    pred = helpers.write_prediction_folder(tmp_path / "pred", [(det.seriesuid, "nifti", nifti, [det])])
    with pytest.raises(ExportError, match=r"read from a nifti file .*not a DICOM series.*--format monai-json"):
        export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=["dicom-seg"])
    assert not (tmp_path / "out").exists()
    export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=["monai-json"])
    data = json.loads((tmp_path / "out" / "monai_detection.json").read_text())
    assert Path(data["validation"][0]["image"]) == nifti.resolve()


def test_series_without_lesion_is_skipped_for_dicom_and_listed_in_json(tmp_path: Path) -> None:
    sid = helpers.example_lesions()[0].seriesuid
    pred = helpers.write_prediction_folder(tmp_path / "pred", [(sid, "dicom", helpers.DICOM_SERIES, [])])
    summary = export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=ALL)
    assert summary["files"] == ["monai_detection.json"] and summary["n_lesions"] == 0
    assert {s["format"] for s in summary["skipped"]} == {"dicom-seg", "dicom-sr"}
    entry = json.loads((tmp_path / "out" / "monai_detection.json").read_text())["validation"][0]
    assert entry["seriesuid"] == sid and entry["box"] == [] and entry["score"] == []


def test_lesion_outside_the_series_is_refused(tmp_path: Path) -> None:
    det = helpers.example_lesions()[0]
    far = Detection(det.seriesuid, (det.center_lps[0], det.center_lps[1], det.center_lps[2] + 500.0), 0.9, 6.0, 0.5)
    pred = helpers.write_prediction_folder(tmp_path / "pred", [(det.seriesuid, "dicom", helpers.DICOM_SERIES, [far])])
    with pytest.raises(ExportError, match=r"lesion 1 of series .* lies outside the series' volume"):
        export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=["dicom-seg"])
    assert not (tmp_path / "out").exists()


def test_moved_source_needs_scans_option(tmp_path: Path) -> None:
    lesions = helpers.example_lesions()
    moved = tmp_path / "moved" / "series"
    shutil.copytree(helpers.DICOM_SERIES, moved)
    pred = helpers.write_prediction_folder(tmp_path / "pred", [(lesions[0].seriesuid, "dicom", tmp_path / "gone", lesions)])
    with pytest.raises(ExportError, match=r"no longer exists; pass --scans"):
        export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=["dicom-sr"])
    summary = export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=["dicom-sr"], scans_dir=tmp_path / "moved")
    assert len(summary["files"]) == 1
    with pytest.raises(ExportError, match=r"holds no scan '.*' of the predictions"):
        export_predictions(pred_dir=pred, out_dir=tmp_path / "out2", formats=["dicom-sr"],
                           scans_dir=helpers.REPO / "sample_data" / "mri")


def test_a_foreign_file_is_never_replaced(tmp_path: Path) -> None:
    pred = helpers.example_folder(tmp_path / "pred")
    out = tmp_path / "out"
    out.mkdir()
    (out / "monai_detection.json").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds 'monai_detection.json'.*never replaces files it did not write"):
        export_predictions(pred_dir=pred, out_dir=out, formats=ALL)
    assert (out / "monai_detection.json").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["monai_detection.json"]


def test_output_inside_the_scan_folder_is_refused(tmp_path: Path) -> None:
    lesions = helpers.example_lesions()
    series = tmp_path / "series"
    shutil.copytree(helpers.DICOM_SERIES, series)
    pred = helpers.write_prediction_folder(tmp_path / "pred", [(lesions[0].seriesuid, "dicom", series, lesions)])
    with pytest.raises(ConfigError, match=r"inside the scan folder .*choose -o outside it"):
        export_predictions(pred_dir=pred, out_dir=series / "seg", formats=["dicom-seg"])


def test_missing_predictions_table_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"holds no predictions.csv"):
        export_predictions(pred_dir=tmp_path, out_dir=tmp_path / "out", formats=["monai-json"])
    with pytest.raises(ConfigError, match=r"'dicom-seq' is not known.*Did you mean 'dicom-seg'"):
        export_predictions(pred_dir=tmp_path, out_dir=tmp_path / "out", formats=["dicom-seq"])


def test_missing_highdicom_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pred = helpers.example_folder(tmp_path / "pred")
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(ExportError, match=r"needs the highdicom package.*install medmtl\[dicom\]"):
        export_predictions(pred_dir=pred, out_dir=tmp_path / "out", formats=["dicom-seg"])
    assert not (tmp_path / "out").exists()
