"""``pgn-bench --device cuda`` at tiny sizes (skipped without a GPU)."""

import json

import pytest
from click.testing import CliRunner

from pgn.benchmarks.cli import main
from pgn.benchmarks.runtimes import module_available

pytestmark = pytest.mark.gpu
TINY = ["--device", "cuda", "--size", "32", "--repeats", "3", "--warmup", "2", "--quiet"]


def _onnxruntime_cuda_installed() -> bool:
    if not all(module_available(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


needs_ort_cuda = pytest.mark.skipif(not _onnxruntime_cuda_installed(),
                                    reason='ONNX Runtime\'s CUDA provider is not installed: pip install "pgn-toolkit[onnx-gpu]"')
needs_tensorrt = pytest.mark.skipif(not module_available("tensorrt"), reason='TensorRT is not installed: pip install "pgn-toolkit[tensorrt]"')


def _bench_resnet4(tmp_path, runtime):
    out = CliRunner().invoke(main, ["--models", "resnet4", "--runtimes", runtime, "--json", str(tmp_path / "b.json"), *TINY])
    assert out.exit_code == 0, out.output
    return json.loads((tmp_path / "b.json").read_text())["rows"][0]


def test_cuda_bench_measures_the_torch_rows(tmp_path):
    args = ["--models", "vgg19,resnet4,unet", "--runtimes", "torch,torch-fp16,torch-bf16",
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


@needs_ort_cuda
def test_cuda_bench_measures_onnxruntime_on_the_gpu_without_tf32(tmp_path):
    row = _bench_resnet4(tmp_path, "onnxruntime")
    assert row["status"] == "ok", row["reason"]
    assert row["accuracy"]["grad_cosine_min"] > 0.999
    assert row["runtime_info"]["provider_options"]["CUDAExecutionProvider"]["use_tf32"] == "0"


@needs_tensorrt
def test_cuda_bench_measures_tensorrt(tmp_path):
    row = _bench_resnet4(tmp_path, "tensorrt")
    assert row["status"] == "ok", row["reason"]
    assert row["accuracy"]["grad_cosine_min"] > 0.999


def test_cuda_bench_check_values_always_is_recorded(tmp_path):
    out = CliRunner().invoke(main, ["--models", "resnet4", "--runtimes", "torch", "--check-values", "always",
                                    "--json", str(tmp_path / "b.json"), *TINY])
    assert out.exit_code == 0, out.output
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["status"] == "ok" and row["runtime_info"]["check_values"] == "always"
