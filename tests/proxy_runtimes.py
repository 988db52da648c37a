"""A PGN served through the runtime contract of the ``export`` package, for tests that need no export package.

``run(y_hat, y) -> {"proxy", "grad"}`` on float32 numpy (N, 3, H, W) arrays in [0, 1]: :class:`TorchProxyRuntime`
serves it with the PyTorch PGN itself, :class:`OrtProxyRuntime` with a real ONNX Runtime session on a graph that
``torch.onnx.export`` writes from :class:`ProxyAndGrad`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ProxyAndGrad(nn.Module):
    """A PGN's ``(ŷ, y) -> (proxy, grad)`` as one module, the two outputs an exported graph has."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y_hat, y):
        out = self.model.outputs(y_hat, y)
        return out.proxy, out.grad


class TorchProxyRuntime:
    """The runtime contract served by the PyTorch PGN itself (float32 numpy in and out)."""

    def __init__(self, model):
        self.model = model

    def run(self, y_hat: np.ndarray, y: np.ndarray) -> dict:
        with torch.no_grad():
            out = self.model.outputs(torch.from_numpy(y_hat), torch.from_numpy(y))
        return {"proxy": out.proxy.numpy(), "grad": out.grad.numpy()}


def export_onnx(model, path, shape, **kwargs) -> None:
    """Write ``model`` as an ONNX graph with inputs ``y_hat``, ``y`` of ``shape`` and outputs ``proxy``, ``grad``."""
    example = (torch.rand(*shape), torch.rand(*shape))
    torch.onnx.export(ProxyAndGrad(model).eval(), example, str(path), input_names=["y_hat", "y"],
                      output_names=["proxy", "grad"], dynamo=False, **kwargs)


class OrtProxyRuntime:
    """The runtime contract over a real ONNX Runtime session (CPU) on the PGN exported by :func:`export_onnx`."""

    def __init__(self, model, shape, path):
        import onnxruntime as ort

        export_onnx(model, path, shape)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, y_hat: np.ndarray, y: np.ndarray) -> dict:
        proxy, grad = self.session.run(None, {"y_hat": y_hat, "y": y})
        return {"proxy": proxy, "grad": grad}
