"""Fixtures for the export tests: small seeded PGNs, kept fast for a 2-core CPU (sizes 64×64)."""

import pytest
import torch

import pgn

torch.set_num_threads(1)

PRESETS = ("resnet4", "resnet6", "resnet8", "unet")
SIZE = (64, 64)


def build(name: str, **overrides) -> pgn.PGN:
    """A preset with seeded random weights and non-trivial BatchNorm statistics (so folding is exercised)."""
    torch.manual_seed(0)
    model = pgn.build(name, **overrides)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def models():
    """Every paper preset, built once per session."""
    return {name: build(name) for name in PRESETS}


@pytest.fixture
def pair64():
    """A (ŷ, y) pair, 1×3×64×64 in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
