"""Heads: backbone output ``B`` → proxy target ``P`` → gradient ``g``, in closed form (paper §3).

Every head builds a proxy target ``P`` in ImageNet-normalized space; the gradient is then the gradient of a
scaled per-sample loss towards the detached proxy, written out in closed form (no autograd inside forward, so
the graph exports)::

    g = α · ∂/∂ŷ mean_{c,h,w} (ŷ − sg[P])²  =  α · 2/(C·H·W) · (ŷ − P),   α = 1/grad_scale

========== ============================== ======================================================== ===========
head       paper                          proxy P (normalized space)                                 out_ch
========== ============================== ======================================================== ===========
direct     Eq. 2, "predicts gradient"     ŷ − B/512 (so g = α·2/(CHW)·B/512)                         3
proxy      Eq. 3-5, unconstrained proxy   B                                                          3
constrained Eq. 6-7, constrained (default) β·normalize(sigmoid(B))                                   3
hybrid     Eq. 8-9                        β·normalize(sigmoid(ŷ − B/512))                             3
warped     authors' experimental head     grid_sample(y, identity + tanh(B)·3/112) [+ additive]      2 or 5
========== ============================== ======================================================== ===========

Paper versus the authors' code: Eq. 2 reads ``g = α·B`` with α = 1/512, while the authors' code also multiplies
by ``2/(C·H·W)/grad_scale``. We follow the code, since checkpoints trained with the direct head need it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .constants import (
    BETA,
    GRAD_SCALE_RESNET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUT_SCALE,
    WARP_ADDITIVE_SCALE,
    WARP_DOWNSCALE_BY,
    WARP_SCALE,
)
from .errors import PGNError

HEAD_KINDS = ("constrained", "proxy", "direct", "hybrid", "warped")
GRAD_TYPES = ("mse", "l1", "logcosh")


@dataclass(frozen=True)
class HeadConfig:
    """How the backbone output becomes a proxy and a gradient.

    Args:
        kind: one of ``constrained`` (default, paper Eq. 6-7), ``proxy`` (Eq. 3-5), ``direct`` (Eq. 2),
            ``hybrid`` (Eq. 8-9), ``warped`` (authors' experimental warped-target proxy).
        grad_scale: 1/α. 0.025 (α = 40) for the released ResNets, 0.048 for the released UNet.
        beta: β of the sigmoid-constrained proxies (1.1).
        out_scale: 1/γ of the direct and hybrid heads (512).
        grad_type: per-sample loss towards the proxy: ``mse`` (paper), ``l1`` or ``logcosh``. The direct and
            hybrid heads always use ``mse``, as the authors' code does.
        warp_scale, warp_additive, warp_downscale_by, warp_additive_scale: the warped head's parameters.
    """

    kind: str = "constrained"
    grad_scale: float = GRAD_SCALE_RESNET
    beta: float = BETA
    out_scale: float = OUT_SCALE
    grad_type: str = "mse"
    warp_scale: float = WARP_SCALE
    warp_additive: bool = False
    warp_downscale_by: float | None = WARP_DOWNSCALE_BY
    warp_additive_scale: float = WARP_ADDITIVE_SCALE

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise PGNError(f"unknown head {self.kind!r}: use one of {', '.join(HEAD_KINDS)}")
        if self.grad_type not in GRAD_TYPES:
            raise PGNError(f"unknown grad_type {self.grad_type!r}: use one of {', '.join(GRAD_TYPES)}")
        if not self.grad_scale > 0:
            raise PGNError(f"grad_scale must be positive, got {self.grad_scale}")

    @property
    def alpha(self) -> float:
        """α = 1/grad_scale, the factor in front of the MSE gradient."""
        return 1.0 / self.grad_scale

    @property
    def out_channels(self) -> int:
        """Channels the backbone must produce for this head."""
        if self.kind == "warped":
            return 5 if self.warp_additive else 2
        return 3

    def to_dict(self) -> dict:
        """Plain-dict form for checkpoints and manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PGNError(f"unknown head parameter(s) {unknown}: allowed are {sorted(names)}")
        return cls(**d)


class GradientHead(nn.Module):
    """Turns the backbone output into the proxy ``P`` and the gradient ``g`` (ImageNet-normalized space).

    It has no parameters; the ImageNet statistics are non-persistent buffers, so they follow ``.to()`` and
    stay out of state dicts.
    """

    def __init__(self, config: HeadConfig = HeadConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _constrain(self, z: torch.Tensor) -> torch.Tensor:
        return self.config.beta * ((torch.sigmoid(z) - self.mean) / self.std)

    def proxy(self, z: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Proxy target ``P`` from backbone output ``z`` and normalized ``y_hat``, ``y``; (N, 3, H, W)."""
        kind = self.config.kind
        if kind == "constrained":
            return self._constrain(z)
        if kind == "proxy":
            return z
        if kind == "direct":
            return y_hat - z / self.config.out_scale
        if kind == "hybrid":
            return self._constrain(y_hat - z / self.config.out_scale)
        return self._warped_proxy(z, y)

    def gradient(self, y_hat: torch.Tensor, proxy: torch.Tensor, raw: torch.Tensor | None = None) -> torch.Tensor:
        """Closed-form ``α · ∂/∂ŷ loss(ŷ, sg[P])`` per sample, w.r.t. normalized ``y_hat``.

        For the direct head, pass the backbone output ``raw``: then ``ŷ − P = B/512`` is used as is instead of
        being recomputed as a difference of two nearly equal numbers (same value, no cancellation error).
        """
        c, h, w = y_hat.shape[1], y_hat.shape[2], y_hat.shape[3]
        per_element = self.config.alpha / float(c * h * w)
        if self.config.kind == "direct" and raw is not None:
            diff = raw / self.config.out_scale
        else:
            diff = y_hat - proxy
        grad_type = "mse" if self.config.kind in ("direct", "hybrid") else self.config.grad_type
        if grad_type == "mse":
            return (2.0 * per_element) * diff
        if grad_type == "l1":
            return per_element * torch.sign(diff)
        return per_element * torch.tanh(diff)  # logcosh: d/dd log(cosh(d)) = tanh(d)

    def loss(self, y_hat: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        """Per-sample ``α · loss(ŷ, P)`` whose gradient w.r.t. ``y_hat`` is :meth:`gradient`; shape (N,)."""
        diff = y_hat - proxy
        grad_type = "mse" if self.config.kind in ("direct", "hybrid") else self.config.grad_type
        if grad_type == "mse":
            per = diff.pow(2)
        elif grad_type == "l1":
            per = diff.abs()
        else:
            per = diff + F.softplus(-2.0 * diff) - torch.log(torch.tensor(2.0, dtype=diff.dtype, device=diff.device))
        return self.config.alpha * per.flatten(1).mean(dim=1)

    def _warped_proxy(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n, _, h, w = y.shape
        if cfg.warp_downscale_by:
            # float() keeps this working under TorchScript tracing, where sizes are traced tensors
            low = (max(1, round(float(h) / cfg.warp_downscale_by)), max(1, round(float(w) / cfg.warp_downscale_by)))
            z = F.interpolate(z, size=low, mode="bilinear", align_corners=False)
            z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        gy, gx = torch.meshgrid(
            torch.linspace(-1.0, 1.0, h, device=y.device, dtype=y.dtype),
            torch.linspace(-1.0, 1.0, w, device=y.device, dtype=y.dtype),
            indexing="ij",
        )
        identity = torch.stack([gx, gy], dim=-1).unsqueeze(0)
        corr = cfg.warp_scale * torch.tanh(z[:, :2]).permute(0, 2, 3, 1)
        grid = (identity + corr).clamp(-1.0, 1.0)
        p = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.warp_additive:
            p = p + cfg.warp_additive_scale * ((torch.sigmoid(z[:, 2:5]) - self.mean) / self.std)
        return p
