"""An exact rewrite of the UNet's slow grouped convolutions, for the ``onnxruntime-dw`` runtime.

The UNet's separable convs use ``groups = gcd(cin, cout)``, as the authors' UNet does. At the last decoder level this is a 3×3
conv from 192 to 64 channels in 64 groups: three input channels and one output channel per group. ONNX
Runtime's blocked (NCHWc) CPU kernels take only true depthwise or wide-group convolutions, so this one runs in
the generic path (a tiny matrix product per group) and forces layout conversions around the concatenation in
front of it: at 224² it was a third of the UNet's time.

A grouped conv with ``k`` inputs and one output per group is the same as a depthwise conv (one filter per input
channel, the group's weights in order) followed by a sum over each group's ``k`` channels::

    out[j] = b[j] + Σ_c w[j, c] ⋆ x[j·k + c]  =  b[j] + Σ_c (dw ⋆ x)[j·k + c]

The depthwise conv and the sum have exactly the original multiply-adds; the bias moves into the following 1×1
conv. Outputs agree to float rounding (checked by the benchmark's accuracy column). Convs with several outputs
per group are left alone: rewriting them needs a depthwise conv with a channel multiplier, which is no faster.

This belongs in the export graph (``export/graph.py``) once adopted; the benchmark applies it to a copy of the
model before exporting, and only for ``onnxruntime-dw``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pgn.backbones.blocks import SeparableConv


def is_single_output_grouped(module: nn.Module) -> bool:
    """True for a :class:`SeparableConv` whose k×k conv is grouped (not depthwise) with one output per group."""
    if not isinstance(module, SeparableConv):
        return False
    conv = module.spatial
    return conv.groups == conv.out_channels < conv.in_channels and conv.kernel_size != (1, 1)


class DepthwiseGroupSumConv(nn.Module):
    """Drop-in equivalent of a single-output-per-group :class:`SeparableConv` (see the module docs)."""

    def __init__(self, sep: SeparableConv):
        super().__init__()
        conv, pw = sep.spatial, sep.pointwise
        self.groups = conv.groups
        self.per_group = conv.in_channels // conv.groups
        kh, kw = conv.kernel_size
        self.depthwise = nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                                   dilation=conv.dilation, groups=conv.in_channels, bias=False)
        self.pointwise = nn.Conv2d(pw.in_channels, pw.out_channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        with torch.no_grad():
            # weight (groups, per_group, kh, kw) → one filter per input channel, in input-channel order
            self.depthwise.weight.copy_(conv.weight.reshape(conv.in_channels, 1, kh, kw))
            self.pointwise.weight.copy_(pw.weight)
            bias = pw.bias if pw.bias is not None else torch.zeros(pw.out_channels)
            spatial_bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            self.pointwise.bias.copy_(bias + pw.weight[:, :, 0, 0] @ spatial_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x)
        n, _, h, w = y.shape
        y = y.reshape(n, self.groups, self.per_group, h, w).sum(dim=2)
        return self.act(self.pointwise(y))


def rewritable_count(model: nn.Module) -> int:
    """How many modules :func:`rewrite_grouped_convs` would replace."""
    return sum(1 for m in model.modules() if is_single_output_grouped(m))


def rewrite_grouped_convs(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every single-output-per-group separable conv replaced (in eval mode)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_single_output_grouped(child):
                setattr(parent, name, DepthwiseGroupSumConv(child))
    return model.eval()
