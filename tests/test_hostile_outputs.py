"""Hostile tables, configs and output folders (issue #13): one ``Error:`` line, a non-zero exit,
no traceback, nothing the user has changed or left behind; outputs honour the umask."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medmtl.cli import main

#: every case of this module runs under the hostile-input time limit (tests/conftest.py)
HOSTILE_CASES = True

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 (``<dir>`` for folders) of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _one_error(args: list[str], code: int = 1) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(("text", "words"), [
    ("", ["is empty", "configs/tiny.yaml"]),
    ("train:\n  epochs: 2\n  epochs: 3\n", ["repeats the key 'epochs'", "line 3"]),
    ("train:\n  epochs: 2\ntrain:\n  batch_size: 2\n", ["repeats the key 'train'"]),
    ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", ["nested too deeply"]),
])
def test_bad_yaml_configs(tmp_path: Path, text: str, words: list[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text, encoding="utf-8")
    before = _tree(tmp_path)
    err = _one_error(["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    for w in words:
        assert w in err, (w, err)
    assert _tree(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_refused_training_leaves_no_run_folder(tmp_path: Path) -> None:
    """The data is checked after the run folder would be made: the refusal removes the empty folder."""
    err = _one_error(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tmp_path / "run"),
                      "--set", f"data.root={REPO / 'sample_data' / 'mri'}"])
    assert "MR" in err
    assert not (tmp_path / "run").exists()


def test_a_run_killed_before_its_first_epoch_starts_afresh(tmp_path: Path) -> None:
    from medmtl.engine.trainer import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n", encoding="utf-8")
    (run / "versions.json").write_text("{}", encoding="utf-8")
    assert prepare_run_dir(run, resume=True, overwrite=False, is_main=True) is False  # nothing to resume
    assert list(run.iterdir()) == []
    (run / "config.yaml").write_text("seed: 0\n", encoding="utf-8")
    assert prepare_run_dir(run, resume=False, overwrite=False, is_main=True) is False  # a plain rerun works too
    (run / "notes.txt").write_text("mine", encoding="utf-8")  # a folder with the user's files is never cleared
    with pytest.raises(Exception, match="not empty"):
        prepare_run_dir(run, resume=False, overwrite=False, is_main=True)
    assert (run / "notes.txt").read_text(encoding="utf-8") == "mine"


# --------------------------------------------------------------------------- prediction tables
HEAD = "seriesuid,coordX,coordY,coordZ,probability"


@pytest.mark.parametrize(("rows", "words"), [
    (f"{HEAD}\nct_b_0000,1,2,3,1.5\n", ["row 2 column 'probability' has 1.5", "allowed: [0.0, 1.0]"]),
    (f"{HEAD}\nct_b_0000,1,2,3,-0.1\n", ["column 'probability' has -0.1"]),
    (f"{HEAD},seriesuid\nct_b_0000,1,2,3,0.5,ct_b_0001\n", ["duplicated column(s) seriesuid"]),
])
def test_bad_prediction_tables(tmp_path: Path, rows: str, words: list[str]) -> None:
    pred = tmp_path / "predictions.csv"
    pred.write_text(rows, encoding="utf-8")
    before = _tree(tmp_path)
    err = _one_error(["evaluate", "--predictions", str(pred), "--annotations",
                      str(REPO / "sample_data" / "ct_site_b" / "annotations.csv"), "-o", str(tmp_path / "eval")])
    for w in words:
        assert w in err, (w, err)
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- output folders
def _copy_scans(tmp_path: Path) -> Path:
    import shutil

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz", scans)
    (scans / "predictions.csv").write_text("the user's own table\n", encoding="utf-8")
    return scans


@pytest.mark.parametrize("command", ["predict", "classical"])
@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_folder_in_the_input_folder_is_refused(tmp_path: Path, command: str, where: str) -> None:
    scans = _copy_scans(tmp_path)
    out = scans if where == "same" else scans / "preds"
    before = _tree(tmp_path)
    args = [command, str(scans), "-o", str(out)]
    if command == "predict":
        args[1:1] = ["--checkpoint", str(tmp_path)]  # never read: the folders are checked first
    err = _one_error(args)
    assert "input folder" in err and "choose -o outside" in err
    assert _tree(tmp_path) == before


def test_sample_data_never_overwrites_the_users_files(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "ct_a_0000.nii.gz").write_bytes(b"the user's scan")
    before = _tree(tmp_path)
    err = _one_error(["sample-data", str(out), "--kind", "ct", "--site", "a", "--n", "1", "--shape", "32", "32", "16"])
    assert "not empty and holds no generated data set" in err
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- file modes
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    from medmtl.engine.checkpoint import atomic_folder
    from medmtl.io.writers import atomic_write_text

    old = os.umask(umask)
    try:
        f = atomic_write_text(tmp_path / "a" / "x.txt", "x")
        folder = atomic_folder(tmp_path / "ckpt", lambda d: (d / "w.bin").write_bytes(b"w"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == file_mode
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
    assert stat.S_IMODE((folder / "w.bin").stat().st_mode) == file_mode


# --------------------------------------------------------------------------- headers before allocation
def _nifti_header_file(path: Path, *, shape=(16, 16, 8), affine=None, dtype=None, datatype_code=None) -> Path:
    """A small NIfTI whose header may claim another shape, affine or data type."""
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4))
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    if shape != (16, 16, 8):  # rewrite dim[] in the header only: the voxels stay 16×16×8
        raw[40:56] = np.array([3, *shape, 1, 1, 1, 1], dtype="<i2").tobytes()
    if affine is not None:  # qform off, sform = the given rows (nibabel refuses to write such a matrix)
        raw[252:256] = np.array([0, 1], dtype="<i2").tobytes()
        raw[280:328] = np.asarray(affine, dtype="<f4")[:3].tobytes()
    if datatype_code is not None:  # e.g. 1 = DT_BINARY (1 bit per voxel), which nibabel cannot read
        raw[70:74] = np.array([datatype_code, 1], dtype="<i2").tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"shape": (32767, 32767, 32767)}, ["declares 32767×32767×32767 voxels", "above the 4 GiB limit"]),
    ({"affine": [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, ["singular voxel-to-world matrix"]),
    ({"affine": [[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, ["non-finite or singular"]),
    ({"dtype": "complex64"}, ["complex64 voxels", "real-valued"]),
    ({"datatype_code": 1}, ["NIfTI data type medmtl cannot read", "integer or float type"]),
])
def test_headers_are_checked_before_allocating(tmp_path: Path, kwargs: dict, words: list[str]) -> None:
    import numpy as np

    if "affine" in kwargs:
        kwargs = {"affine": np.asarray(kwargs["affine"], dtype=np.float64)}
    folder = tmp_path / "in"
    folder.mkdir()
    _nifti_header_file(folder / "x.nii", **kwargs)
    before = _tree(tmp_path)
    res = CliRunner().invoke(main, ["inspect", str(folder)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and all(w in err[0] or w in res.output for w in words), res.output
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- special files
def test_a_fifo_named_like_a_scan_does_not_hang_discovery(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz", folder)
    os.mkfifo(folder / "slice.dcm")
    os.mkfifo(folder / "pipe.nii.gz")
    res = CliRunner().invoke(main, ["inspect", str(folder)])  # would block forever if the FIFO were opened
    assert res.exit_code == 1, res.output
    assert "ct_b_0000" in res.stdout and "not a regular file" in res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its mode")
def test_an_unreadable_scan_says_permission_denied(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    f = shutil.copy(REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz", folder / "x.nii.gz")
    os.chmod(f, 0)
    try:
        res = CliRunner().invoke(main, ["inspect", str(folder)])
    finally:
        os.chmod(f, 0o644)
    assert res.exit_code == 1 and "permission denied" in res.output


# --------------------------------------------------------------------------- one writer per output folder
def test_a_second_writer_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    from medmtl.engine import predict_io as pio
    from medmtl.errors import ConfigError

    out = tmp_path / "preds"
    with pio.output_lock(out):
        with pytest.raises(ConfigError, match="another medmtl process is writing into"):
            with pio.output_lock(out):
                pass
    with pio.output_lock(out):  # released: the next run may write
        pass


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    from medmtl.engine import predict_io as pio

    out = tmp_path / "preds"
    (out / "maps").mkdir(parents=True)
    stale = out / "maps" / ".s1_heatmap.nii.gz.abc123.tmp.nii.gz"
    stale.write_bytes(b"truncated")
    mine = out / "maps" / "s1_heatmap.nii.gz"
    mine.write_bytes(b"complete")
    with pio.output_lock(out):
        pass
    assert not stale.exists() and mine.read_bytes() == b"complete"


def test_scan_ids_never_collide_on_one_output_name() -> None:
    from medmtl.engine.predict_io import safe_name

    assert safe_name("x_y") == "x_y" and safe_name("x y") != safe_name("x_y")
    assert safe_name("x y").startswith("x_y-") and safe_name("a/b") != safe_name("a:b")


def test_output_that_is_a_file_is_one_error(tmp_path: Path) -> None:
    import shutil

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz", scans)
    target = tmp_path / "out.txt"
    target.write_text("mine", encoding="utf-8")
    err = _one_error(["classical", str(scans), "-o", str(target)], code=2)  # click: a usage error
    assert "is a file" in err and target.read_text(encoding="utf-8") == "mine"


def test_an_mhd_pointing_outside_its_folder_is_refused(tmp_path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    img = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16))
    sitk.WriteImage(img, str(outside / "x.mhd"))  # writes x.mhd + x.raw
    folder = tmp_path / "in"
    folder.mkdir()
    header = (outside / "x.mhd").read_text(encoding="latin-1")
    (folder / "y.mhd").write_text(header.replace("ElementDataFile = x.raw", "ElementDataFile = ../elsewhere/x.raw"),
                                  encoding="latin-1")
    before = _tree(tmp_path)
    res = CliRunner().invoke(main, ["inspect", str(folder)])
    assert res.exit_code == 1 and "outside its folder" in res.output and "Traceback" not in res.output
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- other processes
def _medmtl(*args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "medmtl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_second_process_into_a_locked_folder_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Another process holds the output folder's lock: ``medmtl predict`` into it fails with one line."""
    from medmtl.engine import predict_io as pio

    scans = _copy_scans(tmp_path)
    (scans / "predictions.csv").unlink()
    out = tmp_path / "preds"
    with pio.output_lock(out):
        proc = _medmtl("predict", "--checkpoint", str(tiny_checkpoint), str(scans), "-o", str(out),
                       "--device", "cpu", "--no-progress")
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "another medmtl process is writing into" in errors[0] and "Traceback" not in err
    assert not (out / "predictions.csv").exists()


def test_prediction_killed_mid_batch_resumes_to_the_same_tables(tmp_path: Path, tiny_checkpoint: Path,
                                                                sample_data: Path) -> None:
    """kill -9 after the first scan record; the rerun predicts only the rest and the tables equal an
    uninterrupted run's."""
    import signal
    import time

    args = ["predict", "--checkpoint", str(tiny_checkpoint), str(sample_data / "ct_site_b"), "--device", "cpu",
            "--overlap", "0", "--no-progress"]
    whole = _medmtl(*args, "-o", str(tmp_path / "whole"))
    assert whole.wait(timeout=600) == 0
    killed = tmp_path / "killed"
    proc = _medmtl(*args, "-o", str(killed))
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "scans").glob("*.json")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done_before = len(list((killed / "scans").glob("*.json")))
    assert 1 <= done_before < 8, done_before  # killed mid-batch
    rerun = _medmtl(*args, "-o", str(killed))
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0
    assert f"{8 - done_before} predicted, {done_before} already complete" in out, (done_before, out)
    assert (killed / "predictions.csv").read_bytes() == (tmp_path / "whole" / "predictions.csv").read_bytes()
    assert not list(killed.rglob(".*.tmp*"))  # no temporary file left behind


def test_training_killed_before_its_first_epoch_reruns(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """kill -9 after the run header is written but before an epoch ends; a plain rerun trains."""
    import signal
    import time

    run = tmp_path / "run"
    args = ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(run),
            *[a for o in tiny_overrides for a in ("--set", o)]]
    proc = _medmtl(*args)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "config.yaml").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (run / "config.yaml").exists() and not (run / "last").exists()
    rerun = _medmtl(*args)
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    assert (run / "checkpoint" / "model_card.json").is_file() and "never finished an epoch" in err
