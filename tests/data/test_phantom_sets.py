"""Phantom sets on disk, the DICOM writer, the sample-data CLI and the committed sample_data."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medmtl.cli import main
from medmtl.data.malignancy import bayes_auc
from medmtl.data.phantom import ANNOTATION_COLUMNS, write_phantom_set
from medmtl.errors import ConfigError, MedmtlError
from medmtl.io.coords import lps_to_voxel, sitk_to_affine_ras

SMALL = (32, 32, 24)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    a = write_phantom_set(tmp_path / "a", kind="ct", site="a", n=2, seed=5, shape=SMALL)
    b = write_phantom_set(tmp_path / "b", kind="ct", site="a", n=2, seed=5, shape=SMALL)
    c = write_phantom_set(tmp_path / "c", kind="ct", site="a", n=1, seed=6, shape=SMALL)
    assert (a / "annotations.csv").read_text(encoding="utf-8") == (b / "annotations.csv").read_text(encoding="utf-8")
    for name in ("ct_a_0000.nii.gz", "ct_a_0001.nii.gz", "masks/ct_a_0000_lesions.nii.gz"):
        va, vb = np.asarray(nib.load(a / name).dataobj), np.asarray(nib.load(b / name).dataobj)
        assert np.array_equal(va, vb)
    assert _files(a) == _files(b)  # byte for byte, generation.json included
    assert not np.array_equal(np.asarray(nib.load(a / "ct_a_0000.nii.gz").dataobj),
                              np.asarray(nib.load(c / "ct_a_0000.nii.gz").dataobj))


def test_set_layout_csv_and_masks_agree(tmp_path):
    out = write_phantom_set(tmp_path / "b", kind="ct", site="b", n=3, seed=2)
    rows = _rows(out / "annotations.csv")
    assert tuple(rows[0].keys()) == ANNOTATION_COLUMNS
    assert {r["site"] for r in rows} == {"b"}
    img = nib.load(out / "ct_b_0000.nii.gz")
    assert img.get_data_dtype() == np.int16
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"
    for r in rows:
        mask_img = nib.load(out / "masks" / f"{r['seriesuid']}_lesions.nii.gz")
        mask = np.asarray(mask_img.dataobj)
        label = int(r["lesion_id"].rsplit("_L", 1)[1])
        com = np.argwhere(mask == label).mean(axis=0)
        ijk = lps_to_voxel([float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])], mask_img.affine)[0]
        assert np.all(np.abs(ijk - com) <= 0.5)
        assert r["malignancy"] in ("", "0", "1")
        assert 0.0 < float(r["bayes_malignancy_prob"]) < 1.0


def test_mri_set_is_uint16(tmp_path):
    out = write_phantom_set(tmp_path / "m", kind="mri", site="a", n=1, seed=1, shape=SMALL)
    img = nib.load(out / "mri_a_0000.nii.gz")
    assert img.get_data_dtype() == np.uint16 and img.shape == SMALL


def test_refuses_to_overwrite_a_set(tmp_path):
    out = write_phantom_set(tmp_path / "s", kind="ct", site="b", n=1, seed=1, shape=SMALL)
    before = (out / "annotations.csv").read_text(encoding="utf-8")
    with pytest.raises(MedmtlError, match="refusing to overwrite"):
        write_phantom_set(out, kind="ct", site="b", n=1, seed=2, shape=SMALL)
    assert (out / "annotations.csv").read_text(encoding="utf-8") == before
    write_phantom_set(out, kind="ct", site="b", n=1, seed=2, shape=SMALL, overwrite=True)
    assert (out / "annotations.csv").read_text(encoding="utf-8") != before or before.count("\n") == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "xray"}, "kind must be one of ct, mri"),
        ({"site": "c"}, "site must be one of a, b"),
        ({"n": 0}, "n \\(number of scans\\) must be an integer >= 1"),
        ({"shape": (8, 32, 32)}, "shape values must each be in 16..512"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"kind": "ct", "site": "a", "n": 1, "seed": 0, "shape": SMALL, **kwargs}
    with pytest.raises(ConfigError, match=match):
        write_phantom_set(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_dicom_set_matches_its_nifti_twin(tmp_path):
    import SimpleITK as sitk

    out = write_phantom_set(tmp_path / "d", kind="ct", site="b", n=1, seed=3, shape=SMALL, dicom=True)
    twin = tmp_path / "d_nifti"
    rows = _rows(out / "annotations.csv")
    assert (twin / "annotations.csv").read_text(encoding="utf-8") == (out / "annotations.csv").read_text(encoding="utf-8")
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(out / "ct_b_0000"))
    assert len(series) == 1
    uid = series[0]
    assert all(r["seriesuid"] == uid for r in rows)
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / "ct_b_0000"), uid))
    img = reader.Execute()
    nii = nib.load(twin / f"{uid}.nii.gz")
    affine = sitk_to_affine_ras(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    assert np.allclose(affine, nii.affine, atol=1e-3)
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)), np.asarray(nii.dataobj))
    first = sitk.ReadImage(reader.GetFileNames()[0])
    assert first.GetMetaData("0010|0010").strip() == "ANONYMOUS"
    assert first.GetMetaData("0008|0060").strip() == "CT"
    assert first.GetMetaData("0018|1210").strip() == "SMOOTH-B30"
    assert first.GetMetaData("0018|0050").strip() == "5"
    # DICOM files are deterministic too
    again = write_phantom_set(tmp_path / "e", kind="ct", site="b", n=1, seed=3, shape=SMALL, dicom=True)
    assert _files(out / "ct_b_0000") == _files(again / "ct_b_0000")


def test_cli_sample_data_writes_and_reports(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(main, ["sample-data", str(out), "--kind", "ct", "--site", "a", "--n", "2",
                               "--seed", "3", "--shape", "32", "32", "24"])
    assert res.exit_code == 0, res.output
    assert (out / "ct_a_0000.nii.gz").exists() and (out / "ct_a_0001.nii.gz").exists()
    assert (out / "annotations.csv").exists() and (out / "masks").is_dir()
    assert "wrote 2 CT site-a scan(s)" in res.output
    assert "lesions" in res.output
    again = runner.invoke(main, ["sample-data", str(out), "--n", "1", "--shape", "32", "32", "24"])
    assert again.exit_code == 1
    err_lines = [ln for ln in again.output.splitlines() if ln.startswith("Error:")]
    assert len(err_lines) == 1 and "refusing to overwrite" in err_lines[0]
    assert "Traceback" not in again.output


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--kind", "xray"], 2, "Invalid value for '--kind'"),
        (["--site", "c"], 2, "Invalid value for '--site'"),
        (["--n", "0"], 2, "Invalid value for '--n'"),
        (["--shape", "8", "8", "8"], 1, "Error: shape values must each be in 16..512"),
        (["--shape", "32", "32"], 2, "requires 3 arguments"),
    ],
)
def test_cli_bad_arguments(tmp_path, args, code, needle):
    res = CliRunner().invoke(main, ["sample-data", str(tmp_path / "o"), *args])
    assert res.exit_code == code, res.output
    assert needle in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o" / "annotations.csv").exists()


def test_committed_readme_states_each_sets_bayes_auc(sample_data):
    readme = (sample_data / "README.md").read_text(encoding="utf-8")
    assert "python -m pipelines.make_sample_data --out sample_data" in readme
    for name in ("ct_site_a", "ct_site_b", "mri", "dicom_example"):
        row = next(ln for ln in readme.splitlines() if ln.startswith(f"| `{name}/`"))
        stated = row.split("|")[8].strip()
        auc = bayes_auc(_rows(sample_data / name / "annotations.csv"))
        m = re.fullmatch(r"(\d\.\d{3}) \[(\d\.\d\d), (\d\.\d\d)\]", stated)
        assert m, row
        assert float(m.group(1)) == pytest.approx(round(auc, 3), abs=1e-9)
        assert float(m.group(2)) <= float(m.group(1)) + 0.005 and float(m.group(3)) >= float(m.group(1)) - 0.005


def test_committed_sample_data_layout(sample_data):
    counts = {"ct_site_a": 8, "ct_site_b": 8, "mri": 6}
    for name, n in counts.items():
        assert len(list((sample_data / name).glob("*.nii.gz"))) == n
    dicom_dirs = [p for p in (sample_data / "dicom_example").iterdir() if p.is_dir() and p.name != "masks"]
    assert len(dicom_dirs) == 1 and len(list(dicom_dirs[0].glob("*.dcm"))) > 10
    twin = sample_data / "dicom_example_nifti"
    assert len(list(twin.glob("*.nii.gz"))) == 1 and len(list((twin / "masks").glob("*.nii.gz"))) == 1
    assert len(list((sample_data / "dicom_example" / "masks").glob("*.nii.gz"))) == 1
    total = sum(p.stat().st_size for p in sample_data.rglob("*") if p.is_file())
    assert total <= 30 * 1024 * 1024  # DESIGN.md: at most ~30 MB
