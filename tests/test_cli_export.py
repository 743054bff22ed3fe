"""`medmtl export` (issue #14): a real `medmtl predict` folder of the sample DICOM series to DICOM SEG,
DICOM SR and MONAI detection JSON, read back and compared with predictions.csv; one-line errors."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medmtl.cli import main

hd = pytest.importorskip("highdicom")


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TESTS = Path(__file__).parent
predict_helpers = _load("medmtl_tests_predict_helpers_export", TESTS / "engine" / "predict_helpers.py")
export_helpers = _load("medmtl_tests_export_helpers_cli", TESTS / "io" / "export_helpers.py")


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`medmtl predict` on sample_data/dicom_example with the small test checkpoint (3 lesions)."""
    checkpoint = predict_helpers.session_checkpoint(tmp_path_factory)
    out = tmp_path_factory.mktemp("export_pred") / "pred"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(checkpoint), str(export_helpers.DICOM_EXAMPLE),
                                    "-o", str(out), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def _rows(pred: Path) -> list[dict[str, str]]:
    with open(pred / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_export_of_a_real_prediction_reads_back_with_the_table(predicted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["export", str(predicted), "--format", "dicom-seg", "--format", "dicom-sr",
                                    "--format", "monai-json", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = _rows(predicted)
    assert len(rows) == predict_helpers.DECODE["max_lesions"] == summary["n_lesions"]
    uid = rows[0]["seriesuid"]
    assert summary["files"] == [f"{uid}_seg.dcm", f"{uid}_sr.dcm", "monai_detection.json"]
    assert all((out / f).is_file() for f in summary["files"])
    seg = hd.seg.segread(str(out / f"{uid}_seg.dcm"))
    assert seg.number_of_segments == len(rows)
    groups = hd.sr.srread(str(out / f"{uid}_sr.dcm")).content.get_planar_roi_measurement_groups()
    assert len(groups) == len(rows)
    for group, row in zip(groups, rows):
        centre = [float(row[c]) for c in ("coordX", "coordY", "coordZ")]
        assert np.linalg.norm(group.roi.value[0] - centre) < 1e-3  # the issue asks 0.5 mm
        diameter = [m.value for m in group.get_measurements() if m.name.meaning == "Diameter"]
        assert diameter == [pytest.approx(float(row["diameter_mm"]))]
    boxes = json.loads((out / "monai_detection.json").read_text(encoding="utf-8"))["validation"][0]["box"]
    np.testing.assert_allclose(boxes, [[float(r[c]) for c in ("coordX", "coordY", "coordZ")] + [float(r["diameter_mm"])] * 3
                                       for r in rows])


def test_human_summary_line(predicted: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", str(predicted), "--format", "monai-json", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == (f"1 file(s) written into {tmp_path / 'o'} (monai-json) for 1 scan(s), "
                                  f"{len(_rows(predicted))} lesion(s)")


def test_nifti_predictions_are_refused_for_dicom_with_one_line(tmp_path: Path) -> None:
    det = export_helpers.example_lesions()[0]
    nifti = export_helpers.REPO / "sample_data" / "dicom_example_nifti" / f"{det.seriesuid}.nii.gz"
    pred = export_helpers.write_prediction_folder(tmp_path / "pred", [(det.seriesuid, "nifti", nifti, [det])])
    res = CliRunner().invoke(main, ["export", str(pred), "--format", "dicom-sr", "-o", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: scan ") and len(res.stderr.strip().splitlines()) == 1
    assert "not a DICOM series" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["export", str(tmp_path), "--format", "dicom-rt", "-o", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "dicom-rt" in bad.output
    none = runner.invoke(main, ["export", str(tmp_path / "missing"), "--format", "monai-json", "-o", str(tmp_path / "o")])
    assert none.exit_code == 2 and "does not exist" in none.output
    empty = runner.invoke(main, ["export", str(tmp_path), "--format", "monai-json", "-o", str(tmp_path / "o")])
    assert empty.exit_code == 1 and empty.stderr.strip() == (
        f"Error: '{tmp_path}' holds no predictions.csv; pass the output folder of `medmtl predict` (or `medmtl classical`)")
    assert "export" in runner.invoke(main, ["--help"]).output


# --------------------------------------------------------------------------- MONAI bundle
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = predict_helpers.session_checkpoint(tmp_path_factory)
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    res = CliRunner().invoke(main, ["export-bundle", str(checkpoint), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["files"] == ["configs/metadata.json", "configs/inference.json", "configs/model_card.json",
                                "models/model.pt", "docs/README.md"]
    return out


def test_bundle_files_hold_the_checkpoint(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch
    from safetensors.torch import load_file

    checkpoint = predict_helpers.session_checkpoint(tmp_path_factory)
    state = torch.load(str(bundle / "models" / "model.pt"), map_location="cpu", weights_only=True)
    ref = load_file(str(checkpoint / "model.safetensors"))
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
    assert (bundle / "configs" / "model_card.json").read_bytes() == (checkpoint / "model_card.json").read_bytes()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert key in meta, key
    card = json.loads((checkpoint / "model_card.json").read_text(encoding="utf-8"))
    assert meta["medmtl"]["weights_sha256"] == card["provenance"]["weights_sha256"]


def test_monai_bundle_run_gives_the_lesions_of_medmtl_predict(bundle: Path, predicted: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    pytest.importorskip("fire", reason="MONAI's bundle CLI needs fire (pip install 'medmtl[bundle]')")
    out = tmp_path / "bundle_pred"
    env = dict(os.environ, PYTHONPATH=str(export_helpers.REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                          "--dataset_dir", str(export_helpers.DICOM_EXAMPLE), "--output_dir", str(out),
                          "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # the same lesions; floats equal up to the reduction order of another thread count (the
    # subprocess runs 1 thread, the in-process predict the session's): ~1e-6 relative
    import csv

    def rows(path: Path) -> list[dict[str, str]]:
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))

    got, want = rows(out / "predictions.csv"), rows(predicted / "predictions.csv")
    assert want and len(got) == len(want) and got[0].keys() == want[0].keys()
    for g, w in zip(got, want):
        assert g["seriesuid"] == w["seriesuid"]
        for key in w:
            if key != "seriesuid":
                assert float(g[key]) == pytest.approx(float(w[key]), rel=1e-4, abs=1e-4), (key, g, w)


def test_bundle_with_replaced_weights_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from medmtl import api
    from medmtl.errors import CheckpointError

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    state = torch.load(str(copy / "models" / "model.pt"), weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, str(copy / "models" / "model.pt"))
    with pytest.raises(CheckpointError, match=r"do not match the card's SHA-256.*re-export the bundle"):
        api.predict_bundle(bundle_root=copy, input_dir=export_helpers.DICOM_EXAMPLE, out_dir=tmp_path / "o", device="cpu")
    assert not (tmp_path / "o").exists()
    torch.save({"weights": _NotATensor()}, str(copy / "models" / "model.pt"))  # a pickled object: never run
    with pytest.raises(CheckpointError, match=r"cannot be read as a state dict \(UnpicklingError\)"):
        api.predict_bundle(bundle_root=copy, input_dir=export_helpers.DICOM_EXAMPLE, out_dir=tmp_path / "o", device="cpu")


class _NotATensor:
    """An arbitrary object: ``torch.load(weights_only=True)`` must refuse to unpickle it."""


def test_export_bundle_never_replaces_a_foreign_file(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = predict_helpers.session_checkpoint(tmp_path_factory)
    (tmp_path / "b" / "docs").mkdir(parents=True)
    (tmp_path / "b" / "docs" / "README.md").write_text("mine")
    res = CliRunner().invoke(main, ["export-bundle", str(checkpoint), "-o", str(tmp_path / "b")])
    assert res.exit_code == 1 and "already holds 'docs/README.md'" in res.stderr
    assert (tmp_path / "b" / "docs" / "README.md").read_text() == "mine"
    assert not (tmp_path / "b" / "models").exists()
