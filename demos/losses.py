"""The losses students are fitted with: MSE, a VGG perceptual loss, and a PGN.

Every loss takes (N, 3, H, W) RGB [0, 1] images and returns one differentiable value per sample. As in the
paper and the authors' code, the MSE terms (the MSE student and the ``λ_MSE`` terms paired with VGG or PGN) are
taken in ImageNet-normalized space, which is what the paper's coefficients (λ_MSE = 20 with a PGN) assume.

The PGN loss is :class:`pgn.PGNLoss`: its value is the surrogate ``α·MSE(ŷ, sg[P])`` and its backward injects
exactly the PGN gradient ``g`` into ``ŷ``, which is the same update as the authors' surrogate ``Σ ŷ·g``
(``tests/demos/test_demos_equivalences.py`` checks both against each other).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import pgn
from pgn.surrogate import normalized_mse as surrogate_normalized_mse

#: Keys of the losses a demo can compare, in table order (``pgn-ort-train`` and ``pgn-executorch-train``: the whole
#: fine-tuning step on ONNX Runtime training, :mod:`demos.ondevice_training`, or in ExecuTorch's training runtime,
#: ``export.export_training_step``).
LOSS_KEYS = ("mse", "vgg19", "vgg11", "pgn", "pgn-onnx", "pgn-ort-train", "pgn-executorch-train")
#: The losses ``pgn-demo finetune`` compares by default: all but ``pgn-executorch-train``, whose step program takes
#: about two minutes to export (XNNPACK compiles each delegated part separately), longer than the rest of the demo.
DEFAULT_LOSSES = tuple(key for key in LOSS_KEYS if key != "pgn-executorch-train")


def normalized_mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE in ImageNet-normalized space, differentiable w.r.t. ``y_hat``; shape (N,) (:func:`pgn.surrogate.normalized_mse`)."""
    return surrogate_normalized_mse(y_hat, y)


class Loss:
    """Base class: ``per_sample`` is what a student minimizes, ``own_gradient`` its gradient without the MSE term.

    Attributes:
        key: one of :data:`LOSS_KEYS`.
        label: the row name in tables.
        mse_weight: λ_MSE of the paired normalized-space MSE term (0 for none).
    """

    key: str = ""
    label: str = ""
    mse_weight: float = 0.0

    def own(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss's own per-sample term (without λ_MSE·MSE)."""
        raise NotImplementedError

    def per_sample(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample training loss ``own + λ_MSE·MSE_normalized``; shape (N,)."""
        value = self.own(y_hat, y)
        if self.mse_weight:
            value = value + self.mse_weight * normalized_mse(y_hat, y)
        return value

    def own_gradient(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the own term w.r.t. ``y_hat`` (RGB [0, 1]); what the gradient-cosine column compares."""
        with torch.enable_grad():
            x = y_hat.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.own(x, y).sum(), x)
        return g

    def describe(self) -> str:
        """One line for the table's notes."""
        extra = f" + {self.mse_weight:g}·MSE" if self.mse_weight else ""
        return f"{self.label}{extra}"


@dataclass
class MSELoss(Loss):
    """Plain MSE in normalized space (the ``mse`` student)."""

    key: str = "mse"
    label: str = "MSE"
    mse_weight: float = 0.0

    def own(self, y_hat, y):  # noqa: D102
        return normalized_mse(y_hat, y)


class PerceptualLossTerm(Loss):
    """A VGG perceptual loss (+ optional λ_MSE·MSE); caches the target's features while the target stays the same.

    Args:
        teacher: a :class:`pgn.PerceptualLoss` owned by this loss (its target cache is used).
        mse_weight: λ_MSE (0 for DIP and talking heads, 1 for Image2StyleGAN).
    """

    def __init__(self, teacher: pgn.PerceptualLoss, mse_weight: float = 0.0):
        self.teacher = teacher
        self.key = teacher.net
        self.label = {"vgg19": "VGG-19", "vgg11": "VGG-11"}[teacher.net]
        self.mse_weight = float(mse_weight)
        self._target: torch.Tensor | None = None

    def own(self, y_hat, y):  # noqa: D102
        if self._target is not y:
            self.teacher.cache_target(y.detach())
            self._target = y
        return self.teacher.per_sample(y_hat)

    def own_gradient(self, y_hat, y):  # noqa: D102
        return self.teacher.gradient(y_hat.detach(), y.detach())


class PGNLossTerm(Loss):
    """The PGN's synthetic gradient via :class:`pgn.PGNLoss` (+ λ_MSE·MSE, handled by ``PGNLoss`` itself).

    Args:
        model: a :class:`pgn.PGN` working in RGB [0, 1] (``value_space="unit"``).
        mse_weight: λ_MSE (0 for DIP, 20 for talking heads and Image2StyleGAN).
        label: row name, e.g. ``"PGN resnet4"``.
    """

    key = "pgn"

    def __init__(self, model: pgn.PGN, mse_weight: float = 0.0, label: str = "PGN"):
        if model.value_space != "unit":
            raise pgn.PGNError("the demos need a PGN in the unit value space: load it with value_space='unit'")
        self.model = model
        self.mse_weight = float(mse_weight)
        self.label = label
        self.criterion = pgn.PGNLoss(model, mse_weight=self.mse_weight, reduction="none")
        self._own = pgn.PGNLoss(model, mse_weight=0.0, reduction="none")

    def own(self, y_hat, y):  # noqa: D102
        return self._own(y_hat, y)

    def per_sample(self, y_hat, y):  # noqa: D102
        return self.criterion(y_hat, y)

    def own_gradient(self, y_hat, y):  # noqa: D102
        with torch.no_grad():
            return self.model(y_hat.detach(), y.detach())
