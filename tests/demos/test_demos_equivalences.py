"""The identities the demos rest on.

1. A PGN student trained through ``pgn.PGNLoss`` takes exactly the step of the reference's surrogate ``Σ ŷ·g``.
2. The on-device recipe — a weighted MSE towards the PGN's proxy ``P`` — gives the same generator gradients.
3. A student's split step (loss gradient on a detached image, then ``ŷ.backward``) equals plain backprop.
4. The on-device loss over a real ONNX Runtime session reproduces the PyTorch PGN student.
"""

import copy

import pytest
import torch
from proxy_runtimes import TorchProxyRuntime

import pgn
from pgn.demos.common import Student
from pgn.demos.losses import OnDevicePGNLoss, PGNLossTerm, normalized_mse
from pgn.surrogate import surrogate_gradient as proxy_mse_gradient
from pgn.surrogate import surrogate_loss as proxy_mse

HEADS = ["resnet4", "resnet4-proxy", "resnet4-direct", "resnet4-hybrid"]


def param_grads(module):
    return [p.grad.detach().clone() for p in module.parameters()]


def pgn_model(name):
    torch.manual_seed(0)
    return pgn.build(name).double()


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("mse_weight", [0.0, 20.0])
def test_pgnloss_equals_surrogate_sum_y_hat_times_g(name, mse_weight, tiny_generator, fit_inputs):
    model = pgn_model(name)
    z, y = fit_inputs
    a, b = tiny_generator, copy.deepcopy(tiny_generator)
    pgn.PGNLoss(model, mse_weight=mse_weight)(a(z), y).backward()
    y_hat = b(z)
    with torch.no_grad():
        g = model(y_hat.detach(), y)
    surrogate = (y_hat * g).sum() + mse_weight * normalized_mse(y_hat, y).sum()
    surrogate.backward()
    for ga, gb in zip(param_grads(a), param_grads(b)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", HEADS)
def test_on_device_recipe_equals_pgn_gradient(name, tiny_generator, fit_inputs):
    model = pgn_model(name)
    z, y = fit_inputs
    a, b = tiny_generator, copy.deepcopy(tiny_generator)
    pgn.PGNLoss(model, mse_weight=20.0)(a(z), y).backward()
    y_hat = b(z)
    with torch.no_grad():
        proxy = model.proxy(y_hat.detach(), y)  # what the exported graph hands to the device
    (proxy_mse(y_hat, proxy, model.alpha) + 20.0 * normalized_mse(y_hat, y)).sum().backward()
    for ga, gb in zip(param_grads(a), param_grads(b)):
        torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-12)


def test_proxy_mse_gradient_closed_form_is_the_pgn_gradient(fit_inputs):
    model = pgn_model("resnet4")
    y_hat = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    _, y = fit_inputs
    with torch.no_grad():
        out = model.outputs(y_hat, y)
    x = y_hat.clone().requires_grad_(True)
    (g_autograd,) = torch.autograd.grad(proxy_mse(x, out.proxy, model.alpha).sum(), x)
    torch.testing.assert_close(g_autograd, out.grad, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(proxy_mse_gradient(y_hat, out.proxy, model.alpha), out.grad, rtol=1e-9, atol=1e-15)


def test_student_split_step_equals_plain_backprop(tiny_generator, fit_inputs):
    model = pgn_model("resnet4")
    z, y = fit_inputs
    loss = PGNLossTerm(model, mse_weight=20.0)
    student = Student(loss, tiny_generator, lambda g: g(z), y, lr=1e-3, measure_memory=False)
    reference = copy.deepcopy(tiny_generator)
    opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    for _ in range(3):
        student.step()
        opt.zero_grad()
        pgn.PGNLoss(model, mse_weight=20.0)(reference(z), y).backward()
        opt.step()
    for p, q in zip(student.generator.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def _compare_students(model, runtime, gen, steps=3):
    gen = copy.deepcopy(gen).float()
    z = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ondevice = OnDevicePGNLoss(runtime, model.alpha, mse_weight=20.0)
    a = Student(PGNLossTerm(model, 20.0), gen, lambda g: g(z), y, lr=1e-3, measure_memory=False)
    b = Student(ondevice, gen, lambda g: g(z), y, lr=1e-3, measure_memory=False)
    for _ in range(steps):
        (image_a, _), (image_b, _) = a.step(), b.step()
        torch.testing.assert_close(image_a, image_b, rtol=1e-4, atol=1e-5)
    for p, q in zip(a.generator.parameters(), b.generator.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    return ondevice


def test_on_device_loss_reproduces_pgn_student(tiny_generator):
    torch.manual_seed(0)
    model = pgn.build("resnet4")
    ondevice = _compare_students(model, TorchProxyRuntime(model), tiny_generator)
    assert ondevice.max_recipe_deviation < 1e-5


def test_on_device_loss_with_onnx_runtime(ort_runtime_factory, tiny_generator):
    torch.manual_seed(0)
    model = pgn.build("resnet4")
    runtime = ort_runtime_factory(model, (2, 3, 32, 32))
    ondevice = _compare_students(model, runtime, tiny_generator)
    assert ondevice.max_recipe_deviation < 1e-4


def test_on_device_loss_with_the_export_package(tmp_path, tiny_generator):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason="the onnx extra is not installed")
    from pgn.demos.ondevice import open_onnx_runtime

    torch.manual_seed(0)
    model = pgn.build("resnet4")
    runtime, status = open_onnx_runtime(model, (32, 32), 2, tmp_path)
    assert status == "ok" and list(tmp_path.rglob("*.onnx"))
    ondevice = _compare_students(model, runtime, tiny_generator)
    assert ondevice.max_recipe_deviation < 1e-4


def test_missing_onnx_extra_is_reported(monkeypatch, tmp_path):
    import builtins

    from pgn.demos.ondevice import open_onnx_runtime

    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "onnx" or name.startswith("onnx.")):
            raise ImportError("No module named 'onnx'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    runtime, status = open_onnx_runtime(pgn.build("resnet4"), (32, 32), 1, tmp_path)
    assert runtime is None and 'pip install "pgn-toolkit[onnx]"' in status
