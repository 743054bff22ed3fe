"""Shared fixtures. Sub-folders add their own ``conftest.py`` for topic fixtures."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
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


#: A larger site-A set than the committed 5 scans, for tests that split one site into halves:
#: 12 phantoms cropped to 96×96×64 voxels (site A's 0.9×0.9×1.25 mm grid; ~1 s each).
SITE_A_MANY = {"n": 12, "seed": 1100, "shape": (96, 96, 64)}


@pytest.fixture(scope="session")
def site_a_many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of :data:`SITE_A_MANY` generated site-A phantoms (once per session)."""
    from medmtl import api

    out = tmp_path_factory.mktemp("site_a_many")
    return api.generate_sample_data(out=out / "ct_site_a", kind="ct", site="a", **SITE_A_MANY)


#: The session's tiny run: ``configs/tiny.yaml`` made lean for the suite. 3 scans (2 train,
#: 1 validation at overlap 0), 2 epochs of 2 steps, one gradient-conflict measurement per
#: epoch, validation only after the last epoch, reference statistics of 1 scan.
TINY_FIXTURE_OVERRIDES = (
    "data.max_scans=3",
    "data.reference_scans=1",
    "train.steps_per_epoch=2",
    "train.conflict_every=2",
    "train.progress=false",
    "validation.every=2",
    "validation.overlap=0.0",
)


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The ``--set`` overrides of the session's tiny run (see :data:`TINY_FIXTURE_OVERRIDES`)."""
    return list(TINY_FIXTURE_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    """A checkpoint folder trained briefly with ``configs/tiny.yaml`` (once per session), through
    ``api.train`` (which adds the reference statistics to the card).

    The run folder (``metrics.csv``, ``last/``, ``tb/`` ...) is the checkpoint's parent; the
    resume test continues the same config from scratch and compares against it.
    """
    from medmtl import api

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    return api.train(config=REPO / "configs" / "tiny.yaml", out_dir=run, overrides=tiny_overrides)


#: Seconds a case of the hostile-input corpus (modules that set ``HOSTILE_CASES = True``) may take
#: before it counts as a hang (issue #13: "a time limit (no hang)").
HOSTILE_TIME_LIMIT_S = 240


@pytest.fixture(autouse=True)
def hostile_time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a hostile-input case that runs past :data:`HOSTILE_TIME_LIMIT_S` instead of blocking the suite."""
    if not getattr(request.module, "HOSTILE_CASES", False):
        yield
        return

    def _hang(signum: int, frame: object) -> None:
        raise TimeoutError(f"hostile-input case exceeded {HOSTILE_TIME_LIMIT_S} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HOSTILE_TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
