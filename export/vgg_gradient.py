"""The frozen VGG perceptual loss and its input gradient written with forward operators only (:class:`VGGInputGradient`).

The loss is :class:`pgn.PerceptualLoss`'s: ``Σ_l mean_{c,h,w} |φ_l(ŷ) − φ_l(y)|`` over the ReLU outputs up to relu5_1,
one value per sample. A frozen VGG needs no weight gradients, so its input gradient is written out by hand with
operators that on-device kernels (XNNPACK) run in their fast forward form, instead of autograd's backward
operators (``convolution_backward`` and pooling backward have no XNNPACK kernel and run on slow portable loops):

* ``∂|a − t|/∂a`` = ``clamp((a − t)·1e30, −1, 1)`` (the sign, 0 where equal, as autograd's ``abs`` backward);
* a ReLU's backward multiplies by the mask ``clamp(a·1e30, 0, 1)`` of its output ``a``;
* a 3×3 convolution's backward (stride 1, padding 1) is a convolution of the gradient with the weights flipped
  in space and transposed in channels. These are **their own buffer** (:attr:`backward_weights`), never the forward
  convolution's tensor: XNNPACK packs each weight it reads, and one tensor read by a forward and a backward
  convolution of one delegate gives silently wrong gradients;
* a 2×2 average pooling's backward spreads a quarter of the gradient over each window, as a broadcast multiply in
  6-D ``(N, C, H, 1, W, 1) · (1, 1, 1, 2, 1, 2)`` (no upsampling operator); a 2×2 max pooling's backward sends the
  whole gradient to the **first** maximum of each window only (flat image regions tie exactly, and autograd routes
  a tie to the first), through the same 6-D broadcast.

Every ReLU output must be kept for the backward, as autograd keeps it; the gradient equals autograd's up to the
order of float additions (and, where a ReLU input lies within rounding of 0, the side of the ReLU it falls on).
"""

from __future__ import annotations

import torch
from torch import nn

from pgn.constants import IMAGENET_MEAN, IMAGENET_STD
from pgn.errors import PGNError

#: Multiplier that turns a difference into its sign (and a ReLU output into its 0/1 mask) with one clamp.
SIGN_SCALE = 1e30


def first_maximum_mask(x: torch.Tensor) -> torch.Tensor:
    """For (N, C, H, 2, W, 2) windows: 1 at the first maximum of each 2×2 window (row-major order), 0 elsewhere."""
    top = x.amax(dim=(3, 5), keepdim=True)
    hit = (x >= top).to(x.dtype)  # every tied maximum
    h00, h01 = hit[:, :, :, 0:1, :, 0:1], hit[:, :, :, 0:1, :, 1:2]
    h10, h11 = hit[:, :, :, 1:2, :, 0:1], hit[:, :, :, 1:2, :, 1:2]
    k00 = h00
    k01 = h01 * (1 - k00)
    k10 = h10 * (1 - k00 - k01)
    k11 = h11 * (1 - k00 - k01 - k10)
    return torch.cat([torch.cat([k00, k01], dim=5), torch.cat([k10, k11], dim=5)], dim=3)


class VGGInputGradient(nn.Module):
    """``(ŷ, y) → (∂loss/∂ŷ, per-sample loss)`` of a frozen :class:`pgn.PerceptualLoss`, forward operators only.

    Args:
        teacher: the perceptual loss (VGG-19 or VGG-11, any weights); its weights are copied as constants.

    The gradient is w.r.t. ``ŷ`` in the teacher's value space, of the loss summed over the batch (so each sample's
    gradient is that of its own loss). Heights and widths must be multiples of 16 (four 2×2 poolings).
    """

    def __init__(self, teacher: "pgn.PerceptualLoss"):  # noqa: F821
        super().__init__()
        self.value_space = teacher.value_space
        self.net = teacher.net
        self.kinds: list[str] = []
        weights, biases, backward = [], [], []
        for layer in teacher.features:
            if isinstance(layer, nn.Conv2d):
                if tuple(layer.stride) != (1, 1) or tuple(layer.padding) != (1, 1) or tuple(layer.kernel_size) != (3, 3):
                    raise PGNError("VGGInputGradient takes 3×3 convolutions with stride 1 and padding 1")
                w = layer.weight.detach().float()
                weights.append(w.clone())
                biases.append(layer.bias.detach().float().clone())
                backward.append(w.flip(2, 3).transpose(0, 1).contiguous().clone())  # its own buffer (module docs)
                self.kinds.append("conv")
            elif isinstance(layer, nn.ReLU):
                self.kinds.append("relu")
            elif isinstance(layer, nn.AvgPool2d):
                self.kinds.append("avgpool")
            elif isinstance(layer, nn.MaxPool2d):
                self.kinds.append("maxpool")
            else:
                raise PGNError(f"VGGInputGradient has no backward for {type(layer).__name__}")
        for i, (w, b, wb) in enumerate(zip(weights, biases, backward)):
            self.register_buffer(f"weight{i}", w)
            self.register_buffer(f"bias{i}", b)
            self.register_buffer(f"backward_weight{i}", wb)
        self.convs = len(weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("quarter", torch.full((1, 1, 1, 2, 1, 2), 0.25))
        self.register_buffer("ones", torch.ones(1, 1, 1, 2, 1, 2))

    @property
    def backward_weights(self) -> list[torch.Tensor]:
        """The flipped, channel-transposed weight copies the backward convolutions read."""
        return [getattr(self, f"backward_weight{i}") for i in range(self.convs)]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.value_space == "unit" else x

    def _features(self, x: torch.Tensor, keep_pool_inputs: bool) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """ReLU outputs in order, and the input of every pooling layer (``None`` where not kept)."""
        taps, pool_inputs, conv = [], [], 0
        for kind in self.kinds:
            if kind == "conv":
                x = torch.nn.functional.conv2d(x, getattr(self, f"weight{conv}"), getattr(self, f"bias{conv}"), padding=1)
                conv += 1
            elif kind == "relu":
                x = torch.relu(x)
                taps.append(x)
            else:
                n, c, h, w = x.shape
                pool_inputs.append(x if keep_pool_inputs and kind == "maxpool" else None)
                x6 = x.reshape(n, c, h // 2, 2, w // 2, 2)
                x = x6.mean(dim=(3, 5)) if kind == "avgpool" else x6.amax(dim=(3, 5))
        return taps, pool_inputs

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient of the batch's summed loss w.r.t. ``y_hat`` and the (N,) per-sample losses."""
        h, w = y_hat.shape[-2:]
        if h % 16 or w % 16:
            raise PGNError(f"the VGG loss's hand-written gradient needs heights and widths that are multiples of 16, got {h}×{w}")
        targets, _ = self._features(self._normalize(y), keep_pool_inputs=False)
        taps, pool_inputs = self._features(self._normalize(y_hat), keep_pool_inputs=True)
        loss = sum((a - t).abs().mean(dim=(1, 2, 3)) for a, t in zip(taps, targets))
        g = None
        tap, conv, pool = len(taps), self.convs, len(pool_inputs)
        for kind in reversed(self.kinds):
            if kind == "relu":
                tap -= 1
                a, t = taps[tap], targets[tap]
                per_sample = a.shape[1] * a.shape[2] * a.shape[3]
                sign = torch.clamp((a - t) * SIGN_SCALE, -1.0, 1.0) * (1.0 / per_sample)
                g = sign if g is None else g + sign
                g = g * torch.clamp(a * SIGN_SCALE, 0.0, 1.0)
            elif kind == "conv":
                conv -= 1
                g = torch.nn.functional.conv2d(g, getattr(self, f"backward_weight{conv}"), None, padding=1)
            else:
                pool -= 1
                n, c, hh, ww = g.shape
                g6 = g.reshape(n, c, hh, 1, ww, 1)
                if kind == "avgpool":
                    g = (g6 * self.quarter).reshape(n, c, 2 * hh, 2 * ww)
                else:
                    x6 = pool_inputs[pool].reshape(n, c, hh, 2, ww, 2)
                    g = (g6 * self.ones * first_maximum_mask(x6)).reshape(n, c, 2 * hh, 2 * ww)
        if self.value_space == "unit":
            g = g / self.std
        return g, loss
