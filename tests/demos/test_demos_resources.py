"""Which VGG weights and PGN a demo uses, and the warnings when they are random/untrained."""

import pytest
import torch

import pgn
from pgn.demos.common import load_pgn, load_teacher, resolve_vgg_weights
from pgn.errors import PGNError


def test_untrained_pgn_warns_loudly():
    w = []
    model, _, trained = load_pgn(None, None, w)
    assert not trained and model.config.preset == "resnet4"
    assert any("UNTRAINED" in m for m in w)


def test_checkpoint_is_loaded_without_warning(tmp_path):
    torch.manual_seed(0)
    model = pgn.build("resnet4")
    path = pgn.save(model, tmp_path / "r4.pt")
    w = []
    loaded, description, trained = load_pgn(path, None, w)
    assert trained and str(path) in description and not w
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, y), model(x, y))
    with pytest.raises(PGNError):
        load_pgn(path, "unet", [])  # the file holds a ResNet-4
    with pytest.raises(PGNError, match="not found"):
        load_pgn(tmp_path / "missing.pt", None, [])


def test_vgg_weights_auto_uses_cached_imagenet_weights_else_random_with_a_warning(tmp_path, monkeypatch):
    import pgn.demos.common

    cached = tmp_path / "vgg19-dcbb9e9d.pth"
    monkeypatch.setattr(pgn.demos.common, "imagenet_weights_path", lambda net: cached)
    w = []
    assert resolve_vgg_weights("auto", "vgg19", w) == "random"
    assert len(w) == 1 and "RANDOM" in w[0] and str(cached) in w[0]
    cached.write_bytes(b"")
    w = []
    assert resolve_vgg_weights("auto", "vgg19", w) == "imagenet" and not w
    teacher = load_teacher("vgg19", "random", [])
    assert not teacher.weights.pretrained


def test_cli_reports_the_checkpoint(tmp_path):
    from click.testing import CliRunner

    from pgn.demos.cli import main

    path = pgn.save(pgn.build("resnet4"), tmp_path / "r4.pt")
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["invert", "-o", str(out), "--size", "32", "--train-steps", "1", "--prefit-steps", "1",
                                       "--steps", "1", "--no-progress", "--pgn-checkpoint", str(path)])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads((out / "results.json").read_text())
    assert str(path) in data["setup"]["pgn"]
    assert not any("No --pgn-checkpoint" in w for w in data["warnings"])
