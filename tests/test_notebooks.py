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


def _checkpoint_folder(p: Path) -> Path:
    p = Path(p)
    if (p / "model_card.json").is_file():
        return p
    if (p / "checkpoint" / "model_card.json").is_file():
        return p / "checkpoint"
    raise AssertionError(f"{p} holds no checkpoint")


@pytest.fixture(scope="session")
def notebook_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared ``tiny_checkpoint`` fixture when conftest provides it, else a fast training run."""
    try:
        return _checkpoint_folder(request.getfixturevalue("tiny_checkpoint"))
    except pytest.FixtureLookupError:
        from medmtl import api

        run = tmp_path_factory.mktemp("nb_ckpt") / "run"
        tiny = REPO / "configs" / "tiny.yaml"
        if tiny.is_file():
            return Path(api.train(config=tiny, out_dir=run, overrides=["train.device=cpu"]))
        return Path(api.train(
            config=REPO / "configs" / "demo.yaml", out_dir=run,
            overrides=[f"data.root={REPO / 'sample_data' / 'ct_site_a'}", "train.device=cpu", "train.epochs=1",
                       "train.steps_per_epoch=2", "train.patch_size=[32, 32, 32]", "validation.calibrate=false"],
        ))


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
