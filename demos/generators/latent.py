"""A small StyleGAN-like latent generator, the built-in target of ``pgn-demo invert`` (paper §4, Image2StyleGAN).

Synthesis as in StyleGAN: a learned 4×4 constant, then per resolution an ×2 bilinear upsampling and two 3×3
convolutions, each followed by fixed per-pixel noise, AdaIN with its own style vector and LeakyReLU(0.2), and a
1×1 to-RGB with tanh, so images are in [−1, 1]. The latent is extended-W+: one style vector per AdaIN layer,
shape (2·blocks, w_dim) per image.

It is trained in a few hundred steps as an autoencoder (a small encoder predicts W+ from an image) on crops of
the bundled photographs (:func:`train_autoencoder`); the encoder is then dropped and the mean W+ of the training
crops is kept as ``mean_latent()``, the starting point of inversion (StyleGAN's "mean style").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pgn.errors import PGNError

from .training import Progress, TrainConfig, train_adam


@dataclass(frozen=True)
class LatentGeneratorConfig:
    """Output size (a power of two ≥ 8), style width and feature width."""

    size: int = 64
    w_dim: int = 64
    width: int = 32
    seed: int = 0

    @property
    def blocks(self) -> int:
        """Upsampling blocks from 4×4 to ``size``."""
        return int(math.log2(self.size)) - 2

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Shape of one image's W+ latent: (2·blocks, w_dim)."""
        return (2 * self.blocks, self.w_dim)

    def __post_init__(self):
        if self.size < 8 or self.size & (self.size - 1):
            raise PGNError(f"the built-in generator's size must be a power of two >= 8, got {self.size}")


class _StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, size: int, noise_seed: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.style = nn.Linear(w_dim, 2 * cout)
        with torch.no_grad():
            self.style.bias.copy_(torch.cat([torch.ones(cout), torch.zeros(cout)]))
        g = torch.Generator().manual_seed(noise_seed)
        self.register_buffer("noise", torch.randn(1, 1, size, size, generator=g))
        self.noise_strength = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) + self.noise_strength * self.noise
        scale, bias = self.style(w).chunk(2, dim=1)
        x = F.instance_norm(x) * scale[:, :, None, None] + bias[:, :, None, None]
        return F.leaky_relu(x, 0.2)


class LatentGenerator(nn.Module):
    """W+ latents (N, 2·blocks, w_dim) → images (N, 3, size, size) in [−1, 1]."""

    def __init__(self, config: LatentGeneratorConfig = LatentGeneratorConfig()):
        super().__init__()
        self.config = config
        c, d = config.width, config.w_dim
        self.const = nn.Parameter(torch.randn(1, c, 4, 4))
        convs = []
        for i in range(config.blocks):
            res = 8 * 2**i
            convs += [_StyledConv(c, c, d, res, config.seed + 2 * i), _StyledConv(c, c, d, res, config.seed + 2 * i + 1)]
        self.convs = nn.ModuleList(convs)
        self.to_rgb = nn.Conv2d(c, 3, 1)
        self.register_buffer("w_mean", torch.zeros(config.latent_shape))

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Shape of one image's latent."""
        return self.config.latent_shape

    def mean_latent(self) -> torch.Tensor:
        """The average W+ of the training images: where inversion starts; shape :attr:`latent_shape`."""
        return self.w_mean.clone()

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if tuple(w_plus.shape[1:]) != self.latent_shape:
            raise PGNError(f"latent shape {tuple(w_plus.shape[1:])} does not fit this generator's {self.latent_shape}")
        x = self.const.expand(w_plus.shape[0], -1, -1, -1)
        for i, conv in enumerate(self.convs):
            if i % 2 == 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = conv(x, w_plus[:, i])
        return torch.tanh(self.to_rgb(x))


class LatentEncoder(nn.Module):
    """Images in [−1, 1] → W+ latents; used only to train :class:`LatentGenerator`."""

    def __init__(self, config: LatentGeneratorConfig = LatentGeneratorConfig()):
        super().__init__()
        layers: list[nn.Module] = []
        cin, c = 3, 32
        for _ in range(int(math.log2(config.size)) - 2):
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin, c = c, min(2 * c, 128)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 16, config.latent_shape[0] * config.latent_shape[1])
        self.latent_shape = config.latent_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.body(x).flatten(1)).view(-1, *self.latent_shape)


#: The default training of :func:`train_autoencoder` (``batch``: crops per step).
AUTOENCODER_TRAINING = TrainConfig(steps=200, batch=8, lr=2e-3, betas=(0.5, 0.99))


def train_autoencoder(
    generator: LatentGenerator,
    sample_batch: Callable[[int, torch.Generator], torch.Tensor],
    config: TrainConfig = AUTOENCODER_TRAINING,
    progress: Progress | None = None,
) -> list[float]:
    """Train ``generator`` (with a throwaway encoder) to reproduce crops from ``sample_batch``; sets ``w_mean``.

    Args:
        sample_batch: ``(n, torch.Generator) -> (n, 3, size, size)`` images in [−1, 1].
        progress: called as ``progress(step, loss)``.

    Returns:
        The L1 loss of every step.
    """
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    encoder = LatentEncoder(generator.config)

    def step_loss() -> torch.Tensor:
        x = sample_batch(config.batch, g)
        return (generator(encoder(x)) - x).abs().mean()

    generator.train()
    params = [*generator.parameters(), *encoder.parameters()]
    losses = train_adam(params, config, step_loss, progress)
    with torch.no_grad():
        x = sample_batch(max(32, config.batch), g)
        generator.w_mean.copy_(encoder(x).mean(dim=0))
    generator.eval()
    return losses
