"""The exported module itself, in PyTorch: same numbers as the PGN, BatchNorm folded, and the fp16 recipe."""

import copy

import numpy as np
import pytest
import torch

import pgn
from pgn.export.graph import ExportGraph, GradientRecipe, fold_batchnorm

from export_helpers import build


def _batchnorms(module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


def _cos(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()))


@pytest.mark.parametrize("head, grad_type", [("constrained", "mse"), ("constrained", "l1"), ("constrained", "logcosh"),
                                             ("proxy", "mse"), ("direct", "mse"), ("hybrid", "mse"), ("warped", "mse")])
@pytest.mark.parametrize("dynamic", [False, True])
def test_graph_matches_the_model(head, grad_type, dynamic):
    model = build("resnet4", head=head, grad_type=grad_type)
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(2, 3, 32, 48, generator=g), torch.rand(2, 3, 32, 48, generator=g)
    with torch.no_grad():
        ref = copy.deepcopy(model).double().outputs(y_hat.double(), y.double())
        proxy, grad = ExportGraph(model, size=(32, 48), dynamic=dynamic)(y_hat, y)
    assert proxy.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), ref.grad, rtol=0, atol=1e-5 * float(ref.grad.abs().max()))
    torch.testing.assert_close(proxy.double(), ref.proxy, rtol=0, atol=1e-5 * float(ref.proxy.abs().max()))


def test_imagenet_value_space_model_exports_unit_space():
    model = build("unet", value_space="imagenet")
    unit = build("unet")
    y_hat, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        proxy, grad = ExportGraph(model, size=(64, 64))(y_hat, y)
        ref = unit.outputs(y_hat, y)
    torch.testing.assert_close(grad, ref.grad, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(proxy, ref.proxy, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet4", "unet"])
def test_batchnorm_is_folded_without_changing_numbers(name):
    model = build(name)
    assert _batchnorms(model.backbone) > 0
    folded = fold_batchnorm(model.backbone)
    assert _batchnorms(folded) == 0
    assert _batchnorms(model.backbone) > 0, "the original must stay untouched"
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.backbone(x), rtol=1e-4, atol=1e-5)


def test_the_users_model_is_not_mutated():
    model = build("resnet4").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ExportGraph(model, dtype=torch.float16, outputs="residual", size=(32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype for k, v in model.state_dict().items())


def test_scale_is_a_float_constant_matching_the_closed_form():
    head = pgn.HeadConfig(grad_scale=0.025)
    recipe = GradientRecipe.for_head(head)
    scale = recipe.scale(224, 224)
    assert scale.dtype == np.float32 and scale.shape == (1, 3, 1, 1)
    expected = 40.0 * 2.0 / (3 * 224 * 224) / np.array(pgn.constants.IMAGENET_STD)
    np.testing.assert_allclose(scale.ravel(), expected, rtol=1e-6)
    assert GradientRecipe.for_head(pgn.HeadConfig(grad_type="l1")).k == 1.0
    assert GradientRecipe.for_head(pgn.HeadConfig(kind="hybrid", grad_type="l1")).phi == "identity"  # hybrid: always mse


def test_dynamic_scale_follows_the_input_shape():
    model = build("resnet4")
    graph = ExportGraph(model, size=(32, 32), dynamic=True)
    for h, w in ((32, 32), (48, 80)):
        y_hat, y = torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)
        with torch.no_grad():
            _, grad = graph(y_hat, y)
            ref = model(y_hat, y)
        torch.testing.assert_close(grad, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_fp16_recipe_keeps_a_gradient_that_plain_fp16_loses():
    """At 256² a direct-head gradient is ~1e-7: stored in fp16 it loses most digits; the fp16 residual does not.

    (That the whole fp16 graph stays within tolerance is checked on real fp16 ONNX artifacts in test_export_onnx.)
    """
    model = build("unet", head="direct")
    y = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    y_hat = y.clone()
    with torch.no_grad():
        g = copy.deepcopy(model).double()(y_hat.double(), y.double())
        graph = ExportGraph(model, outputs="residual", size=(256, 256))
        proxy, residual = graph(y_hat, y)
    residual = residual.half().float()  # what an fp16 artifact hands to the host
    assert float(g.abs().max()) < 1e-6  # the underflow regime the recipe exists for
    naive = g.float().half().float()
    recipe = residual * torch.from_numpy(graph.recipe.scale(256, 256))
    assert _cos(naive, g) < 0.999, "plain fp16 gradients should fail the fp16 tolerance here"
    assert _cos(recipe, g) > 0.9999
