"""The on-device recipe: fit a generator with a PGN exported to ONNX, using nothing but an MSE trainer.

The PGN gradient is the gradient of a scaled MSE towards its proxy target ``P`` (paper Eq. 4-7): in
ImageNet-normalized space ``g_n = α·2/(C·H·W)·(ŷ_n − P_n)``. With respect to the RGB [0, 1] image that is::

    g = α·2/(C·H·W)·(ŷ − P)/σ_c²   =   ∂/∂ŷ  α·mean_{c,h,w} (ŷ − P)²/σ_c²

so a per-channel weighted MSE towards ``P`` with weights ``α/σ_c²`` has exactly the PGN gradient. A device that
runs the exported PGN forward and trains with a weighted MSE therefore fine-tunes with the PGN: no VGG on the
device and no autograd through the PGN. :func:`proxy_mse` is that loss; ``tests/demos/test_demos_equivalences.py``
proves that its generator-parameter gradients equal those of :class:`pgn.PGNLoss`.
"""

from __future__ import annotations

import torch

import pgn
from pgn.constants import IMAGENET_STD
from pgn.errors import PGNError, first_line


class Unavailable(PGNError):
    """A loss row cannot run here (a missing package, a failed export); the message says why, and the demo goes on."""


def proxy_weights(alpha: float, like: torch.Tensor) -> torch.Tensor:
    """Per-channel weights ``α/σ_c²`` of the [0, 1]-space MSE towards the proxy, shape (1, 3, 1, 1)."""
    return alpha / torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(1, 3, 1, 1) ** 2


def proxy_mse(y_hat: torch.Tensor, proxy: torch.Tensor, alpha: float) -> torch.Tensor:
    """The on-device loss ``α·mean_{c,h,w}(ŷ − P)²/σ_c²`` per sample in RGB [0, 1] space, ``P`` a constant; shape (N,)."""
    d = y_hat - proxy.detach()
    return (proxy_weights(alpha, d) * d.pow(2)).flatten(1).mean(dim=1)


def proxy_mse_gradient(y_hat: torch.Tensor, proxy: torch.Tensor, alpha: float) -> torch.Tensor:
    """Closed-form gradient of :func:`proxy_mse` w.r.t. ``y_hat``: ``2α/(CHW)·(ŷ − P)/σ_c²``."""
    c, h, w = y_hat.shape[1:]
    return proxy_weights(alpha, y_hat) * (2.0 / float(c * h * w)) * (y_hat - proxy)


def check_recipe_applies(model: pgn.PGN) -> None:
    """Raise a :class:`PGNError` if the PGN's gradient is not an MSE gradient towards its proxy."""
    head = model.config.head
    if head.grad_type != "mse" and head.kind not in ("direct", "hybrid"):
        raise PGNError(f"the on-device MSE recipe needs a PGN whose gradient is an MSE gradient; this one uses grad_type={head.grad_type!r}")


def open_onnx_runtime(model: pgn.PGN, size: tuple[int, int], batch: int, output_dir) -> tuple[object | None, str]:
    """Export ``model`` to ONNX (fixed ``batch`` × 3 × ``size``, fp32) and open it in ONNX Runtime on the CPU.

    Returns ``(runtime, "ok")``, or ``(None, why not)``: it never raises for a missing or failing exporter.
    """
    from pgn.export import RuntimeUnavailable, export, load_runtime

    try:
        result = export(model, "onnx", output_dir=output_dir, size=size, batch=batch, dynamic=False, precision="fp32")[0]
    except PGNError as e:
        return None, f"ONNX export failed: {e}"
    if result.status == "failed" or result.artifact is None:
        return None, f"ONNX export failed: {result.reason}"
    try:
        return load_runtime(result.artifact, target="onnx", device="cpu"), "ok"
    except RuntimeUnavailable as e:
        return None, f"ONNX Runtime unavailable: {first_line(e)}"


def onnx_runtime(run, config, why: str = ""):
    """The run's PGN exported to ONNX for the train frames and opened in ONNX Runtime, once per run (rows share it).

    Raises :class:`Unavailable` (``why`` + the reason) when it cannot be made; the first failure adds a warning.
    """
    if "onnx" not in run.memo:
        check_recipe_applies(run.pgn)
        run.memo["onnx"] = open_onnx_runtime(run.pgn, (config.size, config.size), config.train_frames, config.output_dir / "onnx")
        if run.memo["onnx"][0] is None:
            run.warnings.append(f"on-device rows skipped: {run.memo['onnx'][1]}")
    runtime, status = run.memo["onnx"]
    if runtime is None:
        raise Unavailable(why + status)
    return runtime
