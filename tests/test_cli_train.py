"""``medmtl train``: bad configs give one ``Error:`` line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medmtl.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def _assert_one_error(code: int, output: str, pattern: str) -> None:
    import re

    assert code != 0, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    assert re.search(pattern, errors[0]), errors[0]


def test_help_lists_options() -> None:
    code, out = _run(["train", "--help"])
    assert code == 0
    for opt in ("--config", "--out", "--set", "--resume", "--overwrite"):
        assert opt in out


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.learning_rate=-1e-3", r"train.learning_rate = -0.001 .*allowed: > 0"),
        ("weighting.name=pcgard", r"unknown weighting .*'pcgard'.*Did you mean 'pcgrad'"),
        ("data.root=/no/such/scans", r"data.root '/no/such/scans' .* does not exist"),
        ("train.lerning_rate=0.1", r"unknown key 'train.lerning_rate' .*did you mean 'train.learning_rate'\?"),
        ("strategy.name=fulll", r"unknown strategy .*'fulll'.*Did you mean 'full'"),
        ("decode.malignancy=feature", r"decode.malignancy = 'feature' .*allowed: auto, features, head.*'features'"),
    ],
)
def test_bad_config_values(tmp_path: Path, override: str, pattern: str) -> None:
    code, out = _run(["train", "--config", str(TINY), "--out", str(tmp_path / "run"), "--set", override])
    _assert_one_error(code, out, pattern)
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_file(tmp_path: Path) -> None:
    data = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    data["validation"]["patiense"] = 3
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, out = _run(["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    _assert_one_error(code, out, r"unknown key 'validation.patiense' in .*typo.yaml; did you mean 'validation.patience'\?")


def test_patch_larger_than_scans(tmp_path: Path) -> None:
    code, out = _run(
        ["train", "--config", str(TINY), "--out", str(tmp_path / "run"),
         "--set", "train.patch_size=[128,128,128]", "--set", "data.max_scans=2", "--set", "data.val_fraction=0"]
    )
    _assert_one_error(code, out, r"train.patch_size \[128, 128, 128\] is larger than scan '.*' after preprocessing")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_malignancy_readout_without_enough_labels(tmp_path: Path) -> None:
    """``decode.malignancy features`` fails at set-up (before any step) when the labels cannot fit it."""
    code, out = _run(["train", "--config", str(TINY), "--out", str(tmp_path / "run"), "--set", "data.max_scans=3",
                      "--set", "decode.malignancy=features"])
    _assert_one_error(code, out, r"readout needs >= 10 labelled malignant and benign training lesions, got 2 "
                                 r"malignant and 0 benign; .*decode.malignancy: head")
    assert not (tmp_path / "run").exists()
    code, out = _run(["train", "--config", str(REPO / "configs" / "mri_lite0.yaml"), "--out", str(tmp_path / "run_mr"),
                      "--set", "decode.malignancy=features"])
    _assert_one_error(code, out, r"decode.malignancy 'features' .* needs preprocess.modality CT, got MR")


def test_non_empty_out_and_bad_resume(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "x.txt").write_text("keep", encoding="utf-8")
    code, out = _run(["train", "--config", str(TINY), "--out", str(out_dir)])
    _assert_one_error(code, out, r"is not empty; pass --resume")
    code, out = _run(["train", "--config", str(TINY), "--out", str(out_dir), "--resume"])
    _assert_one_error(code, out, r"cannot resume")
    code, out = _run(["train", "--config", str(TINY), "--out", str(out_dir), "--resume", "--overwrite"])
    _assert_one_error(code, out, r"exclude each other")
    assert (out_dir / "x.txt").read_text(encoding="utf-8") == "keep"
