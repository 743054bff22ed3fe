"""Shared fixtures. Sub-folders add their own ``conftest.py`` for topic fixtures."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"

# Deterministic, quiet, CPU-only test runs on small machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
# float32 inference whatever the CI machine's CPU (``--amp auto`` is bf16 on CPUs with native
# bf16); tests of the bf16 path set it themselves.
os.environ.setdefault("MEDMTL_CPU_BF16", "0")


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


# --------------------------------------------------------------------------- the hostile-input corpus
def tree(root: Path) -> dict[str, str] | None:
    """Relative path → SHA-256 of everything under ``root`` (``None`` when it does not exist).

    Folders read ``<dir>``, symbolic links ``-> target`` (never followed: loops are fine) and
    FIFOs, sockets and devices ``<special>`` (never opened: a FIFO would block)."""
    root = Path(root)
    if not os.path.lexists(root):
        return None
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                out[str(p.relative_to(root))] = "-> " + os.readlink(p)
            elif stat.S_ISDIR(mode):
                out[str(p.relative_to(root))] = "<dir>"
            elif stat.S_ISREG(mode):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p.relative_to(root))] = "<special>"
    return out


@dataclass
class HostileRun:
    """What one hostile CLI call gave: the click result and its one ``Error:`` line (``None`` on success)."""

    result: object
    error: str | None
    stdout: str
    output: str


def run_hostile(args: Sequence[object], *, code: int = 1, words: Sequence[str] = (), watch: Sequence[Path] = (),
                absent: Sequence[Path] = (), stdout_words: Sequence[str] = (), partial_stdout: bool = False,
                only_line: bool = False) -> HostileRun:
    """Run ``medmtl *args`` through click's CliRunner and assert the corpus's properties, the same for
    every case (issue #13):

    * the exit code is ``code``; no Python traceback, no exception other than ``SystemExit``;
    * ``code != 0``: exactly one line starts with ``Error:`` and it holds every one of ``words``
      (the file, the value, what is allowed, the fix); nothing on stdout unless ``partial_stdout``
      (a batch that lists the good scans); with ``only_line`` nothing else is printed at all;
    * ``code == 0``: no ``Error:`` line; stdout holds every one of ``stdout_words`` (either way);
    * every folder in ``watch`` (the input folder, an output folder that existed) is byte for byte
      what it was (paths, contents, links), and no path in ``absent`` exists afterwards (the output
      folder a refusal must not leave behind).

    The per-case time limit comes from :func:`hostile_time_limit` (modules with ``HOSTILE_CASES``).
    """
    from click.testing import CliRunner

    from medmtl.cli import main

    before = {Path(w): tree(Path(w)) for w in watch}
    res = CliRunner().invoke(main, [str(a) for a in args])
    output = res.output
    assert res.exit_code == code, output
    assert "Traceback" not in output, output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    for w in stdout_words:
        assert w in res.stdout, (w, res.stdout)
    if code == 0:
        assert errors == [], output
    else:
        assert len(errors) == 1, output
        for w in words:
            assert w in errors[0], (w, errors[0])
        if not partial_stdout:
            assert res.stdout == "", f"partial output on error: {res.stdout!r}"
        if only_line:
            assert [ln for ln in output.splitlines() if ln.strip()] == errors, output
    for folder, was in before.items():
        assert tree(folder) == was, f"{folder} changed"
    for path in absent:
        assert not os.path.lexists(path), f"{path} was left behind"
    return HostileRun(result=res, error=errors[0] if errors else None, stdout=res.stdout, output=output)


@pytest.fixture
def hostile() -> object:
    """The corpus's one checker: ``hostile(args, code=..., words=..., watch=..., absent=...)`` (see
    :func:`run_hostile`); ``hostile.tree(folder)`` hashes a folder the same way."""

    class _Hostile:
        tree = staticmethod(tree)

        def __call__(self, args: Sequence[object], **kw: object) -> HostileRun:
            return run_hostile(args, **kw)  # type: ignore[arg-type]

    return _Hostile()
