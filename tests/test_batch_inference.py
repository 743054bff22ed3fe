"""pipelines.batch_inference under torchrun: 2 gloo processes give the same table as one process."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medmtl import api

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "medmtl_tests_predict_helpers", Path(__file__).parent / "engine" / "predict_helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))



def assert_same_lesions(single: Path, multi: Path) -> None:
    """The sharded run's table holds the single run's lesions (floats up to thread-count rounding)."""
    a, b = rows(single / "predictions.csv"), rows(multi / "predictions.csv")
    assert len(a) == len(b) == 3 * helpers.DECODE["max_lesions"]
    for ra, rb in zip(a, b):
        assert ra["seriesuid"] == rb["seriesuid"]
        for col in ("coordX", "coordY", "coordZ", "diameter_mm"):
            # mm: thread counts differ (2 vs 1 per rank), so float32 sums round differently; 0.01 mm is
            # < 1 % of a voxel (measured 2.4e-3 mm on one sub-voxel peak, at old and new commits alike)
            assert float(ra[col]) == pytest.approx(float(rb[col]), abs=1e-2)
        for col in ("probability", "malignancy_prob"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), abs=1e-5)

def test_two_gloo_processes_match_one_process(tmp_path_factory: pytest.TempPathFactory, sample_data: Path,
                                              tmp_path: Path) -> None:
    ckpt = helpers.session_checkpoint(tmp_path_factory)
    scans = tmp_path / "scans"
    scans.mkdir()
    for sid in ("ct_b_0000", "ct_b_0001", "ct_b_0002"):
        os.symlink(sample_data / "ct_site_b" / f"{sid}.nii.gz", scans / f"{sid}.nii.gz")
    single = tmp_path / "single"
    api.predict_folder(checkpoint=ckpt, input_dir=scans, out_dir=single, device="cpu", overlap=0.25,
                       progress=False)
    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pipelines.batch_inference", "--checkpoint", str(ckpt), str(scans), "-o", str(multi),
           "--overlap", "0.25", "--cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged 3 scans (0 failed, 0 missing)" in proc.stderr
    assert_same_lesions(single, multi)
    # each rank did its own round-robin share of the sorted scans
    import json

    shards = {s: json.loads((multi / "scans" / f"{s}.json").read_text(encoding="utf-8"))["provenance"]["shard"]
              for s in ("ct_b_0000", "ct_b_0001", "ct_b_0002")}
    assert shards == {"ct_b_0000": [0, 2], "ct_b_0001": [1, 2], "ct_b_0002": [0, 2]}


def _outside_env(**extra: str) -> dict[str, str]:
    """A user's shell: no PYTHONPATH into the repository, no torchrun variables unless given."""
    drop = ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1", **extra}


def _three_scans(sample_data: Path, folder: Path) -> Path:
    folder.mkdir()
    for sid in ("ct_b_0000", "ct_b_0001", "ct_b_0002"):
        os.symlink(sample_data / "ct_site_b" / f"{sid}.nii.gz", folder / f"{sid}.nii.gz")
    return folder


def test_torchrun_medmtl_cli_predict_from_another_folder(tmp_path_factory: pytest.TempPathFactory,
                                                         sample_data: Path, tmp_path: Path) -> None:
    """``torchrun ... -m medmtl.cli predict`` outside the repository (no PYTHONPATH): 2 gloo processes
    shard the scans by rank and rank 0 prints the merged summary, the same table as one process."""
    import json

    ckpt = helpers.session_checkpoint(tmp_path_factory)
    scans = _three_scans(sample_data, tmp_path / "scans")
    single = tmp_path / "single"
    api.predict_folder(checkpoint=ckpt, input_dir=scans, out_dir=single, device="cpu", overlap=0.25, progress=False)
    multi = tmp_path / "multi"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medmtl.cli", "predict", "--checkpoint", str(ckpt), str(scans), "-o", str(multi),
           "--overlap", "0.25", "--json", "-q"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_outside_env(), capture_output=True, text=True, encoding="utf-8",
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0 alone prints: one object
    assert summary["merged"] is True and summary["shard"] == [0, 2]
    assert (summary["n_scans"], summary["n_done"], summary["n_failed"]) == (3, 3, 0)
    assert_same_lesions(single, multi)
    shards = {s: json.loads((multi / "scans" / f"{s}.json").read_text(encoding="utf-8"))["provenance"]["shard"]
              for s in ("ct_b_0000", "ct_b_0001", "ct_b_0002")}
    assert shards == {"ct_b_0000": [0, 2], "ct_b_0001": [1, 2], "ct_b_0002": [0, 2]}


def test_rank_and_world_size_shard_the_scans_without_torchrun(tmp_path_factory: pytest.TempPathFactory,
                                                              sample_data: Path, tmp_path: Path) -> None:
    """RANK=0/1 and WORLD_SIZE=2 set by hand (no rendezvous): each process predicts its round-robin share
    and merges nothing; a plain rerun skips the finished scans and writes the tables."""
    import json

    ckpt = helpers.session_checkpoint(tmp_path_factory)
    scans = _three_scans(sample_data, tmp_path / "scans")
    out = tmp_path / "out"
    medmtl = str(Path(sys.executable).parent / "medmtl")
    args = [medmtl, "predict", "--checkpoint", str(ckpt), str(scans), "-o", str(out), "--device", "cpu",
            "--overlap", "0.25", "--json"]
    done: dict[int, set[str]] = {}
    for rank in (0, 1):
        before = {p.stem for p in (out / "scans").glob("*.json")} if (out / "scans").is_dir() else set()
        proc = subprocess.run(args, cwd=tmp_path, env=_outside_env(RANK=str(rank), WORLD_SIZE="2"),
                              capture_output=True, text=True, encoding="utf-8", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert summary["shard"] == [rank, 2] and summary["merged"] is False and summary["rendezvous"] is False
        assert f"rank {rank} of 2: predicted this rank's share only" in proc.stderr
        done[rank] = {p.stem for p in (out / "scans").glob("*.json")} - before
        assert summary["n_done"] == len(done[rank])
        assert not (out / "predictions.csv").exists()
    assert done == {0: {"ct_b_0000", "ct_b_0002"}, 1: {"ct_b_0001"}}
    proc = subprocess.run(args[:-1], cwd=tmp_path, env=_outside_env(), capture_output=True, text=True,
                          encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 predicted, 3 already complete, 0 failed" in proc.stdout
    assert len(rows(out / "predictions.csv")) == 3 * helpers.DECODE["max_lesions"]


def test_torchrun_shard_reads_the_environment() -> None:
    from medmtl.engine.predict_dist import has_rendezvous, torchrun_shard
    from medmtl.errors import MedmtlError

    assert torchrun_shard({}) is None and torchrun_shard({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert torchrun_shard({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(MedmtlError, match="unset both to predict in one process"):
            torchrun_shard(bad)
    assert has_rendezvous({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert not has_rendezvous({"MASTER_ADDR": "127.0.0.1"})
