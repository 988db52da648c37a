"""Shared fixtures: small seeded image batches and a limited thread count for a 2-core CI machine."""

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def pair():
    """A (ŷ, y) pair of 2×3×32×32 images in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


@pytest.fixture(scope="session")
def teacher19():
    """A random-weight VGG-19 teacher (no pretrained weights on CI)."""
    import pgn

    return pgn.PerceptualLoss("vgg19", weights="random", seed=0)
