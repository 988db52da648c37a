"""The authors' checkpoints load by their real parameter names, every tensor into its own place.

The authors' files are written here from plain re-implementations of their networks (``tests/authors_reference.py``),
whose keys are checked against the published key list, in each of their formats (versions 0, 1 and 2).
"""

import math

import pytest
import torch
from authors_reference import AuthorsResNet, AuthorsUNet, distinct_state_dict, published_keys, realistic_weights

import pgn
from pgn.authors import authors_names
from pgn.state_dicts import match_state_dict

PUBLISHED = published_keys()
PAPER_SECTIONS = {  # published section → (our preset, overrides, the authors' network)
    "resnet4": ("resnet4", {}, lambda: AuthorsResNet(num_blocks=4)),
    "resnet6": ("resnet6", {}, lambda: AuthorsResNet(num_blocks=6)),
    "resnet8": ("resnet8", {}, lambda: AuthorsResNet(num_blocks=8)),
    "unet": ("unet", {}, lambda: AuthorsUNet()),
    "unet+predict_value": ("unet", {"predict_value": True}, lambda: AuthorsUNet(predict_value=True)),
}


def _keys_and_shapes(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _authors_params(section):
    if section.startswith("resnet"):
        return "resnet", {"down_channels": (64, 128), "up_channels": (64,), "num_blocks": int(section[6]), "output_nc": 3}
    return "unet", {"block_type": "doubleblaze", "conv_type": "sep", "norm_type": "batch", "down_channels": (64, 64, 128, 256, 512),
                    "up_channels": (64, 128, 256, 256, 512), "predict_value": section.endswith("predict_value"), "out_channels": 3}


def _write(path, state, section, version, grad_scale):
    """A checkpoint file in the authors' format ``version`` holding ``state``."""
    kind, params = _authors_params(section)
    if version == 2:
        obj = {"state_dict": state, "backbone_type": kind, "backbone_params": params, "backbone_to_grad_type": "proxy",
               "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": 1.1}, "grad_type": "mse", "grad_scale": grad_scale},
               "version": 2}
    elif version == 1:
        obj = {"state_dict": state, "params": params, "version": 1}
    else:
        obj = dict(state, **params, grad_scale=grad_scale)
    torch.save(obj, path)
    return path


def _load(path, section, version):
    preset, overrides, _ = PAPER_SECTIONS[section]
    if version == 1:  # the head comes from the preset
        return pgn.load(path, preset=preset, **overrides)
    return pgn.load(path)


@pytest.mark.parametrize("section", list(PAPER_SECTIONS))
def test_reference_networks_have_the_published_keys(section):
    assert _keys_and_shapes(PAPER_SECTIONS[section][2]()) == PUBLISHED[section]


@pytest.mark.parametrize("section", list(PAPER_SECTIONS))
def test_our_map_names_every_tensor_with_its_published_key(section):
    preset, overrides, _ = PAPER_SECTIONS[section]
    backbone = pgn.build(preset, **overrides).backbone
    names = authors_names(backbone)
    published = dict(PUBLISHED[section])
    theirs = {names[k]: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert theirs == published  # every key named, none twice, shapes agree


#: Hand-written pairs (ours → theirs) where a shape-or-order match goes wrong: the UNet decoder is registered
#: shallowest first and run deepest first; conv_up1 and conv_up2 have identical shapes.
UNET_DECODER = {
    "decoder.0.spatial.weight": "conv_up3.0.weight",
    "decoder.1.spatial.weight": "conv_up2.0.weight",
    "decoder.2.spatial.weight": "conv_up1.0.weight",
    "decoder.2.pointwise.bias": "conv_up1.1.bias",
    "decoder.3.spatial.weight": "conv_up0.0.weight",
    "decoder.4.pointwise.weight": "conv_original_size2.1.weight",
    "head.weight": "conv_last.weight",
}
VALUE_HEAD = {
    "value_convs.0.spatial.weight": "conv_sobolev_4.0.weight",
    "value_convs.2.spatial.weight": "conv_sobolev_2.0.weight",
    "value_convs.3.spatial.weight": "conv_sobolev_1.0.weight",
    "value_convs.4.pointwise.bias": "conv_sobolev_0.1.bias",
    "value_fc.weight": "linear_sobolev.weight",
}


def _expected_pairs(section):
    if section.startswith("resnet"):
        n = int(section[6])
        return {"layers.0.0.weight": "model.0.weight", "layers.1.1.running_var": "model.4.running_var",
                "layers.2.body.3.bias": "model.6.conv_block.3.bias", f"layers.{n + 1}.body.4.weight": f"model.{n + 5}.conv_block.4.weight",
                f"layers.{n + 3}.0.weight": f"model.{n + 7}.weight", f"layers.{n + 4}.bias": f"model.{n + 10}.bias"}
    return dict(UNET_DECODER, **(VALUE_HEAD if section.endswith("predict_value") else {}))


@pytest.mark.parametrize("version", [2, 1, 0])
@pytest.mark.parametrize("section", list(PAPER_SECTIONS))
def test_every_tensor_receives_its_own(tmp_path, section, version):
    source = distinct_state_dict(PAPER_SECTIONS[section][2]())
    keys = list(source)
    model = _load(_write(tmp_path / "e.pth", source, section, version, 0.025), section, version)
    assert model.checkpoint_format == f"authors-v{version}"
    received = {}
    for ours, t in model.backbone.state_dict().items():
        index = int(math.floor(float(t.flatten()[0])))  # tensor i of the file holds i + [0, 1)
        theirs = keys[index]
        torch.testing.assert_close(t, source[theirs], rtol=0, atol=0)
        received[ours] = theirs
    assert sorted(received.values()) == sorted(keys)  # each of their tensors used exactly once
    for ours, theirs in _expected_pairs(section).items():
        assert received[ours] == theirs


def _raw_outputs(model, reference, size, seed=1):
    g = torch.Generator().manual_seed(seed)
    y_hat, y = torch.randn(2, 3, size, size, generator=g), torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        return model.backbone(torch.cat([y_hat, y], 1)), reference(y_hat, y), (y_hat, y)


def test_paper_unet_forward_equals_the_authors_order(tmp_path):
    reference = realistic_weights(AuthorsUNet(predict_value=True))
    path = _write(tmp_path / "unet.pth", reference.state_dict(), "unet+predict_value", 2, 0.048)
    model = pgn.load(path, value_space="imagenet")
    ours, theirs, (y_hat, y) = _raw_outputs(model, reference, 64)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.predict_value(torch.cat([y_hat, y], 1)), reference.run(y_hat, y)[1], rtol=1e-4, atol=1e-5)
        # and the full PGN: the constrained head on the authors' raw output
        g = model(y_hat, y)
        P = 1.1 * (torch.sigmoid(theirs) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        torch.testing.assert_close(g, (2 / y_hat[0].numel()) / 0.048 * (y_hat - P), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("block_type", ["doubleblaze", "singleblaze", "singleres", "doubleres"])
@pytest.mark.parametrize("conv_type, norm_type, predict_value", [("sep", "batch", False), ("full", "instance", True)])
def test_unet_variants_forward_equals_the_authors_order(tmp_path, block_type, conv_type, norm_type, predict_value):
    down, up = (8, 8, 16, 32), (8, 16, 16, 32)
    reference = realistic_weights(AuthorsUNet(3, block_type, conv_type, norm_type, down, up, predict_value), seed=2)
    params = {"block_type": block_type, "conv_type": conv_type, "norm_type": norm_type, "down_channels": down,
              "up_channels": up, "predict_value": predict_value, "out_channels": 3}
    torch.save({"state_dict": reference.state_dict(), "params": params, "version": 1}, tmp_path / "v1.pth")
    model = pgn.load(tmp_path / "v1.pth", preset="unet", **{k: v for k, v in params.items() if k != "out_channels"})
    ours, theirs, (y_hat, y) = _raw_outputs(model, reference, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    if predict_value:
        with torch.no_grad():
            torch.testing.assert_close(model.backbone.predict_value(torch.cat([y_hat, y], 1)), reference.run(y_hat, y)[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_blocks, down, up", [(4, (64, 128), (64,)), (0, (16, 32), (16,)), (3, (8, 16, 32), (16, 8))])
def test_resnet_forward_equals_the_authors(tmp_path, num_blocks, down, up):
    reference = realistic_weights(AuthorsResNet(num_blocks, down, up), seed=3)
    flat = dict(reference.state_dict(), num_blocks=num_blocks, down_channels=down, up_channels=up, grad_scale=0.025)
    torch.save(flat, tmp_path / "v0.pth")
    model = pgn.load(tmp_path / "v0.pth")
    assert model.config.backbone_params["num_blocks"] == num_blocks
    ours, theirs, _ = _raw_outputs(model, reference, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_names_without_their_counters_still_load(tmp_path):
    """Files from PyTorch before 1.1 have no num_batches_tracked."""
    reference = realistic_weights(AuthorsResNet(num_blocks=4))
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = _load(_write(tmp_path / "old.pth", state, "resnet4", 2, 0.025), "resnet4", 2)
    ours, theirs, _ = _raw_outputs(model, reference, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Files in neither naming: shape matching only where it cannot guess


def _renamed_modules(sd):
    """Every module renamed to ``net.layer{i}`` in order, as another codebase might name them."""
    prefixes, out = [], {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in prefixes:
            prefixes.append(prefix)
        out[f"net.layer{prefixes.index(prefix)}.{leaf}"] = value.clone()
    return out


def test_unknown_names_with_twin_shapes_are_refused_not_guessed(tmp_path):
    reference = realistic_weights(AuthorsUNet())
    path = _write(tmp_path / "renamed.pth", _renamed_modules(reference.state_dict()), "unet", 2, 0.048)
    with pytest.raises(pgn.PGNError, match="neither pgn-toolkit's nor the authors'.*share the shapes") as err:
        pgn.load(path)
    assert "\n" not in str(err.value) and "net.layer" in str(err.value)
    ours = pgn.build("resnet4").backbone.state_dict()  # residual blocks all have one shape
    with pytest.raises(pgn.PGNError, match="only names can tell them apart"):
        match_state_dict(ours, _renamed_modules(ours), authors=authors_names(pgn.build("resnet4").backbone))


def test_unknown_names_with_unique_shapes_match_by_shape():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 5, 1))
    source = {f"other.{k}": torch.randn(v.shape) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    out = match_state_dict(module.state_dict(), source)
    torch.testing.assert_close(out["2.weight"], source["other.2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(out["1.running_mean"], source["other.1.running_mean"], rtol=0, atol=0)


def test_authors_names_for_another_architecture_name_the_misfit(tmp_path):
    reference = AuthorsUNet(predict_value=True)
    path = _write(tmp_path / "pv.pth", reference.state_dict(), "unet", 1, 0.048)  # params say no value head
    with pytest.raises(pgn.PGNError, match="authors' parameter names but does not fit.*unexpected conv_sobolev_0"):
        pgn.load(path, preset="unet")
