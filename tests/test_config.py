"""Training config: YAML loading, overrides, did-you-mean, validation, path resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from medmtl.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    save_resolved_config,
)
from medmtl.errors import ConfigError, RegistryError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _tiny_dict() -> dict:
    return yaml.safe_load(TINY.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["tiny", "ct_lite0_inflate", "ct_lite0_25d", "mri_lite0"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, TrainConfig)
    assert Path(cfg.data.root).is_absolute() and Path(cfg.data.root).is_dir()
    assert cfg.data.annotations is not None and Path(cfg.data.annotations).is_file()


def test_overrides_parse_yaml_scalars() -> None:
    cfg = load_config(
        TINY,
        ["train.learning_rate=3e-4", "train.patch_size=[32, 32, 64]", "model.pretrained=false", "data.max_scans=null"],
    )
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.train.patch_size == [32, 32, 64]
    assert cfg.model.pretrained is False
    assert cfg.data.max_scans is None


def test_parse_override_errors() -> None:
    assert parse_override("a.b=1") == (["a", "b"], 1)
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("train..epochs=2")


def test_apply_overrides_does_not_mutate() -> None:
    raw = {"train": {"epochs": 1}}
    out = apply_overrides(raw, ["train.epochs=3"])
    assert raw == {"train": {"epochs": 1}} and out["train"]["epochs"] == 3


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [("train", "lerning_rate", "train.learning_rate"), ("data", "val_fractoin", "data.val_fraction")],
)
def test_unknown_key_did_you_mean(tmp_path: Path, section: str, key: str, suggestion: str) -> None:
    d = _tiny_dict()
    d[section][key] = 1
    p = _write(tmp_path, d)
    with pytest.raises(ConfigError, match=rf"unknown key '{section}\.{key}' in .*did you mean '{suggestion}'\?"):
        load_config(p)


def test_unknown_top_level_key_and_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'seeed'.*did you mean 'seed'"):
        load_config(TINY, ["seeed=1"])
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'.*did you mean 'train.epochs'"):
        load_config(TINY, ["train.epoch=1"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.learning_rate=-0.001", r"train.learning_rate = -0.001 .* out of range; allowed: > 0"),
        ("train.learning_rate=0", r"train.learning_rate = 0.0 .* out of range"),
        ("data.val_fraction=1.5", r"data.val_fraction = 1.5 .* allowed: \[0, 1\)"),
        ("data.label_fraction=0", r"data.label_fraction"),
        ("train.amp=fp8", r"train.amp = 'fp8' .* allowed: auto, bf16, fp16, off"),
        ("train.epochs=two", r"'train.epochs' .* invalid value 'two'; expected int"),
        ("train.patch_size=[32, 32]", r"train.patch_size"),
        ("validation.monitor=auc", r"validation.monitor = 'auc'"),
        ("train.augment=heavy", r"train.augment = 'heavy'"),
        ("preprocess.modality=PET", r"preprocess.modality = 'PET'"),
    ],
)
def test_bad_values(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(TINY, [override])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("weighting.name=uncertainity", r"unknown weighting \(weighting.name\) 'uncertainity'.*Did you mean 'uncertainty'"),
        ("strategy.name=lpft", r"unknown strategy \(strategy.name\) 'lpft'.*Did you mean 'lp-ft'"),
        ("model.encoder=efficientnet-lite9", r"unknown encoder \(model.encoder\) 'efficientnet-lite9'"),
        ("model.adapter=inflated", r"unknown adapter .*'inflated'.*Did you mean 'inflate'"),
    ],
)
def test_unknown_registry_names(override: str, pattern: str) -> None:
    with pytest.raises(RegistryError, match=pattern):
        load_config(TINY, [override])


def test_unknown_method_params() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'temp'"):
        load_config(TINY, ["weighting.name=dwa", "weighting.params={temp: 2}"])
    with pytest.raises(ConfigError, match=r"unknown key 'strategy.params.probe_epoch'.*Did you mean 'probe_epochs'"):
        load_config(TINY, ["strategy.params={probe_epoch: 2}"])


def test_missing_data_folder_and_annotations(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root 'no/such/folder' .* does not exist"):
        load_config(TINY, ["data.root=no/such/folder"])
    (tmp_path / "scans").mkdir()
    with pytest.raises(ConfigError, match="data.annotations is not set .* does not exist"):
        load_config(TINY, [f"data.root={tmp_path / 'scans'}"])
    with pytest.raises(ConfigError, match="data.annotations 'missing.csv'"):
        load_config(TINY, ["data.annotations=missing.csv"])


def test_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(lst)


def test_paths_resolve_against_repo_root_from_another_cwd(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_config(TINY)
    finally:
        os.chdir(cwd)
    assert Path(cfg.data.root) == (REPO / "sample_data" / "ct_site_a").resolve()


def test_resolved_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.epochs=3"])
    path = save_resolved_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert again == cfg
    assert again.to_dict()["train"]["epochs"] == 3


def test_defaults_are_independent() -> None:
    a, b = TrainConfig(), TrainConfig()
    a.train.patch_size.append(1)
    assert b.train.patch_size == [64, 64, 32]
