"""Every command and code block of README.md runs (``make`` lines are run by CI / ``make demo``).

The bash blocks' ``medmtl`` and ``torchrun`` lines run in order in a scratch folder that links
the repository's ``configs/``, ``sample_data/`` and ``pipelines/``; then the Python blocks run
there too. Each must succeed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands() -> list[str]:
    cmds = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                cmds.append(line)
    return cmds


def test_readme_lists_the_two_setup_commands() -> None:
    cmds = _commands()
    assert "make demo" in cmds and "make test" in cmds
    # every other command is one this test can run
    others = [c for c in cmds if not c.startswith("make ")]
    assert others and all(c.split()[0] in {"medmtl", "torchrun"} for c in others), others


@pytest.fixture()
def scratch(tmp_path: Path) -> Path:
    for name in ("configs", "sample_data", "pipelines"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    return tmp_path


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="2", MPLBACKEND="Agg")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=900)


def test_readme_commands_and_code_blocks_run(scratch: Path) -> None:
    bindir = Path(sys.executable).parent
    for cmd in _commands():
        if cmd.startswith("make "):
            continue
        argv = shlex.split(cmd)
        if argv[0] == "medmtl":
            argv = [str(bindir / "medmtl"), *argv[1:]]
        elif argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        proc = _run(argv, scratch)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, cmd
    for i, code in enumerate(_blocks("python")):
        script = scratch / f"readme_block_{i}.py"
        script.write_text(code, encoding="utf-8")
        proc = _run([sys.executable, str(script)], scratch)
        assert proc.returncode == 0, f"python block {i}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    # what the commands promised is there
    assert (scratch / "preds/site_b/predictions.csv").is_file()
    assert (scratch / "eval/site_b/metrics.json").is_file()
    assert (scratch / "shift/report.html").is_file()
    assert (scratch / "runs/tiny_adabn/model_card.json").is_file()
    assert (scratch / "preds/ddp/predictions.csv").is_file()
