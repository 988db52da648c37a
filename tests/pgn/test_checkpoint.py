"""Checkpoints: our format and synthetic files in each of the authors' formats."""

import logging
import os

import pytest
import torch

import pgn
from pgn.authors import authors_names
from pgn.state_dicts import match_state_dict


def _authors_names(model):
    """The backbone's state dict under the authors' parameter names, as their files hold it."""
    names = authors_names(model.backbone)
    return {names[k]: v.clone() for k, v in model.backbone.state_dict().items()}


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _outputs_equal(a, b, size=64):
    x, y = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x, y), b(x, y), rtol=0, atol=0)


def test_round_trip(tmp_path):
    model = _randomize_bn(pgn.build("unet", grad_scale=0.03))
    path = pgn.save(model, tmp_path / "m.pt", meta={"step": 7})
    loaded = pgn.load(path)
    assert loaded.config == model.config and not loaded.training
    _outputs_equal(model, loaded)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "pgn-toolkit" and raw["meta"]["step"] == 7 and raw["format_version"] == 1
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    assert pgn.build("unet", weights=path).config.head.grad_scale == pytest.approx(0.03)


def test_authors_v2(tmp_path):
    model = _randomize_bn(pgn.build("resnet6"))
    ckpt = {
        "state_dict": _authors_names(model),
        "backbone_type": "resnet",
        "backbone_params": {"down_channels": (64, 128), "up_channels": (64,), "num_blocks": 6, "output_nc": 3},
        "backbone_to_grad_type": "proxy",
        "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": 1.1}, "grad_type": "mse", "grad_scale": 0.025},
        "version": 2,
    }
    torch.save(ckpt, tmp_path / "330.pth")
    loaded = pgn.load(tmp_path / "330.pth")
    assert loaded.checkpoint_format == "authors-v2"
    assert loaded.config.head.kind == "constrained" and loaded.config.backbone_params["num_blocks"] == 6
    _outputs_equal(model, loaded)
    with pytest.raises(pgn.PGNError, match="preset 'resnet4'"):
        pgn.load(tmp_path / "330.pth", preset="resnet4")


def test_authors_v2_direct_head(tmp_path):
    model = pgn.build("resnet4-hybrid")
    ckpt = {
        "state_dict": model.backbone.state_dict(),
        "backbone_type": "resnet",
        "backbone_params": {"num_blocks": 4},
        "backbone_to_grad_type": "direct",
        "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": 1.1}, "out_scale": 512.0, "grad_scale": 0.025},
        "version": 2,
    }
    torch.save(ckpt, tmp_path / "h.pth")
    loaded = pgn.load(tmp_path / "h.pth")
    assert loaded.config.head.kind == "hybrid"
    _outputs_equal(model, loaded)


def test_authors_v1_head_from_preset(tmp_path):
    model = _randomize_bn(pgn.build("unet"))
    ckpt = {
        "state_dict": {f"module.{k}": v for k, v in model.backbone.state_dict().items()},
        "params": {"block_type": "doubleblaze", "conv_type": "sep", "norm_type": "batch",
                   "down_channels": [64, 64, 128, 256, 512], "up_channels": [64, 128, 256, 256, 512],
                   "predict_value": False, "out_channels": 3},
        "version": 1,
    }
    torch.save(ckpt, tmp_path / "v1.pth")
    loaded = pgn.load(tmp_path / "v1.pth", preset="unet")
    assert loaded.checkpoint_format == "authors-v1" and loaded.config.head.grad_scale == pytest.approx(0.048)
    _outputs_equal(model, loaded)
    # without a preset the backbone type is inferred from the parameters
    _outputs_equal(model, pgn.load(tmp_path / "v1.pth"))


def test_authors_v0_unet_legacy_grad_scale(tmp_path, caplog):
    model = _randomize_bn(pgn.build("unet"))
    flat = _authors_names(model)
    flat.update({"block_type": "doubleblaze", "conv_type": "sep", "grad_scale": 1e-3})
    torch.save(flat, tmp_path / "v0.pth")
    with caplog.at_level(logging.WARNING, logger="pgn"):
        loaded = pgn.load(tmp_path / "v0.pth")
    assert [r.getMessage() for r in caplog.records if "0.048" in r.getMessage()]
    assert loaded.checkpoint_format == "authors-v0"
    assert loaded.config.head.grad_scale == pytest.approx(0.048)
    _outputs_equal(model, loaded)


def test_authors_v0_resnet_inferred_from_names(tmp_path, caplog):
    model = pgn.build("resnet8")
    flat = dict(model.backbone.state_dict())
    flat["grad_scale"] = 0.025
    torch.save(flat, tmp_path / "v0r.pth")
    with caplog.at_level(logging.WARNING, logger="pgn"):
        loaded = pgn.load(tmp_path / "v0r.pth")
    assert not caplog.records
    assert loaded.config.backbone_params["num_blocks"] == 8
    _outputs_equal(model, loaded, size=32)


def test_grad_scale_mismatch_rule(tmp_path, caplog):
    path = pgn.save(pgn.build("resnet4"), tmp_path / "m.pt")
    with pytest.raises(pgn.PGNError, match="ignore_grad_scale_mismatch"):
        pgn.load(path, grad_scale=0.05)
    with caplog.at_level(logging.WARNING, logger="pgn"):
        m = pgn.load(path, grad_scale=0.05, ignore_grad_scale_mismatch=True)
    assert any("grad_scale 0.05" in r.getMessage() for r in caplog.records)
    assert m.config.head.grad_scale == pytest.approx(0.05)
    assert pgn.load(path, value_space="imagenet").value_space == "imagenet"


def test_bad_checkpoints(tmp_path):
    good = pgn.save(pgn.build("resnet4"), tmp_path / "good.pt")
    with pytest.raises(pgn.PGNError, match="preset 'unet'"):
        pgn.load(good, preset="unet")
    with pytest.raises(pgn.PGNError, match="trained with the 'constrained' head"):
        pgn.build("resnet4-direct", weights=good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(pgn.PGNError, match="truncated or corrupted"):
        pgn.load(truncated)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(pgn.PGNError):
        pgn.load(tmp_path / "junk.pt")

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "code.pt")
    with pytest.raises(pgn.PGNError, match="could run code"):
        pgn.load(tmp_path / "code.pt")
    with pytest.raises(pgn.PGNError, match="not found"):
        pgn.load(tmp_path / "missing.pt")
    # weights of another architecture
    other = {"state_dict": pgn.build("resnet8").backbone.state_dict(), "params": {"num_blocks": 4}, "version": 1}
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(pgn.PGNError, match="different"):
        pgn.load(tmp_path / "other.pth", preset="resnet4")


def test_paper_weights_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PGN_HOME", str(tmp_path))
    with pytest.raises(pgn.PGNError) as err:
        pgn.build("resnet4", weights="paper")
    assert "drive.google.com" in str(err.value) and str(tmp_path) in str(err.value)
    path = pgn.save(pgn.build("resnet4"), tmp_path / "paper" / "resnet4.pth")
    assert pgn.build("resnet4", weights="paper").config.preset == "resnet4"
    assert path.is_file()


def test_match_state_dict_reports_misfit():
    model = pgn.build("resnet4")
    ours = model.backbone.state_dict()
    theirs = _authors_names(model)
    theirs["model.0.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(pgn.PGNError, match="model.0.weight .our layers.0.0.weight. has shape"):
        match_state_dict(ours, theirs, authors=authors_names(model.backbone))


def test_overrides_are_checked_against_the_file(tmp_path):
    path = pgn.save(pgn.build("resnet8"), tmp_path / "r8.pt")
    with pytest.raises(pgn.PGNError, match="you asked for a resnet\\(num_blocks=4"):
        pgn.load(path, num_blocks=4)
    assert pgn.load(path, num_blocks=8).config.backbone_params["num_blocks"] == 8
    with pytest.raises(pgn.PGNError, match="stores beta=1.1"):
        pgn.load(path, beta=1.2)
    # the authors' version-1 files store no head: overrides define it
    v1 = {"state_dict": pgn.build("resnet4").backbone.state_dict(), "params": {"num_blocks": 4}, "version": 1}
    torch.save(v1, tmp_path / "v1.pth")
    assert pgn.load(tmp_path / "v1.pth", preset="resnet4", grad_scale=0.05).config.head.grad_scale == pytest.approx(0.05)


def test_save_in_another_value_space_and_permissions(tmp_path):
    model = pgn.build("resnet4", value_space="imagenet")
    path = pgn.save(model, tmp_path / "u.pt", value_space="unit")
    loaded = pgn.load(path)
    assert loaded.value_space == "unit"
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(loaded(x, y), model(pgn.normalize(x), pgn.normalize(y)) / std, rtol=1e-5, atol=1e-10)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(pgn.PGNError, match="value_space"):
        pgn.save(model, tmp_path / "x.pt", value_space="rgb")
