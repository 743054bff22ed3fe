"""I3D inflation of a 2D network into a 3D one (pure functions; the input is never modified).

Carreira & Zisserman 2017, "Quo Vadis, Action Recognition? A New Model and the Kinetics
Dataset" (CVPR): a 2D ``k x k`` kernel is repeated ``depth`` times along the new axis and
divided by ``depth``, so a depth-constant volume produces the 2D activations on every slice.
medmtl volumes are ``(B, C, I, J, K)`` with ``K`` the axial (slice) axis; the 2D kernel's
``(kh, kw)`` act on ``(I, J)`` and the new depth axis is ``K``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medmtl.errors import unknown_name
from medmtl.models.padconv import DEPTH_PADDINGS, PaddedConv2d, PaddedConv3d

# policy(name of the conv in the network, the conv, name of the stem conv) -> kernel depth
DepthPolicy = Callable[[str, nn.Conv2d, str], int]


def _full(name: str, conv: nn.Conv2d, stem: str) -> int:
    return int(conv.kernel_size[0])


def _planar_stem_depthwise(name: str, conv: nn.Conv2d, stem: str) -> int:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    return 1 if name == stem or depthwise else int(conv.kernel_size[0])


def _planar(name: str, conv: nn.Conv2d, stem: str) -> int:
    return 1


INFLATE_POLICIES: dict[str, DepthPolicy] = {
    "full": _full,
    "planar-stem-depthwise": _planar_stem_depthwise,
    "planar": _planar,
}
"""Layer policies: ``full`` every k×k → k×k×k; ``planar-stem-depthwise`` 1×k×k (no mixing
along K) for the stem and depthwise kernels, k×k×k elsewhere; ``planar`` 1×k×k everywhere."""


def get_policy(policy: str | DepthPolicy) -> DepthPolicy:
    """Return a depth policy by name (or the callable itself).

    Raises:
        RegistryError: unknown policy name (with a did-you-mean).
    """
    if callable(policy):
        return policy
    if policy not in INFLATE_POLICIES:
        raise unknown_name("inflate policy", policy, INFLATE_POLICIES)
    return INFLATE_POLICIES[policy]


def inflate_conv2d_weight(weight: torch.Tensor, depth: int, *, depth_axis: int = 0) -> torch.Tensor:
    """Inflate a 2D kernel to 3D: repeat along a new axis and divide by ``depth``.

    Args:
        weight: ``(O, I, kh, kw)`` 2D kernel (not modified).
        depth: kernel size along the new axis (>= 1).
        depth_axis: which of the three spatial axes is new: 0 gives ``(O, I, depth, kh, kw)``
            (the I3D ``(D, H, W)`` layout), 2 gives ``(O, I, kh, kw, depth)`` (medmtl's
            ``(I, J, K)`` layout, used by :func:`inflate_module`).

    Returns:
        A new tensor whose sum over the new axis equals ``weight``.
    """
    if weight.dim() != 4:
        raise ValueError(f"weight must be (O, I, kh, kw), got shape {tuple(weight.shape)}")
    if depth < 1 or depth_axis not in (0, 1, 2):
        raise ValueError(f"depth must be >= 1 and depth_axis in (0, 1, 2), got {depth}, {depth_axis}")
    w = weight.detach().clone().unsqueeze(2 + depth_axis)
    reps = [1, 1, 1, 1, 1]
    reps[2 + depth_axis] = depth
    return w.repeat(*reps) / depth


def _conv3d_from(conv: nn.Conv2d, depth: int, depth_padding: str) -> PaddedConv3d:
    same = bool(getattr(conv, "same", False))
    if not isinstance(conv, PaddedConv2d):
        pad = conv.padding
        symmetric = tuple((k - 1) * d // 2 for k, d in zip(conv.kernel_size, conv.dilation))
        if pad not in ("same", symmetric) and not (pad == (0, 0) and conv.kernel_size == (1, 1)):
            raise ValueError(f"cannot inflate Conv2d with padding {pad}; expected {symmetric}")
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    out = PaddedConv3d(
        conv.in_channels, conv.out_channels, (kh, kw, depth), stride=(sh, sw, sh), dilation=(dh, dw, dh),
        groups=conv.groups, bias=conv.bias is not None, same=same, depth_padding=depth_padding,
    )
    with torch.no_grad():
        out.weight.copy_(inflate_conv2d_weight(conv.weight, depth, depth_axis=2))
        if conv.bias is not None and out.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def batchnorm3d_from(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """A ``BatchNorm3d`` with the parameters and running statistics of ``bn`` (copied)."""
    out = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    out.load_state_dict(copy.deepcopy(bn.state_dict()))
    out.train(bn.training)
    return out


def _triple(v: Any) -> tuple[int, int, int]:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    return int(a), int(b), int(a)


def _pool3d_from(pool: nn.Module, depth_kernel: bool) -> nn.Module:
    """3D version of a 2D pooling module (window ``(k, k, k)``, or ``(k, k, 1)`` if not ``depth_kernel``)."""
    if isinstance(pool, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        out: Any = pool.output_size
        sizes = (out, out, out) if isinstance(out, int) else (out[0], out[1], out[0])
        if isinstance(pool, nn.AdaptiveAvgPool2d):
            return nn.AdaptiveAvgPool3d(sizes)
        return nn.AdaptiveMaxPool3d(sizes)
    p2: Any = pool
    k, s, p = _triple(p2.kernel_size), _triple(p2.stride), _triple(p2.padding)
    if not depth_kernel:
        k, p = (k[0], k[1], 1), (p[0], p[1], 0)
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool3d(k, s, p, ceil_mode=bool(p2.ceil_mode))
    return nn.AvgPool3d(k, s, p, ceil_mode=bool(p2.ceil_mode), count_include_pad=bool(p2.count_include_pad))


def inflate_module(
    module2d: nn.Module,
    *,
    policy: str | DepthPolicy = "full",
    depth_padding: str = "zeros",
    stem: str = "",
) -> tuple[nn.Module, list[str]]:
    """Return a 3D copy of a 2D network (I3D); ``module2d`` is left untouched.

    Conv2d → :class:`~medmtl.models.padconv.PaddedConv3d` (kernel ``(kh, kw, depth)`` with the
    depth from ``policy``, stride ``(s, s, s)``, weights from :func:`inflate_conv2d_weight`),
    BatchNorm2d → BatchNorm3d, Max/Avg/AdaptivePool2d → 3D, Dropout2d → Dropout3d. Other
    modules (activations, Linear, containers) are kept.

    Args:
        module2d: the 2D network.
        policy: a name from :data:`INFLATE_POLICIES` or a callable ``(name, conv, stem) -> depth``.
        depth_padding: ``"zeros"`` (default) or ``"replicate"`` along ``K`` (replicate makes a
            depth-constant input give exactly the 2D features on every slice).
        stem: qualified name of the first convolution (for stem-specific policies).

    Returns:
        ``(module3d, inflated)``: the new network and the names of parameters whose kernel
        was inflated (``"<conv>.weight"``).
    """
    if depth_padding not in DEPTH_PADDINGS:
        raise unknown_name("depth_padding", depth_padding, DEPTH_PADDINGS)
    depth_of = get_policy(policy)
    net = copy.deepcopy(module2d)
    inflated: list[str] = []
    for parent_name, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            qual = f"{parent_name}.{name}" if parent_name else name
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d):
                new = _conv3d_from(child, depth_of(qual, child, stem), depth_padding)
                inflated.append(f"{qual}.weight")
            elif isinstance(child, nn.BatchNorm2d):
                new = batchnorm3d_from(child)
            elif isinstance(child, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
                new = _pool3d_from(child, depth_kernel=policy != "planar")
            elif isinstance(child, nn.Dropout2d):
                new = nn.Dropout3d(child.p)
            if new is not None:
                setattr(parent, name, new)
    return net, inflated


def reinit_3d(module: nn.Module) -> None:
    """Re-initialise the 3D convolutions and norms of a *new* network in place (from scratch).

    Kaiming-normal (fan-out, ReLU gain) for convolutions, ones/zeros for norms (He et al. 2015,
    "Delving Deep into Rectifiers"). Use only on modules you created (e.g. the output of
    :func:`inflate_module`), never on the caller's.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
