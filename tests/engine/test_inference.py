"""sliding_window_maps: stitching of all three maps, padding, TTA, AMP agreement, OOM fallback."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from medmtl.engine import inference
from medmtl.engine.inference import resolve_amp, resolve_device, sliding_window_maps
from medmtl.errors import ConfigError, MedmtlError

_spec = importlib.util.spec_from_file_location("medmtl_tests_predict_helpers",
                                               Path(__file__).with_name("predict_helpers.py"))
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


class PointNet(nn.Module):
    """Voxel-wise (1×1×1) heads: its whole-volume output is known exactly, window by window."""

    def __init__(self, kernel: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv3d(3, 4, kernel, padding=kernel // 2)
        self.heads = nn.ModuleDict({k: nn.Conv3d(4, 1, 1) for k in inference.MAP_KEYS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.body(x))
        return {k: head(h) for k, head in self.heads.items()}


def test_stitched_maps_equal_the_direct_forward_for_all_three_heads() -> None:
    net = PointNet().eval()
    x = torch.randn(1, 3, 37, 29, 21)
    maps = sliding_window_maps(net, x, roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.5)
    with torch.no_grad():
        ref = net(x)
    for k in inference.MAP_KEYS:
        assert maps[k].shape == (1, 1, 37, 29, 21) and maps[k].dtype == torch.float32
        torch.testing.assert_close(maps[k], ref[k], atol=1e-5, rtol=1e-5)


def test_inputs_smaller_than_the_window_are_padded_and_cropped_back() -> None:
    net = PointNet().eval()
    x = torch.randn(1, 3, 10, 20, 7)
    x_before = x.clone()
    maps = sliding_window_maps(net, x, roi_size=(16, 16, 16), overlap=0.25)
    with torch.no_grad():
        ref = net(x)
    torch.testing.assert_close(maps["heatmap"], ref["heatmap"], atol=1e-5, rtol=1e-5)
    assert torch.equal(x, x_before)  # the caller's tensor is untouched


def test_tta_of_a_flip_equivariant_net_changes_nothing() -> None:
    net = PointNet().eval()
    x = torch.randn(1, 3, 20, 20, 20)
    plain = sliding_window_maps(net, x, roi_size=(16, 16, 16), overlap=0.25)
    tta = sliding_window_maps(net, x, roi_size=(16, 16, 16), overlap=0.25, tta=True)
    for k in inference.MAP_KEYS:
        torch.testing.assert_close(tta[k], plain[k], atol=1e-4, rtol=1e-4)


def test_tta_averages_probabilities_of_a_non_equivariant_net() -> None:
    net = PointNet(kernel=3).eval()
    x = torch.randn(1, 3, 16, 16, 16)
    tta = sliding_window_maps(net, x, roi_size=(16, 16, 16), overlap=0.0, tta=True)
    with torch.no_grad():
        probs = [torch.flip(torch.sigmoid(net(torch.flip(x, a) if a else x)["heatmap"]), a) if a
                 else torch.sigmoid(net(x)["heatmap"]) for a in inference.TTA_FLIPS]
    expected = torch.stack(probs).mean(0)
    torch.testing.assert_close(torch.sigmoid(tta["heatmap"]), expected, atol=1e-5, rtol=1e-4)


def test_bf16_on_cpu_agrees_with_fp32() -> None:
    """bf16 autocast on CPU vs fp32 with the real network (EfficientNet-Lite0 ACS, one 32³ window).

    Stated tolerance: detection probability within 0.01 (absolute), log-diameter within 0.05
    (≈ 5% of the diameter), malignancy logit within 0.05. Measured: 2e-4, 0.016 and 0.006.
    """
    net = helpers.build_model(0)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32, 24)
    fp32 = sliding_window_maps(net, x, roi_size=(32, 32, 32), sw_batch_size=1, amp="off")
    bf16 = sliding_window_maps(net, x, roi_size=(32, 32, 32), sw_batch_size=1, amp="bf16")
    assert (torch.sigmoid(fp32["heatmap"]) - torch.sigmoid(bf16["heatmap"])).abs().max() < 0.01
    assert (fp32["log_diameter"] - bf16["log_diameter"]).abs().max() < 0.05
    assert (fp32["malignancy"] - bf16["malignancy"]).abs().max() < 0.05
    assert all(v.dtype == torch.float32 for v in bf16.values())


def test_out_of_memory_falls_back_to_the_next_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    net = PointNet().eval()
    calls: list[tuple[str, int]] = []
    real = inference._run_inferer

    def flaky(predictor, image, plan):  # type: ignore[no-untyped-def]
        calls.append((plan.stitch, plan.sw_batch_size))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(predictor, image, dataclasses.replace(plan, stitch="cpu"))

    monkeypatch.setattr(inference, "_run_inferer", flaky)
    monkeypatch.setattr(inference, "_stitch_plans", lambda *a: [("device", 4), ("buffered", 4), ("cpu", 2)])
    maps = sliding_window_maps(net, torch.randn(1, 3, 16, 16, 16), roi_size=(16, 16, 16))
    assert calls == [("device", 4), ("buffered", 4)] and maps["heatmap"].shape == (1, 1, 16, 16, 16)

    def always_oom(*a, **k):  # type: ignore[no-untyped-def]
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(inference, "_run_inferer", always_oom)
    with pytest.raises(MedmtlError, match="out of GPU memory"):
        sliding_window_maps(net, torch.randn(1, 3, 16, 16, 16), roi_size=(16, 16, 16))


def test_stitch_plans_on_an_accelerator() -> None:
    assert inference._stitch_plans("cuda", "auto", 4) == [
        ("device", 4), ("buffered", 4), ("cpu", 4), ("cpu", 2), ("cpu", 1)]
    assert inference._stitch_plans("cpu", "auto", 4) == [("cpu", 4)]


def test_device_and_amp_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="not allowed"):
        resolve_device("tpu")
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    with pytest.raises(ConfigError, match="--amp"):
        resolve_amp("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window_maps(PointNet(), torch.zeros(1, 3, 8, 8, 8), roi_size=(8, 8, 8), overlap=1.0)
