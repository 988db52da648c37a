"""The exact grouped-conv rewrite of ``onnxruntime-dw``: same outputs, same MACs, only where it applies."""

import torch

from pgn.benchmarks.models import build_pgn, make_inputs
from pgn.benchmarks.rewrite import DepthwiseGroupSumConv, rewritable_count, rewrite_grouped_convs
from pgn.benchmarks.runtimes import RUNTIMES, check_runnable
from pgn.benchmarks.models import resolve_model
from pgn.backbones.blocks import SeparableConv


def test_separable_conv_rewrite_is_exact():
    torch.manual_seed(0)
    sep = SeparableConv(12, 4, 3, 1)  # 4 groups of 3 inputs, one output each
    x = torch.randn(2, 12, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(DepthwiseGroupSumConv(sep)(x), sep(x), rtol=1e-5, atol=1e-6)


def test_unet_rewrite_keeps_the_gradient_and_the_original():
    unet = build_pgn("unet", 0)
    assert rewritable_count(unet) >= 1
    fast = rewrite_grouped_convs(unet)
    assert rewritable_count(fast) == 0 and rewritable_count(unet) >= 1  # the original is untouched
    y_hat, y = make_inputs(1, (64, 64))
    with torch.no_grad():
        for name, ours, reference in (
            ("gradient", fast(y_hat, y), unet(y_hat, y)),
            ("proxy", fast.proxy(y_hat, y), unet.proxy(y_hat, y)),
        ):
            # float rounding differs (the sums are reassociated): compare against the tensor's own scale
            relative = ((ours - reference).norm() / reference.norm()).item()
            assert relative < 1e-5, f"{name}: relative error {relative:.2e}"


def test_rewrite_runtime_is_not_applicable_without_grouped_convs():
    assert rewritable_count(build_pgn("resnet4", 0)) == 0
    skip = check_runnable(RUNTIMES["onnxruntime-dw"], "cpu", resolve_model("resnet4"))
    assert skip.status == "not-applicable" and "nothing to rewrite" in skip.reason
