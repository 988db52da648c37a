"""Fixtures for the demo tests: a tiny generator, a PGN, and an ONNX Runtime proxy runtime made in-test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import pgn


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


class _ProxyAndGrad(nn.Module):
    def __init__(self, model: pgn.PGN):
        super().__init__()
        self.model = model

    def forward(self, y_hat, y):
        out = self.model.outputs(y_hat, y)
        return out.proxy, out.grad


class OrtProxyRuntime:
    """The export contract's runtime (``run(y_hat, y) -> {"proxy", "grad"}``) over a real ONNX Runtime session.

    Built here with torch.onnx.export so the on-device loss is tested against a genuine runtime even where the
    export package is not installed.
    """

    def __init__(self, model: pgn.PGN, shape, path):
        import onnxruntime as ort

        wrapper = _ProxyAndGrad(model).eval()
        example = (torch.rand(*shape), torch.rand(*shape))
        torch.onnx.export(wrapper, example, str(path), input_names=["y_hat", "y"], output_names=["proxy", "grad"], dynamo=False)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, y_hat: np.ndarray, y: np.ndarray) -> dict:
        proxy, grad = self.session.run(None, {"y_hat": y_hat, "y": y})
        return {"proxy": proxy, "grad": grad}


@pytest.fixture
def ort_runtime_factory(tmp_path):
    pytest.importorskip("onnxruntime")
    import warnings

    def make(model, shape):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return OrtProxyRuntime(model, shape, tmp_path / "pgn.onnx")

    return make
