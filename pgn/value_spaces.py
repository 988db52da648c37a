"""The two value spaces of images, gradients and proxies, and the conversions between them.

* ``"unit"``: RGB in [0, 1], NCHW float. The public API's default.
* ``"imagenet"``: ``(x - mean) / std`` with torchvision's ImageNet statistics. The authors' PGNs and VGG
  teacher work here; use it to reproduce their numbers exactly.

Gradients are always returned with respect to the tensor the caller passed, in the caller's value space.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import PGNError

VALUE_SPACES = ("unit", "imagenet")


def check_value_space(value_space: str) -> str:
    """Return ``value_space`` if it is a known value space, else raise a :class:`PGNError`."""
    if value_space not in VALUE_SPACES:
        raise PGNError(f"unknown value_space {value_space!r}: use one of {', '.join(VALUE_SPACES)}")
    return value_space


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _channel_constant(IMAGENET_MEAN, like), _channel_constant(IMAGENET_STD, like)


def _channel_constant(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A (1, 3, 1, 1) tensor of ``values`` made on ``like``'s device: a host-to-device copy would wait for the GPU."""
    return torch.cat([torch.full((1, 1, 1, 1), v, dtype=like.dtype, device=like.device) for v in values], dim=1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Map (N, 3, H, W) RGB in [0, 1] to ImageNet-normalized space."""
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Map ImageNet-normalized (N, 3, H, W) tensors back to RGB [0, 1] (not clamped)."""
    mean, std = _stats(x)
    return x * std + mean


def to_imagenet(x: torch.Tensor, value_space: str) -> torch.Tensor:
    """Bring ``x`` from ``value_space`` into ImageNet-normalized space (differentiably)."""
    return normalize(x) if value_space == "unit" else x


def from_imagenet(x: torch.Tensor, value_space: str) -> torch.Tensor:
    """Bring an ImageNet-normalized image ``x`` back into ``value_space``."""
    return denormalize(x) if value_space == "unit" else x


def gradient_from_imagenet(g: torch.Tensor, value_space: str) -> torch.Tensor:
    """Chain rule for a gradient taken w.r.t. the normalized image: w.r.t. a [0, 1] image it is ``g / std``."""
    if value_space == "imagenet":
        return g
    _, std = _stats(g)
    return g / std
