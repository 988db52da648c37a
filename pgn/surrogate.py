"""The PGN's surrogate loss, defined once: ``α·MSE(ŷ, sg[P]) + λ·MSE(ŷ, y)`` in ImageNet-normalized space.

A PGN whose gradient is an MSE gradient towards its proxy ``P`` (paper Eq. 4-7) gives, w.r.t. the normalized
image, ``g_n = α·2/(C·H·W)·(ŷ_n − P_n)``: the gradient of ``α·mean((ŷ_n − sg[P_n])²)``. So fitting a generator with
a PGN needs only an MSE towards ``P`` (a constant), no autograd through the PGN. Everything that fits with a PGN
uses this definition: :class:`pgn.PGNLoss`, the ONNX Runtime training recipe and the ExecuTorch fitting step of
the ``export`` package. It is written with products (no ``pow``) so that on-device kernels (XNNPACK) take it in
both directions.
"""

from __future__ import annotations

import torch

from .constants import IMAGENET_STD
from .errors import PGNError


def _std(like: torch.Tensor) -> torch.Tensor:
    return like.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)


def normalized_mse(y_hat: torch.Tensor, y: torch.Tensor, value_space: str = "unit") -> torch.Tensor:
    """Per-sample ``mean_{c,h,w}(n(ŷ) − n(sg[y]))²`` with ``n`` the ImageNet normalization; shape (N,).

    ``value_space`` is that of both images: ``unit`` (RGB [0, 1]; the difference is divided by σ_c, the mean
    cancels) or ``imagenet`` (already normalized).
    """
    diff = y_hat - y.detach()
    if value_space == "unit":
        diff = diff / _std(diff)
    return (diff * diff).mean(dim=(1, 2, 3))


def surrogate_loss(y_hat: torch.Tensor, proxy: torch.Tensor, alpha: float, y: torch.Tensor | None = None,
                   mse_weight: float = 0.0, value_space: str = "unit") -> torch.Tensor:
    """Per-sample ``α·MSE(ŷ, sg[P]) + λ·MSE(ŷ, sg[y])`` in normalized space (:func:`normalized_mse`); shape (N,).

    Its gradient w.r.t. ``y_hat`` is the PGN's gradient plus ``λ``'s MSE term, for a PGN whose gradient is an MSE
    gradient towards its proxy (:func:`check_surrogate_applies`).

    Args:
        y_hat: (N, 3, H, W) generated images (differentiable).
        proxy: the PGN's proxy ``P`` in the same value space (treated as a constant).
        alpha: the PGN's α (``model.alpha``).
        y: the target, needed when ``mse_weight`` is not 0.
        mse_weight: λ of the MSE to ``y``.
    """
    loss = float(alpha) * normalized_mse(y_hat, proxy, value_space)
    if mse_weight:
        if y is None:
            raise PGNError("surrogate_loss with mse_weight needs the target y")
        loss = loss + float(mse_weight) * normalized_mse(y_hat, y, value_space)
    return loss


def surrogate_gradient(y_hat: torch.Tensor, proxy: torch.Tensor, alpha: float) -> torch.Tensor:
    """Closed-form gradient of ``surrogate_loss(y_hat, proxy, alpha)`` w.r.t. an RGB [0, 1] ``y_hat``:
    ``2α/(C·H·W)·(ŷ − P)/σ_c²``, the PGN's gradient."""
    c, h, w = y_hat.shape[1:]
    return float(alpha) * (2.0 / float(c * h * w)) * (y_hat - proxy) / _std(y_hat) ** 2


def check_surrogate_applies(model) -> None:
    """Raise a one-line :class:`PGNError` if ``model``'s gradient is not an MSE gradient towards its proxy (then
    :func:`surrogate_loss` is not its loss)."""
    head = model.config.head
    if head.grad_type != "mse" and head.kind not in ("direct", "hybrid"):
        raise PGNError(f"the surrogate α·MSE(ŷ, sg[P]) needs a PGN whose gradient is an MSE gradient; this one uses "
                       f"grad_type={head.grad_type!r}")


def surrogate_applies(model) -> bool:
    """Whether :func:`surrogate_loss` is ``model``'s loss (see :func:`check_surrogate_applies`)."""
    try:
        check_surrogate_applies(model)
    except PGNError:
        return False
    return True
