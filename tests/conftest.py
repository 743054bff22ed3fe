"""Shared fixtures. Sub-folders add their own ``conftest.py`` for topic fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"

# Deterministic, quiet, CPU-only test runs on small machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The committed ``sample_data/`` folder."""
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder trained briefly with ``configs/tiny.yaml`` (once per session).

    The run folder (``metrics.csv``, ``last/``, ``tb/`` ...) is the checkpoint's parent.
    """
    from medmtl.config import load_config
    from medmtl.engine.trainer import run_training

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["train.progress=false"])
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    return run_training(cfg, run)
