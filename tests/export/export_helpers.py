"""Helpers shared by the export tests (a uniquely named module, so it never clashes with another conftest)."""

import importlib.util

import pytest
import torch

import pgn

PRESETS = ("resnet4", "resnet6", "resnet8", "unet")


def needs(*packages: str):
    """A skip mark for tests that need ``packages``: found, not imported (their imports cost seconds, paid only by
    the worker that runs the tests, and a collection that imported them would pay in every worker)."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


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
