"""The PyTorch API on a CUDA GPU: same numbers as on the CPU, no host synchronization per call (skipped without a GPU)."""

import pytest
import torch

import pgn

pytestmark = pytest.mark.gpu


def _pair(size=64, device="cuda"):
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, size, size, generator=g).to(device), torch.rand(2, 3, size, size, generator=g).to(device)


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten(), dim=0))


@pytest.fixture
def no_sync():
    """Any synchronizing CUDA call (a .item(), a device-to-host copy) raises while this is active."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("preset", ["resnet4", "unet"])
def test_model_on_cuda_matches_the_cpu(preset):
    torch.manual_seed(0)
    model = pgn.build(preset)
    y_hat, y = _pair()
    ref = model(y_hat.cpu(), y.cpu())
    out = model.cuda()(y_hat, y)
    assert out.is_cuda and out.dtype == torch.float32 and _cos(out, ref) > 0.999  # cuDNN may use TF32
    assert model.proxy(y_hat.double(), y.double()).dtype == torch.float64


@pytest.mark.parametrize("preset", ["resnet4", "unet"])
def test_forward_and_loss_do_not_synchronize(preset, no_sync):
    """Validation stays off the CUDA hot path: structure is checked, values are not read (check_values="auto")."""
    model = pgn.build(preset).cuda()
    y_hat, y = _pair()
    model(y_hat, y)
    x = y_hat.clone().requires_grad_(True)
    pgn.PGNLoss(model, mse_weight=1.0)(x, y).backward()


def test_value_check_on_request_does_synchronize(no_sync):
    model = pgn.build("resnet4").cuda()
    model.check_values = "always"
    y_hat, y = _pair()
    with pytest.raises(RuntimeError, match="synchroniz"):
        model(y_hat, y)


def test_nan_on_cuda_is_caught_when_asked():
    model = pgn.build("resnet4").cuda()
    y_hat, y = _pair()
    y_hat[0, 0, 0, 0] = float("nan")
    assert torch.isnan(model(y_hat, y)).any()  # auto: not read on the GPU, NaN propagates
    model.check_values = "always"
    with pytest.raises(pgn.PGNError, match="NaN"):
        model(y_hat, y)


def test_inputs_on_the_cpu_for_a_cuda_model():
    model = pgn.build("resnet4").cuda()
    with pytest.raises(pgn.PGNError, match="y_hat is on cpu but the model is on cuda:0"):
        model(*_pair(device="cpu"))


def test_teacher_fp16_autocast_gradient_is_loss_scaled():
    """At 224² a VGG-19 gradient is small enough that an unscaled fp16 backward loses much of it."""
    teacher = pgn.PerceptualLoss("vgg19", weights="random", seed=0).cuda()
    y_hat, y = _pair(224)
    ref = teacher.gradient(y_hat, y)
    with torch.autocast("cuda", dtype=torch.float16):
        scaled = teacher.gradient(y_hat, y)
        x = y_hat.clone().requires_grad_(True)
        (unscaled,) = torch.autograd.grad(teacher.per_sample(x, y).sum(), x)
    assert scaled.dtype == torch.float32 and torch.isfinite(scaled).all()
    assert _cos(scaled, ref) > 0.995 and _cos(scaled, ref) >= _cos(unscaled, ref) - 1e-6
