"""Gradients computed in float16 are loss-scaled: small activation gradients survive and come back unscaled in fp32."""

import pytest
import torch

import pgn
from pgn.perceptual import FP16_LOSS_SCALE, input_gradient


def _half_loss(x, y):
    """A per-sample loss whose backward runs in float16 with per-element gradients of ~1e-7, as VGG's at 224²."""
    h = x.half()
    return ((h * h).flatten(1).mean(1) * 0.01).float()


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@pytest.fixture
def image():
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def test_scaled_backward_keeps_gradients_that_underflow_in_fp16(image):
    exact = 0.02 * image / image[0].numel()
    plain, _ = input_gradient(_half_loss, image, None, fp16=False)
    scaled, losses = input_gradient(_half_loss, image, None, fp16=True)
    assert scaled.dtype == torch.float32 and losses.shape == (2,)
    assert _cos(plain, exact) < 0.99  # the unscaled fp16 backward loses them
    assert _cos(scaled, exact) > 0.999999
    torch.testing.assert_close(scaled, exact, rtol=2e-3, atol=1e-3 * float(exact.max()))


def test_overflowing_scale_is_reduced(image):
    def big_loss(x, y):  # per-element gradients of ~16: times 2**15 they overflow float16
        return (x.half() * 4).float().pow(2).flatten(1).sum(1)

    scaled, _ = input_gradient(big_loss, image, None, fp16=True)
    assert torch.isfinite(scaled).all()
    torch.testing.assert_close(scaled, 32 * image, rtol=2e-3, atol=0)


def test_teacher_scales_under_fp16_autocast(monkeypatch, teacher19):
    """PerceptualLoss.gradient asks for loss scaling exactly when it computes in float16."""
    seen = []
    real = pgn.perceptual.input_gradient

    def spy(per_sample, y_hat, y, *, fp16):
        seen.append(fp16)
        return real(per_sample, y_hat, y, fp16=fp16)

    monkeypatch.setattr(pgn.perceptual, "input_gradient", spy)
    y_hat, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    teacher19.gradient(y_hat, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        teacher19.gradient(y_hat, y)
    with torch.autocast("cpu", dtype=torch.float16):
        g16 = teacher19.gradient(y_hat, y)
    assert seen == [False, False, True]
    assert g16.dtype == torch.float32 and _cos(g16, teacher19.gradient(y_hat, y)) > 0.999
    assert FP16_LOSS_SCALE < 65504  # representable in float16, where the backward starts
