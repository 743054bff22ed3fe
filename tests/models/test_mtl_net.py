from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.decoder import UNetDecoder
from medmtl.models.mtl_net import HEADS, MultiTaskNet, build_model, model_spec, required_divisor
from medmtl.models.spec import ModelSpec


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FakeEncoder(nn.Module):
    """Honours the registry contract: ``feature_info`` + multi-scale ``forward``."""

    def __init__(self, strides=((2, 2, 2), (4, 4, 4), (8, 8, 8)), channels=(4, 8, 16)) -> None:
        super().__init__()
        self.feature_info = [{"channels": c, "stride": s} for c, s in zip(channels, strides)]
        prev, layers, last = 3, [], (1, 1, 1)
        for c, s in zip(channels, strides):
            k = tuple(a // b for a, b in zip(s, last))
            layers.append(nn.Conv3d(prev, c, kernel_size=k, stride=k))
            prev, last = c, s
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


@pytest.mark.parametrize(
    "strides,size",
    [(((2, 2, 2), (4, 4, 4), (8, 8, 8)), (16, 24, 8)), (((2, 2, 1), (4, 4, 1), (8, 8, 1)), (16, 16, 5))],
    ids=["3d", "2.5d"],
)
def test_forward_shapes_full_resolution(strides, size):
    net = MultiTaskNet(FakeEncoder(strides), decoder_channels=(8, 8, 4))
    assert required_divisor(net) == strides[-1]
    out = net(torch.randn(2, 3, *size))
    assert set(out) == set(HEADS)
    assert all(v.shape == (2, 1, *size) for v in out.values())


def test_head_bias_initialisation():
    net = MultiTaskNet(FakeEncoder())
    assert net.heads["heatmap"].bias.item() == pytest.approx(-math.log(99.0))
    assert net.heads["log_diameter"].bias.item() == pytest.approx(math.log(10.0))
    out = net(torch.randn(1, 3, 8, 8, 8))
    assert torch.sigmoid(out["heatmap"]).mean().item() == pytest.approx(0.01, abs=0.005)
    assert torch.exp(out["log_diameter"]).mean().item() == pytest.approx(10.0, rel=0.1)


def test_parameter_partition():
    net = MultiTaskNet(FakeEncoder())
    shared = {id(p) for p in net.shared_parameters()}
    heads = {id(p) for t in ("det", "size", "malig") for p in net.task_parameters(t)}
    assert shared.isdisjoint(heads)
    assert shared | heads == {id(p) for p in net.parameters()}
    assert net.task_parameters("heatmap") == net.task_parameters("det")
    with pytest.raises(ConfigError, match="unknown task 'malignant'.*Did you mean 'malignancy'"):
        net.task_parameters("malignant")


def test_input_errors():
    net = MultiTaskNet(FakeEncoder())
    with pytest.raises(ConfigError, match="not divisible by \\(8, 8, 8\\)"):
        net(torch.randn(1, 3, 12, 8, 8))
    with pytest.raises(ConfigError, match="\\(B, C, I, J, K\\)"):
        net(torch.randn(3, 8, 8, 8))
    with pytest.raises(ConfigError, match="need 3 positive widths"):
        UNetDecoder(FakeEncoder().feature_info, channels=(8, 8))
    with pytest.raises(ConfigError, match="decoder norm 'batchnorm' invalid.*Did you mean 'batch'"):
        UNetDecoder(FakeEncoder().feature_info, norm="batchnorm")


def test_build_model_config_errors():
    with pytest.raises(ConfigError, match="model has an unknown key 'decoder_channel'.*Did you mean 'decoder_channels'"):
        ModelSpec.from_dict({"encoder": "x", "adapter": "inflate", "decoder_channel": [1]})
    with pytest.raises(ConfigError, match="model is missing key 'adapter'"):
        ModelSpec.from_dict({"encoder": "efficientnet-lite0"})
    with pytest.raises(ConfigError, match="build_model needs a ModelSpec"):
        build_model({"encoder": "efficientnet-lite0", "adapter": "inflate"}, pretrained=False)  # type: ignore[arg-type]


def test_build_model_round_trip_with_registry_encoder():
    registry = pytest.importorskip("medmtl.models.registry")
    name = registry.list_encoders()[0].name
    cfg = {"encoder": name, "adapter": "2.5d", "decoder_channels": [16, 16, 16, 8, 8]}
    torch.manual_seed(0)
    net = build_model(ModelSpec.from_dict(cfg), pretrained=False)
    spec = model_spec(net)
    assert spec.encoder == name and spec.adapter == "2.5d" and spec.decoder_channels == (16, 16, 16, 8, 8)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    rebuilt = build_model(spec, pretrained=False)
    rebuilt.load_state_dict(net.state_dict())
    div = required_divisor(net)
    assert div[2] == 1
    x = torch.randn(2, 3, div[0], div[1], 3)
    net.eval()
    rebuilt.eval()
    with torch.no_grad():
        a, b = net(x), rebuilt(x)
    assert all(torch.allclose(a[k], b[k]) and a[k].shape == (2, 1, *x.shape[2:]) for k in HEADS)
