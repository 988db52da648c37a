"""``pgn-demo`` end to end at tiny sizes: output files, JSON keys, table rows, and one-line errors."""

import importlib.util
import json
import sys

import pytest
from click.testing import CliRunner

from pgn.demos.cli import main
from pgn.demos.metrics import LPIPSMetric

FAST = ["--no-progress", "--seed", "0"]


def invoke(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def load_results(out):
    data = json.loads((out / "results.json").read_text())
    for key in ("demo", "config", "setup", "warnings", "tables", "images", "environment", "elapsed_s"):
        assert key in data, key
    assert "vgg_weights" in data["setup"] and "pgn" in data["setup"]
    assert (out / "results.md").is_file()
    for img in data["images"]:
        assert (out / img["path"].split("/")[-1]).is_file()
    return data


def test_help_lists_the_three_demos():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for name in ("finetune", "dip", "invert"):
        assert name in result.output


def test_finetune_tiny(tmp_path):
    out = tmp_path / "ft"
    result = invoke(["finetune", "-o", str(out), "--size", "32", "--train-frames", "2", "--holdout-frames", "2",
                     "--steps", "2", "--meta-steps", "2", "--json", str(tmp_path / "copy.json"), *FAST])
    assert result.exit_code == 0, result.output
    data = load_results(out)
    assert json.loads((tmp_path / "copy.json").read_text())["demo"] == "finetune"
    rows = {r["key"] if "key" in r else r["loss"]: r for r in data["tables"]["finetune"]["rows"]}
    assert set(rows) == {"before fine-tuning", "mse", "vgg19", "vgg11", "pgn", "pgn-onnx", "pgn-ort-train"}
    for key in ("mse", "vgg19", "vgg11", "pgn"):
        row = rows[key]
        for col in ("loss_time_ms", "step_time_ms", "train_mse_x1e3", "train_pl_vgg19", "holdout_mse_x1e3", "holdout_pl_vgg19",
                    "holdout_ssim", "grad_cos"):
            assert row[col] is not None, (key, col)
        assert row["step_time_ms"] >= row["loss_time_ms"], key  # the whole step holds the loss part
        if sys.platform.startswith("linux"):  # peak memory of both, step by step
            assert row["loss_peak_mem_mib"] is not None and row["step_peak_mem_mib"] is not None, key
        if LPIPSMetric.try_load().available:
            assert isinstance(row["holdout_lpips"], dict)
        else:
            assert row["holdout_lpips"] == LPIPSMetric.UNAVAILABLE
    assert rows["vgg19"]["grad_cos"]["mean"] == pytest.approx(1.0, abs=1e-4)
    onnx, ort_train = rows["pgn-onnx"], rows["pgn-ort-train"]
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        # the on-device row runs, and trains the same as the PyTorch PGN row
        assert onnx["status"] == "ok", onnx["status"]
        assert onnx["holdout_mse_x1e3"]["mean"] == pytest.approx(rows["pgn"]["holdout_mse_x1e3"]["mean"], rel=1e-3)
        assert data["ondevice_recipe_max_relative_deviation"] < 1e-4
        assert any(note.startswith("On-device recipe check") for note in data["tables"]["finetune"]["notes"])
    else:  # without the onnx extra the row says how to get it, and the demo goes on
        assert 'pip install "pgn-toolkit[onnx]"' in onnx["status"], onnx["status"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxruntime.training"):
        assert ort_train["status"] == "ok", ort_train["status"]
    else:
        assert ort_train["status"].startswith("onnxruntime-training not installed"), ort_train["status"]
    assert any("UNTRAINED" in w for w in data["warnings"])
    assert (out / "finetune_holdout.png").is_file() and (out / "meta_trained_generator.pt").is_file()
    md = (out / "results.md").read_text()
    assert "| PGN resnet4 + 20·MSE |" in md and "| before fine-tuning |" in md
    assert "| ms/step (loss) | peak MiB (loss) | ms/step (whole) | peak MiB (whole) |" in md

    # the meta-trained generator is reusable, and gives the same starting point
    out2 = tmp_path / "ft2"
    result = invoke(["finetune", "-o", str(out2), "--size", "32", "--train-frames", "2", "--holdout-frames", "2", "--steps", "1",
                     "--losses", "mse", "--generator-checkpoint", str(out / "meta_trained_generator.pt"), *FAST])
    assert result.exit_code == 0, result.output
    before = [r for r in load_results(out2)["tables"]["finetune"]["rows"] if r["loss"] == "before fine-tuning"][0]
    assert before["holdout_mse_x1e3"] == rows["before fine-tuning"]["holdout_mse_x1e3"]


def test_dip_tiny(tmp_path):
    out = tmp_path / "dip"
    result = invoke(["dip", "-o", str(out), "--size", "64", "--num-images", "1", "--iterations", "2", "--eval-every", "1",
                     "--stability-images", "1", "--stability-iterations", "3", "--patience", "1", *FAST])
    assert result.exit_code == 0, result.output
    data = load_results(out)
    quality = data["tables"]["quality"]["rows"]
    assert [r["key"] for r in quality] == ["pgn", "vgg19", "mse"]
    for r in quality:
        assert r["mse_x1e3"]["mean"] is not None and r["ssim"]["mean"] is not None and r["pl_vgg19"]["mean"] is not None
    stability = data["tables"]["stability"]["rows"]
    assert [r["key"] for r in stability] == ["direct", "proxy", "constrained"]
    for r in stability:
        assert r["diverged_count"] + r["stagnated_count"] + r["successful_count"] == r["runs"] == 1
    assert set(data["stability_runs"]) == {"direct", "proxy", "constrained"}
    assert (out / "dip_quality.png").is_file() and (out / "dip_stability_curves.png").is_file()


@pytest.mark.parametrize("user_generator", [False, True])
def test_invert_tiny(tmp_path, user_generator, user_generator_file):
    out = tmp_path / "inv"
    args = ["invert", "-o", str(out), "--size", "32", "--prefit-steps", "2", "--steps", "2", *FAST]
    if user_generator:
        args += ["--generator", f"{user_generator_file}:Gen", "--latent-shape", "2,4"]
    else:
        args += ["--train-steps", "2"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    data = load_results(out)
    rows = data["tables"]["invert"]["rows"]
    assert [r["loss"] for r in rows] == ["after MSE pre-fit (start)", "MSE", "VGG-19 + 1·MSE", "PGN resnet4 + 20·MSE"]
    assert (out / "invert.png").is_file()
    if user_generator:
        assert data["setup"]["latent_init"].startswith("zeros")


def test_bad_frames_folder_is_one_line_error(tmp_path):
    (tmp_path / "frames").mkdir()
    for i in range(4):
        (tmp_path / "frames" / f"{i}.jpg").write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["finetune", "-o", str(tmp_path / "o"), "--frames", str(tmp_path / "frames"),
                                       "--train-frames", "2", "--holdout-frames", "2", "--meta-steps", "0", *FAST])
    assert result.exit_code == 1
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "cannot read image" in lines[0]
    assert "Traceback" not in result.output


def test_missing_frames_folder(tmp_path):
    result = CliRunner().invoke(main, ["finetune", "-o", str(tmp_path / "o"), "--frames", str(tmp_path / "nope"), *FAST])
    assert result.exit_code == 1 and "image folder not found" in result.output


def test_wrong_module_path_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["invert", "-o", str(tmp_path / "o"), "--generator", "no_such_pkg_xyz:G", "--latent-shape", "4", *FAST])
    assert result.exit_code == 1
    assert "error: --generator: cannot import module 'no_such_pkg_xyz'" in result.output
    result = CliRunner().invoke(main, ["invert", "-o", str(tmp_path / "o"), "--generator", "no_colon", "--latent-shape", "4", *FAST])
    assert result.exit_code == 1 and "module:attr" in result.output


def test_bad_options_are_usage_errors(tmp_path):
    for args in (["finetune", "--vgg-weights", "nonsense"], ["finetune", "--losses", "mse,lpips"],
                 ["dip", "--head-checkpoint", "sideways=x.pt"], ["invert", "--output-range", "1"],
                 ["finetune", "--pgn-checkpoint", str(tmp_path / "missing.pt")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)


def test_size_errors_say_what_to_use(tmp_path):
    result = CliRunner().invoke(main, ["dip", "-o", str(tmp_path / "o"), "--size", "48", *FAST])
    assert result.exit_code == 1 and "multiple of 32" in result.output
    result = CliRunner().invoke(main, ["invert", "-o", str(tmp_path / "o"), "--generator", "x.py:G", *FAST])
    assert result.exit_code == 1 and "--latent-shape" in result.output


@pytest.mark.parametrize("demo", ["invert", "dip", "finetune"])
def test_unwritable_output_is_one_line_before_any_work(demo, read_only_dir, tmp_path):
    for output in (read_only_dir / demo, tmp_path / "ro-file" / demo):
        (tmp_path / "ro-file").write_text("a file where a folder should be")
        result = CliRunner().invoke(main, [demo, "-o", str(output), *FAST])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: --output"), result.output


@pytest.mark.parametrize("option", ["--lr", "--pgn-mse-weight"])
def test_nan_options_are_usage_errors(option):
    result = CliRunner().invoke(main, ["invert", option, "nan"])
    assert result.exit_code == 2 and "finite" in result.output
