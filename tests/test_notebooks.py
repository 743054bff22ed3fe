"""The notebooks run clean: each is executed with nbclient (kernel ``python3`` of this venv).

Small settings through environment variables: ``MEDMTL_NB_FAST=1`` (tiny training and
bootstrap), ``MEDMTL_NB_CHECKPOINT`` (the session's tiny checkpoint instead of training),
``MEDMTL_NB_OUT`` (a temporary folder). Any cell that raises fails the test with that cell's
source and traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def notebook_checkpoint(tiny_checkpoint: Path) -> Path:
    """The checkpoint folder of the shared ``tiny_checkpoint`` fixture (tests/conftest.py)."""
    p = Path(tiny_checkpoint)
    return p if (p / "model_card.json").is_file() else p / "checkpoint"


def test_notebooks_are_clean_nbformat_v4() -> None:
    import nbformat

    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_domain_shift", "03_transfer_and_mtl"} <= names
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs not cleared"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_error(
    path: Path, tmp_path: Path, notebook_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("MEDMTL_NB_FAST", "1")
    monkeypatch.setenv("MEDMTL_NB_CHECKPOINT", str(notebook_checkpoint))
    monkeypatch.setenv("MEDMTL_NB_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MEDMTL_REPO", str(REPO))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks draw inline (%matplotlib inline)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as exc:  # the message holds the failing cell and its traceback
        pytest.fail(f"{path.name} failed:\n{exc}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {[e.get('ename') for e in errors]}"
    assert any(o.output_type == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])), "no figure was drawn"
