"""Loaders that say what a file really is, saves that refuse what could not be read back, and write failures."""

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgn import export
import pgn
from pgn import files

PRESET_FAMILIES = ["resnet4", "resnet6", "resnet8", "unet"]


def _same_outputs(a, b, size=32):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, size, size, generator=g), torch.rand(1, 3, size, size, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(a(x, y), b(x, y), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# Plain state dicts


@pytest.mark.parametrize("preset", pgn.list_presets())
def test_plain_state_dict_of_every_preset_loads_with_its_preset(tmp_path, preset):
    model = pgn.build(preset)
    for what, sd in (("pgn", model.state_dict()), ("backbone", model.backbone.state_dict())):
        path = tmp_path / f"{what}.pt"
        torch.save(sd, path)
        loaded = pgn.load(path, preset=preset)
        assert loaded.config.backbone_params == model.config.backbone_params
        _same_outputs(model, loaded)


@pytest.mark.parametrize("preset", PRESET_FAMILIES)
def test_plain_state_dict_without_preset_finds_its_backbone(tmp_path, preset):
    model = pgn.build(preset)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = pgn.load(tmp_path / "sd.pt")
    assert loaded.config.backbone_params == model.config.backbone_params
    _same_outputs(model, loaded)


def test_plain_state_dict_under_another_preset_names_what_it_holds(tmp_path):
    torch.save(pgn.build("resnet4").state_dict(), tmp_path / "r4.pt")
    with pytest.raises(pgn.PGNError, match=r"holds a resnet\(num_blocks=4.*preset 'resnet8' is a resnet\(num_blocks=8"):
        pgn.load(tmp_path / "r4.pt", preset="resnet8")
    # a depth no preset has: the file's residual blocks are counted; the override then loads it
    torch.save(pgn.build("resnet4", num_blocks=5).state_dict(), tmp_path / "r5.pt")
    with pytest.raises(pgn.PGNError, match=r"holds a resnet\(num_blocks=5"):
        pgn.load(tmp_path / "r5.pt", preset="resnet4")
    assert pgn.load(tmp_path / "r5.pt", preset="resnet4", num_blocks=5).config.backbone_params["num_blocks"] == 5


def test_plain_unet_state_dict_with_backbone_options(tmp_path):
    model = pgn.build("unet", block_type="singleres", norm_type="instance")
    torch.save(model.state_dict(), tmp_path / "u.pt")
    _same_outputs(model, pgn.load(tmp_path / "u.pt", preset="unet", block_type="singleres", norm_type="instance"), size=64)
    with pytest.raises(pgn.PGNError, match=r"u\.pt: checkpoint uses pgn-toolkit parameter names but does not fit.*unexpected encoder"):
        pgn.load(tmp_path / "u.pt", preset="unet")


# ------------------------------------------------------------------------------------------------------------
# Files that are not checkpoints


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\x13" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "it is neither a zip archive nor a pickle"),
        (b'{"state_dict": {"a": [1, 2]}, "version": 2}\n', "it is JSON text"),
        (b'{"state_dict": [1, 2', "it looks like JSON text"),
        (b"weights: resnet4\n", "it is a text file"),
        (b"", "the file is empty"),
    ],
)
def test_non_checkpoints_are_named_for_what_they_are(tmp_path, content, reason):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(pgn.PGNError, match=f"is not a torch checkpoint: {reason}") as err:
        pgn.load(path)
    assert "could run code" not in str(err.value)


def test_code_in_a_pickle_is_still_refused_as_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "code.pt")
    with pytest.raises(pgn.PGNError, match=r"\(posix\.getcwd\), which could run code"):
        pgn.load(tmp_path / "code.pt")


def test_cuda_map_location_without_cuda(tmp_path, monkeypatch):
    good = pgn.save(pgn.build("resnet4"), tmp_path / "good.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for where in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(pgn.PGNError, match="CUDA is not available on this machine: use map_location='cpu'"):
            pgn.load(good, map_location=where)
    with pytest.raises(pgn.PGNError, match="unknown map_location 'gpu'"):
        pgn.load(good, map_location="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_map_location_with_cuda(tmp_path):
    model = pgn.build("resnet4")
    loaded = pgn.load(pgn.save(model, tmp_path / "good.pt"), map_location="cuda")
    assert next(loaded.parameters()).is_cuda
    with pytest.raises(pgn.PGNError, match="CUDA device"):
        pgn.load(tmp_path / "good.pt", map_location=f"cuda:{torch.cuda.device_count()}")


def test_gpu_tensors_in_a_file_without_cuda(tmp_path, monkeypatch):
    """A file saved on a GPU, read with map_location=None on a machine without CUDA."""
    good = pgn.save(pgn.build("resnet4"), tmp_path / "good.pt")

    def refuse(*args, **kwargs):
        raise RuntimeError("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False.")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(pgn.PGNError, match="holds GPU tensors but CUDA is not available.*map_location='cpu'"):
        files.read_file(good, map_location=None)


@pytest.mark.parametrize("bad", [None, 3, ""])
def test_load_needs_a_path(bad):
    with pytest.raises(pgn.PGNError, match="must be a file name"):
        pgn.load(bad)


def test_load_of_a_folder(tmp_path):
    with pytest.raises(pgn.PGNError, match="is a folder, not a checkpoint file"):
        pgn.load(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Saving


@pytest.mark.parametrize(
    "meta, where",
    [
        ({"out": Path("runs/x")}, r"meta\['out'\] is a pathlib\.PosixPath"),
        ({"data": {"lr": [1e-3, np.float64(2e-3)]}}, r"meta\['data'\]\['lr'\]\[1\] is a numpy\.float64"),
        ({"sampler": object()}, r"meta\['sampler'\] is a builtins\.object"),
        ({"ids": frozenset({1})}, r"meta\['ids'\] is a builtins\.frozenset"),
    ],
)
def test_save_refuses_meta_that_would_not_load(tmp_path, meta, where):
    with pytest.raises(pgn.PGNError, match=where):
        pgn.save(pgn.build("resnet4"), tmp_path / "m.pt", meta=meta)
    assert not list(tmp_path.iterdir())


def test_save_keeps_plain_meta(tmp_path):
    meta = {"step": 3, "lr": 1e-3, "name": "r4", "shape": (1, 2), "tags": {"a", "b"}, "t": torch.ones(2), "none": None,
            "nested": {"x": [1, 2.5, True]}, "dtype": torch.float16}
    stored = torch.load(pgn.save(pgn.build("resnet4"), tmp_path / "m.pt", meta=meta), weights_only=True)["meta"]
    assert stored["tags"] == {"a", "b"} and stored["nested"] == {"x": [1, 2.5, True]} and stored["dtype"] is torch.float16


def test_save_to_a_folder_or_nowhere(tmp_path):
    model = pgn.build("resnet4")
    with pytest.raises(pgn.PGNError, match="it is a folder; give a file name such as"):
        pgn.save(model, tmp_path)
    with pytest.raises(pgn.PGNError, match="must be a file name"):
        pgn.save(model, None)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(pgn.PGNError, match="a file is in the way where a folder is needed"):
        pgn.save(model, tmp_path / "afile" / "m.pt")


def test_save_to_a_read_only_folder(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # as root, chmod alone does not stop writes
    with pytest.raises(pgn.PGNError, match=r"cannot write .*m.pt: permission denied \(choose a writable location\)"):
        pgn.save(pgn.build("resnet4"), tmp_path / "m.pt")


def test_save_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = pgn.save(pgn.build("resnet4"), tmp_path / "m.pt")
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FillsUp:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(memoryview(data).cast("B"))
            if self.written > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FillsUp(real_fdopen(*a, **k)))
    with pytest.raises(pgn.PGNError, match="disk full"):
        pgn.save(pgn.build("resnet8"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and pgn.load(path).config.backbone_params["num_blocks"] == 8 - 4
    assert not list(tmp_path.glob(".*tmp"))


# ------------------------------------------------------------------------------------------------------------
# Non-finite weights


def _nan_checkpoint(tmp_path):
    model = pgn.build("resnet4")
    with torch.no_grad():
        model.backbone.layers[2].body[0].weight[0, 0, 0, 0] = float("nan")
        model.backbone.layers[1][1].running_var[3] = float("inf")
    return pgn.save(model, tmp_path / "nan.pt")


def test_nan_weights_warn_at_load_in_one_line(tmp_path, caplog):
    path = _nan_checkpoint(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pgn"):
        model = pgn.load(path)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "NaN or infinite values in 2 tensor(s): layers.2.body.0.weight, layers.1.1.running_var" in messages[0]
    assert str(path) in messages[0] and model.checkpoint_format == "pgn-toolkit"


def test_nan_weights_are_refused_at_export(tmp_path):
    model = pgn.load(_nan_checkpoint(tmp_path))
    with pytest.raises(pgn.PGNError, match=r"NaN or infinite weights in 2 tensor\(s\).*refusing to export"):
        export.export(model, "onnx", output_dir=tmp_path / "out", size=32)
    assert not (tmp_path / "out").exists()


def test_notices_print_as_one_line(tmp_path):
    """A legacy UNet file: the notice is one line on stderr (no 'file:line: UserWarning' and source line)."""
    model = pgn.build("unet")
    flat = dict(model.backbone.state_dict(), block_type="doubleblaze", grad_scale=1e-3)
    torch.save(flat, tmp_path / "v0.pth")
    code = f"import pgn; pgn.load({str(tmp_path / 'v0.pth')!r})"
    env = dict(os.environ, PYTHONPATH=str(Path(pgn.__file__).parent.parent))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["pgn: legacy UNet checkpoint: grad_scale 1e-3 (batch-mean era) rewritten to 0.048"]


def test_nonfinite_check_is_not_fooled_by_a_large_finite_sum():
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(3e38)  # finite values whose float32 sum overflows
        module.bias.fill_(float("nan"))
    assert pgn.model.nonfinite_tensors(module) == ["bias"]
