"""ACS convolutions: 2D kernels applied in the axial, coronal and sagittal planes of a volume.

Yang et al. 2021, "Reinforcing Transfer Learning of 2D Pretrained Networks to 3D Medical
Image Analysis: ACS Convolutions" (IEEE JBHI). The output channels of each 2D convolution
are split into three groups; the first group's ``k x k`` kernels act in the axial plane
``(I, J)`` as ``(k, k, 1)``, the second in the coronal plane ``(I, K)`` as ``(k, 1, k)``, the
third in the sagittal plane ``(J, K)`` as ``(1, k, k)``. The parameters *are* the 2D kernels,
so the 3D network has exactly the 2D parameter count and loads 2D weights unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import unknown_name
from medmtl.models.inflate import batchnorm3d_from, inflate_module
from medmtl.models.padconv import DEPTH_PADDINGS, PaddedConv2d, axis_paddings, pad_input


def acs_split(n: int) -> tuple[int, int, int]:
    """Sizes of the axial / coronal / sagittal groups of ``n`` units (as equal as possible)."""
    a = -(-n // 3)
    c = -(-(n - a) // 2)
    return a, c, n - a - c


class ACSConv(nn.Module):
    """A 2D convolution applied as three planar 3D convolutions (see module docstring).

    Args:
        weight: the 2D kernel ``(O, I / groups, kh, kw)`` (copied).
        bias: the bias ``(O,)`` or ``None`` (copied).
        stride: 2D stride; the 3D stride is ``(s, s, s)``.
        dilation: 2D dilation.
        groups: convolution groups (depthwise supported: groups are split, not channels).
        same: TF-"same" padding when ``True`` else symmetric.
        depth_padding: ``"zeros"`` or ``"replicate"`` along ``K``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, dilation: int,
                 groups: int, same: bool, depth_padding: str = "zeros") -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.same = same
        self.depth_padding = depth_padding
        out = weight.shape[0]
        units = groups if groups > 1 else out
        per_unit = out // units
        sizes = acs_split(units)
        self.out_splits = tuple(s * per_unit for s in sizes)
        self.group_splits = tuple(sizes) if groups > 1 else (1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` ``(B, C, I, J, K)``; output ``(B, O, ceil(I/s), ceil(J/s), ceil(K/s))``."""
        outs: list[torch.Tensor] = []
        cin_per_group = self.weight.shape[1]
        o0 = g0 = 0
        for plane, (n_out, n_groups) in enumerate(zip(self.out_splits, self.group_splits)):
            if n_out == 0:
                continue
            w = self.weight[o0:o0 + n_out]
            # axial (k,k,1), coronal (k,1,k), sagittal (1,k,k)
            w3 = w.unsqueeze((4, 3, 2)[plane])
            b = self.bias[o0:o0 + n_out] if self.bias is not None else None
            inp = x if self.groups == 1 else x[:, g0 * cin_per_group:(g0 + n_groups) * cin_per_group]
            k = tuple(w3.shape[2:])
            pads = axis_paddings(inp.shape[2:], k, (self.stride,) * 3, (self.dilation,) * 3, self.same)
            outs.append(F.conv3d(pad_input(inp, pads, self.depth_padding), w3, b, stride=self.stride,
                                 dilation=self.dilation, groups=n_groups if self.groups > 1 else 1))
            o0 += n_out
            g0 += n_groups
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        """Shapes and split, for ``print(module)``."""
        return f"weight={tuple(self.weight.shape)}, stride={self.stride}, groups={self.groups}, split={self.out_splits}"


def acs_conv_from(conv: nn.Conv2d, depth_padding: str = "zeros") -> ACSConv:
    """An :class:`ACSConv` carrying a copy of ``conv``'s kernel (square kernels/strides only)."""
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
        raise ValueError(f"ACS needs square kernels and strides, got {conv.kernel_size}, {conv.stride}")
    if not isinstance(conv, PaddedConv2d):
        symmetric = tuple((k - 1) * d // 2 for k, d in zip(conv.kernel_size, conv.dilation))
        if conv.padding not in ("same", symmetric):
            raise ValueError(f"cannot convert Conv2d with padding {conv.padding}; expected {symmetric}")
    return ACSConv(conv.weight, conv.bias, stride=int(conv.stride[0]), dilation=int(conv.dilation[0]),
                   groups=conv.groups, same=bool(getattr(conv, "same", False)), depth_padding=depth_padding)


def acs_module(module2d: nn.Module, *, depth_padding: str = "zeros") -> nn.Module:
    """Return an ACS copy of a 2D network; ``module2d`` is left untouched.

    Every Conv2d becomes an :class:`ACSConv` (same parameters), BatchNorm2d → BatchNorm3d,
    pools → 3D pools (I3D rule, :func:`medmtl.models.inflate.inflate_module`; they have no
    parameters).

    Args:
        module2d: the 2D network.
        depth_padding: ``"zeros"`` or ``"replicate"`` along ``K``.

    Returns:
        The 3D network; its parameter count equals ``module2d``'s.
    """
    if depth_padding not in DEPTH_PADDINGS:
        raise unknown_name("depth_padding", depth_padding, DEPTH_PADDINGS)
    net = copy.deepcopy(module2d)
    for _, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, acs_conv_from(child, depth_padding))
            elif isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, batchnorm3d_from(child))
    # the remaining 2D modules (pools, dropout) have no parameters: reuse the I3D conversion
    net3d, _ = inflate_module(net, depth_padding=depth_padding)
    return net3d
