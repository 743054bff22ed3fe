"""Trainer: run-folder contents, model card, resume determinism, run-folder safety."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from medmtl.config import load_config
from medmtl.engine.checkpoint import load_checkpoint
from medmtl.engine.run_files import METRIC_COLUMNS
from medmtl.engine.trainer import run_training
from medmtl.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"

#: A very small run: 3 scans, no validation, 2 steps per epoch, cheap reference statistics.
FAST = [
    "data.max_scans=3",
    "data.val_fraction=0",
    "data.reference_scans=1",
    "train.steps_per_epoch=2",
    "train.conflict_every=2",
    "train.progress=false",
]


def test_tiny_run_folder(tiny_checkpoint: Path) -> None:
    run = tiny_checkpoint.parent
    for name in ("config.yaml", "versions.json", "metrics.csv", "gradient_conflict.csv", "gradient_conflict.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "last").iterdir()) == [
        "model.safetensors", "model_card.json", "train_state.json", "train_state.safetensors",
    ]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folders left
    with open(run / "metrics.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert len(rows) == 2 and rows[-1]["cpm"] != ""  # the last epoch validates
    for r in rows:
        assert float(r["loss"]) > 0 and float(r["weight_det"]) == 1.0
    conflict = json.loads((run / "gradient_conflict.json").read_text(encoding="utf-8"))
    assert conflict["pairs"] == ["det|size", "det|malig", "size|malig"] and conflict["epochs"]


def test_tiny_card(tiny_checkpoint: Path) -> None:
    model, card = load_checkpoint(tiny_checkpoint)
    assert card.patch_size == (32, 32, 32)
    assert card.input_spec.spacing_mm == (3.0, 3.0, 3.0)
    assert card.decode.temperature > 0 and card.decode.threshold == 0.1
    assert card.reference_stats is not None and card.reference_stats.n_scans >= 1  # added by api.train
    assert card.train_config is not None and card.train_config.name == "tiny"
    assert card.training is not None and set(card.training.train_ids).isdisjoint(card.training.val_ids)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 32, 32))
    assert set(out) == {"heatmap", "log_diameter", "malignancy"}


def test_refuses_non_empty_run_folder(tmp_path: Path) -> None:
    cfg = load_config(TINY, FAST)
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not empty; pass --resume .* --overwrite"):
        run_training(cfg, tmp_path)
    with pytest.raises(CheckpointError, match="cannot resume"):
        run_training(cfg, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        run_training(cfg, tmp_path, resume=True, overwrite=True)


def test_resume_reaches_identical_weights(tiny_checkpoint: Path, tiny_overrides: list[str], tmp_path: Path) -> None:
    """2 epochs straight vs 1 epoch, stop, ``--resume`` for 1 more: same weights on CPU.

    The straight run is the session's tiny run (2 epochs of 2 steps); the same config is
    trained here for 1 epoch, stopped, and resumed through the CLI.
    """
    from medmtl.cli import main

    straight = tiny_checkpoint.parent
    resumed = tmp_path / "resumed"
    run_training(load_config(TINY, tiny_overrides), resumed, stop_after_epochs=1)
    with open(resumed / "metrics.csv", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 1
    args = ["train", "--config", str(TINY), "--out", str(resumed), "--resume"]
    for o in tiny_overrides:
        args += ["--set", o]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(resumed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = load_file(str(straight / "checkpoint" / "model.safetensors"))
    cb = load_file(str(resumed / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    with open(straight / "metrics.csv", encoding="utf-8") as fh:
        rows_a = list(csv.DictReader(fh))
    with open(resumed / "metrics.csv", encoding="utf-8") as fh:
        rows_b = list(csv.DictReader(fh))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    # a changed config is refused on resume
    with pytest.raises(ConfigError, match="cannot resume .* train.learning_rate"):
        run_training(load_config(TINY, [*tiny_overrides, "train.learning_rate=0.01"]), resumed, resume=True)
