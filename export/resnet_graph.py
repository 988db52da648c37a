"""The ResNet backbone as the export graph computes it: :class:`ExportResNet`.

Same numbers as :class:`pgn.backbones.resnet.ResNetBackbone` to float rounding. With ``upsample_conv="transposed"``
every nearest ×2 upsampling followed by a 3×3 convolution (BatchNorm folded in) becomes one stride-2 4×4
transposed convolution of the low-resolution map. Along one axis, output row 2k of the 3×3 conv (taps
``w0, w1, w2``) sees upsampled rows 2k − 1, 2k, 2k + 1, i.e. low rows k − 1, k, k: ``w0·x[k−1] + (w1 + w2)·x[k]``;
row 2k + 1 sees low rows k, k, k + 1: ``(w0 + w1)·x[k] + w2·x[k+1]``. That is a transposed convolution with
stride 2, padding 1 and the 1-D kernel ``[w2, w1 + w2, w0 + w1, w0]`` (zero padding maps to zero padding), applied
along rows and columns. Each output pixel costs 2×2 instead of 3×3 multiply-adds per channel pair (4/9), and the
upsampled map is never materialized.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pgn.backbones.resnet import ResNetBackbone

from .graph_options import GraphOptions

#: (4, 3): tap t of the 4-wide transposed kernel as a sum of taps of the 3-wide conv kernel (see the module docs).
_TAP_SUMS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


def transposed_upsample_conv(conv: nn.Conv2d) -> nn.ConvTranspose2d:
    """The stride-2 transposed convolution equal to nearest ×2 upsampling followed by ``conv`` (3×3, stride 1,
    padding 1, no groups or dilation); see the module docs."""
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError(f"not a 3×3 'same' convolution: {conv}")
    weight = conv.weight.detach().double()  # (C_out, C_in, 3, 3)
    kernel = torch.einsum("ta,oiab,ub->iotu", _TAP_SUMS, weight, _TAP_SUMS)  # (C_in, C_out, 4, 4)
    up = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 4, stride=2, padding=1, bias=conv.bias is not None)
    with torch.no_grad():
        up.weight.copy_(kernel.to(up.weight.dtype))
        if conv.bias is not None:
            up.bias.copy_(conv.bias.detach())
    return up


def _upsample_conv_pair(layers: list[nn.Module], i: int) -> bool:
    """True if ``layers[i]`` is a nearest ×2 upsampling followed by a [3×3 conv, BatchNorm, activation] unit."""
    up, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
    if not (isinstance(up, nn.Upsample) and up.mode == "nearest" and up.scale_factor in (2, 2.0, (2.0, 2.0))):
        return False
    return (isinstance(nxt, nn.Sequential) and len(nxt) == 3 and isinstance(nxt[0], nn.Conv2d)
            and isinstance(nxt[1], nn.BatchNorm2d) and nxt[0].kernel_size == (3, 3))


class ExportResNet(nn.Module):
    """A :class:`ResNetBackbone` computed with the choices of ``options`` (see the module docs)."""

    def __init__(self, backbone: ResNetBackbone, options: GraphOptions):
        super().__init__()
        layers = list(copy.deepcopy(backbone).layers)
        out: list[nn.Module] = []
        self.rewritten: list[int] = []
        i = 0
        while i < len(layers):
            if options.upsample_conv == "transposed" and _upsample_conv_pair(layers, i):
                conv, bn, act = layers[i + 1]
                out.append(nn.Sequential(transposed_upsample_conv(fuse_conv_bn_eval(conv.eval(), bn.eval())), act))
                self.rewritten.append(i)
                i += 2
                continue
            out.append(layers[i])
            i += 1
        self.layers = nn.Sequential(*out)
        self.upsample_conv = options.upsample_conv

    def describe(self) -> tuple[dict, dict]:
        """What was applied and what was not (with the reason), for the manifest."""
        not_applied = {name: "the ResNet has no UNet decoder" for name in ("band_rows", "band_levels", "decoder_conv")}
        if self.upsample_conv == "plain":
            return {"upsample_conv": "plain"}, not_applied
        if not self.rewritten:
            not_applied["upsample_conv"] = "no nearest ×2 upsampling followed by a 3×3 conv unit"
            return {}, not_applied
        return {"upsample_conv": f"transposed ({len(self.rewritten)} upsample + conv pair(s))"}, not_applied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
