"""A small talking-head style generator: pose input (edge map) + identity code → image (paper §4, Zakharov et al.).

As in Neural Talking Heads, an *embedder* turns a few frames of a person (with their pose inputs) into an identity
code, and a *generator* renders a pose input in that identity; the code enters the generator through AdaIN. The
pair is meta-trained on several identities (:func:`meta_train`; here, posed crops of the bundled photographs), then
personalized to a new person from K frames (:func:`personalize`) and fine-tuned on them (the demo's students).

Sizes are kept small so that everything runs in minutes on a laptop CPU; widths are options.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .training import Progress, TrainConfig, train_adam


@dataclass(frozen=True)
class TalkingHeadConfig:
    """Widths of the embedder and the generator."""

    width: int = 32
    code_dim: int = 64
    res_blocks: int = 2


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel normalization over H, W (as ``nn.InstanceNorm2d``), written with basic ops.

    Basic ops keep the generator's training step exportable to trainers that have no gradient for ONNX's
    InstanceNormalization (ONNX Runtime training); squares are products, which XNNPACK takes in both directions
    (ExecuTorch's training program), where ``pow`` and its backward would fall back to portable kernels.
    """
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    return centred / torch.sqrt(var + eps)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2 upsampling written as expand + reshape (exportable with CPU gradients, unlike Resize)."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class AdaIN(nn.Module):
    """Instance normalization whose scale and bias come from the identity code."""

    def __init__(self, channels: int, code_dim: int):
        super().__init__()
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:  # noqa: D102
        scale, bias = self.affine(code).chunk(2, dim=1)
        return instance_norm(x) * scale[:, :, None, None] + bias[:, :, None, None]


class _ResBlock(nn.Module):
    def __init__(self, channels: int, code_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = AdaIN(channels, code_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = AdaIN(channels, code_dim)

    def forward(self, x, code):
        h = F.leaky_relu(self.norm1(self.conv1(x), code), 0.2)
        return x + self.norm2(self.conv2(h), code)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int, code_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = AdaIN(cout, code_dim)

    def forward(self, x, code):
        x = F.leaky_relu(self.norm(self.conv(x), code), 0.2)
        return upsample2x(x)


class Embedder(nn.Module):
    """(frames (N, 3, H, W), pose inputs (N, 1, H, W)) → identity codes (N, code_dim)."""

    def __init__(self, config: TalkingHeadConfig = TalkingHeadConfig()):
        super().__init__()
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(4, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(4 * w, config.code_dim)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.body(torch.cat([frames * 2 - 1, poses], dim=1))
        return self.head(h.mean(dim=(2, 3)))


class PoseGenerator(nn.Module):
    """(pose inputs (N, 1, H, W), identity codes (N or 1, code_dim)) → images (N, 3, H, W) in [0, 1]; H, W multiples of 4."""

    def __init__(self, config: TalkingHeadConfig = TalkingHeadConfig()):
        super().__init__()
        w, d = config.width, config.code_dim
        self.config = config
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.LeakyReLU(0.2))
        self.down1 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.down2 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList(_ResBlock(4 * w, d) for _ in range(config.res_blocks))
        self.up1 = _Up(4 * w, 2 * w, d)
        self.up2 = _Up(4 * w, w, d)
        self.out = nn.Conv2d(2 * w, 3, 3, padding=1)

    def forward(self, poses: torch.Tensor, code: torch.Tensor) -> torch.Tensor:  # noqa: D102
        code = code.expand(poses.shape[0], -1)
        s0 = self.stem(poses * 2 - 1)
        s1 = self.down1(s0)
        h = self.down2(s1)
        for block in self.blocks:
            h = block(h, code)
        h = self.up1(h, code)
        h = self.up2(torch.cat([h, s1], dim=1), code)
        return torch.sigmoid(self.out(torch.cat([h, s0], dim=1)))


class PersonalizedGenerator(nn.Module):
    """A generator bound to one person: the identity code is a trainable parameter; ``forward(poses)`` renders them."""

    def __init__(self, generator: PoseGenerator, code: torch.Tensor):
        super().__init__()
        self.generator = generator
        self.code = nn.Parameter(code.detach().clone().reshape(1, -1))

    def forward(self, poses: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.generator(poses, self.code)


@torch.no_grad()
def personalize(generator: PoseGenerator, embedder: Embedder, frames: torch.Tensor, poses: torch.Tensor) -> PersonalizedGenerator:
    """Initialize a person's generator: a copy of ``generator`` with the mean identity code of ``frames``."""
    code = embedder(frames, poses).mean(dim=0, keepdim=True)
    return PersonalizedGenerator(copy.deepcopy(generator), code)


#: The default meta-training: ``steps`` episodes of K = ``batch`` reference + K target frames of one identity.
META_TRAINING = TrainConfig(steps=300, batch=4, lr=1e-3)


def meta_train(
    generator: PoseGenerator,
    embedder: Embedder,
    sample_episode: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig = META_TRAINING,
    progress: Progress | None = None,
) -> list[float]:
    """Meta-train ``generator`` and ``embedder`` in place; returns the loss of every episode.

    Args:
        sample_episode: ``(2K, generator) -> (frames, poses)`` of one identity: the first K are references, the rest
            are rendered and compared.
        progress: called as ``progress(step, loss)`` after every episode.
    """
    g = torch.Generator().manual_seed(config.seed)
    k = config.batch

    def step_loss() -> torch.Tensor:
        frames, poses = sample_episode(2 * k, g)
        code = embedder(frames[:k], poses[:k]).mean(dim=0, keepdim=True)
        return (generator(poses[k:], code) - frames[k:]).abs().mean()

    generator.train()
    embedder.train()
    params = [*generator.parameters(), *embedder.parameters()]
    losses = train_adam(params, config, step_loss, progress)
    generator.eval()
    embedder.eval()
    return losses
