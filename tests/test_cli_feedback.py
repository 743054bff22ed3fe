"""Feedback and consistency of the CLI (issue #14, item 1).

Progress bars with ETA on a terminal, none when stderr is redirected, an empty stderr with
``--quiet``; one JSON object on stdout with ``--json`` for predict, evaluate, diagnose, adapt, train
and inspect, carrying the numbers of the files written; a single scan file where a folder of scans is
read; the same ``-o/--out``, ``--device`` and ``-q/--quiet`` on every command. The commands run as
subprocesses of the installed ``medmtl`` entry point in a folder outside the repository, on small
real scans (the fast 6 mm checkpoint of the prediction tests, a 1-epoch tiny training).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medmtl.cli import main

REPO = Path(__file__).resolve().parents[1]
MEDMTL = str(Path(sys.executable).parent / "medmtl")
_spec = importlib.util.spec_from_file_location(
    "medmtl_tests_predict_helpers_feedback", Path(__file__).parent / "engine" / "predict_helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

#: Commands that can take more than a few seconds: each has -q/--quiet and --no-progress.
LONG = ("train", "predict", "evaluate", "diagnose", "adapt", "inspect", "sample-data", "classical")
#: Commands with --json (one summary object on stdout).
JSON = ("predict", "evaluate", "diagnose", "adapt", "train", "inspect")
#: A bar of :mod:`medmtl.progress` on stderr: carriage returns and the ETA field.
BAR_MARKS = ("\r", "<?", "it/s", "scan/s")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                             "MASTER_ADDR", "MASTER_PORT")}
    return dict(env, OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def cli(args: list[object], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``medmtl ARGS`` in ``cwd`` (outside the repository), stdout and stderr captured (not a terminal)."""
    return subprocess.run([MEDMTL, *map(str, args)], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          encoding="utf-8", timeout=600)


def one_json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON object a ``--json`` run printed (nothing else on stdout)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    obj = json.loads(proc.stdout)
    assert isinstance(obj, dict)
    return obj


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.session_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, sample_data: Path) -> Path:
    """Two site-B scans (links) in a folder of their own."""
    folder = tmp_path_factory.mktemp("feedback_scans")
    for sid in ("ct_b_0000", "ct_b_0001"):
        (folder / f"{sid}.nii.gz").symlink_to(sample_data / "ct_site_b" / f"{sid}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, scans: Path) -> tuple[Path, dict]:
    """``medmtl predict ... --json -q`` over the two scans: (output folder, its JSON)."""
    work = tmp_path_factory.mktemp("feedback_predict")
    out = work / "preds"
    proc = cli(["predict", "--checkpoint", checkpoint, scans, "-o", out, "--device", "cpu", "--overlap", "0.25",
                "--json", "-q"], work)
    summary = one_json(proc)
    assert proc.stderr == ""
    return out, summary


# --------------------------------------------------------------------------- the same options everywhere
def _params(name: str) -> dict[str, object]:
    return {p.name: p for p in main.commands[name].params}  # type: ignore[union-attr]


@pytest.mark.parametrize("name", LONG)
def test_every_long_command_has_quiet_and_no_progress(name: str) -> None:
    params = _params(name)
    assert {"quiet", "no_progress"} <= set(params), name
    assert "-q" in params["quiet"].opts and "--quiet" in params["quiet"].opts  # type: ignore[attr-defined]
    assert "-q, --quiet" in CliRunner().invoke(main, [name, "--help"]).output


def test_json_out_and_device_are_spelled_the_same_everywhere() -> None:
    for name in JSON:
        assert "--json" in _params(name)["as_json"].opts, name  # type: ignore[attr-defined]
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if "--out" in getattr(p, "opts", ()):
                assert "-o" in p.opts, name  # type: ignore[attr-defined]
            if "--device" in getattr(p, "opts", ()):
                assert p.default in ("auto", None), (name, p.default)  # train: the config's (auto)
    for name in ("predict", "adapt"):
        assert _params(name)["device"].default == "auto"
    bad = CliRunner().invoke(main, ["adapt", "--checkpoint", ".", "--target", ".", "--method", "adabn", "-o", "x",
                                    "--device", "gpu0"])
    assert bad.exit_code == 2 and "use auto, cpu, cuda or cuda:N" in bad.output


# --------------------------------------------------------------------------- progress on a terminal, not otherwise
def _on_a_terminal(args: list[object], cwd: Path) -> tuple[int, str, str]:
    """Run ``medmtl ARGS`` with stderr on a pseudo-terminal (120 columns): (exit code, stdout, stderr)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([MEDMTL, *map(str, args)], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.communicate(timeout=300)[0]
    os.close(master)
    return proc.returncode, out.decode(), err.decode(errors="replace")


def test_progress_with_eta_on_a_terminal_and_nothing_with_quiet(tmp_path: Path) -> None:
    code, out, err = _on_a_terminal(["sample-data", tmp_path / "a", "--n", "2", "--shape", "32", "32", "24"], tmp_path)
    assert code == 0, err
    assert "phantoms" in err and "2/2" in err and "<" in err and "scan" in err  # desc, count, elapsed<left, rate
    assert "phantoms" not in out  # never on stdout
    code, out, err = _on_a_terminal(["sample-data", "-o", tmp_path / "b", "--n", "2", "--shape", "32", "32", "24",
                                     "--quiet"], tmp_path)
    assert code == 0 and err == "" and "wrote 2 CT" in out


def test_no_bars_when_stderr_is_not_a_terminal(tmp_path: Path, predicted: tuple[Path, dict],
                                               sample_data: Path) -> None:
    proc = cli(["sample-data", tmp_path / "set", "--n", "2", "--shape", "32", "32", "24"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not any(m in proc.stderr for m in BAR_MARKS), proc.stderr
    out, _ = predicted
    proc = cli(["evaluate", "--predictions", out / "predictions.csv", "--annotations",
                sample_data / "ct_site_b" / "annotations.csv", "-o", tmp_path / "eval", "--n-bootstrap", "50"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not any(m in proc.stderr for m in BAR_MARKS), proc.stderr


# --------------------------------------------------------------------------- --json and --quiet, per command
def test_predict_json_matches_its_files(predicted: tuple[Path, dict]) -> None:
    out, summary = predicted
    assert summary["n_scans"] == summary["n_done"] == 2 and summary["n_failed"] == 0
    with open(summary["outputs"]["predictions_csv"], newline="", encoding="utf-8") as fh:  # type: ignore[index]
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * helpers.DECODE["max_lesions"]
    assert {r["seriesuid"] for r in rows} == {"ct_b_0000", "ct_b_0001"}


def test_predict_and_classical_take_one_scan_file(tmp_path: Path, checkpoint: Path, scans: Path) -> None:
    scan = scans / "ct_b_0001.nii.gz"
    summary = one_json(cli(["predict", "--checkpoint", checkpoint, scan, "-o", tmp_path / "p", "--device", "cpu",
                            "--overlap", "0.25", "--json", "-q"], tmp_path))
    assert summary["n_scans"] == summary["n_done"] == 1
    proc = cli(["classical", scan, "-o", tmp_path / "c", "--json", "-q"], tmp_path)
    assert proc.stderr == ""
    summary = one_json(proc)
    assert summary["n_scans"] == 1 and summary["method"] == "classical"
    assert Path(str(summary["outputs"]["predictions_csv"])).is_file()  # type: ignore[index]


def test_evaluate_json_carries_the_numbers_of_metrics_json(tmp_path: Path, predicted: tuple[Path, dict],
                                                           sample_data: Path) -> None:
    out, _ = predicted
    proc = cli(["evaluate", "--predictions", out / "predictions.csv", "--annotations",
                sample_data / "ct_site_b" / "annotations.csv", "-o", tmp_path / "eval", "--n-bootstrap", "50",
                "--json", "-q"], tmp_path)
    assert proc.stderr == ""
    metrics = one_json(proc)
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["overall"] == on_disk["overall"] and metrics["counts"] == on_disk["counts"]


def test_inspect_takes_one_file_and_prints_one_json_object(tmp_path: Path, scans: Path) -> None:
    proc = cli(["inspect", scans / "ct_b_0000.nii.gz", "--json", "-q"], tmp_path)
    assert proc.stderr == ""
    (row,) = one_json(proc)["scans"]  # type: ignore[misc]
    assert row["id"] == "ct_b_0000" and row["path"] == "ct_b_0000.nii.gz" and row["shape"] == [128, 104, 32]
    table = cli(["inspect", scans / "ct_b_0000.nii.gz"], tmp_path)
    assert table.returncode == 0 and "ct_b_0000" in table.stdout and "1 scan(s) read" in table.stdout


def test_diagnose_json_quiet_with_a_one_file_target(tmp_path: Path, sample_data: Path) -> None:
    proc = cli(["diagnose", "--source", sample_data / "ct_site_a", "--target",
                sample_data / "ct_site_b" / "ct_b_0000.nii.gz", "-o", tmp_path / "shift", "--json", "-q"], tmp_path)
    assert proc.stderr == ""
    rep = one_json(proc)
    on_disk = json.loads((tmp_path / "shift" / "report.json").read_text(encoding="utf-8"))
    assert rep["verdict"] == on_disk["verdict"] and rep["target"]["n_scans"] == 1  # type: ignore[index]
    assert Path(str(rep["report"])).is_file()


def test_adapt_json_quiet_with_a_one_file_target(tmp_path: Path, checkpoint: Path, scans: Path) -> None:
    proc = cli(["adapt", "--checkpoint", checkpoint, "--target", scans / "ct_b_0001.nii.gz", "--method", "adabn",
                "-o", tmp_path / "adabn", "--device", "cpu", "--json", "-q"], tmp_path)
    assert proc.stderr == ""
    summary = one_json(proc)
    card = json.loads((tmp_path / "adabn" / "model_card.json").read_text(encoding="utf-8"))
    assert summary["adaptation"]["method"] == "adabn"  # type: ignore[index]
    assert card["adaptation"][-1]["target_scans"] == ["ct_b_0001"]


def test_train_json_quiet(tmp_path: Path) -> None:
    overrides = ["data.max_scans=3", "data.reference_scans=1", "train.epochs=1", "train.steps_per_epoch=1",
                 "train.conflict_every=0", "validation.overlap=0.0"]
    args: list[object] = ["train", "--config", REPO / "configs" / "tiny.yaml", "-o", tmp_path / "run", "--json", "-q"]
    for o in overrides:
        args += ["--set", o]
    proc = cli(args, tmp_path)
    assert proc.stderr == ""
    summary = one_json(proc)
    card = json.loads((tmp_path / "run" / "checkpoint" / "model_card.json").read_text(encoding="utf-8"))
    assert summary["checkpoint"] == str(tmp_path / "run" / "checkpoint")
    assert summary["decode"] == card["decode"] and summary["training"]["epochs"] == 1  # type: ignore[index]


def test_sample_data_takes_out_once(tmp_path: Path) -> None:
    both = CliRunner().invoke(main, ["sample-data", str(tmp_path / "a"), "-o", str(tmp_path / "b"), "--n", "1"])
    none = CliRunner().invoke(main, ["sample-data", "--n", "1"])
    assert both.exit_code == none.exit_code == 2 and "as OUT or as -o/--out" in none.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
