"""Frames and user generator modules: outputs and clear errors on bad input."""

import pytest
import torch

from pgn.demos.frames import edge_map, face_frames, read_frames
from pgn.demos.generators import load_module
from pgn.errors import PGNError


def test_face_frames_have_disjoint_poses():
    train, holdout = face_frames(32, train=3, holdout=2, seed=0)
    assert train.shape == (3, 3, 32, 32) and holdout.shape == (2, 3, 32, 32)
    assert float(train.min()) >= 0 and float(train.max()) <= 1
    assert not torch.allclose(train[0], holdout[0])
    edges = edge_map(train)
    assert edges.shape == (3, 1, 32, 32) and float(edges.max()) <= 1.0


def test_read_frames_from_a_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 30), (10 * i, 100, 200)).save(tmp_path / f"f{i}.png")
    train, holdout = read_frames(tmp_path, 16, train=2, holdout=1)
    assert train.shape == (2, 3, 16, 16) and holdout.shape == (1, 3, 16, 16)


def test_read_frames_errors(tmp_path):
    with pytest.raises(PGNError, match="not found"):
        read_frames(tmp_path / "missing", 16, 1, 1)
    with pytest.raises(PGNError, match="no images"):
        read_frames(tmp_path, 16, 1, 1)
    (tmp_path / "a.png").write_bytes(b"not an image")
    (tmp_path / "b.png").write_bytes(b"not an image either")
    with pytest.raises(PGNError, match="cannot read image"):
        read_frames(tmp_path, 16, 1, 1)
    with pytest.raises(PGNError, match="need 5"):
        read_frames(tmp_path, 16, 4, 1)


def test_load_module_from_file_and_module(user_generator_file, monkeypatch):
    path = user_generator_file
    assert load_module(f"{path}:generator")(torch.zeros(2, 8)).shape == (2, 3, 32, 32)
    assert load_module(f"{path}:build")(torch.zeros(1, 8)).shape == (1, 3, 32, 32)
    monkeypatch.syspath_prepend(str(path.parent))
    assert load_module(f"{path.stem}:Gen")(torch.zeros(1, 8)).shape == (1, 3, 32, 32)


def test_load_module_errors(tmp_path, user_generator_file):
    path = user_generator_file
    with pytest.raises(PGNError, match="module:attr"):
        load_module("no_colon_here")
    with pytest.raises(PGNError, match="file not found"):
        load_module(f"{tmp_path / 'nope.py'}:g")
    with pytest.raises(PGNError, match="cannot import module"):
        load_module("surely_not_a_module_xyz:g")
    with pytest.raises(PGNError, match="no attribute 'missing'.*generator"):
        load_module(f"{path}:missing")
    with pytest.raises(PGNError, match="not an nn.Module"):
        load_module(f"{path}:not_a_module")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom\\nwhere it went wrong, at length')\n")
    with pytest.raises(PGNError, match="importing .* failed: RuntimeError: boom$"):  # its first line only
        load_module(f"{broken}:g")
