"""DDP: two gloo processes under ``torchrun`` train 2 steps and save one checkpoint."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from medmtl.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    launcher = tmp_path / "launch.py"
    launcher.write_text("from medmtl.cli import main\n\nmain()\n", encoding="utf-8")
    out = tmp_path / "run"
    overrides = [
        "data.max_scans=2", "data.val_fraction=0", "data.reference_scans=1", "train.epochs=1",
        "train.steps_per_epoch=2", "train.batch_size=2", "train.samples_per_scan=2", "train.conflict_every=0",
        "train.device=cpu", "train.progress=false",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
           "train", "--config", str(TINY), "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1  # only rank 0 reports (and writes)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint", "last", "tb"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    with open(out / "metrics.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["step"] == "2"
    versions = (out / "versions.json").read_text(encoding="utf-8")
    assert '"world_size": 2' in versions
    model, card = load_checkpoint(out / "checkpoint")
    assert card.training is not None and card.training.epoch == 1
