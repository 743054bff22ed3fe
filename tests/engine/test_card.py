"""The typed model card: every value validated at load time, one ``Error:`` line, nothing written.

The base card is the committed card of a real medmtl 0.1 checkpoint (``cards/model_card_v0_1.json``,
written by the trainer at commit 4ef48ef), migrated to the current layout, with a harmonisation
and an adaptation record added so that every section of the card is present.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medmtl.engine.card import CARD_VERSION, ModelCard, migrate_card
from medmtl.errors import CheckpointError

#: every case of this module runs under the hostile-input time limit (tests/conftest.py)
HOSTILE_CASES = True

V01 = Path(__file__).parent / "cards" / "model_card_v0_1.json"


def _v01() -> dict[str, Any]:
    return json.loads(V01.read_text(encoding="utf-8"))


def _base() -> dict[str, Any]:
    d = copy.deepcopy(dict(migrate_card(_v01())))
    d["harmonisation"] = {"method": "n4", "params": {"shrink": 2, "iterations": [30, 20, 10]}, "reference": None}
    d["adaptation"] = [{"method": "adabn", "parameters_changed": ["encoder.bn.running_mean"], "n_tensors_changed": 1,
                        "params": {"variant": "replace"}, "target_scans": ["b1", "b2"], "n_target_scans": 2,
                        "target_folder": "site_b", "source_checkpoint": "ckpt", "seed": 0,
                        "date": "2026-12-02T00:00:00+00:00"}]
    return d


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``a.b[0].c`` (``+key`` adds a key) of the card dict."""

    def apply(d: dict[str, Any]) -> None:
        node: Any = d
        parts = path.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        node[int(last) if last.isdigit() else last.lstrip("+")] = value

    return apply


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        node: Any = d
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[part]
        del node[parts[-1]]

    return apply


#: (case id, mutation, message the error must contain). Every section: unknown key, wrong type, range.
CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    # unknown keys, with a did-you-mean where a key is close
    ("top-unknown", _set("+patchsize", [32, 32, 32]), "unknown key 'patchsize'.*Did you mean 'patch_size'"),
    ("decode-unknown", _set("decode.+thresh", 0.1), "decode has an unknown key 'thresh'.*Did you mean 'threshold'"),
    ("model-unknown", _set("model.+input_skp", True), "model has an unknown key 'input_skp'.*input_skip"),
    ("input-unknown", _set("input_spec.+spacing", [1, 1, 1]), "unknown input_spec key 'spacing'"),
    ("encoder-unknown", _set("encoder.+nme", "x"), "encoder has an unknown key 'nme'"),
    ("harm-unknown", _set("harmonisation.+methd", "n4"), "harmonisation has an unknown key 'methd'"),
    ("ref-unknown", _set("reference_stats.+featurs", {}), "reference_stats has an unknown key 'featurs'"),
    ("adapt-unknown", _set("adaptation[0].+methods", "x"), r"adaptation\[\] has an unknown key 'methods'"),
    ("training-unknown", _set("training.+epoc", 1), "training has an unknown key 'epoc'"),
    ("provenance-unknown", _set("provenance.+creatd", "x"), "provenance has an unknown key 'creatd'"),
    ("train-config-unknown", _set("train_config.+trian", {}), "unknown key 'trian'.*did you mean 'train'"),
    ("decode-missing", _delete("decode.temperature"), "decode is missing key 'temperature'"),
    ("top-missing", _delete("input_spec"), "missing key 'input_spec'"),
    # wrong types
    ("version-type", _set("card_version", "2"), "card_version = '2' is not readable"),
    ("patch-type", _set("patch_size", "32"), "patch_size = '32' has the wrong type"),
    ("patch-item-type", _set("patch_size", [32, "32", 32]), r"patch_size\[1\] = '32' has the wrong type"),
    ("threshold-type", _set("decode.threshold", "0.1"), "decode.threshold = '0.1' has the wrong type"),
    ("max-lesions-type", _set("decode.max_lesions", 2.5), "decode.max_lesions = 2.5 has the wrong type"),
    ("skip-type", _set("model.input_skip", "yes"), "model.input_skip = 'yes' has the wrong type"),
    ("channels-type", _set("model.decoder_channels", "64"), "model.decoder_channels = '64' has the wrong type"),
    ("spacing-type", _set("input_spec.spacing_mm", "1.5"), "input_spec.spacing_mm '1.5' invalid"),
    ("encoder-type", _set("encoder.in_channels", "3"), "encoder.in_channels = '3' has the wrong type"),
    ("harm-type", _set("harmonisation.params", [2]), "harmonisation.params must be a JSON object"),
    ("ref-type", _set("reference_stats.n_scans", "16"), "reference_stats.n_scans = '16' has the wrong type"),
    ("adapt-type", _set("adaptation", "adabn"), "adaptation = 'adabn' has the wrong type"),
    ("training-type", _set("training.epoch", "12"), "training.epoch = '12' has the wrong type"),
    ("provenance-type", _set("provenance.weights_sha256", 123), "provenance.weights_sha256 = 123 must be 64"),
    ("train-config-type", _set("train_config.seed", "0"), "'seed' in model card 'train_config' has an invalid"),
    ("train-config-range", _set("train_config.train.learning_rate", -1.0), "train.learning_rate = -1.0 in model card"),
    # out of range / not allowed
    ("version-range", _set("card_version", 99), "card_version = 99 is not readable"),
    ("threshold-zero", _set("decode.threshold", 0.0), r"decode.threshold = 0.0 is out of range; allowed: \(0, 1\)"),
    ("threshold-high", _set("decode.threshold", 1.5), r"decode.threshold = 1.5 is out of range; allowed: \(0, 1\)"),
    ("temperature-zero", _set("decode.temperature", 0.0), r"decode.temperature = 0.0 is out of range; allowed: \(0"),
    ("temperature-negative", _set("decode.temperature", -1.0), "decode.temperature = -1.0 is out of range"),
    ("max-lesions-zero", _set("decode.max_lesions", 0), r"decode.max_lesions = 0 is out of range; allowed: \[1"),
    ("nms-zero", _set("decode.nms_radius_mm", 0), "decode.nms_radius_mm = 0 is out of range"),
    ("patch-small", _set("patch_size", [4, 32, 32]), r"patch_size\[0\] = 4 is out of range; allowed: \[8, 512\]"),
    ("patch-memory", _set("patch_size", [512, 512, 512]), "over the memory budget"),
    ("patch-rank", _set("patch_size", [32, 32]), "must hold 3 voxel counts"),
    ("in-channels", _set("model.in_channels", 0), "model.in_channels = 0 is out of range"),
    ("channels-mismatch", _set("model.in_channels", 1), "model.in_channels' = 1 but the input spec gives 3"),
    ("adapter-name", _set("model.adapter", "inflat"), "model.adapter = 'inflat' is not allowed.*Did you mean 'inflate'"),
    ("norm-name", _set("model.norm", "group"), "model.norm = 'group' is not allowed"),
    ("encoder-adapter", _set("encoder.adapter", "flat"), "encoder.adapter = 'flat' is not allowed"),
    ("spacing-range", _set("input_spec.spacing_mm", [0, 1, 1]), "input_spec.spacing_mm .* invalid; need 3 positive"),
    ("modality-name", _set("input_spec.modality", "PET"), "input_spec.modality 'PET' invalid"),
    ("harm-method", _set("harmonisation.method", "hist"), "harmonisation.method = 'hist' is not allowed"),
    ("ref-range", _set("reference_stats.n_scans", 0), "reference_stats.n_scans = 0 is out of range"),
    ("ref-rows", _set("reference_stats.n_scans", 15), "n_scans = 15 but 16 scan_ids"),
    ("adapt-range", _set("adaptation[0].n_tensors_changed", -1), "n_tensors_changed = -1 is out of range"),
    ("training-range", _set("training.epochs", 0), "training.epochs = 0 is out of range"),
    ("monitor-name", _set("training.monitor", "auc"), "training.monitor = 'auc' is not allowed"),
    ("encoder-name", _set("model.encoder", "resnet18"), "differs from 'encoder.name'"),
]


def test_base_card_is_valid() -> None:
    card = ModelCard.from_dict(_base())
    assert card.harmonisation is not None and card.harmonisation.method == "n4"
    assert card.adaptation[0].method == "adabn" and card.reference_stats is not None


@pytest.mark.parametrize(("mutate", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_card_value(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    d = _base()
    mutate(d)
    with pytest.raises(CheckpointError, match=message):
        ModelCard.from_dict(d, where="model_card.json")


@pytest.mark.parametrize(("mutate", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_card_is_one_cli_error_and_writes_nothing(
    mutate: Callable[[dict[str, Any]], None], message: str, sample_data: Path, tmp_path: Path, hostile: Any
) -> None:
    """``medmtl predict`` with a bad card: exit 1, one ``Error:`` line naming the card file and the
    value (the same message as the loader's), nothing else printed, nothing written or changed."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    d = _base()
    mutate(d)
    (ckpt / "model_card.json").write_text(json.dumps(d), encoding="utf-8")
    out = tmp_path / "out"
    run = hostile(["predict", "--checkpoint", ckpt, sample_data / "ct_site_b", "-o", out, "--device", "cpu",
                   "--no-progress"], words=["model_card.json"], only_line=True,
                  watch=[tmp_path, sample_data / "ct_site_b"], absent=[out])
    assert re.search(message, run.error), (message, run.error)


def test_v01_card_loads_through_the_migration() -> None:
    raw = _v01()
    assert "card_version" not in raw and raw["format_version"] == 1
    card = ModelCard.from_dict(raw)
    assert card.card_version == CARD_VERSION
    assert card.provenance is not None and card.provenance.weights_sha256 == raw["weights_sha256"]
    assert card.provenance.versions == raw["versions"] and card.provenance.created == raw["created"]
    # a card from before the size calibration decodes sizes with the identity
    assert card.decode.to_dict() == {**raw["decode"], "size_log_offset": 0.0, "size_log_slope": 1.0}
    assert list(card.patch_size) == raw["patch_size"]
    assert card.model.input_skip is True and card.model.decoder_channels == (64, 32, 16, 16, 8)
    assert card.training is not None and card.training.epoch == raw["training"]["epoch"]
    assert card.reference_stats is not None and card.reference_stats.n_scans == raw["reference_stats"]["n_scans"]
    # a config from before the lesion readout reads with its defaults (auto: decided at training time)
    # (and from before small-lesion sampling, uniform: γ = 0)
    expected = {**raw["train_config"], "decode": {**raw["train_config"]["decode"], "malignancy": "auto", "size": "auto"},
                "train": {**raw["train_config"]["train"], "small_lesion_power": 0.0}}
    assert card.train_config is not None and card.train_config.to_dict() == expected
    assert card.lesion_readout is None
    # the new layout round-trips exactly
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again.to_dict() == card.to_dict()


def test_v01_card_without_input_skip_means_no_skip() -> None:
    raw = _v01()
    del raw["model"]["input_skip"]
    assert ModelCard.from_dict(raw).model.input_skip is False


def test_v01_card_with_an_unknown_key_is_refused() -> None:
    raw = _v01()
    raw["weights"] = "x"
    with pytest.raises(CheckpointError, match="the 0.1 card has an unknown key 'weights'"):
        ModelCard.from_dict(raw)


def test_not_a_card() -> None:
    with pytest.raises(CheckpointError, match="not a medmtl model card"):
        ModelCard.from_dict({"format_version": 7})
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        ModelCard.from_dict([1, 2])
