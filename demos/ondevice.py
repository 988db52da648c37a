"""The on-device path: fit a generator with a PGN exported to ONNX, using nothing but an MSE trainer.

Why it works. The PGN gradient is the gradient of a scaled MSE towards its proxy target ``P`` (paper Eq. 4-7):
in ImageNet-normalized space ``g_n = α·2/(C·H·W)·(ŷ_n − P_n)``. Taken with respect to the RGB [0, 1] image
(``x_n = (x − μ)/σ``) that is::

    g = α·2/(C·H·W)·(ŷ − P)/σ_c²   =   ∂/∂ŷ  α·mean_{c,h,w} (ŷ − P)²/σ_c²

so a per-channel weighted MSE towards ``P`` with weights ``α/σ_c²`` (equivalently: α·MSE between the
normalized images) has exactly the PGN gradient. A device that can run the exported PGN forward (ONNX Runtime,
Core ML, TensorRT) and train with a weighted MSE therefore fine-tunes with the PGN: no VGG on the device and
no autograd through the PGN. :func:`pgn.surrogate_loss` is that loss (defined once, in ``pgn``);
``tests/demos/test_demos_equivalences.py`` proves that its generator-parameter gradients equal those of
:class:`pgn.PGNLoss`.

:func:`finetune_in_training_program` runs the whole step on the device instead: the ``export`` package's fitting
step (``export.export_training_step``, ExecuTorch's training runtime), which the demo only calls.

The exported graph comes from the ``export`` package (``pgn-export``); when it is not installed or the export
fails, the demos report why in the row and go on with the other losses.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

import pgn
from pgn.errors import PGNError, first_line
from pgn.surrogate import check_surrogate_applies, surrogate_gradient, surrogate_loss

from .losses import Loss


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
    """The PGN as an exported graph in a runtime, trained through :func:`pgn.surrogate_loss` (no autograd through the PGN).

    Args:
        runtime: a :class:`ProxyRuntime` (fixed batch and size, as exported).
        alpha: the PGN's α.
        mse_weight: λ_MSE of the paired normalized-space MSE.
        label: row name.

    Attributes:
        max_recipe_deviation: the largest ``|∇surrogate_loss − g_runtime|`` seen, relative to ``max|g_runtime|``;
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
        recipe = surrogate_gradient(y_hat.detach(), proxy, self.alpha)
        scale = float(grad.abs().max()) or 1.0
        self.max_recipe_deviation = max(self.max_recipe_deviation, float((recipe - grad).abs().max()) / scale)
        return proxy, grad

    def own(self, y_hat, y):  # noqa: D102
        proxy, _ = self.run(y_hat, y)
        return surrogate_loss(y_hat, proxy, self.alpha)

    def own_gradient(self, y_hat, y):  # noqa: D102
        return self.run(y_hat, y)[1]


def check_recipe_applies(model: pgn.PGN) -> None:
    """Raise a :class:`PGNError` if the PGN's gradient is not an MSE gradient towards its proxy."""
    check_surrogate_applies(model)


def finetune_in_training_program(
    init: torch.nn.Module,
    model: pgn.PGN,
    poses: torch.Tensor,
    target: torch.Tensor,
    mse_weight: float,
    lr: float,
    steps: int,
    path: Path,
    meter=None,
    progress: Callable[[float], None] | None = None,
    kernels: str = "xnnpack",
    precision: str = "fp32",
) -> torch.nn.Module:
    """Fine-tune a copy of ``init`` with every step in ExecuTorch's training runtime, through the export package.

    ``export.export_training_step`` writes the step program (generator, frozen PGN in ``precision``, surrogate +
    λ·MSE, backward) at ``path``, verified against one eager step; ``export.load_training`` runs ``steps`` steps of
    it with SGD at ``lr``. ``meter`` (a :class:`~pgn.benchmarks.measure.LossMeter`) times each step and counts the memory of
    loading the program (ExecuTorch allocates its planned memory then). Returns the fitted copy of ``init``.
    """
    from pgn.export import FittingLoss, SGDRecipe, export_training_step, load_training

    poses, target = poses.float().contiguous(), target.float().contiguous()
    export_training_step(init, (poses,), FittingLoss.pgn(model, mse_weight, precision), output=path, target=target,
                         optimizer=SGDRecipe(lr=lr), kernels=kernels)
    with meter.measure(timed=False) if meter is not None else nullcontext():
        program = load_training(path)
    for _ in range(steps):
        with meter.measure() if meter is not None else nullcontext():
            loss = program.step(poses, target)
        if progress is not None:
            progress(loss)
    tuned = copy.deepcopy(init)
    tuned.load_state_dict(program.state_dict(), strict=False)
    return tuned.eval()
