"""A rerun of ``medmtl predict`` over a finished folder is decided from the records alone (issue #15).

It loads no model and, on ``--device cpu``, imports neither torch nor MONAI; it writes exactly
what a full call writes; a changed threshold, overlap, TTA, checkpoint, card or requested output still
recomputes, and changed weights are still refused. ``medmtl --help`` imports no torch either.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from medmtl.cli import main

_spec = importlib.util.spec_from_file_location("medmtl_tests_predict_helpers_noop",
                                               Path(__file__).with_name("predict_helpers.py"))
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "monai", "safetensors", "scipy", "nibabel", "SimpleITK")
#: Runs the CLI in a fresh interpreter and writes, at exit, which heavy packages it imported.
PROBE = """
import atexit, json, sys
report = sys.argv.pop(1)
def _write():
    top = {m.split(".")[0] for m in sys.modules}
    with open(report, "w", encoding="utf-8") as fh:
        json.dump(sorted(top & set(HEAVY)), fh)
atexit.register(_write)
from medmtl.cli import main
main(sys.argv[1:], prog_name="medmtl")
""".replace("set(HEAVY)", repr(set(HEAVY)))


def run_probe(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``medmtl ARGS`` in a subprocess; returns the result and the heavy packages it imported."""
    report = tmp_path / "imported.json"
    res = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return res, json.loads(report.read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def predict_args(ckpt: Path, scans: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt), str(scans), "-o", str(out), "--device", "cpu", "--overlap", "0",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.session_checkpoint(tmp_path_factory)


@pytest.fixture()
def scans(tmp_path: Path, sample_data: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for sid in ("ct_b_0000", "ct_b_0001"):
        shutil.copy(sample_data / "ct_site_b" / f"{sid}.nii.gz", folder)
    return folder


def full_run(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_help_imports_neither_torch_nor_monai(tmp_path: Path) -> None:
    for args in (["--help"], ["predict", "--help"], ["train", "--help"], ["diagnose", "--help"], ["--version"]):
        res, heavy = run_probe(args, tmp_path)
        assert res.returncode == 0, res.stderr
        assert heavy == [], f"medmtl {' '.join(args)} imported {heavy}"


def test_noop_rerun_loads_nothing_heavy_and_changes_no_byte(checkpoint: Path, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = predict_args(checkpoint, scans, out)
    assert full_run(args).startswith("2 predicted, 0 already complete, 0 failed")
    before = snapshot(out)
    res, heavy = run_probe(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("0 predicted, 2 already complete, 0 failed (0.00 scans/s on cpu, amp off)")
    assert heavy == [], f"a no-op rerun imported {heavy}"
    assert snapshot(out) == before


def test_noop_rerun_writes_what_the_full_path_writes(checkpoint: Path, scans: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import medmtl.engine.predict as predict

    out = tmp_path / "out"
    args = predict_args(checkpoint, scans, out, "--json")
    full_run(args)
    fast = json.loads(full_run(args))
    fast_files = snapshot(out)
    monkeypatch.setattr(predict, "_noop_rerun", lambda *a, **k: None)  # the path that loads the model
    slow = json.loads(full_run(args))
    assert snapshot(out) == fast_files
    for summary in (fast, slow):
        summary["timings"].pop("wall_s")
    assert fast == slow and fast["n_skipped"] == 2 and fast["n_done"] == 0


def test_model_not_loaded_on_a_noop_rerun(checkpoint: Path, scans: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    args = predict_args(checkpoint, scans, out)
    full_run(args)
    import medmtl.engine.checkpoint as ck

    monkeypatch.setattr(ck, "load_checkpoint", lambda *a, **k: pytest.fail("the model was loaded"))
    assert full_run(args).startswith("0 predicted, 2 already complete, 0 failed")
    assert full_run([*args, "--sw-batch-size", "2"]).startswith("0 predicted, 2 already complete")  # not in the key


def test_changed_settings_still_recompute(checkpoint: Path, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = predict_args(checkpoint, scans, out)
    full_run(args)
    assert full_run([*args, "--threshold", "0.5"]).startswith("2 predicted, 0 already complete")
    assert full_run([*args, "--threshold", "0.5"]).startswith("0 predicted, 2 already complete")
    assert full_run(args).startswith("2 predicted, 0 already complete")  # back to the card's threshold
    at = args.index("--overlap") + 1
    other_overlap = [*args[:at], "0.5", *args[at + 1:]]
    assert full_run(other_overlap).startswith("2 predicted, 0 already complete")  # other windows averaged
    assert full_run([*other_overlap, "--tta"]).startswith("2 predicted, 0 already complete")
    assert full_run([*other_overlap, "--tta"]).startswith("0 predicted, 2 already complete")
    assert full_run(args).startswith("2 predicted, 0 already complete")
    assert full_run([*args, "--save-maps"]).startswith("2 predicted, 0 already complete")  # maps not there yet
    other = helpers.make_checkpoint(tmp_path / "other", seed=1)
    assert full_run(predict_args(other, scans, out)).startswith("2 predicted, 0 already complete")
    assert full_run(args).startswith("2 predicted, 0 already complete")


def test_changed_card_recomputes_and_changed_weights_are_refused(checkpoint: Path, scans: Path,
                                                                 tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    out = tmp_path / "out"
    args = predict_args(ckpt, scans, out)
    full_run(args)
    card = ckpt / "model_card.json"
    card.write_text(card.read_text(encoding="utf-8").rstrip() + "\n\n", encoding="utf-8")  # same card, other bytes
    assert full_run(args).startswith("0 predicted, 2 already complete")  # decided by loading the card
    weights = ckpt / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "does not match the card" in res.output


def test_records_without_a_stamp_are_reused_through_the_model(checkpoint: Path, scans: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import medmtl.engine.checkpoint as ck

    out = tmp_path / "out"
    args = predict_args(checkpoint, scans, out)
    full_run(args)
    for rec_path in (out / "scans").glob("*.json"):  # as an older medmtl wrote them
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        del rec["provenance"]["resume_stamp"]
        rec_path.write_text(json.dumps(rec), encoding="utf-8")
    loads: list[str] = []
    real = ck.load_checkpoint

    def spy(folder: Any, **kwargs: Any) -> Any:
        loads.append(str(folder))
        return real(folder, **kwargs)

    monkeypatch.setattr(ck, "load_checkpoint", spy)
    assert full_run(args).startswith("0 predicted, 2 already complete")  # the model decided, as before
    assert loads == [str(checkpoint)]


@pytest.mark.parametrize("native", ["0", "1"])
def test_cpu_amp_without_torch_is_the_predictors(monkeypatch: pytest.MonkeyPatch, native: str) -> None:
    import torch

    from medmtl.engine.cpu_caps import cpu_native_bf16
    from medmtl.engine.inference import AMP_CHOICES, resolve_amp
    from medmtl.engine.predict import cpu_amp

    monkeypatch.setenv("MEDMTL_CPU_BF16", native)
    cpu_native_bf16.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert all(cpu_amp(a) == resolve_amp(a, cpu, inference=True) for a in AMP_CHOICES)
        assert cpu_amp("auto") == ("bf16" if native == "1" else "off")
        assert resolve_amp("auto", cpu) == "off"  # training steps stay float32 on a CPU
        assert cpu_amp("fp8") is None
    finally:
        monkeypatch.delenv("MEDMTL_CPU_BF16")
        cpu_native_bf16.cache_clear()
