"""SSIM (spec §10.3), MSE, gradient cosine, LPIPS availability."""

import pytest
import torch

from demos.metrics import LPIPSMetric, gradient_cosine, mse, ssim, ssim_map


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_ssim_matches_scikit_image_away_from_the_border():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 48, 48, generator=g)
    b = (a + 0.1 * torch.randn(1, 3, 48, 48, generator=g)).clamp(0, 1)
    ours = float(ssim_map(a, b)[..., 5:-5, 5:-5].mean())  # zero padding only touches the 5-pixel border
    ref = metrics.structural_similarity(
        a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), channel_axis=2,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
    )
    assert ours == pytest.approx(ref, abs=1e-6)


def test_ssim_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    small = ssim((x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1), x)
    large = ssim((x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1), x)
    assert float(large) < float(small) < 1.0


def test_mse_is_per_sample_in_unit_space():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    b[1] = 0.5
    assert mse(a, b).tolist() == [0.0, 0.25]


def test_gradient_cosine_is_measured_in_normalized_space():
    g = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gradient_cosine(g, 3.0 * g), torch.ones(2), atol=1e-6)
    assert torch.allclose(gradient_cosine(g, -g), -torch.ones(2), atol=1e-6)
    from pgn.constants import IMAGENET_STD

    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    h = g * torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1)
    expected = torch.nn.functional.cosine_similarity((g * std).flatten(1), (h * std).flatten(1), dim=1)
    unit_space = torch.nn.functional.cosine_similarity(g.flatten(1), h.flatten(1), dim=1)
    torch.testing.assert_close(gradient_cosine(g, h), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, unit_space, atol=1e-4)


def test_lpips_reports_why_it_is_unavailable():
    metric = LPIPSMetric.try_load()
    if metric.available:
        x = torch.rand(1, 3, 32, 32)
        assert float(metric(x, x)[0]) == pytest.approx(0.0, abs=1e-5)
    else:
        assert metric.reason and metric(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)) is None
        assert LPIPSMetric.UNAVAILABLE == "n/a (weights unavailable)"
