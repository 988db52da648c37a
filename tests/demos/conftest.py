"""Fixtures for the demo tests: a tiny generator, an ONNX Runtime proxy runtime made in-test, a user generator file."""

from __future__ import annotations

import textwrap

import pytest
import torch
from proxy_runtimes import OrtProxyRuntime
from torch import nn


class TinyGenerator(nn.Module):
    """A conv net mapping a fixed (N, 4, H, W) input to (N, 3, H, W) images in (0, 1)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, z):
        return torch.sigmoid(self.body(z))


@pytest.fixture
def tiny_generator():
    torch.manual_seed(0)
    return TinyGenerator().double()


@pytest.fixture
def fit_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 4, 16, 16, generator=g).double(), torch.rand(2, 3, 16, 16, generator=g).double()


@pytest.fixture(scope="module")
def finetune_batch():
    """A personalized talking-head generator, its 2 train poses and frames at 16², and an untrained ResNet-4 PGN."""
    from pgn.demos.frames import edge_map, face_frames
    from pgn.demos.generators import Embedder, PoseGenerator, personalize
    from pgn import build

    torch.manual_seed(0)
    train, _ = face_frames(16, train=2, holdout=1)
    poses = edge_map(train)
    init = personalize(PoseGenerator(), Embedder(), train, poses)
    return init, poses, train, build("resnet4")


@pytest.fixture
def ort_runtime_factory(tmp_path):
    pytest.importorskip("onnxruntime")
    import warnings

    def make(model, shape):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return OrtProxyRuntime(model, shape, tmp_path / "pgn.onnx")

    return make


USER_GENERATOR = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(8, 3 * 32 * 32)

        def forward(self, w):
            return torch.tanh(self.lin(w.flatten(1))).view(-1, 3, 32, 32)

    generator = Gen()

    def build():
        return Gen()

    not_a_module = 42
    """
)


@pytest.fixture
def user_generator_file(tmp_path):
    """A user's generator file (``my_gen.py``): ``Gen`` maps 8 latent values to a 32×32 image in [-1, 1]; also
    ``generator`` (an instance), ``build`` (a factory) and ``not_a_module``."""
    path = tmp_path / "my_gen.py"
    path.write_text(USER_GENERATOR)
    return path
