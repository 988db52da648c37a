"""pgn-export through click's CliRunner: tables, JSON, exit codes and one-line errors."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pgn import export
import pgn
from pgn.export.cli import main

from export_helpers import build


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_has_examples():
    res = _run("--help")
    assert res.exit_code == 0
    assert "Examples:" in res.output and "pgn-export --backbone unet --target coreml" in res.output


def test_unet_onnx_with_json_and_random_weights_warning(tmp_path):
    res = _run("--backbone", "unet", "--target", "onnx", "--size", 64, 64, "--output", tmp_path, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert "RANDOM WEIGHTS" in res.output and "verified" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["weights"].startswith("RANDOM INIT") and report["options"]["size"] == [64, 64]
    (r,) = report["results"]
    assert r["status"] == "verified" and r["target"] == "onnx"
    manifest = json.loads((tmp_path / "unet-64x64-b1-fp32.onnx.manifest.json").read_text())
    assert manifest["model"]["weights"].startswith("RANDOM INIT")


def test_checkpoint_weights_are_exported_and_recorded(tmp_path):
    model = build("resnet4")
    ckpt = pgn.save(model, tmp_path / "r4.pt")
    res = _run("--backbone", "resnet4", "--checkpoint", ckpt, "--target", "onnx", "--size", 32, 32, "--output", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "RANDOM WEIGHTS" not in res.output
    artifact = tmp_path / "out" / "resnet4-32x32-b1-fp32.onnx"
    manifest = export.read_manifest(artifact)
    assert manifest["model"]["weights"].startswith("checkpoint r4.pt (sha256 ")
    y_hat, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(y_hat, y).numpy()
    out = export.load_runtime(artifact).run(y_hat, y)
    np.testing.assert_allclose(out["grad"], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_unknown_target_did_you_mean():
    res = _run("--backbone", "unet", "--target", "onxx")
    assert res.exit_code == 2
    assert "Did you mean 'onnx'?" in res.output


def test_option_the_format_does_not_take(tmp_path):
    res = _run("--backbone", "unet", "--target", "coreml", "--opset", 17, "--output", tmp_path)
    assert res.exit_code == 1
    err_lines = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert err_lines == ["error: option opset=17 is not supported by target 'coreml'; it applies to onnx, tensorrt. "
                         "coreml accepts: size, batch, dynamic, precision, graph_options, min_size, max_size, max_batch, deployment_target"]


def test_size_the_backbone_does_not_allow(tmp_path):
    res = _run("--backbone", "unet", "--target", "onnx", "--size", 100, 100, "--output", tmp_path)
    assert res.exit_code == 1
    assert "error: size 100x100 is not allowed for the unet backbone: height must be a multiple of 32" in res.output
    assert not list(tmp_path.iterdir())


def test_tensorrt_fails_cleanly_without_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed, also on GPU machines
    res = _run("--backbone", "unet", "--target", "tensorrt", "--output", tmp_path / "out")
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert any(l.startswith("error: TensorRT") for l in res.output.splitlines())
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_missing_checkpoint_and_missing_backbone(tmp_path):
    res = _run("--checkpoint", tmp_path / "nope.pt", "--target", "onnx")
    assert res.exit_code == 1 and "error: checkpoint not found" in res.output
    res = _run("--target", "onnx")
    assert res.exit_code == 1 and "error: pass a backbone" in res.output


def test_output_in_a_read_only_folder_fails_before_exporting(read_only_dir, monkeypatch):
    import pgn.export.api

    monkeypatch.setattr(pgn.export.api, "export", lambda *a, **k: pytest.fail("exported into a folder it cannot write"))
    res = _run("--backbone", "resnet4", "--size", 32, 32, "--output", read_only_dir / "exports")
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and errors[0].startswith("error: --output")


def test_json_that_becomes_unwritable_after_the_export_is_one_line(tmp_path, monkeypatch):
    import pgn.export.api
    from write_faults import make_read_only

    reports = tmp_path / "reports"
    reports.mkdir()
    real_export = pgn.export.api.export

    def export_then_lose_the_folder(*args, **kwargs):
        results = real_export(*args, **kwargs)
        make_read_only(reports, monkeypatch)
        return results

    monkeypatch.setattr(pgn.export.api, "export", export_then_lose_the_folder)
    res = _run("--backbone", "resnet4", "--size", 32, 32, "--output", tmp_path / "out", "--json", reports / "r.json")
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1, res.output
    assert "permission denied" in errors[0] and "artifacts in the table above were written" in errors[0]
    assert (tmp_path / "out" / "resnet4-32x32-b1-fp32.onnx").is_file()


def test_disk_full_during_export_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    import errno

    import pgn.export.api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "new" / "out" / "x.onnx"))

    monkeypatch.setattr(pgn.export.api, "_export_one", full)
    res = _run("--backbone", "resnet4", "--size", 32, 32, "--output", tmp_path / "new" / "out")
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "disk full" in errors[0]
    assert not (tmp_path / "new").exists()


def test_opset_0_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["--backbone", "resnet4", "--opset", "0", "--output", str(tmp_path / "ex")])
    assert result.exit_code == 2 and "13<=x<=23" in result.output  # was: 0 dropped as "not given", exported
    assert not (tmp_path / "ex").exists()


def test_output_that_is_a_file_exits_1_and_keeps_the_file(tmp_path):
    (tmp_path / "f").write_text("mine")
    result = CliRunner().invoke(main, ["--backbone", "resnet4", "--output", str(tmp_path / "f")])
    assert result.exit_code == 1 and "a file is in the way" in result.output  # was: click's exit 2
    assert (tmp_path / "f").read_text() == "mine"
