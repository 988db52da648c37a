"""The Deep Image Prior "skip" encoder-decoder that the authors fitted in their DIP validation (paper Tables 2, 5).

It is configured as in DIP's JPEG-artifact-removal example: 5 scales, down and up widths (8, 16, 32, 64, 128),
skip widths (0, 0, 0, 4, 4), 3×3 convolutions with reflection padding, 1×1 skip convolutions, bias everywhere,
BatchNorm + LeakyReLU(0.2), stride-2 convolutions for downsampling, bilinear ×2 upsampling with
``align_corners=True``, an extra 1×1 conv after each up conv and a final 1×1 conv to 3 channels: 572,827
parameters. As in the authors' code the output sigmoid is off by default (``need_sigmoid=True`` adds it, as the
original DIP example does).

Per scale ``i`` (input width ``c_in`` = input channels at ``i = 0``, else ``down[i-1]``)::

    deep:  Conv3×3/s2(c_in→down_i) BN LReLU → Conv3×3(down_i→down_i) BN LReLU → [scale i+1] → Up×2
    skip:  Conv1×1(c_in→skip_i) BN LReLU                                    (only if skip_i > 0)
    merge: concat[skip, deep] → BN → Conv3×3(→up_i) BN LReLU → Conv1×1(up_i→up_i) BN LReLU
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pgn.errors import PGNError


@dataclass(frozen=True)
class SkipNetConfig:
    """Widths and options of the DIP skip network; the defaults are those of the paper's DIP experiments."""

    in_channels: int = 3
    out_channels: int = 3
    down: tuple[int, ...] = (8, 16, 32, 64, 128)
    up: tuple[int, ...] = (8, 16, 32, 64, 128)
    skip: tuple[int, ...] = (0, 0, 0, 4, 4)
    need_sigmoid: bool = False

    def __post_init__(self):
        if not (len(self.down) == len(self.up) == len(self.skip)) or not self.down:
            raise PGNError(f"down, up and skip need one width per scale, got {self.down}, {self.up}, {self.skip}")

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one stride-2 conv per scale)."""
        return 2 ** len(self.down)


def _conv(cin: int, cout: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    pad = (kernel_size - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers.append(nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=0, bias=True))
    return nn.Sequential(*layers)


def _conv_bn_act(cin: int, cout: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, kernel_size, stride), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


class _Scale(nn.Module):
    """One scale of the skip network: ``merge(concat(skip(x), up(deeper(x))))``."""

    def __init__(self, cfg: SkipNetConfig, i: int, cin: int):
        super().__init__()
        last = i == len(cfg.down) - 1
        self.skip = _conv_bn_act(cin, cfg.skip[i], 1) if cfg.skip[i] else None
        deep: list[nn.Module] = [_conv_bn_act(cin, cfg.down[i], 3, stride=2), _conv_bn_act(cfg.down[i], cfg.down[i], 3)]
        if not last:
            deep.append(_Scale(cfg, i + 1, cfg.down[i]))
        deep.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        self.deep = nn.Sequential(*deep)
        k = cfg.down[i] if last else cfg.up[i + 1]
        self.merge = nn.Sequential(
            nn.BatchNorm2d(cfg.skip[i] + k),
            _conv_bn_act(cfg.skip[i] + k, cfg.up[i], 3),
            _conv_bn_act(cfg.up[i], cfg.up[i], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deep(x)
        merged = deep if self.skip is None else torch.cat([self.skip(x), deep], dim=1)
        return self.merge(merged)


class SkipNet(nn.Module):
    """DIP skip network: (N, in_channels, H, W) noise → (N, out_channels, H, W) image; H, W multiples of 32.

    It stays in train mode during fitting (BatchNorm uses batch statistics), as in DIP and the authors' code.
    """

    def __init__(self, config: SkipNetConfig = SkipNetConfig()):
        super().__init__()
        self.config = config
        self.body = _Scale(config, 0, config.in_channels)
        self.out = nn.Conv2d(config.up[0], config.out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Generate an image from the fixed input ``x``."""
        h, w = x.shape[-2:]
        m = self.config.size_multiple
        if h % m or w % m:
            raise PGNError(f"the DIP skip net needs height and width that are multiples of {m}, got {h}x{w}")
        y = self.out(self.body(x))
        return torch.sigmoid(y) if self.config.need_sigmoid else y
