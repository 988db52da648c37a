"""``PGNLoss``: a drop-in replacement for :class:`pgn.PerceptualLoss` whose backward is the PGN gradient.

Swapping is one line::

    criterion = pgn.PerceptualLoss("vgg19", weights="imagenet")   # VGG forward + backward every step
    criterion = pgn.PGNLoss(pgn.build("resnet4", weights=...), mse_weight=20.0)   # one PGN forward
    loss = criterion(y_hat, y)
    loss.backward()

The returned value is the paper's surrogate ``α·MSE(ŷ, sg[P])`` per sample (plus ``mse_weight·MSE(ŷ, y)``),
and its backward writes exactly the PGN's closed-form gradient into ``y_hat``'s graph: no autograd runs
through the PGN and no VGG is needed.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .errors import PGNError
from .inputs import compute_dtype
from .model import PGN
from .perceptual import apply_reduction, check_reduction
from .surrogate import normalized_mse, surrogate_applies, surrogate_loss
from .value_spaces import to_imagenet


class _InjectGradient(torch.autograd.Function):
    """Identity on a per-sample value whose backward hands a fixed gradient to ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grad: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return grad * grad_out.view(-1, *([1] * (grad.dim() - 1))), None, None


class PGNLoss(nn.Module):
    """A loss whose gradient w.r.t. ``y_hat`` is the PGN's synthetic perceptual gradient.

    Args:
        model: a :class:`pgn.PGN` (kept in whatever train/eval mode you set; :func:`pgn.build` and
            :func:`pgn.load` return eval mode, which is what fitting a generator wants).
        mse_weight: λ_MSE of the paired MSE term, taken in ImageNet-normalized space as in the paper
            (20 for talking heads and Image2StyleGAN). 0 disables it.
        reduction: ``"sum"`` (default, matches :class:`pgn.PerceptualLoss`), ``"mean"`` or ``"none"``.

    Call ``criterion(y_hat, y)`` with (N, 3, H, W) tensors in the model's value space, of any floating dtype
    (:mod:`pgn.inputs`). The PGN runs in its own dtype and the injected gradient stays in it until the backward
    has multiplied it by the incoming gradient, so a loss scaler (``torch.amp.GradScaler``) protects float16
    generators from underflow; the returned loss has the model's dtype.
    """

    def __init__(self, model: PGN, mse_weight: float = 0.0, reduction: str = "sum"):
        super().__init__()
        if not isinstance(model, PGN):
            raise PGNError(f"PGNLoss needs a pgn.PGN model, got {type(model).__name__}")
        self.model = model
        if isinstance(mse_weight, bool) or not isinstance(mse_weight, numbers.Real) or not math.isfinite(mse_weight) or mse_weight < 0:
            raise PGNError(f"mse_weight must be a finite number ≥ 0 (0 disables the MSE term), got {mse_weight!r}")
        self.mse_weight = float(mse_weight)
        self.reduction = check_reduction(reduction)

    @property
    def value_space(self) -> str:
        """The value space of the inputs (the model's)."""
        return self.model.value_space

    def per_sample(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample surrogate values, shape (N,); their backward delivers the PGN gradient (+ MSE term)."""
        vs = self.model.value_space
        self.model.check_inputs(y_hat, y)
        with torch.no_grad():
            out = self.model._compute(y_hat.detach(), y.detach())  # in the model's dtype (see the class docs)
            x_hat = y_hat.detach().to(compute_dtype(self.model))
            if surrogate_applies(self.model):  # the value of pgn.surrogate_loss, the definition every fitting path shares
                value = surrogate_loss(x_hat, out.proxy, self.model.alpha, value_space=vs)
            else:  # l1 / logcosh heads: their own loss towards P
                value = self.model.head.loss(to_imagenet(x_hat, vs), to_imagenet(out.proxy, vs))
        per_sample = _InjectGradient.apply(y_hat, out.grad, value)
        if self.mse_weight:
            per_sample = per_sample + self.mse_weight * normalized_mse(y_hat, y, vs)
        return per_sample

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss, reduced as ``reduction`` says."""
        return apply_reduction(self.per_sample(y_hat, y), self.reduction)

    def extra_repr(self) -> str:
        return f"mse_weight={self.mse_weight}, reduction={self.reduction!r}"
