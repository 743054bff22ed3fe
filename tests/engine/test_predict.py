"""predict_folder on sample_data: tables, extents, maps in the input geometry, resume, DICOM vs NIfTI."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmtl import api
from medmtl.io import coords

_spec = importlib.util.spec_from_file_location("medmtl_tests_predict_helpers",
                                               Path(__file__).with_name("predict_helpers.py"))
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm", "malignancy_prob"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.session_checkpoint(tmp_path_factory)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def check_tables(out: Path, input_dir: Path, scan_ids: list[str]) -> list[dict[str, str]]:
    """Well-formed tables, lesions inside each scan's physical extent (through coords)."""
    from medmtl.io.discover import discover_scans
    from medmtl.io.read import read_scan

    rows = read_rows(out / "predictions.csv")
    assert {r["seriesuid"] for r in rows} <= set(scan_ids)
    refs = {r.scan_id: r for r in discover_scans(input_dir)[0]}
    pj = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert sorted(pj["scans"]) == sorted(scan_ids)
    for sid in scan_ids:
        scan = read_scan(refs[sid])
        mine = [r for r in rows if r["seriesuid"] == sid]
        assert len(mine) == len(pj["scans"][sid]["lesions"])
        for r in mine:
            lps = [float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])]
            ijk = coords.lps_to_voxel(lps, scan.image.affine.numpy())
            assert coords.inside_volume(ijk, scan.image.shape[-3:]).all(), (sid, lps)
            assert 0.0 <= float(r["probability"]) <= 1.0 and 0.0 <= float(r["malignancy_prob"]) <= 1.0
            assert float(r["diameter_mm"]) > 0
        prov = pj["scans"][sid]["provenance"]
        assert prov["weights_sha256"] and prov["device"] == "cpu" and prov["medmtl_version"]
        assert set(pj["scans"][sid]["timings"]) >= {"read", "preprocess", "infer", "decode", "write"}
    assert json.loads((out / "failures.json").read_text(encoding="utf-8")) == []
    return rows


def test_predict_tables_maps_previews_and_resume(checkpoint: Path, sample_data: Path, tmp_path: Path) -> None:
    src = sample_data / "ct_site_a"
    ids = ["ct_a_0000", "ct_a_0001"]
    out = tmp_path / "preds"
    s1 = api.predict_folder(checkpoint=checkpoint, input_dir=src, out_dir=out, device="cpu", overlap=0.25,
                            save_maps=True, preview=True, progress=False, scan_ids=ids)
    assert (s1["n_scans"], s1["n_done"], s1["n_skipped"], s1["n_failed"]) == (2, 2, 0, 0)
    rows = check_tables(out, src, ids)
    assert len(rows) == 2 * helpers.DECODE["max_lesions"]
    for sid in ids:
        ref = nib.load(str(src / f"{sid}.nii.gz"))
        for name in ("heatmap", "diameter", "malignancy"):
            m = nib.load(str(out / "maps" / f"{sid}_{name}.nii.gz"))
            assert m.shape == ref.shape
            assert np.allclose(m.affine, ref.affine, atol=1e-4)
        heat = np.asarray(nib.load(str(out / "maps" / f"{sid}_heatmap.nii.gz")).dataobj)
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        assert (out / "previews" / f"{sid}_lesion1.png").stat().st_size > 1000
    before = (out / "predictions.csv").read_text(encoding="utf-8")

    s2 = api.predict_folder(checkpoint=checkpoint, input_dir=src, out_dir=out, device="cpu", overlap=0.25,
                            save_maps=True, preview=True, progress=False, scan_ids=ids)
    assert (s2["n_done"], s2["n_skipped"], s2["n_failed"]) == (0, 2, 0)
    assert s2["timings"]["infer"] == 0.0 and s2["timings"]["read"] == 0.0  # no work for complete scans
    assert (out / "predictions.csv").read_text(encoding="utf-8") == before


def test_dicom_series_and_its_nifti_export_give_the_same_lesions(
    checkpoint: Path, sample_data: Path, tmp_path: Path
) -> None:
    from medmtl.io.discover import discover_scans

    uid = discover_scans(sample_data / "dicom_example")[0][0].scan_id
    kw = dict(checkpoint=checkpoint, device="cpu", overlap=0.25, progress=False)
    api.predict_folder(input_dir=sample_data / "dicom_example", out_dir=tmp_path / "dcm", **kw)
    api.predict_folder(input_dir=sample_data / "dicom_example_nifti", out_dir=tmp_path / "nii", scan_ids=[uid], **kw)
    a = read_rows(tmp_path / "dcm" / "predictions.csv")
    b = read_rows(tmp_path / "nii" / "predictions.csv")
    assert len(a) == len(b) == helpers.DECODE["max_lesions"]
    for ra, rb in zip(a, b):
        assert ra["seriesuid"] == rb["seriesuid"] == uid
        pa = np.array([float(ra[c]) for c in ("coordX", "coordY", "coordZ")])
        pb = np.array([float(rb[c]) for c in ("coordX", "coordY", "coordZ")])
        assert np.linalg.norm(pa - pb) < 0.5  # mm
        assert abs(float(ra["probability"]) - float(rb["probability"])) < 1e-3


def test_adapt_auto_records_the_shift_gate_decision(checkpoint: Path, sample_data: Path, tmp_path: Path) -> None:
    """``api.predict_folder`` composes the drift gate; this checkpoint has no reference statistics,
    so the gate records that it skipped (and why); the engine alone refuses ``auto`` without a gate."""
    from medmtl.engine.predict import predict_folder as engine_predict
    from medmtl.errors import ConfigError, MedmtlError

    kw = dict(checkpoint=checkpoint, input_dir=sample_data / "ct_site_b", device="cpu", progress=False,
              overlap=0.0, scan_ids=["ct_b_0000"])
    api.predict_folder(out_dir=tmp_path / "a", adapt="auto", **kw)
    shift = json.loads((tmp_path / "a" / "predictions.json").read_text(encoding="utf-8"))["run"]["shift"]
    assert shift["action"] == "skipped" and shift["reason"] == "the checkpoint has no reference statistics"
    with pytest.raises(MedmtlError, match="--adapt 'always' is not allowed; use one of off, auto"):
        api.predict_folder(out_dir=tmp_path / "b", adapt="always", **kw)
    with pytest.raises(ConfigError, match="--adapt auto needs the drift gate"):
        engine_predict(out_dir=tmp_path / "c", adapt="auto", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_tiny_trained_checkpoint_on_site_b(tiny_checkpoint: Path, sample_data: Path, tmp_path: Path) -> None:
    """With the trainer's tiny checkpoint: well-formed tables, lesions inside the scans."""
    ids = ["ct_b_0000", "ct_b_0001"]
    out = tmp_path / "tiny"
    s = api.predict_folder(checkpoint=tiny_checkpoint, input_dir=sample_data / "ct_site_b", out_dir=out,
                           device="cpu", overlap=0.25, progress=False, scan_ids=ids)
    assert s["n_done"] == 2 and s["n_failed"] == 0
    check_tables(out, sample_data / "ct_site_b", ids)


def test_parallel_prefetch_gives_the_same_tables_and_records_a_broken_scan(
    checkpoint: Path, sample_data: Path, tmp_path: Path
) -> None:
    """Three reader threads + the writer thread: same lesions as one thread; a truncated scan in the
    middle of the folder is recorded in failures.json and the scans after it are still predicted."""
    import shutil

    src = sample_data / "ct_site_b"
    ids = sorted(p.name[: -len(".nii.gz")] for p in src.glob("*.nii.gz"))[:4]
    folder = tmp_path / "scans"
    folder.mkdir()
    for sid in ids:
        shutil.copy(src / f"{sid}.nii.gz", folder)
    one = api.predict_folder(checkpoint=checkpoint, input_dir=folder, out_dir=tmp_path / "p1", device="cpu",
                             progress=False, overlap=0.0, prefetch=1)
    three = api.predict_folder(checkpoint=checkpoint, input_dir=folder, out_dir=tmp_path / "p3", device="cpu",
                               progress=False, overlap=0.0, prefetch=3)
    assert one["n_done"] == three["n_done"] == 4
    assert read_rows(tmp_path / "p1" / "predictions.csv") == read_rows(tmp_path / "p3" / "predictions.csv")
    check_tables(tmp_path / "p3", folder, ids)

    broken = folder / f"{ids[1]}.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])  # a truncated gzip stream
    res = api.predict_folder(checkpoint=checkpoint, input_dir=folder, out_dir=tmp_path / "pb", device="cpu",
                             progress=False, overlap=0.0, prefetch=3)
    assert res["n_done"] == 3 and res["n_failed"] == 1
    failures = json.loads((tmp_path / "pb" / "failures.json").read_text(encoding="utf-8"))
    assert [f["seriesuid"] for f in failures] == [ids[1]]
    assert {r["seriesuid"] for r in read_rows(tmp_path / "pb" / "predictions.csv")} <= set(ids) - {ids[1]}


def test_prefetch_below_one_is_refused(checkpoint: Path, sample_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medmtl.cli import main

    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(checkpoint), str(sample_data / "ct_site_b"),
                                    "-o", str(tmp_path / "out"), "--prefetch", "0"])
    assert res.exit_code != 0 and "--prefetch" in res.output and not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="--prefetch must be at least 1"):
        api.predict_folder(checkpoint=checkpoint, input_dir=sample_data / "ct_site_b", out_dir=tmp_path / "o2",
                           device="cpu", progress=False, prefetch=0)
    assert not (tmp_path / "o2").exists()
