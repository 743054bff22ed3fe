"""Checkpoint format: safetensors + model card, atomic writes, validation, no pickle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medmtl.engine.card import ModelCard
from medmtl.engine.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    atomic_folder,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from medmtl.engine.state import load_train_state, save_train_state
from medmtl.errors import CheckpointError

MODEL_CFG = {"encoder": "efficientnet-lite0", "adapter": "inflate", "decoder_channels": [16, 8, 8, 8, 8]}


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    from medmtl.models.mtl_net import build_model
    from medmtl.models.spec import ModelSpec

    torch.manual_seed(0)
    model = build_model(ModelSpec.from_dict(MODEL_CFG), pretrained=False)
    # non-trivial BatchNorm buffers so a lost buffer would show
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, 32))
    return model.eval()


def _card(model: torch.nn.Module, **fields: object) -> ModelCard:
    from medmtl.engine.card import card_for
    from medmtl.engine.decode import DecodeSettings
    from medmtl.transforms.presets import default_ct_spec

    return card_for(model, input_spec=default_ct_spec(), patch_size=(32, 32, 32),
                    decode=DecodeSettings(threshold=0.1, nms_radius_mm=8.0, max_lesions=10, temperature=1.3),
                    **fields)


@pytest.fixture(scope="module")
def saved(small_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint", small_model, _card(small_model))


def test_round_trip_identical_outputs(small_model: torch.nn.Module, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])
    model, card = load_checkpoint(saved)
    x = torch.randn(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = small_model(x), model(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in small_model.state_dict().items():  # BN running stats included
        assert torch.equal(v, model.state_dict()[k]), k
    assert not model.training
    assert card.decode.temperature == 1.3


def test_card_contents(saved: Path) -> None:
    card = read_card(saved)
    assert card.adaptation == () and card.harmonisation is None and card.reference_stats is None
    assert card.model.encoder == "efficientnet-lite0" and card.model.decoder_channels == (16, 8, 8, 8, 8)
    assert card.encoder.name == "efficientnet-lite0"
    assert card.provenance is not None and set(card.provenance.versions) >= {"python", "torch", "monai", "numpy"}
    assert len(card.weights_sha256) == 64
    raw = json.loads((saved / CARD_FILE).read_text(encoding="utf-8"))
    assert raw["card_version"] == 2 and ModelCard.from_dict(raw) == card


def test_no_pickle_is_loaded(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be used on checkpoints")

    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(saved)
    raw = (saved / WEIGHTS_FILE).read_bytes()
    assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:16]  # not a zip / pickle


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_files_and_keys(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    no_card = _copy(saved, tmp_path / "no_card")
    (no_card / CARD_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no model_card.json"):
        load_checkpoint(no_card)
    no_weights = _copy(saved, tmp_path / "no_weights")
    (no_weights / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_checkpoint(no_weights)
    missing_key = _copy(saved, tmp_path / "missing_key")
    card = json.loads((missing_key / CARD_FILE).read_text(encoding="utf-8"))
    del card["input_spec"]
    (missing_key / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(CheckpointError, match="missing key 'input_spec'"):
        load_checkpoint(missing_key)
    bad_decode = _copy(saved, tmp_path / "bad_decode")
    card = json.loads((bad_decode / CARD_FILE).read_text(encoding="utf-8"))
    del card["decode"]["temperature"]
    (bad_decode / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(CheckpointError, match="decode is missing key 'temperature'"):
        load_checkpoint(bad_decode)


def test_corrupt_card_and_weights(saved: Path, tmp_path: Path) -> None:
    corrupt = _copy(saved, tmp_path / "corrupt_card")
    (corrupt / CARD_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(corrupt)
    tampered = _copy(saved, tmp_path / "tampered")
    data = bytearray((tampered / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tampered / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tampered)


def test_patch_size_must_fit_the_network(small_model: torch.nn.Module, tmp_path: Path) -> None:
    """A card whose patch is not a multiple of the encoder's stride fails at load, before any scan."""
    folder = save_checkpoint(tmp_path / "c", small_model, _card(small_model).replace(patch_size=(40, 32, 32)))
    with pytest.raises(CheckpointError, match=r"patch_size.*must be divisible by \[32, 32, 32\]"):
        load_checkpoint(folder)


def test_atomic_folder_never_half_written(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    atomic_folder(target, lambda d: (d / "a.txt").write_text("old", encoding="utf-8"))

    def fail(d: Path) -> None:
        (d / "a.txt").write_text("new", encoding="utf-8")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_folder(target, fail)
    assert (target / "a.txt").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left
    atomic_folder(target, lambda d: (d / "b.txt").write_text("new", encoding="utf-8"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_train_state_round_trip(tmp_path: Path) -> None:
    from medmtl.engine.optim import LRSchedule, make_optimizer
    from medmtl.mtl.weighting import create_weighting

    def setup() -> tuple:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        w = create_weighting("uncertainty", tasks=("det", "size", "malig"))
        opt = make_optimizer([{"params": list(net.parameters())}, {"params": list(w.parameters()), "weight_decay": 0.0}],
                             name="adamw", lr=1e-2, weight_decay=1e-4)
        sch = LRSchedule(opt, total_steps=20, warmup_steps=2, kind="cosine")
        return net, w, opt, sch

    net, w, opt, sch = setup()
    for _ in range(3):
        losses = {t: net(torch.randn(2, 4))[:, i].pow(2).mean() for i, t in enumerate(("det", "size", "malig"))}
        total, _ = w.combine(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        sch.step()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    save_train_state(tmp_path, optimizer=opt, scheduler=sch, scaler=None, weighting=w, meta={"epoch": 2, "step": 3})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    net2, w2, opt2, sch2 = setup()
    net2.load_state_dict(net.state_dict())
    with torch.no_grad():
        w2.log_vars.copy_(w.log_vars)
    meta = load_train_state(tmp_path, optimizer=opt2, scheduler=sch2, scaler=None, weighting=w2)
    assert meta == {"epoch": 2, "step": 3}
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert sch2.current == 3
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid, st in s1["state"].items():
        for k, v in st.items():
            assert torch.equal(v, s2["state"][pid][k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.json", "train_state.safetensors"]
    with pytest.raises(CheckpointError, match="missing"):
        load_train_state(tmp_path / "nowhere", optimizer=opt2, scheduler=sch2, scaler=None, weighting=w2)


def test_weights_sha256_is_a_function_of_the_weights(small_model: torch.nn.Module, tmp_path: Path) -> None:
    """Saving the same model twice gives the same file bytes and ``weights_sha256``."""
    from medmtl.config.schema import TrainConfig
    from medmtl.io.hashing import sha256_file

    a = save_checkpoint(tmp_path / "a", small_model, _card(small_model))
    b = save_checkpoint(tmp_path / "b", small_model, _card(small_model, train_config=TrainConfig(seed=1)))
    sha_a, sha_b = read_card(a).weights_sha256, read_card(b).weights_sha256
    assert sha_a == sha_b == sha256_file(a / WEIGHTS_FILE)
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()


_SAVE_IN_SUBPROCESS = """
import sys, torch
from medmtl.engine.checkpoint import canonical_safetensors_bytes
from medmtl.io.hashing import sha256_bytes
t = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3), "n": torch.tensor(7)}
meta = {"format": "pt", "medmtl_format": "1", "z": "last", "a": "first"}
sys.stdout.write(sha256_bytes(canonical_safetensors_bytes(t, metadata=meta)))
"""


def test_canonical_safetensors_same_bytes_across_processes(tmp_path: Path) -> None:
    """safetensors orders ``__metadata__`` from a per-process random hash map; ours is sorted."""
    import json
    import struct
    import subprocess
    import sys

    from safetensors.torch import load_file

    from medmtl.engine.checkpoint import canonical_safetensors_bytes

    digests = {
        subprocess.run([sys.executable, "-c", _SAVE_IN_SUBPROCESS], check=True, capture_output=True, text=True, encoding="utf-8").stdout
        for _ in range(3)
    }
    assert len(digests) == 1, digests
    blob = canonical_safetensors_bytes({"w": torch.arange(5.0), "i": torch.tensor([1, 2])}, metadata={"k": "v", "a": "b"})
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0
    header = blob[8 : 8 + n].decode().rstrip(" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    (tmp_path / "x.safetensors").write_bytes(blob)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert torch.equal(back["w"], torch.arange(5.0)) and torch.equal(back["i"], torch.tensor([1, 2]))
