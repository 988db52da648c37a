"""The fitting step as an export target (:mod:`export.training`): ExecuTorch step = eager step, manifest, CLI, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import pgn
from pgn.export.training import (
    MAX_INT8_UPDATE_ERROR,
    MAX_PARAMETER_ERROR,
    FittingLoss,
    SGDRecipe,
    eager_step,
    executorch_training_available,
    export_training_step,
    load_training,
)
from pgn.export.vgg_gradient import VGGInputGradient, first_maximum_mask
from pgn.errors import PGNError
from pgn.surrogate import surrogate_loss

needs_executorch = pytest.mark.skipif(executorch_training_available() is not None, reason="ExecuTorch is not installed")
LR = 1e-2  # large enough that a wrong gradient moves the parameters by far more than the 1e-5 tolerance


class TinyGenerator(nn.Module):
    """(N, 4, 16, 16) codes → (N, 3, 16, 16) images in (0, 1): two convolutions, one with stride 2, and a bias-free one."""

    def __init__(self, out_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.out = nn.Conv2d(8, out_channels, 3, padding=1)

    def forward(self, z):
        h = torch.nn.functional.leaky_relu(self.conv1(z), 0.2)
        h = torch.nn.functional.leaky_relu(self.conv2(h), 0.2)
        h = h[:, :, :, None, :, None].expand(-1, -1, -1, 2, -1, 2).reshape(h.shape[0], h.shape[1], 16, 16)
        return torch.sigmoid(self.out(h))


@pytest.fixture(scope="module")
def fit_case():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return TinyGenerator(), torch.rand(2, 4, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# The VGG input gradient with forward operators (no ExecuTorch needed)


@pytest.mark.parametrize("net", ["vgg19", "vgg11"])
def test_the_hand_written_vgg_gradient_is_autograds(net):
    teacher = pgn.PerceptualLoss(net, "random").double()  # float64: no ReLU or |a − t| lands on the other side of 0
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(2, 3, 16, 16, generator=g).double(), torch.rand(2, 3, 16, 16, generator=g).double()  # the least size VGG takes
    grad, loss = VGGInputGradient(teacher).double()(y_hat, y)
    expected, expected_loss = teacher.gradient_and_loss(y_hat, y)
    assert float((grad - expected).abs().max() / expected.abs().max()) < 1e-6  # fp32 ImageNet constants; a wrong backward is O(1)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)


def test_the_backward_convolutions_read_their_own_weight_buffers():
    module = VGGInputGradient(pgn.PerceptualLoss("vgg11", "random"))
    forward = {getattr(module, f"weight{i}").data_ptr() for i in range(module.convs)}
    assert not forward & {w.data_ptr() for w in module.backward_weights}  # shared buffers: wrong gradients in XNNPACK


def test_max_pool_ties_route_to_the_first_maximum_as_autograd_does():
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0]])[None, None].repeat(1, 2, 2, 2)  # every window has a three-way tie
    x[0, 1, 0, 1] = 3.0
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.max_pool2d(xr, 2).sum().backward()
    mask = first_maximum_mask(x.reshape(1, 2, 2, 2, 2, 2)).reshape(x.shape)
    torch.testing.assert_close(mask, xr.grad)


def test_pgnloss_value_is_the_shared_surrogate():
    model = pgn.build("resnet4")
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    proxy = model._compute(y_hat, y).proxy
    expected = surrogate_loss(y_hat, proxy, model.alpha, y, 20.0)
    torch.testing.assert_close(pgn.PGNLoss(model, 20.0, reduction="none")(y_hat, y), expected, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written (these fail before lowering, so they are fast)


def test_a_generator_output_that_is_not_an_image_is_refused(tmp_path, fit_case):
    _, z, y = fit_case
    with pytest.raises(PGNError, match=r"must be a 3-channel image \(N, 3, H, W\), it returns \(2, 1, 16, 16\)"):
        export_training_step(TinyGenerator(out_channels=1), (z,), "mse", output=tmp_path / "a.pte")
    assert not list(tmp_path.iterdir())


def test_a_target_of_another_shape_is_refused(tmp_path, fit_case):
    generator, z, y = fit_case
    with pytest.raises(PGNError, match=r"the target has shape \(2, 3, 32, 32\), the generator makes \(2, 3, 16, 16\)"):
        export_training_step(generator, (z,), "mse", output=tmp_path / "a.pte", target=torch.rand(2, 3, 32, 32))
    assert not list(tmp_path.iterdir())


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, z):
        return self.conv(z) if bool(z.sum() > 0) else -self.conv(z)


def test_a_generator_torch_export_cannot_capture_is_one_line(tmp_path, fit_case):
    _, z, _ = fit_case
    with pytest.raises(PGNError) as info:
        export_training_step(_DataDependent(), (z,), "mse", output=tmp_path / "a.pte")
    assert str(info.value).startswith("torch.export cannot capture the generator") and "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_the_heap_from_before_is_set_aside_while_a_step_exports(fit_case, tmp_path, monkeypatch, unfrozen_heap):
    import gc

    from pgn.export import training

    frozen = []
    monkeypatch.setattr(training, "executorch_training_available", lambda: frozen.append(gc.get_freeze_count()) or "stop here")
    generator, z, _ = fit_case
    with pytest.raises(PGNError, match="stop here"):
        export_training_step(generator, (z,), "mse", output=tmp_path / "a.pte")
    assert frozen and frozen[0] > 0 and gc.get_freeze_count() == 0


def test_unknown_losses_and_precisions_are_refused():
    with pytest.raises(PGNError, match="unknown fitting loss 'l2'"):
        FittingLoss.of("l2")
    with pytest.raises(PGNError, match="precision must be one of fp32, int8"):
        FittingLoss.pgn(pgn.build("resnet4"), precision="fp16")
    with pytest.raises(PGNError, match="lr > 0"):
        SGDRecipe(lr=0)


def test_a_loss_checkpoint_for_another_backbone_is_one_line(tmp_path):
    from pgn.export.cli import main

    pgn.save(pgn.build("unet"), tmp_path / "unet.pt")
    torch.export.save(torch.export.export(TinyGenerator(), (torch.rand(1, 4, 16, 16),)), tmp_path / "g.pt2")
    result = CliRunner().invoke(main, ["--target", "executorch-training", "--generator", str(tmp_path / "g.pt2"),
                                       "--loss", "pgn", "--backbone", "resnet4", "--checkpoint", str(tmp_path / "unet.pt"),
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "unet" in result.output, result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Exported and run in ExecuTorch (each export takes tens of seconds on 2 cores)


@pytest.fixture(scope="module")
def pgn_model():
    torch.manual_seed(2)
    return pgn.build("resnet4")


def _export_pgn_step(fit_case, model, precision, tmp_path_factory, mse_weight=20.0):
    if executorch_training_available() is not None:
        pytest.skip("ExecuTorch is not installed")
    generator, z, y = fit_case
    path = tmp_path_factory.mktemp("fit") / f"tiny-pgn-{precision}.pte"
    export_training_step(generator, (z,), FittingLoss.pgn(model, mse_weight=mse_weight, precision=precision), output=path,
                         target=y, optimizer=SGDRecipe(lr=LR))
    return path, model


@pytest.fixture(scope="module")
def pgn_program(fit_case, pgn_model, tmp_path_factory):
    return _export_pgn_step(fit_case, pgn_model, "fp32", tmp_path_factory)


@pytest.fixture(scope="module")
def int8_program(fit_case, pgn_model, tmp_path_factory):
    return _export_pgn_step(fit_case, pgn_model, "int8", tmp_path_factory, mse_weight=0.0)  # the PGN's gradient alone


def _manifest(path):
    return json.loads((path.parent / (path.name + ".manifest.json")).read_text())


def _sgd_step(generator, loss_of_image, lr=LR):
    """Parameters of a copy of ``generator`` after one eager ``torch.optim.SGD`` step on ``loss_of_image(ŷ)``."""
    generator = copy.deepcopy(generator)
    sgd = torch.optim.SGD(generator.parameters(), lr=lr)
    loss_of_image(generator).backward()
    sgd.step()
    return {n: p.detach().clone() for n, p in generator.named_parameters()}


def _update_distance(a, b, start):
    """``|Δa − Δb| / |Δb|`` over all parameters as one vector (Δ: the update from ``start``)."""
    da = torch.cat([(a[k] - start[k]).flatten() for k in sorted(start)])
    db = torch.cat([(b[k] - start[k]).flatten() for k in sorted(start)])
    return float((da - db).norm() / db.norm())


@pytest.mark.slow
@needs_executorch
def test_pgn_step_in_executorch_equals_the_eager_pgnloss_step(fit_case, pgn_program):
    generator, z, y = fit_case
    path, model = pgn_program
    manifest = _manifest(path)
    assert manifest["target"] == "executorch-training" and manifest["status"] == "verified"
    assert manifest["verification"]["max_relative_parameter_error"] <= MAX_PARAMETER_ERROR
    assert [p["name"] for p in manifest["trainable_parameters"]] == [n for n, _ in generator.named_parameters()]
    assert [i["shape"] for i in manifest["inputs"]] == [[2, 4, 16, 16], [2, 3, 16, 16]]
    assert manifest["optimizer"]["name"] == "sgd" and manifest["optimizer"]["lr"] == LR
    assert manifest["exporter"]["delegates"].get("XnnpackBackend", 0) > 0 and manifest["exporter"]["planned_memory_mb"] > 0
    assert not [op for op in manifest["exporter"]["outside_delegate"] if "convolution" in op]

    program = load_training(path)
    losses = [program.step(z, y) for _ in range(2)]
    assert program.loss == losses[-1]
    reference = copy.deepcopy(generator)
    sgd = torch.optim.SGD(reference.parameters(), lr=LR)
    for _ in range(2):
        sgd.zero_grad()
        pgn.PGNLoss(model, 20.0)(reference(z), y).backward()
        sgd.step()
    start = dict(generator.named_parameters())
    fitted = copy.deepcopy(generator)
    fitted.load_state_dict(program.state_dict(), strict=False)
    for name, p in fitted.named_parameters():
        expected = dict(reference.named_parameters())[name].detach()
        assert float((expected - start[name]).abs().max()) > 100 * MAX_PARAMETER_ERROR * float(expected.abs().max())
        assert float((p.detach() - expected).abs().max() / expected.abs().max()) <= MAX_PARAMETER_ERROR, name
    saved = program.save(path.parent / "fitted.pt")
    assert set(torch.load(saved)) == {n for n, _ in generator.named_parameters()}
    with pytest.raises(PGNError, match=r"target has shape \(2, 3, 32, 32\), the program takes \(2, 3, 16, 16\)"):
        program.step(z, torch.rand(2, 3, 32, 32))


@pytest.mark.slow
@needs_executorch
def test_int8_pgn_step_equals_the_eager_step_of_the_same_quantized_program(fit_case, int8_program, pgn_program):
    from pgn.export.graph import ExportGraph
    from pgn.export.executorch import TARGET
    from pgn.export.training import freeze_as_constants, quantized_proxy

    generator, z, y = fit_case
    path, model = int8_program
    manifest = _manifest(path)
    assert manifest["status"] == "verified" and manifest["loss"]["precision"] == "int8"
    assert "int8" in manifest["verification"]["against"]
    assert manifest["size_mb"] < _manifest(pgn_program[0])["size_mb"]  # int8 weights, no fp32 copies kept
    program = load_training(path)
    program.step(z, y)
    ours = program.parameters()

    # the same quantized PGN graph, run eagerly (quantization simulated in fp32), feeding pgn.surrogate_loss
    graph = freeze_as_constants(ExportGraph(copy.deepcopy(model), outputs="grad", size=(16, 16),
                                            graph_options=TARGET.default_graph_options))
    quantized = quantized_proxy(graph, 2, (16, 16))

    def int8_loss(g):
        image = g(z)
        return surrogate_loss(image, quantized(image.detach(), y)[0].detach(), model.alpha).sum()

    int8_reference = _sgd_step(generator, int8_loss)
    fp32_reference = _sgd_step(generator, lambda g: pgn.PGNLoss(model)(g(z), y))
    start = {n: p.detach() for n, p in generator.named_parameters()}
    to_int8, to_fp32 = _update_distance(ours, int8_reference, start), _update_distance(ours, fp32_reference, start)
    # XNNPACK's integer kernels round a few proxy values one quantization step away from the fp32 simulation
    assert to_int8 <= MAX_INT8_UPDATE_ERROR, to_int8
    assert 2 * to_int8 < to_fp32 < 0.05, (to_int8, to_fp32)  # int8 indeed (nearer its own graph), close to the fp32 update


@pytest.mark.slow
@needs_executorch
def test_cli_exports_a_pt2_generators_vgg_step_verified(tmp_path, fit_case):
    from pgn.export.cli import main

    generator, z, _ = fit_case
    torch.export.save(torch.export.export(generator, (z,)), tmp_path / "tiny.pt2")
    result = CliRunner().invoke(main, ["--target", "executorch-training", "--generator", str(tmp_path / "tiny.pt2"),
                                       "--loss", "vgg11", "--vgg-weights", "random", "--lr", str(LR),
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "out" / "tiny-vgg11-fitting.pte"
    manifest = json.loads((tmp_path / "out" / "tiny-vgg11-fitting.pte.manifest.json").read_text())
    assert manifest["verification"]["passed"] and "pgn.PerceptualLoss" in manifest["verification"]["against"]
    # the frozen VGG and its hand-written backward run in XNNPACK: no convolution (backward) on portable kernels
    assert not [op for op in manifest["exporter"]["outside_delegate"] if "convolution" in op or "pool" in op]
    program = load_training(path)
    program.step(z, torch.rand(2, 3, 16, 16))
    ours = program.parameters()
    assert set(ours) == {n for n, _ in generator.named_parameters()}


@pytest.mark.slow
@needs_executorch
def test_an_operator_without_a_kernel_is_named(tmp_path, fit_case):
    _, z, _ = fit_case

    class WithI0e(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 3, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(torch.special.i0e(self.conv(x)))

    with pytest.raises(PGNError) as info:
        export_training_step(WithI0e(), (z,), "mse", output=tmp_path / "a.pte", kernels="portable")
    assert "aten.special_i0e" in str(info.value) and "change the generator" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_eager_reference_step_moves_parameters(fit_case):
    generator, z, y = fit_case
    after = eager_step(generator, (z,), y, FittingLoss.mse(), SGDRecipe(lr=LR))
    assert any(float((after[n] - p).abs().max()) > 0 for n, p in generator.named_parameters())
