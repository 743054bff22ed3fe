"""``medmtl adapt`` through the CLI: AdaBN changes only BN buffers, histmatch is recorded in the
card and brings target percentiles to the source reference, bad inputs get one error line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medmtl.cli import main

_spec = importlib.util.spec_from_file_location("medmtl_tests_shift_helpers_a", Path(__file__).parent / "shift" / "helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

HISTMATCH_TOLERANCE_HU = 15.0


@pytest.fixture(scope="module")
def setup(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt")
    a = helpers.copy_scans(sample_data / "ct_site_a", root / "a", 3)
    b = helpers.copy_scans(sample_data / "ct_site_b", root / "b", 2)
    b1 = helpers.copy_scans(sample_data / "ct_site_b", root / "b1", 1)
    return {"a": a, "b": b, "b1": b1, "ckpt": helpers.make_checkpoint(root / "ckpt", a)}


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_adabn_changes_only_bn_buffers(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.shift.bn_shift import bn_layers

    out = tmp_path / "adabn"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b1"]),
                       "--method", "adabn", "-o", str(out)])
    assert code == 0, text
    m0, _ = load_checkpoint(setup["ckpt"])
    m1, card = load_checkpoint(out)
    s0, s1 = m0.state_dict(), m1.state_dict()
    changed = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    bn_buffers = {f"{n}.{b}" for n, _ in bn_layers(m1) for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert changed and changed <= bn_buffers
    rec = card["adaptation"][-1]
    assert rec["method"] == "adabn" and rec["n_target_scans"] == 1 and set(rec["parameters_changed"]) == changed
    assert card["reference_stats"] is not None


def test_histmatch_recorded_and_within_tolerance(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl.engine.checkpoint import read_card
    from medmtl.io.read import load_folder
    from medmtl.shift.fingerprint import body_mask, image_array
    from medmtl.shift.harmonise import apply_harmonisation

    out = tmp_path / "hm"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "histmatch", "-o", str(out)])
    assert code == 0, text
    card = read_card(out)
    assert card["harmonisation"]["method"] == "histmatch"
    q = card["reference_stats"]["quantiles"]
    ref_p = np.interp([0.1, 0.5, 0.9], q["levels"], q["values"])
    scans, _ = load_folder(setup["b"], progress=False)
    for scan in scans:
        before = image_array(scan)
        after = image_array(apply_harmonisation(scan, card))
        mask = body_mask(before, "CT")
        got = np.percentile(after[mask], [10, 50, 90])
        np.testing.assert_allclose(got, ref_p, atol=HISTMATCH_TOLERANCE_HU)
        assert np.abs(np.percentile(before[mask], [10, 50, 90]) - ref_p).max() > np.abs(got - ref_p).max()


def test_bad_adapt_inputs(setup: dict[str, Path], tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "adabn", "-o", str(busy)])
    assert code != 0 and "already exists" in text and text.count("Error:") == 1
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "n4", "-o", str(tmp_path / "n4")])
    assert code != 0 and "MRI" in text and text.count("Error:") == 1
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "dann", "-o", str(tmp_path / "dann")])
    assert code != 0 and "--source" in text and text.count("Error:") == 1
