"""Building blocks shared by the UNet backbone and the surrogate autoencoders.

All layers keep PyTorch's default initialization, as the authors' code does.
"""

from __future__ import annotations

import math

from torch import nn

from ..errors import PGNError

BLOCK_TYPES = ("doubleblaze", "singleblaze", "singleres", "doubleres")
CONV_TYPES = ("sep", "full")
NORM_TYPES = ("batch", "instance")


def make_norm(norm_type: str, channels: int) -> nn.Module:
    """BatchNorm (default) or non-affine InstanceNorm, as selected by ``norm_type``."""
    if norm_type == "batch":
        return nn.BatchNorm2d(channels)
    if norm_type == "instance":
        return nn.InstanceNorm2d(channels)
    raise PGNError(f"unknown norm_type {norm_type!r}: use one of {', '.join(NORM_TYPES)}")


class SeparableConv(nn.Module):
    """Grouped k×k conv (groups = gcd(cin, cout), bias) → 1×1 conv (bias) → ReLU; no normalization.

    Truly depthwise only when ``cin == cout``; e.g. 6→64 uses 2 groups (the authors' choice).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.spatial = nn.Conv2d(cin, cout, kernel_size, padding=padding, groups=math.gcd(cin, cout), bias=True)
        self.pointwise = nn.Conv2d(cout, cout, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.pointwise(self.spatial(x)))


class FullConv(nn.Module):
    """Plain k×k conv (bias) → ReLU: the authors' ``full`` alternative to :class:`SeparableConv`."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x))


def make_conv(conv_type: str, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> nn.Module:
    """A separable (``sep``) or full (``full``) conv followed by ReLU."""
    if conv_type == "sep":
        return SeparableConv(cin, cout, kernel_size, padding)
    if conv_type == "full":
        return FullConv(cin, cout, kernel_size, padding)
    raise PGNError(f"unknown conv_type {conv_type!r}: use one of {', '.join(CONV_TYPES)}")


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    # Identity where shapes allow, else a bias-free 1x1 conv with no normalization, as in the authors' blocks
    # (their checkpoints hold exactly these tensors).
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _depthwise(cin: int, cout: int, stride: int) -> nn.Conv2d:
    if cout % cin:
        raise PGNError(f"a Blaze block needs output width divisible by input width, got {cin}→{cout}")
    return nn.Conv2d(cin, cout, 5, stride=stride, padding=2, groups=cin, bias=False)


class DoubleBlazeBlock(nn.Module):
    """Double BlazeBlock: dw5×5(stride) → 1×1 → norm → ReLU → dw5×5 → 1×1 → norm → + shortcut → ReLU.

    All convs are bias-free; the stride-2 shortcut is a 1×1 conv without normalization.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, norm_type: str = "batch"):
        super().__init__()
        self.dw1 = _depthwise(cin, cout, stride)
        self.pw1 = nn.Conv2d(cout, cout, 1, bias=False)
        self.norm1 = make_norm(norm_type, cout)
        self.act1 = nn.ReLU(inplace=True)
        self.dw2 = nn.Conv2d(cout, cout, 5, padding=2, groups=cout, bias=False)
        self.pw2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.norm2 = make_norm(norm_type, cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act1(self.norm1(self.pw1(self.dw1(x))))
        y = self.norm2(self.pw2(self.dw2(y)))
        return self.act2(y + self.shortcut(x))


class SingleBlazeBlock(nn.Module):
    """Single BlazeBlock: dw5×5(stride) → 1×1 → norm → + shortcut → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, norm_type: str = "batch"):
        super().__init__()
        self.dw = _depthwise(cin, cout, stride)
        self.pw = nn.Conv2d(cout, cout, 1, bias=False)
        self.norm = make_norm(norm_type, cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.norm(self.pw(self.dw(x))) + self.shortcut(x))


class SingleResBlock(nn.Module):
    """ResNet basic block: 3×3(stride) → norm → ReLU → 3×3 → norm → + shortcut → ReLU (bias-free convs)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, norm_type: str = "batch", shortcut: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm_type, cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm_type, cout)
        self.shortcut = shortcut if shortcut is not None else _shortcut(cin, cout, stride)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


class DoubleResBlock(nn.Module):
    """Two :class:`SingleResBlock` in sequence.

    Authors' quirk, kept for checkpoint compatibility: when ``stride == 2`` the second block's shortcut is a
    1×1 stride-1 conv instead of the identity.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, norm_type: str = "batch"):
        super().__init__()
        self.first = SingleResBlock(cin, cout, stride, norm_type)
        second_shortcut = nn.Conv2d(cout, cout, 1, bias=False) if stride == 2 else None
        self.second = SingleResBlock(cout, cout, 1, norm_type, shortcut=second_shortcut)

    def forward(self, x):
        return self.second(self.first(x))


def make_block(block_type: str, cin: int, cout: int, stride: int = 1, norm_type: str = "batch") -> nn.Module:
    """One encoder block of the chosen type (``doubleblaze`` is the paper's)."""
    classes = {
        "doubleblaze": DoubleBlazeBlock,
        "singleblaze": SingleBlazeBlock,
        "singleres": SingleResBlock,
        "doubleres": DoubleResBlock,
    }
    if block_type not in classes:
        raise PGNError(f"unknown block_type {block_type!r}: use one of {', '.join(BLOCK_TYPES)}")
    return classes[block_type](cin, cout, stride, norm_type)


def upsample_bilinear() -> nn.Upsample:
    """×2 bilinear upsampling with ``align_corners=True``, as in the authors' UNet and autoencoders."""
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
