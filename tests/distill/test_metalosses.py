import pytest
import torch

import pgn
from pgn.distill.config import DistillConfig
from pgn.distill.metalosses import MetaLossWeights, TeacherPass, gradient_metrics, meta_loss, teacher_pass
from pgn.heads import GradientHead, HeadConfig


@pytest.fixture(scope="module")
def teacher():
    return pgn.PerceptualLoss("vgg19", weights="random", value_space="imagenet")


def test_presets_are_swapped_between_paper_and_reference():
    ref = DistillConfig().resolved()
    paper = DistillConfig(loss_preset="paper").resolved()
    assert (ref.vgg_weight, ref.l1_weight) == (0.2, 0.5)
    assert (paper.vgg_weight, paper.l1_weight) == (0.5, 0.2)
    assert DistillConfig(loss_preset="paper", vgg_weight=0.3).resolved().vgg_weight == 0.3


def test_teacher_pass_matches_perceptual_loss(teacher):
    torch.manual_seed(0)
    y_hat, y = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    out = teacher_pass(teacher, y_hat, y)
    g, losses = teacher.gradient_and_loss(y_hat, y)
    torch.testing.assert_close(out.grad, g)
    torch.testing.assert_close(out.loss, losses)


def test_terms_are_per_sample_with_named_weights(teacher):
    torch.manual_seed(0)
    y_hat, y = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    proxy = torch.randn(3, 3, 32, 32, requires_grad=True)
    grad = torch.randn(3, 3, 32, 32) * 1e-3
    true = teacher_pass(teacher, y_hat, y)
    w = MetaLossWeights(grad=1.0, vgg=0.2, l1=0.5)
    total, terms = meta_loss(grad, proxy, y_hat, y, true, teacher, w)
    assert set(terms) == {"grad", "vgg", "l1"} and total.shape == (3,)
    expected_grad = 2.0**26 * (grad - true.grad).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(terms["grad"], expected_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["l1"], 0.5 * (proxy - y).abs().flatten(1).mean(1))
    torch.testing.assert_close(terms["vgg"], 0.2 * teacher.per_sample(proxy, y), rtol=1e-5, atol=1e-6)
    total.sum().backward()
    assert proxy.grad is not None and proxy.grad.abs().sum() > 0
    _, only_grad = meta_loss(grad, proxy, y_hat, y, true, teacher, MetaLossWeights(vgg=0, l1=0))
    assert set(only_grad) == {"grad"}


def test_grad_term_is_a_weighted_proxy_mse_at_224():
    """With a proxy head (α = 40) at 224², g_PGN − g_true = 2α/(CHW)·(P* − P), where P* = ŷ − CHW/(2α)·g_true is the
    "true proxy"; so the default grad term is 2^26·(80/150528)² ≈ 18.96 times mean (P − P*)²."""
    torch.manual_seed(0)
    head = GradientHead(HeadConfig(kind="proxy", grad_scale=0.025))
    y_hat, y, proxy = (torch.randn(2, 3, 224, 224, dtype=torch.float64) for _ in range(3))
    g_true = 1e-3 * torch.randn(2, 3, 224, 224, dtype=torch.float64)
    true_proxy = y_hat - (3 * 224 * 224 / (2 * head.config.alpha)) * g_true
    teacher_out = TeacherPass(g_true, torch.zeros(2), [])
    _, terms = meta_loss(head.gradient(y_hat, proxy), proxy, y_hat, y, teacher_out, None, MetaLossWeights(vgg=0.0, l1=0.0))
    factor = terms["grad"] / (proxy - true_proxy).pow(2).flatten(1).mean(dim=1)
    torch.testing.assert_close(factor, torch.full((2,), 18.955, dtype=torch.float64), rtol=1e-3, atol=0)


def test_gradient_metrics():
    g = torch.randn(2, 3, 8, 8)
    m = gradient_metrics(g, g)
    torch.testing.assert_close(m["cos"], torch.ones(2))
    torch.testing.assert_close(m["rel_err"], torch.zeros(2))
    m = gradient_metrics(-2 * g, g)
    torch.testing.assert_close(m["cos"], -torch.ones(2))
    torch.testing.assert_close(m["norm_ratio"], 2 * torch.ones(2))
    torch.testing.assert_close(m["rel_err"], 3 * torch.ones(2))
