"""Atomic writers, NIfTI saving and manifest path resolution."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from medmtl.errors import PathEscapeError, ScanReadError
from medmtl.io.manifest import read_manifest, resolve_under
from medmtl.io.writers import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    save_nifti,
)


def test_atomic_writes_create_parents_and_leave_no_temp(tmp_path):
    out = tmp_path / "a" / "b"
    atomic_write_text(out / "x.txt", "héllo\n")
    atomic_write_bytes(out / "y.bin", b"\x00\x01")
    atomic_write_json(out / "z.json", {"v": np.float32(1.5), "n": math.nan, "arr": np.arange(3), "t": (1, 2)})
    atomic_write_csv(out / "w.csv", [{"a": 1.25, "b": None}, {"a": "s"}], ["a", "b"])
    assert (out / "x.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (out / "y.bin").read_bytes() == b"\x00\x01"
    assert json.loads((out / "z.json").read_text(encoding="utf-8")) == {"v": 1.5, "n": None, "arr": [0, 1, 2], "t": [1, 2]}
    assert (out / "w.csv").read_text(encoding="utf-8") == "a,b\n1.25,\ns,\n"
    assert sorted(p.name for p in out.iterdir()) == ["w.csv", "x.txt", "y.bin", "z.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "keep.txt", "old")

    def boom(tmp):
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(target, boom)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_atomic_save_temp_name_keeps_compound_suffix(tmp_path):
    seen = []
    atomic_save(tmp_path / "m.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].endswith(".nii.gz") and seen[0] != "m.nii.gz"


def test_save_nifti_keeps_affine_and_layout(tmp_path):
    affine = np.array([[-0.7, 0, 0, 10.0], [0, -0.8, 0, -5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).normal(size=(6, 5, 4))
    path = save_nifti(tmp_path / "map.nii.gz", vol[None], affine)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_allclose(np.asarray(img.dataobj), vol.astype(np.float32))
    assert img.get_data_dtype() == np.float32
    multi = save_nifti(tmp_path / "multi.nii", np.stack([vol, 2 * vol]), affine)
    assert nib.load(str(multi)).shape == (6, 5, 4, 2)
    mask = save_nifti(tmp_path / "mask.nii.gz", vol > 0, affine)
    assert nib.load(str(mask)).get_data_dtype() == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.nii.gz", "mask.nii.gz", "multi.nii"]


def test_resolve_under(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert resolve_under(root, "sub/a.nii.gz") == (root / "sub" / "a.nii.gz").resolve()
    assert resolve_under(root, "sub/../b.nii.gz") == (root / "b.nii.gz").resolve()
    assert resolve_under(root, root / "c.mha") == (root / "c.mha").resolve()
    for bad in ("../x.nii.gz", "sub/../../x.nii.gz", str(tmp_path / "elsewhere.nii.gz"), "/etc/passwd"):
        with pytest.raises(PathEscapeError, match="outside the manifest folder"):
            resolve_under(root, bad)


def test_symlink_escape_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    (root / "link.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    with pytest.raises(PathEscapeError, match="link.nii.gz"):
        resolve_under(root, "link.nii.gz")


def test_read_manifest_json_and_csv(tmp_path):
    for name in ("a.nii.gz", "b.mha"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.json").write_text(json.dumps(["a.nii.gz", "b.mha"]), encoding="utf-8")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}], "validation": [{"image": "b.mha"}]}), encoding="utf-8")
    (tmp_path / "list.csv").write_text("id,path\n1,a.nii.gz\n2,b.mha\n", encoding="utf-8")
    expected = [(tmp_path / "a.nii.gz").resolve(), (tmp_path / "b.mha").resolve()]
    for name in ("list.json", "datalist.json", "list.csv"):
        assert read_manifest(tmp_path / name) == expected


def test_read_manifest_errors(tmp_path):
    (tmp_path / "esc.json").write_text(json.dumps({"training": [{"image": "../x.nii.gz"}]}), encoding="utf-8")
    with pytest.raises(PathEscapeError, match=r"'\.\./x\.nii\.gz'"):
        read_manifest(tmp_path / "esc.json")
    (tmp_path / "missing.json").write_text(json.dumps(["nope.nii.gz"]), encoding="utf-8")
    with pytest.raises(ScanReadError, match=r"entry 1: file 'nope\.nii\.gz' does not exist"):
        read_manifest(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ScanReadError, match="is not valid JSON"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "m.txt").write_text("a", encoding="utf-8")
    with pytest.raises(ScanReadError, match=r"suffix '\.txt' not supported"):
        read_manifest(tmp_path / "m.txt")
