"""Fixtures for the export tests: small seeded PGNs at 64×64, fast on a 2-core CPU."""

import sys

import pytest
import torch

from export_helpers import PRESETS, build


@pytest.fixture(scope="session")
def models():
    """Every paper preset, built once per session."""
    return {name: build(name) for name in PRESETS}


@pytest.fixture
def pair64():
    """A (ŷ, y) pair, 1×3×64×64 in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)


@pytest.fixture
def no_executorch(monkeypatch):
    """ExecuTorch made unimportable, as on a machine without the ``executorch`` extra."""
    for name in [n for n in sys.modules if n == "executorch" or n.startswith("executorch.")] or ["executorch"]:
        monkeypatch.setitem(sys.modules, name, None)
