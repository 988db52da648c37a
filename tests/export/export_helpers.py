"""Helpers shared by the export tests (a uniquely named module, so it never clashes with another conftest)."""

import torch

import pgn

PRESETS = ("resnet4", "resnet6", "resnet8", "unet")


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
