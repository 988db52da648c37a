"""UNet PGN backbone with Double BlazeBlocks and separable convs (paper Fig. 7b)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PGNError
from .blocks import BLOCK_TYPES, CONV_TYPES, NORM_TYPES, make_block, make_conv, make_norm, upsample_bilinear


@dataclass(frozen=True)
class UNetConfig:
    """Widths and block types of the UNet backbone (defaults: the paper's UNet, 1,765,891 parameters).

    Args:
        down_channels: encoder widths, one per level (level 0 = stride-2 7×7 stem, level 1 = max-pool + block,
            every further level a stride-2 block). Lateral (skip) widths equal these.
        up_channels: decoder widths, one per level.
        top_channels: width of the full-resolution branch that feeds the last decoder level.
        block_type: ``doubleblaze`` (paper), ``singleblaze``, ``singleres`` or ``doubleres``.
        conv_type: ``sep`` (grouped conv + 1×1, paper) or ``full``.
        norm_type: ``batch`` (paper) or ``instance``.
        predict_value: the authors' legacy value head (predicts the perceptual-loss value; unused by the paper).
        out_channels: backbone output channels.
    """

    down_channels: tuple[int, ...] = (64, 64, 128, 256, 512)
    up_channels: tuple[int, ...] = (64, 128, 256, 256, 512)
    top_channels: int = 64
    block_type: str = "doubleblaze"
    conv_type: str = "sep"
    norm_type: str = "batch"
    predict_value: bool = False
    out_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "down_channels", tuple(int(c) for c in self.down_channels))
        object.__setattr__(self, "up_channels", tuple(int(c) for c in self.up_channels))
        if len(self.down_channels) < 2 or len(self.up_channels) != len(self.down_channels):
            raise PGNError(
                f"UNet needs ≥ 2 levels and as many up as down widths, got down={list(self.down_channels)} "
                f"up={list(self.up_channels)}"
            )
        for name, value, allowed in (
            ("block_type", self.block_type, BLOCK_TYPES),
            ("conv_type", self.conv_type, CONV_TYPES),
            ("norm_type", self.norm_type, NORM_TYPES),
        ):
            if value not in allowed:
                raise PGNError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")


VALUE_HEAD_WIDTH = 128


class UNetBackbone(nn.Module):
    """UNet backbone: (N, 6, H, W) concat of [ŷ, y] → (N, out_channels, H, W); H, W multiples of 2**levels.

    Decoder level i upsamples (bilinear ×2, align_corners=True) and concatenates ``[upsampled, skip]`` in that
    order, where the skip is lateral i−1 (level ≥ 1) or the full-resolution branch (level 0).
    """

    in_channels = 6

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        d, u, top = config.down_channels, config.up_channels, config.top_channels
        levels = len(d)

        encoder = [
            nn.Sequential(
                nn.Conv2d(self.in_channels, d[0], 7, stride=2, padding=3, bias=False),
                make_norm(config.norm_type, d[0]),
                nn.ReLU(inplace=True),
            ),
            nn.Sequential(
                nn.MaxPool2d(3, stride=2, padding=1),
                make_block(config.block_type, d[0], d[1], 1, config.norm_type),
            ),
        ]
        for i in range(2, levels):
            encoder.append(make_block(config.block_type, d[i - 1], d[i], 2, config.norm_type))
        self.encoder = nn.ModuleList(encoder)

        self.full_res = nn.Sequential(
            make_conv(config.conv_type, self.in_channels, top, 3, 1),
            make_conv(config.conv_type, top, top, 3, 1),
        )
        self.laterals = nn.ModuleList(make_conv(config.conv_type, c, c, 1, 0) for c in d)

        # Decoder modules in processing order: deepest level first.
        self.decoder = nn.ModuleList()
        for i in reversed(range(levels)):
            below = d[levels - 1] if i == levels - 1 else u[i + 1]
            skip = d[i - 1] if i >= 1 else top
            self.decoder.append(make_conv(config.conv_type, below + skip, u[i], 3, 1))
        self.upsample = upsample_bilinear()
        self.head = nn.Conv2d(u[0], config.out_channels, 1, bias=True)

        if config.predict_value:
            self.value_convs = nn.ModuleList(
                make_conv(config.conv_type, u[i], VALUE_HEAD_WIDTH, 3, 1) for i in reversed(range(levels))
            )
            self.value_fc = nn.Linear(VALUE_HEAD_WIDTH * levels, 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (32 for the paper's five levels)."""
        return 2 ** len(self.config.down_channels)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        h = x
        for level in self.encoder:
            h = level(h)
            feats.append(h)
        top = self.full_res(x)
        lats = [lat(f) for lat, f in zip(self.laterals, feats)]
        levels = len(lats)
        h = lats[-1]
        decoded = []
        for k, dec in enumerate(self.decoder):
            i = levels - 1 - k
            skip = lats[i - 1] if i >= 1 else top
            h = dec(torch.cat([self.upsample(h), skip], dim=1))
            decoded.append(h)
        return h, decoded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self._decode(x)
        return self.head(h)

    def predict_value(self, x: torch.Tensor) -> torch.Tensor:
        """The legacy value head: predicted perceptual-loss value per sample, shape (N,).

        Only for checkpoints built with ``predict_value=True``; the paper does not use it.
        """
        if not self.config.predict_value:
            raise PGNError("this UNet was built without the value head (predict_value=False)")
        _, decoded = self._decode(x)
        pooled = [conv(h).mean(dim=(2, 3)) for conv, h in zip(self.value_convs, decoded)]
        return self.value_fc(torch.cat(pooled, dim=1)).squeeze(1)
