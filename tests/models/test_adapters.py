"""2D → 3D adapters: inflation exactness, ACS parameter count, 2.5D equivalence, channel adaptation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medmtl.models.acs import ACSConv, acs_split
from medmtl.models.channels import adapt_first_conv
from medmtl.models.inflate import inflate_conv2d_weight, inflate_module
from medmtl.models.registry import Encoder, create_encoder
from medmtl.models.slicewise import neighbour_slices


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet18"])
def test_inflate_replicate_equals_2d_on_every_slice(name: str, depth_constant) -> None:
    img, vol = depth_constant
    pretrained = name == "efficientnet-lite0"
    torch.manual_seed(0)
    enc2d = create_encoder(name, adapter="2d", pretrained=pretrained).eval()
    enc3d = create_encoder(name, adapter="inflate", pretrained=pretrained, depth_padding="replicate")
    if not pretrained:  # same random 2D weights, inflated
        net3d, _ = inflate_module(enc2d.backbone, depth_padding="replicate", stem="conv1")
        enc3d.backbone = net3d
    enc3d.eval()
    with torch.no_grad():
        f2, f3 = enc2d(img), enc3d(vol)
    assert len(f2) == len(f3) == 5
    for level, (a, b) in enumerate(zip(f2, f3)):
        assert b.shape[-1] == -(-vol.shape[-1] // enc3d.feature_info[level]["stride"][2])
        for k in range(b.shape[-1]):
            assert _rel(b[..., k], a) < 1e-4, (level, k)


def test_inflate_zero_padding_differs_at_deep_levels(depth_constant) -> None:
    img, vol = depth_constant
    enc2d = create_encoder("efficientnet-lite0", adapter="2d").eval()
    enc3d = create_encoder("efficientnet-lite0", adapter="inflate").eval()
    with torch.no_grad():
        f2, f3 = enc2d(img), enc3d(vol)
    assert _rel(f3[-1][..., 0], f2[-1]) > 1e-3  # zero depth padding leaks at the K borders


def test_inflate_weight_sums_to_2d() -> None:
    w = torch.randn(8, 4, 3, 3)
    before = w.clone()
    w3 = inflate_conv2d_weight(w, 5)
    assert w3.shape == (8, 4, 5, 3, 3)
    assert inflate_conv2d_weight(w, 5, depth_axis=2).shape == (8, 4, 3, 3, 5)
    torch.testing.assert_close(w3.sum(dim=2), w)
    assert torch.equal(w, before)


def test_inflate_policy_planar_stem_depthwise() -> None:
    enc = create_encoder("efficientnet-lite0", adapter="inflate", inflate_policy="planar-stem-depthwise")
    stem = enc.backbone._conv_stem
    assert stem.kernel_size == (3, 3, 1)
    dw = enc.backbone._blocks[1][0]._depthwise_conv
    pw = enc.backbone._blocks[1][0]._expand_conv
    assert dw.kernel_size == (3, 3, 1) and pw.kernel_size == (1, 1, 1)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet18"])
def test_acs_has_2d_parameter_count(name: str) -> None:
    kw = {"pretrained": name == "efficientnet-lite0"}
    n2 = sum(p.numel() for p in create_encoder(name, adapter="2.5d", **kw).parameters())
    n3 = sum(p.numel() for p in create_encoder(name, adapter="acs", **kw).parameters())
    assert n2 == n3


def test_acs_conv_planes_and_groups() -> None:
    assert acs_split(32) == (11, 11, 10) and sum(acs_split(7)) == 7
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    acs = ACSConv(conv.weight, None, stride=1, dilation=1, groups=6, same=False)
    # a volume constant along K: the axial group sees the 2D conv of the slice
    img = torch.randn(1, 6, 9, 9)
    out = acs(img.unsqueeze(-1).repeat(1, 1, 1, 1, 5))
    assert out.shape == (1, 6, 9, 9, 5)
    torch.testing.assert_close(out[:, :2, ..., 2], conv(img)[:, :2], rtol=1e-5, atol=1e-5)


def test_25d_equals_2d_slice_by_slice(lite0_2d: Encoder) -> None:
    enc = create_encoder("efficientnet-lite0", adapter="2.5d").eval()
    vol = torch.randn(1, 3, 32, 32, 3)
    with torch.no_grad():
        f3 = enc(vol)
        for k in range(vol.shape[-1]):
            for a, b in zip(lite0_2d(vol[..., k]), f3):
                torch.testing.assert_close(b[..., k], a, rtol=1e-4, atol=1e-4)
    assert [f["stride"] for f in enc.feature_info] == [(s, s, 1) for s in (2, 4, 8, 16, 32)]


def test_25d_neighbours_context(lite0_2d: Encoder) -> None:
    enc = create_encoder("efficientnet-lite0", adapter="2.5d", in_channels=1, context="neighbours").eval()
    vol = torch.randn(1, 1, 32, 32, 4)
    rgb = neighbour_slices(vol)
    torch.testing.assert_close(rgb[:, :, ..., 1], vol[:, 0, ..., 0:3].permute(0, 3, 1, 2))
    with torch.no_grad():
        torch.testing.assert_close(enc(vol)[2][..., 0], lite0_2d(rgb[..., 0])[2], rtol=1e-4, atol=1e-4)


def test_one_channel_sum_adapted_stem_equals_replicated_rgb() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    one = nn.Conv2d(1, 8, 3, padding=1)
    one.weight = nn.Parameter(adapt_first_conv(conv.weight, 1))
    one.bias = conv.bias
    x = torch.randn(2, 1, 10, 10)
    torch.testing.assert_close(one(x), conv(x.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)


def test_one_channel_encoder_equals_replicated(lite0_2d: Encoder) -> None:
    enc1 = create_encoder("efficientnet-lite0", adapter="2d", in_channels=1).eval()
    assert enc1.load_report.channel_adapted == ["_conv_stem.weight"]
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        for a, b in zip(enc1(x), lite0_2d(x.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_n_channels_tiled_and_rescaled() -> None:
    w = torch.randn(4, 3, 3, 3)
    w6 = adapt_first_conv(w, 6)
    assert w6.shape == (4, 6, 3, 3)
    torch.testing.assert_close(w6[:, :3] + w6[:, 3:], w)  # RGB fed twice gives the RGB response
    assert adapt_first_conv(w, 3) is not w and torch.equal(adapt_first_conv(w, 3), w)


def test_adapters_do_not_mutate_the_2d_network() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet18", adapter="2d", pretrained=False)
    before = copy.deepcopy(enc.backbone.state_dict())
    types = [type(m) for m in enc.backbone.modules()]
    net3d, inflated = inflate_module(enc.backbone, stem="conv1")
    from medmtl.models.acs import acs_module

    acs_module(enc.backbone)
    after = enc.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert types == [type(m) for m in enc.backbone.modules()]
    assert "conv1.weight" in inflated and net3d.conv1.weight.shape == (64, 3, 7, 7, 7)
