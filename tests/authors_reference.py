"""Plain re-implementations of the authors' networks, under their module names, for checkpoint tests.

Written for the tests from the architecture description, independently of ``pgn``: their ``state_dict()`` keys
are what the authors' checkpoint files hold (checked against ``pgn/data/authors_state_dict_keys.txt``), and
their forwards run in the authors' order (the UNet decoder deepest level first, each level upsampled, then
concatenated with its skip, then convolved). Tests fill them with weights, write the authors' checkpoint formats,
load those with ``pgn`` and compare.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

KEYS_FILE = Path(__file__).parent / "pgn" / "data" / "authors_state_dict_keys.txt"


def published_keys() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Sections of the published key list: name → [(key, shape)] in registration order."""
    sections: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    current = None
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"\[(\S+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), [])
            continue
        key, shape = line.split()
        current.append((key, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return sections


# ------------------------------------------------------------------------------------------------------------
# Building blocks (their names: cdw/cpw/bn/c1 for Blaze blocks, c/bn/cr for residual blocks)


def sep_conv(cin, cout, k, pad):
    """Grouped k×k conv (groups = gcd) → 1×1 conv → ReLU, as one Sequential."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, groups=math.gcd(cin, cout)), nn.Conv2d(cout, cout, 1), nn.ReLU())


def full_conv(cin, cout, k, pad):
    """k×k conv → ReLU, as one Sequential."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU())


CONVS = {"sep": sep_conv, "full": full_conv}


def norm(kind, c):
    return nn.BatchNorm2d(c) if kind == "batch" else nn.InstanceNorm2d(c)


class DoubleBlaze(nn.Module):
    def __init__(self, norm_type, cin, cout, stride):
        super().__init__()
        self.cdw1 = nn.Conv2d(cin, cout, 5, stride=stride, padding=2, groups=cin, bias=False)
        self.cpw1 = nn.Conv2d(cout, cout, 1, bias=False)
        self.cdw2 = nn.Conv2d(cout, cout, 5, padding=2, groups=cout, bias=False)
        self.cpw2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn1, self.bn2 = norm(norm_type, cout), norm(norm_type, cout)
        if stride == 2:
            self.c1 = nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x):
        y = torch.relu(self.bn1(self.cpw1(self.cdw1(x))))
        y = self.bn2(self.cpw2(self.cdw2(y)))
        return torch.relu(y + (self.c1(x) if hasattr(self, "c1") else x))


class SingleBlaze(nn.Module):
    def __init__(self, norm_type, cin, cout, stride):
        super().__init__()
        self.cdw1 = nn.Conv2d(cin, cout, 5, stride=stride, padding=2, groups=cin, bias=False)
        self.cpw1 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn1 = norm(norm_type, cout)
        if stride == 2:
            self.c1 = nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x):
        return torch.relu(self.bn1(self.cpw1(self.cdw1(x))) + (self.c1(x) if hasattr(self, "c1") else x))


def _conv3(cin, cout, stride):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class SingleRes(nn.Module):
    def __init__(self, norm_type, cin, cout, stride):
        super().__init__()
        self.c1, self.c2 = _conv3(cin, cout, stride), _conv3(cout, cout, 1)
        self.bn1, self.bn2 = norm(norm_type, cout), norm(norm_type, cout)
        if stride == 2:
            self.cr1 = nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x):
        y = self.bn2(self.c2(torch.relu(self.bn1(self.c1(x)))))
        return torch.relu(y + (self.cr1(x) if hasattr(self, "cr1") else x))


class DoubleRes(nn.Module):
    """Two residual sub-blocks; with stride 2 the second one's shortcut is a 1×1 stride-1 conv (cr21)."""

    def __init__(self, norm_type, cin, cout, stride):
        super().__init__()
        self.c11, self.c12 = _conv3(cin, cout, stride), _conv3(cout, cout, 1)
        self.bn11, self.bn12 = norm(norm_type, cout), norm(norm_type, cout)
        self.c21, self.c22 = _conv3(cout, cout, 1), _conv3(cout, cout, 1)
        self.bn21, self.bn22 = norm(norm_type, cout), norm(norm_type, cout)
        if stride == 2:
            self.cr11 = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
            self.cr21 = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x):
        y = self.bn12(self.c12(torch.relu(self.bn11(self.c11(x)))))
        x = torch.relu(y + (self.cr11(x) if hasattr(self, "cr11") else x))
        y = self.bn22(self.c22(torch.relu(self.bn21(self.c21(x)))))
        return torch.relu(y + (self.cr21(x) if hasattr(self, "cr21") else x))


BLOCKS = {"doubleblaze": DoubleBlaze, "singleblaze": SingleBlaze, "singleres": SingleRes, "doubleres": DoubleRes}


# ------------------------------------------------------------------------------------------------------------
# Networks


class AuthorsResNet(nn.Module):
    """ResNet-N generator: one flat Sequential ``model`` (conv/BN/LeakyReLU units take three entries)."""

    def __init__(self, num_blocks=8, down=(64, 128), up=(64,), out_channels=3):
        super().__init__()

        def cbl(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]

        class ResnetBlock(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.conv_block = nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
                )

            def forward(self, x):
                return x + self.conv_block(x)

        layers = cbl(6, down[0], 1)
        for cin, cout in zip(down[:-1], down[1:]):
            layers += cbl(cin, cout, 2)
        layers += [ResnetBlock(down[-1]) for _ in range(num_blocks)]
        c = down[-1]
        for cout in up:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *cbl(c, cout, 1)]
            c = cout
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, y_hat, y):
        return self.model(torch.cat([y_hat, y], 1))


class AuthorsUNet(nn.Module):
    """UNetCustom: encoder ``layer{i}``, laterals ``layer{i}_1x1``, decoder ``conv_up{i-1}`` / ``conv_original_size2``."""

    def __init__(self, out_channels=3, block_type="doubleblaze", conv_type="sep", norm_type="batch",
                 down=(64, 64, 128, 256, 512), up=(64, 128, 256, 256, 512), predict_value=False):
        super().__init__()
        block, conv, n = BLOCKS[block_type], CONVS[conv_type], len(down)
        self.n, self.predict_value = n, predict_value
        self.layer0 = nn.Sequential(nn.Conv2d(6, down[0], 7, stride=2, padding=3, bias=False), norm(norm_type, down[0]), nn.ReLU())
        self.layer1 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), block(norm_type, down[0], down[1], 1))
        for i in range(2, n):
            setattr(self, f"layer{i}", block(norm_type, down[i - 1], down[i], 2))
        self.conv_original_size0 = conv(6, 64, 3, 1)
        self.conv_original_size1 = conv(64, 64, 3, 1)
        for i in range(n):
            setattr(self, f"layer{i}_1x1", conv(down[i], down[i], 1, 0))
        self.conv_original_size2 = conv(64 + up[1], up[0], 3, 1)
        for i in range(1, n):  # registered shallowest level first
            below = up[i + 1] if i < n - 1 else down[n - 1]
            setattr(self, f"conv_up{i - 1}", conv(down[i - 1] + below, up[i], 3, 1))
        if predict_value:
            for i in range(n):
                setattr(self, f"conv_sobolev_{i}", conv(up[i], 128, 3, 1))
            self.linear_sobolev = nn.Linear(128 * n, 1)
        self.conv_last = nn.Conv2d(up[0], out_channels, 1)

    def run(self, y_hat, y):
        inputs = torch.cat([y_hat, y], 1)
        skips = [self.conv_original_size1(self.conv_original_size0(inputs))]
        x = inputs
        for i in range(self.n):
            x = getattr(self, f"layer{i}")(x)
            skips.append(getattr(self, f"layer{i}_1x1")(x))
        x = skips.pop()
        values = []
        for i in reversed(range(self.n)):  # applied deepest level first
            conv = getattr(self, f"conv_up{i - 1}") if i > 0 else self.conv_original_size2
            upsampled = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = conv(torch.cat([upsampled, skips.pop()], 1))
            if self.predict_value:
                values.append(getattr(self, f"conv_sobolev_{i}")(x).mean(dim=(2, 3)))
        value = self.linear_sobolev(torch.cat(values, 1)).squeeze(1) if self.predict_value else None
        return self.conv_last(x), value

    def forward(self, y_hat, y):
        return self.run(y_hat, y)[0]


class AuthorsAutoencoder(nn.Module):
    """The surrogate autoencoder: one flat Sequential ``model`` (stem, [max-pool → block], blocks, bottleneck, up/conv pairs, head)."""

    def __init__(self, depth, block_type="doubleblaze", conv_type="sep"):
        super().__init__()
        block, conv = BLOCKS[block_type], CONVS[conv_type]
        layers = [nn.Sequential(nn.Conv2d(3, 128, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(128), nn.ReLU())]
        widths = [128]
        if depth >= 1:
            layers.append(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), block("batch", 128, 128, 1)))
            widths.append(128)
        for _ in range(2, depth + 1):
            layers.append(block("batch", widths[-1], widths[-1] * 2, 2))
            widths.append(widths[-1] * 2)
        layers.append(conv(widths[-1], widths[-1], 1, 0))  # bottleneck
        up = lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
        layers += [up(), conv(widths[-1], widths[-1], 3, 1)]  # deepest stage keeps its width
        for cin, cout in zip(widths[::-1][:-1], widths[::-1][1:]):
            layers += [up(), conv(cin, cout, 3, 1)]
        layers.append(nn.Conv2d(128, 3, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


# ------------------------------------------------------------------------------------------------------------
# Weights


def realistic_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights of sensible scale, with non-trivial BatchNorm statistics (so every tensor matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                fan_in = max(1, t[0].numel()) if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in) + (1.0 if t.dim() == 1 else 0.0))
    return module.eval()


def distinct_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's keys, each tensor filled with values found nowhere else: tensor i holds i + [0, 1) ramp."""
    out = {}
    for i, (name, t) in enumerate(module.state_dict().items()):
        if t.is_floating_point():
            ramp = torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) / max(t.numel(), 1)
            out[name] = ramp + i
        else:
            out[name] = torch.full_like(t, i)
    return out
