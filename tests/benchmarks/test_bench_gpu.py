"""``pgn-bench --device cuda`` at tiny sizes (skipped without a GPU)."""

import json

import pytest
from click.testing import CliRunner

from pgn.benchmarks.cli import main
from pgn.benchmarks.runtimes import resolve_runtime, runtime_unavailable

pytestmark = pytest.mark.gpu
TINY = ["--device", "cuda", "--size", "32", "--repeats", "3", "--warmup", "2", "--quiet"]


def test_cuda_bench_measures_torch_rows_and_says_why_for_the_rest(tmp_path):
    args = ["--models", "vgg19,resnet4,unet", "--runtimes", "torch,torch-fp16,torch-bf16,onnxruntime,tensorrt",
            "--json", str(tmp_path / "b.json"), *TINY]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    rows = {(r["model"], r["runtime"]): r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
    for model in ("vgg19", "resnet4", "unet"):
        row = rows[(model, "torch")]
        assert row["status"] == "ok" and row["timer"] == "cuda_events"
        assert row["memory"]["method"] == "cuda_max_memory_allocated" and row["memory"]["detail"]["warmup_calls_before"] == 2
    fp16 = rows[("vgg19", "torch-fp16")]
    assert fp16["status"] == "ok" and fp16["accuracy"]["grad_cosine_min"] > 0.99 and "loss_scale" in fp16["runtime_info"]
    for runtime in ("onnxruntime", "tensorrt"):
        row = rows[("resnet4", runtime)]
        missing = runtime_unavailable(resolve_runtime(runtime), "cuda")  # probed: the runtime starts here, or why not
        if missing is None:
            assert row["status"] == "ok", row["reason"]
            assert row["accuracy"]["grad_cosine_min"] > 0.999
        else:
            assert (row["status"], row["reason"]) == ("unavailable", missing)
    ort = rows[("resnet4", "onnxruntime")]
    if ort["status"] == "ok":
        assert ort["runtime_info"]["provider_options"]["CUDAExecutionProvider"]["use_tf32"] == "0"


def test_cuda_bench_check_values_always_is_recorded(tmp_path):
    out = CliRunner().invoke(main, ["--models", "resnet4", "--runtimes", "torch", "--check-values", "always",
                                    "--json", str(tmp_path / "b.json"), *TINY])
    assert out.exit_code == 0, out.output
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["status"] == "ok" and row["runtime_info"]["check_values"] == "always"
