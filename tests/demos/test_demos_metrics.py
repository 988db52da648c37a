"""SSIM (window 11, σ = 1.5, zero padding, in [0, 1] space), MSE, gradient cosine, LPIPS availability."""

import sys
import types

import pytest
import torch

from pgn.demos.metrics import LPIPSMetric, gradient_cosine, mse, ssim, ssim_map


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


def test_lpips_without_the_package_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips raises ImportError
    metric = LPIPSMetric.try_load()
    assert not metric.available and metric.reason == "lpips package not installed"
    assert metric(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)) is None


def _fake_lpips(monkeypatch, hub_dir, model_cls):
    module = types.ModuleType("lpips")
    module.LPIPS = model_cls
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))


def test_lpips_without_cached_backbone_weights_says_where(monkeypatch, tmp_path):
    _fake_lpips(monkeypatch, tmp_path, lambda **kwargs: pytest.fail("LPIPS was built without its backbone weights"))
    metric = LPIPSMetric.try_load()
    assert not metric.available
    assert metric.reason.startswith("alex backbone weights not cached") and str(tmp_path / "checkpoints") in metric.reason


def test_lpips_with_cached_weights_scores_images_in_minus_one_to_one(monkeypatch, tmp_path):
    from torchvision.models import AlexNet_Weights

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()
            assert net == "alex"

        def forward(self, a, b):  # (N, 1, 1, 1) like the real one: here the mean absolute difference
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]).write_bytes(b"")
    _fake_lpips(monkeypatch, tmp_path, FakeLPIPS)
    metric = LPIPSMetric.try_load()
    assert metric.available and metric.reason == ""
    values = metric(torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8))
    torch.testing.assert_close(values, torch.full((2,), 2.0))  # [0, 1] images enter LPIPS as [-1, 1]
