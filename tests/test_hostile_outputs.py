"""Hostile tables, configs and output folders (issue #13): one ``Error:`` line, a non-zero exit,
no traceback, nothing the user has changed or left behind (every CLI case through the corpus's one
checker, ``hostile`` in tests/conftest.py); a file medmtl did not write is never replaced; outputs
honour the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medmtl.cli import main
from medmtl.io.outputs import RECORD_FILE

#: every case of this module runs under the hostile-input time limit (tests/conftest.py)
HOSTILE_CASES = True

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(("text", "words"), [
    ("", ["is empty", "configs/tiny.yaml"]),
    ("train:\n  epochs: 2\n  epochs: 3\n", ["repeats the key 'epochs'", "line 3"]),
    ("train:\n  epochs: 2\ntrain:\n  batch_size: 2\n", ["repeats the key 'train'"]),
    ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", ["nested too deeply"]),
])
def test_bad_yaml_configs(tmp_path: Path, hostile, text: str, words: list[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text, encoding="utf-8")
    hostile(["train", "--config", cfg, "--out", tmp_path / "run"], words=words, watch=[tmp_path],
            absent=[tmp_path / "run"])


def test_a_refused_training_leaves_no_run_folder(tmp_path: Path, hostile) -> None:
    """The data is checked after the run folder would be made: the refusal removes the empty folder."""
    hostile(["train", "--config", REPO / "configs" / "tiny.yaml", "--out", tmp_path / "run",
             "--set", f"data.root={REPO / 'sample_data' / 'mri'}"], words=["MR"], absent=[tmp_path / "run"])


def test_a_run_killed_before_its_first_epoch_starts_afresh(tmp_path: Path) -> None:
    from medmtl.engine.trainer import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    versions = json.dumps({"medmtl": "0.1.0", "started": "2026-12-02T00:00:00+0000"})  # medmtl's run header
    (run / "versions.json").write_text(versions, encoding="utf-8")
    (run / "config.yaml").write_text("seed: 0\n", encoding="utf-8")
    assert prepare_run_dir(run, resume=True, overwrite=False, is_main=True) is False  # nothing to resume
    assert list(run.iterdir()) == []
    (run / "versions.json").write_text(versions, encoding="utf-8")  # killed between its two header files
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
def test_bad_prediction_tables(tmp_path: Path, hostile, rows: str, words: list[str]) -> None:
    pred = tmp_path / "predictions.csv"
    pred.write_text(rows, encoding="utf-8")
    hostile(["evaluate", "--predictions", pred, "--annotations", REPO / "sample_data" / "ct_site_b" / "annotations.csv",
             "-o", tmp_path / "eval"], words=words, watch=[tmp_path])


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
def test_output_folder_in_the_input_folder_is_refused(tmp_path: Path, hostile, command: str, where: str) -> None:
    scans = _copy_scans(tmp_path)
    out = scans if where == "same" else scans / "preds"
    args: list[object] = [command, scans, "-o", out]
    if command == "predict":
        args[1:1] = ["--checkpoint", tmp_path]  # never read: the folders are checked first
    hostile(args, words=["input folder", "choose -o outside"], watch=[tmp_path])


def test_sample_data_never_overwrites_the_users_files(tmp_path: Path, hostile) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "ct_a_0000.nii.gz").write_bytes(b"the user's scan")
    hostile(["sample-data", out, "--kind", "ct", "--site", "a", "--n", "1", "--shape", "32", "32", "16"],
            words=["not empty and holds no generated data set"], watch=[tmp_path])


# --------------------------------------------------------------------------- files medmtl did not write
SITE_B = REPO / "sample_data" / "ct_site_b"
SHAPE = ["--shape", "32", "32", "16"]


def _generated(folder: Path, n: int) -> Path:
    from medmtl import api

    return api.generate_sample_data(out=folder, kind="ct", site="a", n=n, seed=0, shape=(32, 32, 16))


#: command → (the user's file in the output folder, arguments, words of the one error line). Each
#: user file sits where the command would write one of its outputs.
FOREIGN = {
    "predict: scans/": ("scans/ct_b_0000.json", lambda t, c, o: ["predict", "--checkpoint", c, t / "in", "-o", o,
                                                                 "--device", "cpu", "--no-progress"], ["'scans/'"]),
    "predict: maps/": ("maps/my_map.nii.gz", lambda t, c, o: ["predict", "--checkpoint", c, t / "in", "-o", o,
                                                              "--device", "cpu", "--no-progress"], ["'maps/'"]),
    "predict: predictions.json": ("predictions.json", lambda t, c, o: ["predict", "--checkpoint", c, t / "in", "-o", o,
                                                                       "--no-progress"], ["'predictions.json'"]),
    "classical": ("failures.json", lambda t, c, o: ["classical", t / "in", "-o", o, "--no-progress"],
                  ["'failures.json'"]),
    "evaluate": ("froc.png", lambda t, c, o: ["evaluate", "--predictions", t / "in" / "p.csv", "--annotations",
                                              SITE_B / "annotations.csv", "-o", o], ["'froc.png'"]),
    "diagnose": ("report.json", lambda t, c, o: ["diagnose", "--source", SITE_B, "--target", SITE_B, "-o", o],
                 ["'report.json'"]),
    "train": ("config.yaml", lambda t, c, o: ["train", "--config", REPO / "configs" / "tiny.yaml", "--out", o],
              ["is not empty", "holds 'config.yaml' but no medmtl run", "choose another --out"]),
    "train --overwrite": ("metrics.csv", lambda t, c, o: ["train", "--config", REPO / "configs" / "tiny.yaml", "--out", o,
                                                          "--overwrite"], ["'metrics.csv'", "choose another --out"]),
    "adapt": ("model_card.json", lambda t, c, o: ["adapt", "--checkpoint", c, "--target", t / "in", "--method", "adabn",
                                                  "-o", o, "--device", "cpu"], ["not an empty folder"]),
    "sample-data --overwrite": ("annotations.csv", lambda t, c, o: ["sample-data", o, "--n", "1", *SHAPE, "--overwrite"],
                                ["'annotations.csv'", "choose another OUT"]),
    "sample-data --dicom twin": ("notes.txt", lambda t, c, o: ["sample-data", t / "set", "--n", "1", *SHAPE, "--dicom"],
                                 ["set_nifti is not empty", "choose a new or empty folder"]),
}


@pytest.mark.parametrize("name", list(FOREIGN))
def test_a_file_medmtl_did_not_write_is_never_replaced(tmp_path: Path, tiny_checkpoint: Path, hostile, name: str) -> None:
    """An output folder holding the user's file where the command would write: one error, nothing changed."""
    import shutil

    rel, build, words = FOREIGN[name]
    scans = tmp_path / "in"
    scans.mkdir()
    for i in range(2):
        shutil.copy(SITE_B / f"ct_b_000{i}.nii.gz", scans)
    (scans / "p.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\nct_b_0000,1,2,3,0.5\n", encoding="utf-8")
    out = tmp_path / ("set_nifti" if "twin" in name else "out")
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text("the user's own file\n", encoding="utf-8")
    if name.startswith("sample-data --overwrite"):
        (out / "ct_a_0000.nii.gz").write_bytes(b"the user's scan")
    hostile(build(tmp_path, tiny_checkpoint, out), words=words, watch=[scans, out],
            absent=[tmp_path / "set"] if "twin" in name else [])


def test_a_sample_data_set_replaced_with_overwrite_keeps_the_users_files(tmp_path: Path, hostile) -> None:
    """--overwrite replaces (and removes) only the scans the set's generation.json records."""
    out = _generated(tmp_path / "set", 2)
    (out / "ct_a_0005.nii.gz").write_bytes(b"the user's scan, named like a generated one")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    hostile(["sample-data", out, "--n", "1", "--seed", "3", *SHAPE, "--overwrite"], code=0, stdout_words=["wrote 1 CT"])
    assert not (out / "ct_a_0001.nii.gz").exists() and not (out / "masks" / "ct_a_0001_lesions.nii.gz").exists()
    assert (out / "ct_a_0005.nii.gz").read_bytes().startswith(b"the user's scan")
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    (out / "ct_a_0001.nii.gz").write_bytes(b"the user's scan at a name the next set writes")
    hostile(["sample-data", out, "--n", "2", *SHAPE, "--overwrite"], words=["'ct_a_0001.nii.gz'"], watch=[out])


def test_outputs_beside_the_users_files_and_reruns(tmp_path: Path, tiny_checkpoint: Path, hostile) -> None:
    """A file medmtl would not write is left alone; medmtl's own outputs (recorded) are replaced on a rerun."""
    import shutil

    scans = tmp_path / "in"
    scans.mkdir()
    shutil.copy(SITE_B / "ct_b_0000.nii.gz", scans)
    preds, ev = tmp_path / "preds", tmp_path / "eval"
    for folder in (preds, ev):
        folder.mkdir()
        (folder / "notes.txt").write_text("mine", encoding="utf-8")
    args = ["predict", "--checkpoint", tiny_checkpoint, scans, "-o", preds, "--device", "cpu", "--overlap", "0",
            "--no-progress"]
    hostile(args, code=0, stdout_words=["1 predicted"], watch=[scans])
    hostile(args, code=0, stdout_words=["0 predicted, 1 already complete"], watch=[scans])
    assert "predictions.csv" in (preds / RECORD_FILE).read_text(encoding="utf-8")
    table = tmp_path / "p.csv"
    table.write_text("seriesuid,coordX,coordY,coordZ,probability\nct_b_0000,1,2,3,0.5\n", encoding="utf-8")
    for _ in range(2):
        hostile(["evaluate", "--predictions", table, "--annotations", SITE_B / "annotations.csv", "-o", ev,
                 "--n-bootstrap", "5"], code=0, stdout_words=["CPM"], watch=[scans])
    assert (preds / "notes.txt").read_text(encoding="utf-8") == (ev / "notes.txt").read_text(encoding="utf-8") == "mine"


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
def test_headers_are_checked_before_allocating(tmp_path: Path, hostile, kwargs: dict, words: list[str]) -> None:
    import numpy as np

    if "affine" in kwargs:
        kwargs = {"affine": np.asarray(kwargs["affine"], dtype=np.float64)}
    folder = tmp_path / "in"
    folder.mkdir()
    _nifti_header_file(folder / "x.nii", **kwargs)
    hostile(["inspect", folder], words=["x.nii", *words], watch=[tmp_path])


# --------------------------------------------------------------------------- special files
def test_a_fifo_named_like_a_scan_does_not_hang_discovery(tmp_path: Path, hostile) -> None:
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz", folder)
    os.mkfifo(folder / "slice.dcm")
    os.mkfifo(folder / "pipe.nii.gz")
    run = hostile(["inspect", folder], stdout_words=["ct_b_0000"], partial_stdout=True, watch=[tmp_path])
    assert "not a regular file" in run.output  # would block forever if the FIFO were opened


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


def test_output_that_is_a_file_is_one_error(tmp_path: Path, hostile) -> None:
    import shutil

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz", scans)
    target = tmp_path / "out.txt"
    target.write_text("mine", encoding="utf-8")
    hostile(["classical", scans, "-o", target], code=2, words=["is a file"], watch=[tmp_path])  # click: a usage error


def test_an_mhd_pointing_outside_its_folder_is_refused(tmp_path: Path, hostile) -> None:
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
    hostile(["inspect", folder], words=["y.mhd", "outside its folder"], watch=[tmp_path])


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
