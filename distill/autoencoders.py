"""Surrogate generators: the small autoencoders whose outputs ŷ the PGN learns on (paper Fig. 9c).

Each process runs one autoencoder per entry of ``ae_depths`` (default depths 0, 1, 2). The per-process batch is
split into contiguous sub-batches, one per autoencoder; each autoencoder is then updated with Adam on the
*synthetic* gradient the PGN predicts for its outputs, its grad norm clipped against a moving average, and it is
re-initialized when its reconstruction L1 stops improving.

Parameter counts (the authors' networks have the same): depth 0 → 54,019; depth 1 → 111,491; depth 2 → 408,195.
"""

from __future__ import annotations

import torch
from torch import nn

from pgn.authors import BLOCK_PARTS, CONV_PARTS, unit_names
from pgn.backbones.blocks import make_block, make_conv, upsample_bilinear
from pgn.errors import PGNError

STEM_WIDTH = 128


class SurrogateAutoencoder(nn.Module):
    """Encoder–decoder without skip connections, derived from the PGN UNet, layer for layer the authors' autoencoder.

    Encoder: Conv7×7(3→128, stride 2, no bias) → BN → ReLU; depth ≥ 1 adds MaxPool(3, 2, 1) → block(128→128);
    each further depth level adds a stride-2 block doubling the width; then a 1×1 separable conv bottleneck.
    Decoder: ``depth + 1`` stages of bilinear ×2 (align_corners=True) → 3×3 separable conv, mirroring the encoder
    widths, then a 1×1 conv to 3 channels with no output activation (outputs live in ImageNet-normalized space).

    Args:
        depth: 0, 1, 2, … (input size must be a multiple of ``2 ** (depth + 1)``).
        block_type: encoder block (``doubleblaze`` in the paper; see :func:`pgn.backbones.blocks.make_block`).
        conv_type: ``sep`` (paper) or ``full``.
    """

    def __init__(self, depth: int, block_type: str = "doubleblaze", conv_type: str = "sep"):
        super().__init__()
        if depth < 0:
            raise PGNError(f"autoencoder depth must be ≥ 0, got {depth}")
        self.depth = depth
        self.block_type, self.conv_type = block_type, conv_type
        widths = [STEM_WIDTH] + ([STEM_WIDTH] if depth >= 1 else []) + [STEM_WIDTH * 2**j for j in range(1, depth)]
        encoder: list[nn.Module] = [
            nn.Conv2d(3, STEM_WIDTH, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(STEM_WIDTH),
            nn.ReLU(inplace=True),
        ]
        if depth >= 1:
            encoder += [nn.MaxPool2d(3, stride=2, padding=1), make_block(block_type, STEM_WIDTH, STEM_WIDTH, 1)]
        for cin, cout in zip(widths[1:-1], widths[2:]):
            encoder.append(make_block(block_type, cin, cout, 2))
        deepest = widths[-1]
        encoder.append(make_conv(conv_type, deepest, deepest, kernel_size=1, padding=0))
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [upsample_bilinear(), make_conv(conv_type, deepest, deepest)]
        for cin, cout in zip(widths[::-1][:-1], widths[::-1][1:]):
            decoder += [upsample_bilinear(), make_conv(conv_type, cin, cout)]
        self.decoder = nn.Sequential(*decoder)
        self.head = nn.Conv2d(STEM_WIDTH, 3, 1, bias=True)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.depth + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalized images → (N, 3, H, W) reconstructions (unbounded, normalized space)."""
        return self.head(self.decoder(self.encoder(x)))

    def authors_module_names(self) -> dict[str, str]:
        """Our module names → those of the authors' autoencoder, whose checkpoints (``e_ae_k.pth``) load by name.

        Theirs is one flat ``nn.Sequential`` called ``model``: the stem (conv, norm, ReLU) as ``model.0``, then
        ``model.1`` = max-pool → block, one entry per further block, the bottleneck conv, and alternating
        upsample / conv entries ending with the 1×1 head (``model.{3·depth + 4}``).
        """
        block, conv = BLOCK_PARTS[self.block_type], CONV_PARTS[self.conv_type]
        d = self.depth
        names = {"encoder.0": "model.0.0", "encoder.1": "model.0.1", "head": f"model.{3 * d + 4}"}
        if d >= 1:
            names.update(unit_names("encoder.4", "model.1.1", block))  # ours: encoder.3 is the max-pool
        for level in range(2, d + 1):
            names.update(unit_names(f"encoder.{level + 3}", f"model.{level}", block))
        names.update(unit_names(f"encoder.{len(self.encoder) - 1}", f"model.{d + 1}", conv))
        for k in range(d + 1):  # our decoder: upsample, conv, upsample, conv, …
            names.update(unit_names(f"decoder.{2 * k + 1}", f"model.{d + 3 + 2 * k}", conv))
        return names

    def reset_parameters(self) -> None:
        """Re-run PyTorch's default initialization of every conv and BatchNorm (incl. running statistics)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()


def build_autoencoders(depths: list[int], block_type: str = "doubleblaze", conv_type: str = "sep") -> nn.ModuleList:
    """One :class:`SurrogateAutoencoder` per depth, in order (default ``[0, 1, 2]``)."""
    return nn.ModuleList(SurrogateAutoencoder(d, block_type, conv_type) for d in depths)


def split_sizes(batch_size: int, parts: int) -> list[int]:
    """Contiguous sub-batch sizes, the first ``batch_size % parts`` one larger: 48→16/16/16, 44→15/15/14."""
    if parts < 1 or batch_size < parts:
        raise PGNError(f"cannot split a batch of {batch_size} among {parts} autoencoders (need batch ≥ autoencoders)")
    base, extra = divmod(batch_size, parts)
    return [base + 1 if k < extra else base for k in range(parts)]
