"""The losses the demos fit with: one row each in :data:`LOSSES` (key, label, how to build it, where it runs, notes).

Adding a loss to ``pgn-demo finetune`` is one row. A row whose step runs in PyTorch has a ``build`` giving the
:class:`Loss` a :class:`~demos.common.Student` minimizes; a row whose whole step runs on an on-device trainer
has a ``fit`` that runs the whole fine-tuning there (one adapter per trainer, below).

Every loss takes (N, 3, H, W) RGB [0, 1] images and returns one differentiable value per sample. The MSE terms (the
``mse`` row and the λ_MSE terms paired with VGG or a PGN) are taken in ImageNet-normalized space, which the paper's
coefficients (λ_MSE = 20 with a PGN) assume. The PGN rows train through :class:`pgn.PGNLoss`, whose backward
injects exactly the PGN gradient into ŷ (``tests/demos/test_demos_equivalences.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import pgn
from pgn.value_spaces import normalize

from pgn.surrogate import surrogate_gradient, surrogate_loss

from .ondevice import Unavailable, onnx_runtime
from pgn.export.training import KERNELS as EXECUTORCH_KERNELS  # noqa: F401 - the choices of --executorch-kernels
from pgn.export.training import PRECISIONS as EXECUTORCH_PRECISIONS  # noqa: F401 - and of --executorch-precision


def normalized_mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE in ImageNet-normalized space, differentiable w.r.t. ``y_hat``; shape (N,)."""
    return (normalize(y_hat) - normalize(y.detach())).pow(2).flatten(1).mean(dim=1)


class Loss:
    """``per_sample`` is what a student minimizes (``own`` + λ_MSE·MSE); ``own_gradient`` is the gradient of the
    own term alone, which the gradient-cosine column compares with VGG-19's."""

    def __init__(self, label: str, mse_weight: float = 0.0):
        self.label, self.mse_weight = label, float(mse_weight)

    def own(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss's own per-sample term (without λ_MSE·MSE)."""
        return normalized_mse(y_hat, y)

    def per_sample(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample training loss ``own + λ_MSE·MSE_normalized``; shape (N,)."""
        value = self.own(y_hat, y)
        return value + self.mse_weight * normalized_mse(y_hat, y) if self.mse_weight else value

    def own_gradient(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the own term w.r.t. ``y_hat`` (RGB [0, 1])."""
        with torch.enable_grad():
            x = y_hat.detach().requires_grad_(True)
            return torch.autograd.grad(self.own(x, y).sum(), x)[0]

    def describe(self) -> str:
        """The row label: the loss, and its λ_MSE term if any."""
        return f"{self.label} + {self.mse_weight:g}·MSE" if self.mse_weight else self.label

    def results(self) -> dict:
        """What the loss measured about itself during a fit, for ``results.json`` (and its row's note)."""
        return {}


class PerceptualLoss(Loss):
    """A VGG perceptual loss (+ λ_MSE·MSE) with a teacher of its own, whose target features it caches while the
    target stays the same tensor."""

    def __init__(self, teacher: pgn.PerceptualLoss, mse_weight: float = 0.0, label: str = "VGG-19"):
        super().__init__(label, mse_weight)
        self.teacher, self._target = teacher, None

    def own(self, y_hat, y):  # noqa: D102
        if self._target is not y:
            self.teacher.cache_target(y.detach())
            self._target = y
        return self.teacher.per_sample(y_hat)

    def own_gradient(self, y_hat, y):  # noqa: D102
        return self.teacher.gradient(y_hat.detach(), y.detach())


class PGNLossTerm(Loss):
    """The PGN's gradient through :class:`pgn.PGNLoss` (which adds the λ_MSE term itself); ``model`` works in RGB [0, 1]."""

    def __init__(self, model: pgn.PGN, mse_weight: float = 0.0, label: str = "PGN"):
        if model.value_space != "unit":
            raise pgn.PGNError("the demos need a PGN in the unit value space: load it with value_space='unit'")
        super().__init__(label, mse_weight)
        self.model = model
        self.criterion = pgn.PGNLoss(model, mse_weight=self.mse_weight, reduction="none")
        self._own = pgn.PGNLoss(model, reduction="none")

    def own(self, y_hat, y):  # noqa: D102
        return self._own(y_hat, y)

    def per_sample(self, y_hat, y):  # noqa: D102
        return self.criterion(y_hat, y)

    def own_gradient(self, y_hat, y):  # noqa: D102
        with torch.no_grad():
            return self.model(y_hat.detach(), y.detach())


class OnDevicePGNLoss(Loss):
    """The PGN as an exported graph in a runtime (``run(ŷ, y) -> {"proxy", "grad"}``), trained through
    :func:`pgn.surrogate_loss` towards its proxy: no autograd through the PGN.

    ``max_recipe_deviation`` is the largest ``|∇surrogate_loss − g_runtime|`` seen, relative to ``max|g_runtime|``: a
    float-precision number proves that the MSE-towards-P recipe is the runtime's own gradient.
    """

    def __init__(self, runtime, alpha: float, mse_weight: float = 0.0, label: str = "PGN ONNX Runtime"):
        super().__init__(label, mse_weight)
        self.runtime, self.alpha, self.max_recipe_deviation = runtime, float(alpha), 0.0

    def run(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Proxy ``P`` and gradient ``g`` from the runtime, as tensors like ``y_hat``."""
        out = self.runtime.run(*(np.ascontiguousarray(t.detach().cpu().float().numpy()) for t in (y_hat, y)))
        proxy, grad = (torch.from_numpy(np.asarray(out[k], dtype=np.float32)).to(y_hat.device, y_hat.dtype) for k in ("proxy", "grad"))
        recipe = surrogate_gradient(y_hat.detach(), proxy, self.alpha)
        self.max_recipe_deviation = max(self.max_recipe_deviation, float((recipe - grad).abs().max()) / (float(grad.abs().max()) or 1.0))
        return proxy, grad

    def own(self, y_hat, y):  # noqa: D102
        return surrogate_loss(y_hat, self.run(y_hat, y)[0], self.alpha)

    def results(self) -> dict:  # noqa: D102
        return {"ondevice_recipe_max_relative_deviation": self.max_recipe_deviation}

    def own_gradient(self, y_hat, y):  # noqa: D102
        return self.run(y_hat, y)[1]


# --------------------------------------------------------------------------------------------------------
# The two on-device trainers: one adapter each, the only places that call them


def fit_on_ort_training(run, config, init, poses, target, meter, tick) -> tuple[torch.nn.Module, dict]:
    """The whole fine-tuning on ONNX Runtime training (generator step) with the exported PGN in ONNX Runtime."""
    from .ondevice_training import finetune_on_device, training_available

    reason = training_available()
    if reason:
        raise Unavailable(reason)
    runtime = onnx_runtime(run, config, "needs the exported PGN: ")
    tuned = finetune_on_device(init, poses, target, runtime, run.pgn.alpha, config.pgn_mse_weight, config.lr,
                               config.steps, config.output_dir / "ort_training", meter, tick)
    return tuned, {"timing_covers": "whole step (generator + PGN + Adam)"}


def fit_on_executorch(run, config, init, poses, target, meter, tick) -> tuple[torch.nn.Module, dict]:
    """The whole fine-tuning inside ExecuTorch's training runtime (generator, frozen PGN, loss, backward, SGD in one
    program written by ``export.export_training_step``, kept as ``executorch_training/finetune_step.pte``)."""
    from pgn.export.training import executorch_training_available

    from .ondevice import finetune_in_training_program

    reason = executorch_training_available()
    if reason:
        raise Unavailable(reason)
    path = config.output_dir / "executorch_training" / "finetune_step.pte"
    tuned = finetune_in_training_program(init, run.pgn, poses, target, config.pgn_mse_weight, config.executorch_lr,
                                         config.steps, path, meter, tick, kernels=config.executorch_kernels,
                                         precision=config.executorch_precision)
    return tuned, {"timing_covers": "whole step (generator + PGN + loss + backward + SGD)", "pte_mib": path.stat().st_size / 2**20,
                   "pte_path": str(path), "sgd_lr": config.executorch_lr, "executorch_kernels": config.executorch_kernels,
                   "pgn_precision": config.executorch_precision}


def executorch_note(row: dict) -> str:
    """The note under the table of a fine-tuning run whose ExecuTorch row ran."""
    where = {"xnnpack": "the frozen PGN and the generator's convolutions (as matrix multiplies) in XNNPACK, the rest on "
                        "ExecuTorch's portable kernels",
             "portable": "every operator on ExecuTorch's portable CPU kernels"}[row["executorch_kernels"]]
    int8 = (" The frozen PGN's convolutions ran in int8 (static quantization, int8 weights per output channel, calibrated "
            "on bundled photographs); the generator, its gradients and the update stayed fp32.") if row["pgn_precision"] == "int8" else ""
    return ("For the ExecuTorch row, the whole step is one ExecuTorch program (generator forward, frozen PGN, loss, backward) "
            f"plus ExecuTorch's SGD update (lr {row['sgd_lr']:g}), {where}; the program ({row['pte_path'].rsplit('/', 1)[-1]}) "
            f"is {row['pte_mib']:.2f} MiB.{int8}")


# --------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class LossRow:
    """One loss of the demos.

    Args:
        key: its name on the command line (``--losses``) and in ``results.json``.
        label: its row label; ``{pgn}`` stands for the PGN's preset.
        runs: where its step runs: ``eager`` (PyTorch), ``onnxruntime`` (the loss in ONNX Runtime, the generator's step
            in PyTorch), ``onnxruntime-training`` or ``executorch`` (the whole step on that on-device trainer).
        build: ``build(run, config, label) -> Loss`` for a step in PyTorch; raises :class:`~demos.ondevice.Unavailable`
            with the reason when it cannot run here.
        fit: ``fit(run, config, init, poses, target, meter, tick) -> (trained generator, extra cells)`` for a whole
            step on an on-device trainer, timed by ``meter``, ``tick(loss)`` after each step.
        note: under the table when the row ran: a text formatted with the row's cells and the run's extras, or a
            function of the row.
        default: in ``pgn-demo finetune``'s default ``--losses``.
    """

    key: str
    label: str
    runs: str = "eager"
    build: Callable | None = None
    fit: Callable | None = None
    note: str | Callable[[dict], str] = ""
    default: bool = True


LOSSES = {row.key: row for row in [
    LossRow("mse", "MSE", build=lambda run, config, label: Loss(label)),
    LossRow("vgg19", "VGG-19", build=lambda run, config, label: PerceptualLoss(run.teacher("vgg19"), config.vgg_mse_weight, label)),
    LossRow("vgg11", "VGG-11", build=lambda run, config, label: PerceptualLoss(run.teacher("vgg11"), config.vgg_mse_weight, label)),
    LossRow("pgn", "PGN {pgn}", build=lambda run, config, label: PGNLossTerm(run.pgn, config.pgn_mse_weight, label)),
    LossRow("pgn-onnx", "PGN {pgn} ONNX Runtime", "onnxruntime",
            build=lambda run, config, label: OnDevicePGNLoss(onnx_runtime(run, config), run.pgn.alpha, config.pgn_mse_weight, label),
            note="On-device recipe check: max |∇ weighted-MSE-to-P − runtime gradient| / max|runtime gradient| = "
                 "{ondevice_recipe_max_relative_deviation:.2e} over all steps."),
    LossRow("pgn-ort-train", "PGN ONNX Runtime, generator trained by ORT training", "onnxruntime-training", fit=fit_on_ort_training,
            note="For the ORT-training row, the whole step runs in ONNX Runtime: generator forward, PGN runtime, "
                 "generator backward and Adam."),
    # Not a default: exporting its program takes minutes (XNNPACK compiles each delegated part separately).
    LossRow("pgn-executorch-train", "PGN + generator trained in ExecuTorch (SGD)", "executorch", fit=fit_on_executorch,
            note=executorch_note, default=False),
]}
LOSS_KEYS = tuple(LOSSES)
DEFAULT_LOSSES = tuple(key for key, row in LOSSES.items() if row.default)
