"""The PGN's meta-loss (paper Eq. 10, in the form of the authors' code) and the gradient-quality metrics logged every step.

Per sample ``i`` (all in ImageNet-normalized space, as the authors train)::

    L_i = λ_grad · S · mean_{c,h,w}(g_PGN − g_true)²  +  λ_VGG · VGG(P_i, y_i)  +  λ_L1 · mean|P_i − y_i|
          [+ λ_MSE_gt · mean(P_i − y_i)²  +  λ_MSE_gen · mean(P_i − ŷ_i)²]

with ``S = 2^26`` and the per-sample values **summed** over the batch (no batch mean), as in the reference.

Weights: the published recipe used λ_VGG = 0.2, λ_L1 = 0.5 (the reference's CLI defaults, our default preset
``reference``); the paper's text gives λ_VGG = 0.5, λ_L1 = 0.2 (preset ``paper``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from pgn.constants import META_GRAD_LOSS_SCALE, META_L1_WEIGHT_REFERENCE, META_VGG_WEIGHT_REFERENCE
from pgn.perceptual import PerceptualLoss


@dataclass(frozen=True)
class MetaLossWeights:
    """Named weights of the meta-loss terms (see the module docs); defaults = the authors' published recipe."""

    grad: float = 1.0
    vgg: float = META_VGG_WEIGHT_REFERENCE
    l1: float = META_L1_WEIGHT_REFERENCE
    mse_gt: float = 0.0
    mse_gen: float = 0.0
    grad_loss_scale: float = META_GRAD_LOSS_SCALE


class TeacherPass(NamedTuple):
    """What one teacher forward/backward gives: the true gradient, the per-sample loss, the target's features."""

    grad: torch.Tensor  #: ∂VGG(ŷ_i, y_i)/∂ŷ_i, (N, 3, H, W), normalized space
    loss: torch.Tensor  #: VGG(ŷ_i, y_i), (N,)
    target_features: list[torch.Tensor]  #: φ_l(y), reused for the VGG(P, y) term


def feature_distance(teacher: PerceptualLoss, x: torch.Tensor, target_features: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample ``Σ_l mean|φ_l(x) − φ_l(y)|`` for a normalized batch ``x``; differentiable w.r.t. ``x``."""
    total = x.new_zeros(x.shape[0])
    for f, t in zip(teacher.activations(x), target_features):
        total = total + (f - t).abs().flatten(1).mean(dim=1)
    return total


def teacher_pass(teacher: PerceptualLoss, y_hat: torch.Tensor, y: torch.Tensor) -> TeacherPass:
    """True per-sample gradient and loss at normalized ``y_hat``, features of ``y`` computed once."""
    with torch.no_grad():
        target = [t.detach() for t in teacher.activations(y)]
    with torch.enable_grad():
        x = y_hat.detach().requires_grad_(True)
        losses = feature_distance(teacher, x, target)
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return TeacherPass(grad, losses.detach(), target)


def meta_loss(
    grad: torch.Tensor,
    proxy: torch.Tensor,
    y_hat: torch.Tensor,
    y: torch.Tensor,
    teacher_out: TeacherPass,
    teacher: PerceptualLoss,
    weights: MetaLossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample meta-loss (N,) and its weighted terms (each (N,)) for PGN outputs ``grad`` and ``proxy``.

    All tensors are (N, 3, H, W) in normalized space; ``grad`` and ``proxy`` carry the graph to the PGN.
    A term with weight 0 is not computed (the VGG(P, y) pass is the expensive one).
    """
    terms: dict[str, torch.Tensor] = {}
    if weights.grad:
        root = math.sqrt(weights.grad_loss_scale)  # the reference scales both gradients by √S before the MSE
        terms["grad"] = weights.grad * (root * grad - root * teacher_out.grad).pow(2).flatten(1).mean(dim=1)
    if weights.vgg:
        terms["vgg"] = weights.vgg * feature_distance(teacher, proxy, teacher_out.target_features)
    if weights.l1:
        terms["l1"] = weights.l1 * (proxy - y).abs().flatten(1).mean(dim=1)
    if weights.mse_gt:
        terms["mse_gt"] = weights.mse_gt * (proxy - y).pow(2).flatten(1).mean(dim=1)
    if weights.mse_gen:
        terms["mse_gen"] = weights.mse_gen * (proxy - y_hat).pow(2).flatten(1).mean(dim=1)
    total = sum(terms.values()) if terms else grad.new_zeros(grad.shape[0], requires_grad=True)
    return total, terms


def gradient_metrics(g_pgn: torch.Tensor, g_true: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample agreement of predicted and true gradients, each (N,).

    ``cos`` (cosine similarity of the flattened gradients), ``rel_err`` (‖g_PGN − g_true‖ / ‖g_true‖),
    ``norm_pgn``, ``norm_true``, ``norm_ratio`` (‖g_PGN‖ / ‖g_true‖) and ``err_norm`` (‖g_PGN − g_true‖).
    """
    a = g_pgn.detach().flatten(1).double()
    b = g_true.detach().flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    err = (a - b).norm(dim=1)
    tiny = torch.finfo(torch.float64).tiny
    out = {
        "cos": (a * b).sum(dim=1) / (na * nb).clamp_min(tiny),
        "rel_err": err / nb.clamp_min(tiny),
        "norm_pgn": na,
        "norm_true": nb,
        "norm_ratio": na / nb.clamp_min(tiny),
        "err_norm": err,
    }
    return {k: v.float() for k, v in out.items()}
