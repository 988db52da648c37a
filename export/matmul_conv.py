"""Trainable convolutions as batched matrix multiplies, for training programs that XNNPACK accelerates.

XNNPACK's convolution packs its weights once, when a program loads, so a convolution whose weights train cannot
be delegated to it (the packed copy would never see an update). Its batched matrix multiply takes both operands
at run time, so a convolution written as *gather the input patches, multiply by the weight matrix* runs in
XNNPACK with weights that change every step, forward and backward alike. ExecuTorch's portable convolution
kernels, the alternative, are plain loops that run about two orders of magnitude slower.

:func:`matmul_conv2d` (the operator ``pgn::matmul_conv2d``, with its own backward) computes exactly what
``F.conv2d`` computes, and :class:`MatmulConv2d` what :class:`torch.nn.Conv2d` computes, from the same parameters
(same names, so state dicts are interchangeable). The patch matrix ``(N·Ho·Wo, kh·kw·C + 1)`` is ``kh·kw`` times
the input, so it is never whole and never kept for the backward:

* **forward**: the input goes channels-last ``(N, H, W, C)`` and is zero-padded (``constant_pad_nd``); for stride
  ``s`` each spatial axis is viewed as ``(blocks, s)`` so that every kernel tap is a plain slice; the output rows are
  computed in **tiles** (:meth:`_Geometry.tiles`: 4–16 MiB of patches each): a tile's taps and a column of ones (for the bias,
  ``constant_pad_nd`` with value 1) make its patch rows, times the weight matrix (the bias its last row);
* **backward** (written out, so autograd keeps only the input and the weight): the weight gradient is
  ``Σ_tiles patchesᵀ·grad`` with each tile's patches gathered again from the input; the input gradient is, per tap,
  ``grad · W_tapᵀ`` padded into place (zero-interleaved for strides) and summed — no operator materializes zeros
  and every operator reads no trainable parameter except the reshapes of the weight, so a partitioner that keeps
  those out of XNNPACK (:func:`export.training.training_partitioner`) delegates the whole activation path.

A program exported with ``pgn::matmul_conv2d`` in it is lowered after :func:`decompose_matmul_convs` replaces each
call by its forward operators (the backward is already written out in the joint graph by then).

It handles ``groups == 1``, ``dilation == 1`` and zero padding given as numbers; :func:`as_matmul_convs` leaves
other convolutions as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

#: Patch tiles (bytes) the forward and the weight gradient gather at once: about 1/:data:`TILES` of the patch
#: matrix, within these bounds. They bound XNNPACK's workspace (each tile is copied a few times on its way to the
#: matrix multiply); more, smaller tiles would make more operators to lower and run.
MIN_TILE_BYTES, MAX_TILE_BYTES = 4 * 2**20, 16 * 2**20
TILES = 16


@dataclass(frozen=True)
class _Geometry:
    """Shapes of one convolution: input (n, c, h, w), kernel, stride, padding, output, blocked padded extent."""

    n: int
    c: int
    h: int
    w: int
    out_channels: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    ho: int
    wo: int
    blocks_h: int
    blocks_w: int

    @classmethod
    def of(cls, x_shape, w_shape, stride, padding) -> "_Geometry":
        n, c, h, w = (int(v) for v in x_shape)
        out_channels, _, kh, kw = (int(v) for v in w_shape)
        (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        return cls(n, c, h, w, out_channels, kh, kw, sh, sw, ph, pw, ho, wo, ho + (kh - 1) // sh, wo + (kw - 1) // sw)

    @property
    def after_h(self) -> int:  # zero rows after the input (negative: trailing input rows no output reads)
        return self.sh * self.blocks_h - self.h - self.ph

    @property
    def after_w(self) -> int:
        return self.sw * self.blocks_w - self.w - self.pw

    @property
    def columns(self) -> int:  # patch columns: taps × channels, + 1 for the bias
        return self.kh * self.kw * self.c + 1

    def tiles(self, tile_rows: int = 0) -> list[tuple[int, int]]:
        """Output-row ranges ``[a, b)``: ``tile_rows`` rows each, or as many as a tile of ~1/:data:`TILES` of the
        patch matrix holds (between :data:`MIN_TILE_BYTES` and :data:`MAX_TILE_BYTES`; at least one row)."""
        if tile_rows <= 0:
            row_bytes = 4 * self.n * self.wo * self.columns
            tile_bytes = min(MAX_TILE_BYTES, max(MIN_TILE_BYTES, row_bytes * self.ho // TILES))
            tile_rows = max(1, tile_bytes // row_bytes)
        return [(a, min(a + tile_rows, self.ho)) for a in range(0, self.ho, tile_rows)]


def _blocked_input(x: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """``x`` channels-last, zero-padded, viewed as ``(N, blocks_h, sh, blocks_w, sw, C)``."""
    x = x.permute(0, 2, 3, 1)
    if g.after_h < 0:
        x = x[:, : g.h + g.after_h]
    if g.after_w < 0:
        x = x[:, :, : g.w + g.after_w]
    if g.ph or g.pw or g.after_h > 0 or g.after_w > 0:
        x = F.pad(x, (0, 0, g.pw, max(g.after_w, 0), g.ph, max(g.after_h, 0)))
    return x.reshape(g.n, g.blocks_h, g.sh, g.blocks_w, g.sw, g.c)


def _patch_rows(xb: torch.Tensor, g: _Geometry, a: int, b: int, bias: bool) -> torch.Tensor:
    """Patch rows of output rows ``[a, b)``: ``(1, N·(b−a)·Wo, kh·kw·C [+ 1])``, taps in (i, j, c) order."""
    taps = []
    for i in range(g.kh):
        rows = xb[:, i // g.sh + a: i // g.sh + b]
        if g.sh > 1:
            rows = rows[:, :, i % g.sh: i % g.sh + 1]
        for j in range(g.kw):
            tap = rows[:, :, :, j // g.sw: j // g.sw + g.wo]
            taps.append(tap[:, :, :, :, j % g.sw: j % g.sw + 1] if g.sw > 1 else tap)
    patches = torch.cat(taps, dim=5) if len(taps) > 1 else taps[0]
    if bias:
        patches = F.pad(patches, (0, 1), value=1.0)
    return patches.reshape(1, g.n * (b - a) * g.wo, patches.shape[-1])


def _weight_matrix(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(1, kh·kw·C [+ 1], out)``: the weight in patch order, the bias its last row."""
    out_channels, c, kh, kw = weight.shape
    matrix = weight.permute(2, 3, 1, 0).reshape(kh * kw * c, out_channels)
    if bias is not None:
        matrix = torch.cat([matrix, bias.reshape(1, out_channels)])
    return matrix.unsqueeze(0)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, tile_rows: int) -> torch.Tensor:
    g = _Geometry.of(x.shape, weight.shape, stride, padding)
    xb, matrix = _blocked_input(x, g), _weight_matrix(weight, bias)
    parts = [torch.bmm(_patch_rows(xb, g, a, b, bias is not None), matrix).reshape(g.n, b - a, g.wo, g.out_channels)
             for a, b in g.tiles(tile_rows)]
    y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return y.permute(0, 3, 1, 2)


def _input_gradient(grad: torch.Tensor, weight: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """``∂/∂x``: per tap ``grad · W_tapᵀ``, zero-interleaved by the stride and padded into place, summed."""
    grad_rows = grad.reshape(1, g.n * g.ho * g.wo, g.out_channels)
    taps_t = weight.permute(2, 3, 0, 1).reshape(g.kh * g.kw, g.out_channels, g.c)  # W_tapᵀ, taps in (i, j) order
    total = None
    for i in range(g.kh):
        for j in range(g.kw):
            k = i * g.kw + j
            part = torch.bmm(grad_rows, taps_t[k: k + 1]).reshape(g.n, g.ho, 1, g.wo, 1, g.c)
            part = F.pad(part, (0, 0, j % g.sw, g.sw - 1 - j % g.sw, j // g.sw, g.blocks_w - j // g.sw - g.wo,
                                i % g.sh, g.sh - 1 - i % g.sh, i // g.sh, g.blocks_h - i // g.sh - g.ho))
            total = part if total is None else total + part
    padded = total.reshape(g.n, g.sh * g.blocks_h, g.sw * g.blocks_w, g.c)
    used_h, used_w = g.h + min(g.after_h, 0), g.w + min(g.after_w, 0)
    gx = padded[:, g.ph: g.ph + used_h, g.pw: g.pw + used_w]
    if used_h < g.h or used_w < g.w:  # input rows no output reads get 0
        gx = F.pad(gx, (0, 0, 0, g.w - used_w, 0, g.h - used_h))
    return gx.permute(0, 3, 1, 2)


def _weight_gradient(grad: torch.Tensor, x: torch.Tensor, g: _Geometry, bias: bool, tile_rows: int) -> torch.Tensor:
    """``Σ_tiles patchesᵀ · grad``, ``(kh·kw·C [+ 1], out)``, each tile's patches gathered again from ``x``."""
    xb = _blocked_input(x, g)
    total = None
    for a, b in g.tiles(tile_rows):
        rows = grad[:, a:b].reshape(1, g.n * (b - a) * g.wo, g.out_channels)
        part = torch.bmm(_patch_rows(xb, g, a, b, bias).transpose(1, 2), rows)
        total = part if total is None else total + part
    return total[0]


@torch.library.custom_op("pgn::matmul_conv2d", mutates_args=())
def matmul_conv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
                     padding: list[int], tile_rows: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as tiled patch matrix multiplies (see the module docs)."""
    return _forward(x, weight, bias, stride, padding, tile_rows).contiguous()


@matmul_conv2d_op.register_fake
def _(x, weight, bias, stride, padding, tile_rows):
    g = _Geometry.of(x.shape, weight.shape, stride, padding)
    return x.new_empty(g.n, g.out_channels, g.ho, g.wo)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, tile_rows = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = _Geometry.of(x.shape, weight.shape, stride, padding)
    ctx.has_bias, ctx.tile_rows = bias is not None, tile_rows


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    g = ctx.geometry
    grad = grad.permute(0, 2, 3, 1)  # (N, Ho, Wo, out)
    grad_x = _input_gradient(grad, weight, g) if ctx.needs_input_grad[0] else None
    grad_w = grad_b = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        matrix = _weight_gradient(grad, x, g, ctx.has_bias, ctx.tile_rows)
        taps = g.kh * g.kw * g.c
        grad_w = matrix[:taps].reshape(g.kh, g.kw, g.c, g.out_channels).permute(3, 2, 0, 1)
        grad_b = matrix[taps] if ctx.has_bias else None
    return grad_x, grad_w, grad_b, None, None, None


matmul_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def matmul_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride=(1, 1), padding=(0, 0),
                  tile_rows: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (one group, no dilation) as the ``pgn::matmul_conv2d``
    operator: tiled patches times the weight matrix, with its own backward (see the module docs). ``tile_rows``
    (> 0) fixes the output rows per tile (0: :meth:`_Geometry.tiles` chooses)."""
    return matmul_conv2d_op(x, weight, bias, list(_pair(stride)), list(_pair(padding)), int(tile_rows))


def decompose_matmul_convs(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every ``pgn::matmul_conv2d`` replaced by its forward operators (pad, slices, concatenations,
    matrix multiplies), so that runtimes without the operator run it."""
    op = torch.ops.pgn.matmul_conv2d.default
    if not any(n.op == "call_function" and n.target == op for n in program.graph.nodes):
        return program
    return program.run_decompositions({op: _forward})


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[-1]))


class MatmulConv2d(nn.Conv2d):
    """A :class:`torch.nn.Conv2d` computed as gathered patches times the weight matrix (see the module docs)."""

    tile_rows: int = 0  #: output rows per tile (0: see :meth:`_Geometry.tiles`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return matmul_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.tile_rows)


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

