from __future__ import annotations

import csv
import json

import pytest
import torch

from medmtl.mtl.conflict import GradientConflictTracker, per_task_shared_grads
from medmtl.mtl.losses import task_losses


def test_tracker_statistics_and_files(tmp_path):
    tr = GradientConflictTracker(["a", "b", "c"])
    step = tr.update(
        {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 0.0]), "c": torch.tensor([0.0, 2.0])},
        weights={"a": 1.0, "b": 0.5, "c": 2.0},
    )
    assert step["cos/a|b"] == pytest.approx(-1.0) and step["cos/a|c"] == pytest.approx(0.0)
    tr.update({"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0, 0.0]), "c": torch.tensor([0.0, 0.0])})
    s = tr.epoch_summary()
    assert s["pairs"]["a|b"]["conflict_share"] == pytest.approx(0.5)
    assert s["pairs"]["a|b"]["mean_cos"] == pytest.approx((-1.0 + 2**-0.5) / 2)
    assert s["pairs"]["b|c"]["steps"] == 1  # a zero gradient has no angle: skipped
    assert s["tasks"]["c"]["mean_grad_norm"] == pytest.approx(1.0)
    assert s["tasks"]["b"]["mean_weight"] == pytest.approx(0.5)
    tr.end_epoch(0)
    tr.update({"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 0.0]), "c": torch.tensor([1.0, 0.0])})
    csv_path, json_path = tr.write(tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[0]["conflict_share/a|b"]) == pytest.approx(0.5)
    assert float(rows[1]["conflict_share/a|b"]) == 0.0
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["pairs"] == ["a|b", "a|c", "b|c"] and len(data["epochs"]) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_per_task_shared_grads_matches_autograd(tiny_model, tiny_batch):
    x, targets = tiny_batch
    losses = task_losses(tiny_model(x), targets)
    shared = tiny_model.shared_parameters()
    grads = per_task_shared_grads(losses, shared)
    n = sum(p.numel() for p in shared if p.requires_grad)
    assert all(g.shape == (n,) for g in grads.values())
    (g_stem,) = torch.autograd.grad(losses["det"], tiny_model.encoder.stem.weight, retain_graph=True)
    assert torch.allclose(grads["det"][: g_stem.numel()], g_stem.reshape(-1), atol=1e-6)
    tracker = GradientConflictTracker(list(losses))
    step = tracker.update(grads)
    assert all(-1.0 <= v <= 1.0 for k, v in step.items() if k.startswith("cos/"))
    # frozen parameters are skipped
    for p in tiny_model.encoder.parameters():
        p.requires_grad_(False)
    losses = task_losses(tiny_model(x), targets)
    n_dec = sum(p.numel() for p in tiny_model.decoder.parameters())
    assert per_task_shared_grads(losses, shared)["size"].shape == (n_dec,)
