"""Backbones, presets, heads and value spaces of the PGN model."""

import pytest
import torch

import pgn
from pgn.backbones import build_backbone
from pgn.constants import IMAGENET_MEAN, IMAGENET_STD
from pgn import presets
from pgn.heads import HEAD_KINDS
from pgn.presets import PRESETS, preset_config, preset_description

PAPER_PARAMS = {"resnet4": 1_335_875, "resnet6": 1_927_235, "resnet8": 2_518_595, "unet": 1_765_891}


@pytest.mark.parametrize("name,expected", PAPER_PARAMS.items())
def test_paper_parameter_counts(name, expected):
    model = pgn.build(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert pgn.profile(model).params == expected


def test_unet_parts_and_residual_block():
    unet = build_backbone("unet")
    parts = {k: sum(p.numel() for p in getattr(unet, k).parameters()) for k in ("encoder", "full_res", "laterals", "decoder", "head")}
    assert parts == {"encoder": 939_136, "full_res": 10_752, "laterals": 355_328, "decoder": 460_480, "head": 195}
    r0, r1 = (sum(p.numel() for p in build_backbone("resnet", {"num_blocks": n}).parameters()) for n in (0, 1))
    assert r1 - r0 == 295_680 and r0 == 153_155


def test_resnet_any_depth_and_widths():
    for n in (0, 1, 3, 11):
        assert sum(p.numel() for p in build_backbone("resnet", {"num_blocks": n}).parameters()) == 153_155 + n * 295_680
    m = pgn.build("resnet4", num_blocks=2, down_channels=(16, 32, 64), up_channels=(32, 16))
    x = torch.rand(1, 3, 40, 48)
    assert m(x, x).shape == x.shape
    assert m.size_multiple == 4


@pytest.mark.parametrize("name", pgn.list_presets())
def test_every_preset_runs(name):
    model = pgn.build(name)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model.outputs(x, y)
    assert out.grad.shape == x.shape and out.proxy.shape == x.shape
    assert torch.isfinite(out.grad).all()
    assert model.config.preset == name


def test_preset_registry():
    assert {"resnet4", "resnet6", "resnet8", "unet", "resnet8-direct", "resnet8-proxy", "resnet8-hybrid"} <= set(pgn.list_presets())
    assert pgn.list_presets("unet*")[0] == "unet"
    with pytest.raises(pgn.PGNError, match="did you mean|Did you mean"):
        pgn.build("resnet5")
    with pytest.raises(ValueError, match="already registered"):
        pgn.register_preset("resnet4")(lambda: None)
    with pytest.raises(pgn.PGNError, match="unknown option"):
        pgn.build("resnet4", num_layers=3)
    assert pgn.build("unet").config.head.grad_scale == pytest.approx(0.048)
    assert pgn.build("resnet4").alpha == pytest.approx(40.0)


def test_every_backbone_has_every_head_as_a_preset_with_a_description():
    names = {row.name for row in PRESETS}
    assert names == {f"{base}{'' if head == 'constrained' else '-' + head}" for base in PAPER_PARAMS for head in HEAD_KINDS}
    assert set(pgn.list_presets()) >= names
    for row in PRESETS:
        config = preset_config(row.name)
        assert (config.preset, config.head.kind) == (row.name, row.head)
        assert preset_description(row.name) == row.description and row.name.split("-")[0].replace("resnet", "ResNet-").replace("unet", "UNet") in row.description
    assert preset_config("resnet8-direct").backbone_params["num_blocks"] == 8 and preset_config("unet-proxy").backbone == "unet"


def test_registered_preset_takes_its_description_from_the_docstring(monkeypatch):
    monkeypatch.setattr(presets, "_REGISTRY", dict(presets._REGISTRY))  # leave the real registry as it was

    @pgn.register_preset("resnet2-test")
    def resnet2() -> pgn.PGNConfig:
        """ResNet-2: a smaller PGN for tests.

        More text that is not part of the description.
        """
        return pgn.PGNConfig("resnet", {"num_blocks": 2}, preset="resnet2-test")

    pgn.register_preset("unet-test", description="UNet under another name")(lambda: preset_config("unet"))
    assert preset_description("resnet2-test") == "ResNet-2: a smaller PGN for tests."
    assert preset_description("unet-test") == "UNet under another name"
    assert pgn.build("resnet2-test").config.backbone_params["num_blocks"] == 2


@pytest.mark.parametrize("head", HEAD_KINDS)
@pytest.mark.parametrize("value_space", ["unit", "imagenet"])
def test_closed_form_gradient_matches_autograd(head, value_space, pair):
    """g equals autograd's gradient of α·loss(ŷ, sg[P]) w.r.t. the tensor the caller passed."""
    torch.manual_seed(1)
    model = pgn.build(f"resnet4-{head}" if head != "constrained" else "resnet4", value_space=value_space)
    x, y = pair
    out = model.outputs(x, y)
    xr = x.clone().requires_grad_(True)
    to_n = (lambda t: pgn.normalize(t)) if value_space == "unit" else (lambda t: t)
    proxy_n = to_n(out.proxy).detach()
    loss = model.head.loss(to_n(xr), proxy_n).sum()
    (g_auto,) = torch.autograd.grad(loss, xr)
    # the proxy went through the value-space round trip; tolerate float rounding relative to the gradient's scale
    # (the direct head's ŷ − P is ~1e-3 of ŷ, so its reference loses ~3 digits to cancellation)
    scale = float(g_auto.abs().max()) * (2e-3 if head == "direct" else 1e-4)
    torch.testing.assert_close(out.grad, g_auto, rtol=1e-3, atol=scale)
    cos = torch.nn.functional.cosine_similarity(out.grad.flatten(), g_auto.flatten(), dim=0)
    assert cos > 0.99999


@pytest.mark.parametrize("grad_type", ["l1", "logcosh"])
def test_other_proxy_losses_match_autograd(grad_type, pair):
    model = pgn.build("resnet4-proxy", grad_type=grad_type, value_space="imagenet")
    x, y = pair
    out = model.outputs(x, y)
    xr = x.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(model.head.loss(xr, out.proxy.detach()).sum(), xr)
    torch.testing.assert_close(out.grad, g_auto, rtol=1e-4, atol=1e-9)


def test_constrained_head_formula(pair):
    """Paper Eq. 6-7 as the authors' code computes it: g = 40·(2/(CHW))·(ŷ − 1.1·((sigmoid(B) − μ)/σ)), normalized space."""
    model = pgn.build("resnet4", value_space="imagenet")
    x, y = pair
    out = model.outputs(x, y)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = 40 * (2 / (3 * 32 * 32)) * (x - 1.1 * ((torch.sigmoid(out.raw) - mean) / std))
    torch.testing.assert_close(out.grad, expected, rtol=1e-5, atol=1e-9)


def test_direct_head_follows_authors_code(pair):
    model = pgn.build("resnet8-direct", value_space="imagenet")
    x, y = pair
    out = model.outputs(x, y)
    expected = out.raw / 512 * (2 / (3 * 32 * 32)) / 0.025
    torch.testing.assert_close(out.grad, expected, rtol=1e-6, atol=1e-12)


def test_hybrid_with_zero_backbone_is_not_identity(pair):
    model = pgn.build("resnet8-hybrid", value_space="imagenet")
    x, _ = pair
    zero = torch.zeros_like(x)
    p = model.head.proxy(zero, x, x)
    expected = 1.1 * ((torch.sigmoid(x) - model.head.mean) / model.head.std)
    torch.testing.assert_close(p, expected)


def test_value_spaces_agree(pair):
    """The unit-space model is the imagenet-space model seen through the normalization."""
    unit = pgn.build("resnet4")
    imagenet = pgn.build("resnet4", value_space="imagenet")
    imagenet.load_state_dict(unit.state_dict())
    x, y = pair
    out_u = unit.outputs(x, y)
    out_n = imagenet.outputs(pgn.normalize(x), pgn.normalize(y))
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out_u.grad, out_n.grad / std, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(pgn.normalize(out_u.proxy), out_n.proxy, rtol=1e-5, atol=1e-6)


def test_constrained_proxy_range():
    """β stretches (0, 1) about the ImageNet mean: R (−0.0485, 1.0515), G (−0.0456, 1.0544), B (−0.0406, 1.0594)."""
    model = pgn.build("resnet4")
    big = torch.full((1, 3, 2, 2), 50.0)
    lo = pgn.denormalize(model.head.proxy(-big, big, big))[0, :, 0, 0]
    hi = pgn.denormalize(model.head.proxy(big, big, big))[0, :, 0, 0]
    torch.testing.assert_close(lo, torch.tensor([-0.0485, -0.0456, -0.0406]), atol=1e-4, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([1.0515, 1.0544, 1.0594]), atol=1e-4, rtol=0)


def test_warped_head_variants(pair):
    x, y = pair
    for additive in (False, True):
        model = pgn.build("resnet4-warped", warp_additive=additive)
        assert model.backbone.layers[-1].out_channels == (5 if additive else 2)
        assert model(x, y).shape == x.shape


def test_unet_value_head_legacy():
    model = pgn.build("unet", predict_value=True)
    x = torch.rand(2, 6, 64, 64)
    assert model.backbone.predict_value(x).shape == (2,)
    with pytest.raises(pgn.PGNError):
        pgn.build("unet").backbone.predict_value(x)


def test_config_round_trip():
    model = pgn.build("unet", grad_scale=0.03, value_space="imagenet")
    cfg = pgn.PGNConfig.from_dict(model.config.to_dict())
    assert cfg == model.config


def test_gradient_flows_to_parameters_for_training(pair):
    model = pgn.build("resnet4").train()
    x, y = pair
    model(x, y).pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
