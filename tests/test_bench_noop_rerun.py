"""bench/noop_rerun.py: its summary statistics and the verdict it writes against the 5 s target."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root (python -m bench.noop_rerun)
    sys.path.insert(0, str(REPO))

from bench import noop_rerun as B  # noqa: E402


def _result(noop: list[float], n_scans: int = 8) -> dict[str, Any]:
    return {"n_scans": n_scans, "repeats": len(noop), "help": B.spread([0.1, 0.2, 0.3]), "full_predict_s": 9.0,
            "noop_rerun": B.spread(noop), "noop_rerun_device_auto_s": 1.9, "outputs_unchanged": True,
            "load_avg_1min_start": 1.0, "load_avg_1min_end": 1.0}


def test_spread() -> None:
    assert B.spread([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0}


def test_verdict_uses_the_slowest_rerun_and_needs_eight_scans() -> None:
    kw = {"machine": "m", "command": "c", "date": "d"}
    assert "**met** (slowest of the repeats 4.90 s)" in B.markdown(_result([0.2, 4.9, 0.3]), **kw)
    assert "**NOT met** (slowest of the repeats 5.10 s)" in B.markdown(_result([0.2, 5.1, 0.3]), **kw)
    assert "**not measured (< 8 scans)**" in B.markdown(_result([0.2], n_scans=2), **kw)


def test_medmtl_command_runs_this_interpreters_medmtl() -> None:
    cmd = B.medmtl_command()
    assert cmd[0] == str(Path(sys.executable).with_name("medmtl")) or cmd[:3] == [sys.executable, "-m", "medmtl"]
