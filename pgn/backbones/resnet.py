"""ResNet-N PGN backbone (paper Table 1): a CycleGAN-style generator on a 6-channel input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PGNError


@dataclass(frozen=True)
class ResNetConfig:
    """Widths and depth of a ResNet-N backbone.

    Args:
        num_blocks: residual blocks at the lowest resolution (paper presets 4, 6, 8; any N ≥ 0).
        down_channels: stem width, then one stride-2 conv per further entry (default (64, 128)).
        up_channels: one nearest ×2 upsampling + conv per entry; needs ``len(down_channels) - 1`` entries.
        out_channels: backbone output channels (3 for the proxy heads, 2 or 5 for the warped head).
    """

    num_blocks: int = 8
    down_channels: tuple[int, ...] = (64, 128)
    up_channels: tuple[int, ...] = (64,)
    out_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "down_channels", tuple(int(c) for c in self.down_channels))
        object.__setattr__(self, "up_channels", tuple(int(c) for c in self.up_channels))
        if self.num_blocks < 0:
            raise PGNError(f"num_blocks must be ≥ 0, got {self.num_blocks}")
        if not self.down_channels:
            raise PGNError("down_channels needs at least one entry (the stem width)")
        if len(self.up_channels) != len(self.down_channels) - 1:
            raise PGNError(
                f"up_channels needs {len(self.down_channels) - 1} entries (one per stride-2 down conv) so the "
                f"output matches the input size, got {list(self.up_channels)}"
            )


def conv_bn_lrelu(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Conv3×3 (no bias) → BatchNorm → LeakyReLU(0.2): the CBL unit of the ResNet backbone."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ResidualBlock(nn.Module):
    """``x + [Conv3×3(bias) → BN → LReLU(0.2) → Conv3×3(bias) → BN](x)``, no activation after the sum.

    Unlike the other convs of this backbone these two carry a bias (needed for the paper's parameter counts).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=True),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=True),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return x + self.body(x)


class ResNetBackbone(nn.Module):
    """ResNet-N backbone: (N, 6, H, W) concat of [ŷ, y] → (N, out_channels, H, W), linear output."""

    in_channels = 6

    def __init__(self, config: ResNetConfig = ResNetConfig()):
        super().__init__()
        self.config = config
        down = config.down_channels
        layers: list[nn.Module] = [conv_bn_lrelu(self.in_channels, down[0], 1)]
        for cin, cout in zip(down[:-1], down[1:]):
            layers.append(conv_bn_lrelu(cin, cout, 2))
        layers += [ResidualBlock(down[-1]) for _ in range(config.num_blocks)]
        prev = down[-1]
        for cout in config.up_channels:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_lrelu(prev, cout, 1)]
            prev = cout
        layers.append(nn.Conv2d(prev, config.out_channels, 3, padding=1, bias=True))
        self.layers = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one factor 2 per stride-2 conv)."""
        return 2 ** (len(self.config.down_channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
