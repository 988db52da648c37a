"""The on-device path: fit a generator with a PGN exported to ONNX, using nothing but an MSE trainer.

Why it works. The PGN gradient is the gradient of a scaled MSE towards its proxy target ``P`` (paper Eq. 4-7):
in ImageNet-normalized space ``g_n = α·2/(C·H·W)·(ŷ_n − P_n)``. Taken with respect to the RGB [0, 1] image
(``x_n = (x − μ)/σ``) that is::

    g = α·2/(C·H·W)·(ŷ − P)/σ_c²   =   ∂/∂ŷ  α·mean_{c,h,w} (ŷ − P)²/σ_c²

so a per-channel weighted MSE towards ``P`` with weights ``α/σ_c²`` (equivalently: α·MSE between the
normalized images) has exactly the PGN gradient. A device that can run the exported PGN forward (ONNX Runtime,
Core ML, TensorRT) and train with a weighted MSE therefore fine-tunes with the PGN: no VGG on the device and
no autograd through the PGN. :func:`proxy_mse` is that loss; ``tests/demos/test_demos_equivalences.py`` proves that
its generator-parameter gradients equal those of :class:`pgn.PGNLoss`.

The exported graph comes from the ``export`` package (``pgn-export``); when it is not installed or the export
fails, the demos report why in the row and go on with the other losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

import pgn
from pgn.constants import IMAGENET_STD
from pgn.errors import PGNError, first_line

from .losses import Loss


def proxy_weights(alpha: float, like: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel weights ``α/σ_c²`` of the [0, 1]-space MSE towards the proxy, shape (1, 3, 1, 1)."""
    dtype = torch.float32 if like is None else like.dtype
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=None if like is None else like.device).view(1, 3, 1, 1)
    return alpha / std**2


def proxy_mse(y_hat: torch.Tensor, proxy: torch.Tensor, alpha: float) -> torch.Tensor:
    """The on-device loss: ``α·mean_{c,h,w}(ŷ − P)²/σ_c²`` per sample, in RGB [0, 1] space; shape (N,).

    Args:
        y_hat: (N, 3, H, W) generated images in [0, 1] (differentiable).
        proxy: (N, 3, H, W) proxy targets ``P`` in [0, 1] space from the PGN (treated as constants).
        alpha: the PGN's α (``model.alpha``, 40 for the released ResNets).
    """
    d = y_hat - proxy.detach()
    return (proxy_weights(alpha, d) * d.pow(2)).flatten(1).mean(dim=1)


def proxy_mse_gradient(y_hat: torch.Tensor, proxy: torch.Tensor, alpha: float) -> torch.Tensor:
    """Closed-form gradient of :func:`proxy_mse` w.r.t. ``y_hat``: ``2α/(CHW)·(ŷ − P)/σ_c²``."""
    c, h, w = y_hat.shape[1:]
    return proxy_weights(alpha, y_hat) * (2.0 / float(c * h * w)) * (y_hat - proxy)


class ProxyRuntime(Protocol):
    """What the export package's ``load_runtime`` returns: a frozen PGN forward outside PyTorch."""

    def run(self, y_hat: np.ndarray, y: np.ndarray) -> dict:  # pragma: no cover - protocol
        """float32 (N, 3, H, W) RGB [0, 1] arrays → ``{"proxy": P in [0, 1], "grad": g w.r.t. [0, 1] ŷ}``."""


@dataclass
class RuntimeStatus:
    """The outcome of exporting a PGN and opening it in a runtime."""

    runtime: ProxyRuntime | None
    status: str  #: "ok" or why the on-device row cannot run
    artifact: Path | None = None
    export_status: str | None = None  #: the exporter's own verdict ("verified", "converted-not-run", ...)

    @property
    def ok(self) -> bool:
        """True when :attr:`runtime` can be used."""
        return self.runtime is not None


def open_onnx_runtime(model: pgn.PGN, size: tuple[int, int], batch: int, output_dir: Path) -> RuntimeStatus:
    """Export ``model`` to ONNX (fixed ``batch`` × 3 × ``size``, fp32) and open it in ONNX Runtime on the CPU.

    Never raises for a missing or failing exporter: the returned status says what went wrong.
    """
    from pgn.export import RuntimeUnavailable, export, load_runtime

    try:
        results = export(model, "onnx", output_dir=output_dir, size=size, batch=batch, dynamic=False, precision="fp32")
    except PGNError as e:
        return RuntimeStatus(None, f"ONNX export failed: {e}")
    result = results[0]
    if result.status == "failed" or result.artifact is None:
        return RuntimeStatus(None, f"ONNX export failed: {result.reason}", None, result.status)
    try:
        runtime = load_runtime(result.artifact, target="onnx", device="cpu")
    except RuntimeUnavailable as e:
        return RuntimeStatus(None, f"ONNX Runtime unavailable: {first_line(e)}", Path(result.artifact), result.status)
    return RuntimeStatus(runtime, "ok", Path(result.artifact), result.status)


class OnDevicePGNLoss(Loss):
    """The PGN as an exported graph in a runtime, trained through :func:`proxy_mse` (no autograd through the PGN).

    Args:
        runtime: a :class:`ProxyRuntime` (fixed batch and size, as exported).
        alpha: the PGN's α.
        mse_weight: λ_MSE of the paired normalized-space MSE.
        label: row name.

    Attributes:
        max_recipe_deviation: the largest ``|∇proxy_mse − g_runtime|`` seen, relative to ``max|g_runtime|``;
            a float-precision number proves that the MSE-towards-P recipe is the runtime's own gradient.
    """

    key = "pgn-onnx"

    def __init__(self, runtime: ProxyRuntime, alpha: float, mse_weight: float = 0.0, label: str = "PGN ONNX Runtime"):
        self.runtime = runtime
        self.alpha = float(alpha)
        self.mse_weight = float(mse_weight)
        self.label = label
        self.max_recipe_deviation = 0.0

    def run(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Proxy ``P`` and gradient ``g`` from the runtime, as tensors like ``y_hat``."""
        a = y_hat.detach().cpu().float().numpy()
        b = y.detach().cpu().float().numpy()
        out = self.runtime.run(np.ascontiguousarray(a), np.ascontiguousarray(b))
        proxy = torch.from_numpy(np.asarray(out["proxy"], dtype=np.float32)).to(y_hat.device, y_hat.dtype)
        grad = torch.from_numpy(np.asarray(out["grad"], dtype=np.float32)).to(y_hat.device, y_hat.dtype)
        recipe = proxy_mse_gradient(y_hat.detach(), proxy, self.alpha)
        scale = float(grad.abs().max()) or 1.0
        self.max_recipe_deviation = max(self.max_recipe_deviation, float((recipe - grad).abs().max()) / scale)
        return proxy, grad

    def own(self, y_hat, y):  # noqa: D102
        proxy, _ = self.run(y_hat, y)
        return proxy_mse(y_hat, proxy, self.alpha)

    def own_gradient(self, y_hat, y):  # noqa: D102
        return self.run(y_hat, y)[1]


def check_recipe_applies(model: pgn.PGN) -> None:
    """Raise a :class:`PGNError` if the PGN's gradient is not an MSE gradient towards its proxy."""
    head = model.config.head
    if head.grad_type != "mse" and head.kind not in ("direct", "hybrid"):
        raise PGNError(
            f"the on-device MSE recipe needs a PGN whose gradient is an MSE gradient; this one uses "
            f"grad_type={head.grad_type!r}"
        )
