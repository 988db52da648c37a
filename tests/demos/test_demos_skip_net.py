"""The DIP skip network of the paper's Deep Image Prior experiments: 572,827 parameters, its layer choices."""

import pytest
import torch
from torch import nn

from pgn.demos.generators import SkipNet, SkipNetConfig
from pgn.errors import PGNError


def test_default_parameter_count_is_the_papers():
    assert sum(p.numel() for p in SkipNet().parameters()) == 572_827


def test_output_shape_and_no_sigmoid_by_default():
    net = SkipNet().train()
    torch.manual_seed(0)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64) * 0.1)
    assert out.shape == (1, 3, 64, 64)
    assert not any(isinstance(m, nn.Sigmoid) for m in net.modules())
    assert float(out.min()) < 0.0  # unbounded output: no sigmoid squashing


def test_sigmoid_option():
    net = SkipNet(SkipNetConfig(need_sigmoid=True))
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_reflection_padding_and_bilinear_align_corners():
    net = SkipNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.padding == (0, 0) for c in convs)  # padding is done by ReflectionPad2d layers
    pads = [m for m in net.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert len(pads) == sum(1 for c in convs if c.kernel_size == (3, 3))
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5 and all(u.mode == "bilinear" and u.align_corners for u in ups)
    assert sum(1 for c in convs if c.stride == (2, 2)) == 5


def test_size_must_be_a_multiple_of_32():
    with pytest.raises(PGNError, match="multiples of 32"):
        SkipNet()(torch.rand(1, 3, 48, 48))
