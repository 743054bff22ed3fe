"""Every command and code block of README.md runs (``make`` lines are run by CI / ``make demo``).

The bash blocks' ``medmtl`` and ``torchrun`` lines run in order in a scratch folder outside the
repository that links its ``configs/`` and ``sample_data/`` (the files the commands name) and
nothing else: no ``pipelines/``, no ``PYTHONPATH``, so a command that needs the repository on the
import path fails here as it would for a user. Then the Python blocks run there too. Each must
succeed.
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
    for name in ("configs", "sample_data"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    return tmp_path


def _outside_env() -> dict[str, str]:
    """The environment of a user's shell: no ``PYTHONPATH`` pointing into the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, OMP_NUM_THREADS="2", MPLBACKEND="Agg")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = _outside_env()
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


def test_readme_commands_need_no_repository_on_the_path() -> None:
    """No README command runs a module of the repository (``-m pipelines...``): after ``make install``
    they must work from any folder, through the installed ``medmtl`` package."""
    for cmd in _commands():
        argv = shlex.split(cmd)
        modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
        assert all(m.split(".")[0] == "medmtl" for m in modules), cmd


def test_installed_cli_runs_from_another_folder(tmp_path: Path) -> None:
    """``cd /tmp && medmtl ...``: the installed entry point and ``python -m medmtl.cli`` (what ``torchrun -m``
    runs) work outside the repository, on a scan given by its absolute path."""
    import json

    scan = REPO / "sample_data" / "ct_site_b" / "ct_b_0000.nii.gz"
    bindir = Path(sys.executable).parent
    for argv in ([str(bindir / "medmtl"), "inspect", str(scan), "--json", "-q"],
                 [sys.executable, "-m", "medmtl.cli", "inspect", str(scan), "--json", "-q"]):
        proc = _run(argv, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stderr == ""
        (row,) = json.loads(proc.stdout)["scans"]
        assert row["id"] == "ct_b_0000" and row["path"] == "ct_b_0000.nii.gz"


def test_jupyter_nbconvert_executes_a_notebook(tmp_path: Path) -> None:
    """``jupyter nbconvert --to notebook --execute`` (nbconvert from the dev extras) runs a notebook with
    this venv's kernel, outside the repository, importing the installed medmtl."""
    import json

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import medmtl\nprint('medmtl', medmtl.__version__)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "check.ipynb")
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = _run([str(jupyter), "nbconvert", "--to", "notebook", "--execute", "check.ipynb", "--output", "done"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = json.loads((tmp_path / "done.ipynb").read_text(encoding="utf-8"))
    from medmtl import __version__

    assert "".join(done["cells"][0]["outputs"][0]["text"]) == f"medmtl {__version__}\n"
