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
    a, b = rows(single / "predictions.csv"), rows(multi / "predictions.csv")
    assert len(a) == len(b) == 3 * helpers.DECODE["max_lesions"]
    for ra, rb in zip(a, b):
        assert ra["seriesuid"] == rb["seriesuid"]
        for col in ("coordX", "coordY", "coordZ", "diameter_mm"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), abs=1e-3)  # mm (thread counts differ)
        for col in ("probability", "malignancy_prob"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), abs=1e-5)
    # each rank did its own round-robin share of the sorted scans
    import json

    shards = {s: json.loads((multi / "scans" / f"{s}.json").read_text(encoding="utf-8"))["provenance"]["shard"]
              for s in ("ct_b_0000", "ct_b_0001", "ct_b_0002")}
    assert shards == {"ct_b_0000": [0, 2], "ct_b_0001": [1, 2], "ct_b_0002": [0, 2]}
