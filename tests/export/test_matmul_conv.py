"""Convolutions as batched matrix multiplies (:mod:`export.matmul_conv`): the same numbers as ``nn.Conv2d``."""

import copy

import pytest
import torch
from torch import nn

from pgn.export.matmul_conv import MatmulConv2d, as_matmul_convs, converts

# (in, out, kernel, stride, padding, input H, input W): odd and even sizes, strides that leave input rows unread,
# rectangular kernels, paddings larger than the kernel's reach, 1×1
CASES = [
    (4, 6, 3, 1, 1, 8, 9),
    (4, 6, 3, 2, 1, 9, 8),
    (3, 5, 5, 2, 2, 15, 12),
    (2, 3, 4, 3, 1, 11, 13),
    (4, 5, 3, 2, 0, 9, 10),
    (3, 4, 1, 1, 0, 5, 7),
    (3, 4, (3, 1), (1, 2), (1, 0), 7, 8),
    (2, 2, 3, 1, 3, 4, 4),
]


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, h, w", CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tile_rows", [0, 2])  # one tile, and tiles of 2 output rows (the last one shorter)
def test_forward_and_gradients_equal_conv2d(cin, cout, kernel, stride, padding, h, w, bias, tile_rows):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(2, cin, h, w, requires_grad=True)
    expected = conv(x)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, [x, *conv.parameters()], grad_out)
    ours = copy.deepcopy(conv)
    assert as_matmul_convs(ours) == 1 and type(ours) is MatmulConv2d
    ours.tile_rows = tile_rows
    y = ours(x)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(y, [x, *ours.parameters()], grad_out), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_keeps_parameter_names_and_skips_what_it_cannot_compute():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding="same"),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.ConvTranspose2d(4, 4, 3),
    )
    names = [name for name, _ in model.named_parameters()]
    assert [converts(m) for m in model] == [True, False, False, False, False, False]
    assert as_matmul_convs(model) == 1
    assert [type(m) for m in model][:2] == [MatmulConv2d, nn.Conv2d]
    assert [name for name, _ in model.named_parameters()] == names


@pytest.mark.parametrize("n, c, size, expected_tiles", [(1, 4, 16, 1), (8, 64, 64, 16), (8, 64, 128, 19), (8, 64, 512, 512)])
def test_tiles_are_a_sixteenth_of_the_patches_within_4_to_16_mib(n, c, size, expected_tiles):
    from pgn.export.matmul_conv import MAX_TILE_BYTES, MIN_TILE_BYTES, _Geometry

    g = _Geometry.of((n, c, size, size), (3, c, 3, 3), 1, 1)
    tiles = g.tiles()
    assert tiles[0][0] == 0 and tiles[-1][1] == g.ho and all(a2 == b1 for (_, b1), (a2, _) in zip(tiles, tiles[1:]))
    assert len(tiles) == expected_tiles
    row_bytes = 4 * n * g.wo * g.columns
    biggest = max(b - a for a, b in tiles) * row_bytes
    assert biggest <= max(MAX_TILE_BYTES, row_bytes)  # a single row may be more (never split)
    if len(tiles) > 1:
        assert biggest >= min(MIN_TILE_BYTES, row_bytes * g.ho // 16) - row_bytes
