"""Trainable convolutions as one batched matrix multiply, for training programs that XNNPACK accelerates.

XNNPACK's convolution packs its weights once, when a program loads, so a convolution whose weights train cannot
be delegated to it (the packed copy would never see an update). Its batched matrix multiply takes both operands
at run time, so a convolution written as *gather the input patches, multiply by the weight matrix* runs in
XNNPACK with weights that change every step, forward and backward alike (the backward of a matrix multiply is
two more matrix multiplies). ExecuTorch's portable convolution kernels, the alternative, are plain loops that run
about two orders of magnitude slower.

:class:`MatmulConv2d` computes exactly what :class:`torch.nn.Conv2d` computes, from the same parameters (same
names, so state dicts are interchangeable):

1. the input goes channels-last, ``(N, H, W, C)``, so that the patch matrix needs no transpose;
2. zero padding is concatenated on (its backward is a slice);
3. for stride ``s``, each spatial axis is reshaped into ``(blocks, s)`` and every kernel tap's shifted view is
   taken with ``split`` (whose backward is a concatenation, where a slice's backward would be a full-size
   ``slice_scatter`` per tap);
4. the taps (and a column of ones for the bias) are concatenated along channels into the ``(N·Ho·Wo, kh·kw·C + 1)``
   patch matrix, multiplied by the weight matrix (the bias its last row), and the result turned back to
   ``(N, out, Ho, Wo)``. Every operator that reads a parameter only reshapes it, so a partitioner that keeps
   such operators out of XNNPACK (:func:`export.training.training_partitioner`) still delegates the
   whole activation path.

It handles ``groups == 1``, ``dilation == 1`` and zero padding given as numbers; :func:`as_matmul_convs` leaves
other convolutions as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def _zero_pad(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """``x`` with ``before``/``after`` zero rows concatenated along ``dim`` (negative counts add none)."""

    def zeros(rows: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = rows
        return x.new_zeros(shape)

    parts = ([zeros(before)] if before > 0 else []) + [x] + ([zeros(after)] if after > 0 else [])
    return torch.cat(parts, dim=dim) if len(parts) > 1 else x


def _taps(x: torch.Tensor, dim: int, kernel: int, stride: int, padding: int, out: int) -> list[torch.Tensor]:
    """The ``kernel`` shifted views of ``x`` along ``dim`` that a convolution with this kernel, stride and zero
    padding reads: tap ``i`` holds input rows ``i + stride·k − padding`` for ``k < out`` (zeros outside)."""
    blocks = out + (kernel - 1) // stride
    rows = stride * blocks  # padded extent, a whole number of stride blocks
    after = rows - x.shape[dim] - padding
    x = _zero_pad(x, dim, padding, after)
    if after < 0:  # trailing input rows that no output reads
        x = x.split([rows, -after], dim=dim)[0]
    shape = list(x.shape)
    x = x.reshape(shape[:dim] + [blocks, stride] + shape[dim + 1:])
    phases = x.split(1, dim=dim + 1) if stride > 1 else [x]
    taps = []
    for i in range(kernel):
        phase, first = phases[i % stride], i // stride
        sizes = [n for n in (first, out, blocks - first - out) if n]
        view = phase.split(sizes, dim=dim)[1 if first else 0] if len(sizes) > 1 else phase
        taps.append(view.reshape(shape[:dim] + [out] + shape[dim + 1:]))
    return taps


def matmul_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride=(1, 1), padding=(0, 0)) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (one group, no dilation) as gathered patches times the weight
    matrix (see the module docs)."""
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    patches = []
    for row in _taps(x.permute(0, 2, 3, 1), 1, kh, sh, ph, ho):
        patches.extend(_taps(row, 2, kw, sw, pw, wo))
    matrix = weight.permute(2, 3, 1, 0).reshape(kh * kw * c, out_channels)
    if bias is not None:  # a column of ones times the bias row: no separate addition of a parameter
        patches.append(x.new_ones(n, ho, wo, 1))
        matrix = torch.cat([matrix, bias.reshape(1, out_channels)])
    patches = torch.cat(patches, dim=3).reshape(1, n * ho * wo, matrix.shape[0])
    y = torch.bmm(patches, matrix.unsqueeze(0)).reshape(n, ho, wo, out_channels)
    return y.permute(0, 3, 1, 2)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[-1]))


class MatmulConv2d(nn.Conv2d):
    """A :class:`torch.nn.Conv2d` computed as gathered patches times the weight matrix (see the module docs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return matmul_conv2d(x, self.weight, self.bias, self.stride, self.padding)


def converts(conv: nn.Module) -> bool:
    """Whether :func:`as_matmul_convs` rewrites ``conv``: a plain 2-D convolution, one group, no dilation,
    zero padding given as numbers."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def as_matmul_convs(module: nn.Module) -> int:
    """Make every convolution of ``module`` that :func:`converts` a :class:`MatmulConv2d`, in place (same
    parameters, same results); returns how many it rewrote."""
    rewritten = 0
    for sub in module.modules():
        if converts(sub):
            sub.__class__ = MatmulConv2d
            rewritten += 1
    return rewritten

