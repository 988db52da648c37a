"""The UNet backbone as the export graph computes it: :class:`ExportUNet`.

Same numbers as :class:`pgn.backbones.unet.UNetBackbone` to float rounding, with the choices of
:class:`export.graph_options.GraphOptions`:

* the last ``band_levels`` decoder levels in bands of ``band_rows`` rows (fixed shapes only). For output rows
  [a, b) a level needs rows [a − 1, b + 1) of its upsampled map and skip (one row of halo for the 3×3
  convolution, zero padding where the band meets the image edge). Those upsampled rows come straight from
  the lower-resolution map: ×2 bilinear upsampling with ``align_corners=True`` maps output row 2k to
  ``a_k·low[k−1] + (1 − a_k)·low[k]`` and row 2k + 1 to ``(1 − b_k)·low[k] + b_k·low[k+1]`` with
  ``a_k = k/(2h − 1)`` and ``b_k = (h − 1 − k)/(2h − 1)`` (h the low-resolution height), so a band is two
  slices, a weighted sum and an interleave, then the horizontal upsampling of just those rows. At the last
  level the skip (the full-resolution branch, two 3×3 convolutions of the input) and the 1×1 output
  convolution are computed per band too. Only slicing, elementwise arithmetic, concatenation, resize and
  convolution are used, so every runtime keeps them in its fast path (XNNPACK included).
* the decoder convolutions with one output channel per group in ``grouped``, ``depthwise`` or ``split`` form
  (see :mod:`export.graph_options`).

Everything is decided at construction from the export size; :meth:`ExportUNet.describe` says what applied.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgn.backbones.blocks import FullConv, SeparableConv
from pgn.backbones.unet import UNetBackbone

from .graph_options import GraphOptions


def _conv(conv: nn.Conv2d, x: torch.Tensor, pad_rows: bool) -> torch.Tensor:
    """``conv(x)``, with or without its zero padding above and below (left and right padding is kept)."""
    padding = conv.padding if pad_rows else (0, conv.padding[1])
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)


class ConvStage(nn.Module):
    """A :class:`SeparableConv` (k×k conv, 1×1 conv, ReLU) or :class:`FullConv` (conv, ReLU) that can leave out
    its vertical padding, so that it can run on a band of rows that carries its own halo."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        if isinstance(stage, SeparableConv):
            self.spatial, self.pointwise = stage.spatial, stage.pointwise
        elif isinstance(stage, FullConv):
            self.spatial, self.pointwise = stage.conv, None
        else:
            raise TypeError(f"not a UNet conv stage: {type(stage).__name__}")

    def forward(self, x: torch.Tensor, pad_rows: bool = True) -> torch.Tensor:
        y = _conv(self.spatial, x, pad_rows)
        if self.pointwise is not None:
            y = self.pointwise(y)
        return F.relu(y)


class GroupedDecoderConv(ConvStage):
    """A decoder conv as trained: concatenate ``[upsampled, skip]``, then the conv stage."""

    def forward(self, up: torch.Tensor, skip: torch.Tensor, pad_rows: bool = True) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([up, skip], dim=1), pad_rows)


def one_output_per_group(stage: nn.Module) -> bool:
    """True for a :class:`SeparableConv` whose k×k conv is grouped (not depthwise) with one output per group."""
    if not isinstance(stage, SeparableConv):
        return False
    conv = stage.spatial
    return conv.groups == conv.out_channels < conv.in_channels and conv.kernel_size != (1, 1)


def _depthwise_weights(conv: nn.Conv2d) -> torch.Tensor:
    """The grouped conv's filters as one depthwise filter per input channel, (C_in, 1, kh, kw), in channel order."""
    kh, kw = conv.kernel_size
    return conv.weight.detach().reshape(conv.in_channels, 1, kh, kw).clone()


def _folded_pointwise_bias(stage: SeparableConv) -> torch.Tensor:
    """The 1×1 conv's bias with the grouped conv's bias pushed through it: ``b_pw + W_pw · b_spatial``."""
    pw, conv = stage.pointwise, stage.spatial
    bias = pw.bias.detach() if pw.bias is not None else torch.zeros(pw.out_channels)
    if conv.bias is not None:
        bias = bias + pw.weight.detach()[:, :, 0, 0] @ conv.bias.detach()
    return bias


def _depthwise_conv(weight: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[0], weight.shape[0], like.kernel_size, stride=like.stride, padding=like.padding,
                     dilation=like.dilation, groups=weight.shape[0], bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


class DepthwiseDecoderConv(nn.Module):
    """A one-output-per-group decoder conv as depthwise conv + sum over each group's ``k`` channels:
    ``out[j] = b[j] + Σ_c w[j, c] ⋆ x[j·k + c] = b[j] + Σ_c (dw ⋆ x)[j·k + c]`` (same multiply-adds; the bias
    moves into the 1×1 conv)."""

    def __init__(self, stage: SeparableConv):
        super().__init__()
        conv, pw = stage.spatial, stage.pointwise
        self.groups, self.per_group = conv.groups, conv.in_channels // conv.groups
        self.depthwise = _depthwise_conv(_depthwise_weights(conv), conv)
        self.pointwise = nn.Conv2d(pw.in_channels, pw.out_channels, 1, bias=True)
        with torch.no_grad():
            self.pointwise.weight.copy_(pw.weight)
            self.pointwise.bias.copy_(_folded_pointwise_bias(stage))

    def forward(self, up: torch.Tensor, skip: torch.Tensor, pad_rows: bool = True) -> torch.Tensor:
        y = _conv(self.depthwise, torch.cat([up, skip], dim=1), pad_rows)
        y = y.unflatten(1, (self.groups, self.per_group)).sum(dim=2)
        return F.relu(self.pointwise(y))


class SplitDecoderConv(nn.Module):
    """A one-output-per-group decoder conv without the concatenation: depthwise convs of the upsampled map and of
    the skip, each followed by a 1×1 conv whose weights fold in the group sum, ``W'[o, c] = W_pw[o, c // k]``;
    the two are added (``conv(cat(a, b)) = conv_a(a) + conv_b(b)``)."""

    def __init__(self, stage: SeparableConv, up_channels: int):
        super().__init__()
        conv, pw = stage.spatial, stage.pointwise
        per_group = conv.in_channels // conv.groups
        dw = _depthwise_weights(conv)
        folded = pw.weight.detach()[:, :, 0, 0].repeat_interleave(per_group, dim=1)  # (C_out, C_in)
        self.depthwise_up = _depthwise_conv(dw[:up_channels], conv)
        self.depthwise_skip = _depthwise_conv(dw[up_channels:], conv)
        self.pointwise_up = nn.Conv2d(up_channels, pw.out_channels, 1, bias=True)
        self.pointwise_skip = nn.Conv2d(conv.in_channels - up_channels, pw.out_channels, 1, bias=False)
        with torch.no_grad():
            self.pointwise_up.weight.copy_(folded[:, :up_channels, None, None])
            self.pointwise_up.bias.copy_(_folded_pointwise_bias(stage))
            self.pointwise_skip.weight.copy_(folded[:, up_channels:, None, None])

    def forward(self, up: torch.Tensor, skip: torch.Tensor, pad_rows: bool = True) -> torch.Tensor:
        a = self.pointwise_up(_conv(self.depthwise_up, up, pad_rows))
        b = self.pointwise_skip(_conv(self.depthwise_skip, skip, pad_rows))
        return F.relu(a + b)


def decoder_form(stage: nn.Module, up_channels: int, form: str) -> tuple[nn.Module, str]:
    """The export form of one decoder conv stage and the name of the form used (``grouped`` where the asked
    form does not apply: only one-output-per-group separable convs are rewritten)."""
    if form == "grouped" or not one_output_per_group(stage):
        return GroupedDecoderConv(stage), "grouped"
    if form == "depthwise":
        return DepthwiseDecoderConv(stage), "depthwise"
    return SplitDecoderConv(stage, up_channels), "split"


def band_bounds(height: int, band_rows: int) -> list[tuple[int, int]]:
    """``height`` rows cut into ⌈height / band_rows⌉ bands of near-equal size, as (start, stop) pairs."""
    count = max(1, -(-height // band_rows)) if band_rows > 0 else 1
    edges = [round(j * height / count) for j in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def upsample_row_weights(low_height: int) -> np.ndarray:
    """(4, h) float64 weights of ×2 bilinear ``align_corners=True`` upsampling along rows, for low-res height h:
    ``a_k``, ``1 − a_k`` (even output rows 2k from low rows k − 1, k) and ``1 − b_k``, ``b_k`` (odd rows 2k + 1
    from low rows k, k + 1); see the module docs."""
    h = low_height
    k = np.arange(h, dtype=np.float64)
    a = k / (2 * h - 1) if h > 1 else np.zeros(1)
    b = (h - 1 - k) / (2 * h - 1) if h > 1 else np.zeros(1)
    return np.stack([a, 1 - a, 1 - b, b])


def _clamped_rows(x: torch.Tensor, start: int, stop: int, height: int) -> torch.Tensor:
    """Rows ``start .. stop − 1`` of ``x`` with indices clamped to [0, height − 1] (at most one row past each end)."""
    parts = []
    if start < 0:
        parts.append(x[:, :, 0:1])
    lo, hi = max(start, 0), min(stop, height)
    if hi > lo:
        parts.append(x[:, :, lo:hi])
    if stop > height:
        parts.append(x[:, :, height - 1:height])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


class ExportUNet(nn.Module):
    """A :class:`UNetBackbone` computed with the choices of ``options`` (see the module docs).

    Args:
        backbone: the UNet (BatchNorm may still be in it; :func:`export.graph.fold_batchnorm` folds it afterwards).
        options: the graph options.
        size: (H, W) of a fixed-shape export; ``None`` for dynamic shapes (no bands).
    """

    def __init__(self, backbone: UNetBackbone, options: GraphOptions, size: tuple[int, int] | None):
        super().__init__()
        backbone = copy.deepcopy(backbone)
        cfg = backbone.config
        self.levels = len(cfg.down_channels)
        self.encoder = backbone.encoder
        self.laterals = backbone.laterals
        self.full_res = nn.ModuleList(ConvStage(stage) for stage in backbone.full_res)
        self.head = backbone.head
        self.decoder = nn.ModuleList()
        forms = {}
        for k, stage in enumerate(backbone.decoder):
            i = self.levels - 1 - k
            up_channels = cfg.down_channels[-1] if i == self.levels - 1 else cfg.up_channels[i + 1]
            module, form = decoder_form(stage, up_channels, options.decoder_conv)
            self.decoder.append(module)
            forms[f"level {i}"] = form
        self.forms = forms
        self.decoder_conv = options.decoder_conv
        self.band_rows = options.band_rows
        self.size = size
        self.bands: dict[int, list[tuple[int, int]]] = {}
        self.band_note = ""
        if options.band_rows == 0 or options.band_levels == 0:
            self.band_note = "off: band_rows=0 or band_levels=0"
        elif size is None:
            self.band_note = "off: bands need fixed shapes, and this export is dynamic"
        else:
            for i in range(min(options.band_levels, self.levels)):
                bounds = band_bounds(size[0] >> i, options.band_rows)
                if len(bounds) > 1:
                    self.bands[i] = bounds
                    weights = torch.from_numpy(upsample_row_weights(size[0] >> (i + 1))).float()
                    self.register_buffer(f"row_weights_{i}", weights.view(4, 1, 1, -1, 1), persistent=False)
            if not self.bands:
                self.band_note = f"off: every banded level fits in one band of {options.band_rows} rows"
        # Every band gets its own copy of its level's convolutions (small: the last levels are the narrowest).
        # ExecuTorch's XNNPACK delegate cannot build two int8 convolutions on one shared quantized weight.
        self.band_modules = nn.ModuleDict()
        for i, bounds in self.bands.items():
            parts = {"decoder": self.decoder[self.levels - 1 - i]}
            if i == 0:
                parts.update(full_res=self.full_res, head=self.head)
            self.band_modules[str(i)] = nn.ModuleList(nn.ModuleDict(copy.deepcopy(parts)) for _ in bounds)

    def describe(self) -> tuple[dict, dict]:
        """What was applied and what was not (with the reason), for the manifest."""
        applied: dict = {}
        not_applied = {"upsample_conv": "the UNet has no nearest-upsample convolutions (ResNet option)"}
        if self.bands:
            applied["band_rows"] = self.band_rows
            applied["bands"] = {f"level {i}": [list(b) for b in bounds] for i, bounds in sorted(self.bands.items())}
        else:
            not_applied["band_rows"] = self.band_note
        rewritten = {level: form for level, form in self.forms.items() if form != "grouped"}
        if self.decoder_conv == "grouped":
            applied["decoder_conv"] = "grouped"
        elif rewritten:
            applied["decoder_conv"] = rewritten
        else:
            not_applied["decoder_conv"] = "no decoder conv has one output channel per group"
        return applied, not_applied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for level in self.encoder:
            h = level(h)
            feats.append(h)
        lats = [lat(f) for lat, f in zip(self.laterals, feats)]
        h = lats[-1]
        for k, dec in enumerate(self.decoder):
            i = self.levels - 1 - k
            if i in self.bands:
                h = self._banded_level(i, h, lats[i - 1] if i >= 1 else x)
                continue
            # the full-resolution branch is computed only now, so that it is not alive during the whole decoder
            skip = lats[i - 1] if i >= 1 else self._full_res(x)
            h = dec(F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=True), skip)
        return h if 0 in self.bands else self.head(h)

    def _full_res(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.full_res:
            x = stage(x)
        return x

    def _banded_level(self, i: int, low: torch.Tensor, skip_source: torch.Tensor) -> torch.Tensor:
        """Decoder level ``i`` band by band; at level 0 ``skip_source`` is the input and the head runs per band."""
        height = self.size[0] >> i
        outs = []
        for (a, b), parts in zip(self.bands[i], self.band_modules[str(i)]):
            r0, r1 = max(a - 1, 0), min(b + 1, height)
            up = self._upsample_rows(i, low, r0, r1)
            if i == 0:
                skip = _full_res_rows(parts["full_res"], skip_source, r0, r1, height)
            else:
                skip = skip_source[:, :, r0:r1]
            dec = parts["decoder"]
            y, lo, hi = _rows_stage(lambda t, pad, u=up, d=dec: d(u, t, pad), skip, r0, r1, height)
            y = _crop_rows(y, lo, hi, a, b)
            outs.append(parts["head"](y) if i == 0 else y)
        return torch.cat(outs, dim=2)

    def _upsample_rows(self, i: int, low: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) of the ×2 bilinear (``align_corners=True``) upsampling of ``low``."""
        h = (self.size[0] >> i) // 2
        width = self.size[1] >> i
        weights = getattr(self, f"row_weights_{i}")
        e0, e1 = r0 // 2, (r1 + 1) // 2  # output rows 2k and 2k + 1 for k in [e0, e1)
        current = low[:, :, e0:e1]
        even = _clamped_rows(low, e0 - 1, e1 - 1, h) * weights[0, :, :, e0:e1] + current * weights[1, :, :, e0:e1]
        odd = current * weights[2, :, :, e0:e1] + _clamped_rows(low, e0 + 1, e1 + 1, h) * weights[3, :, :, e0:e1]
        rows = torch.stack([even, odd], dim=3).flatten(2, 3)
        rows = _crop_rows(rows, 2 * e0, 2 * e1, r0, r1)
        return F.interpolate(rows, size=(r1 - r0, width), mode="bilinear", align_corners=True)


def _full_res_rows(stages: nn.ModuleList, x: torch.Tensor, r0: int, r1: int, height: int) -> torch.Tensor:
    """Rows [r0, r1) of the full-resolution branch (the 3×3 ``stages``), from the input rows they depend on."""
    halo = len(stages)
    lo, hi = max(r0 - halo, 0), min(r1 + halo, height)
    y = x[:, :, lo:hi]
    for stage in stages:
        y, lo, hi = _rows_stage(stage, y, lo, hi, height)
    return _crop_rows(y, lo, hi, r0, r1)


def _rows_stage(stage, x: torch.Tensor, lo: int, hi: int, height: int) -> tuple[torch.Tensor, int, int]:
    """A 3×3 "same" stage on rows [lo, hi) of a map ``height`` rows tall; returns its valid rows and their range:
    [lo + 1, hi − 1), widened to the image edge where the band touches it (zero padding there)."""
    at_edge = lo == 0 or hi == height
    y = stage(x, at_edge)
    if not at_edge:
        return y, lo + 1, hi - 1
    start, stop = (lo if lo == 0 else lo + 1), (hi if hi == height else hi - 1)
    return _crop_rows(y, lo, hi, start, stop), start, stop


def _crop_rows(x: torch.Tensor, first: int, last: int, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of a band holding rows [first, last) (no slice when that is the whole band)."""
    if (start, stop) == (first, last):
        return x
    return x[:, :, start - first:stop - first]
