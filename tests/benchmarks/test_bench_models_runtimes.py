"""Model and runtime names, costs, inputs, configuration errors, and the reasons a runtime cannot run."""

import platform

import pytest
import torch

from pgn.benchmarks import runtimes as rt_mod
from pgn.benchmarks.config import BenchmarkConfig
from pgn.benchmarks.models import make_inputs, model_cost, resolve_model
from pgn.benchmarks.runtimes import RUNTIMES, check_runnable, resolve_runtime
from pgn.errors import PGNError


def test_model_names_resolve():
    assert resolve_model("vgg19").is_teacher and not resolve_model("vgg19").cached_target
    assert resolve_model("vgg11-cached").cached_target
    assert resolve_model("vgg19-cached").target_features == "cached"
    assert resolve_model("unet").kind == "pgn" and resolve_model("unet").target_features is None
    with pytest.raises(PGNError, match="resnet4"):
        resolve_model("resnet5")


def test_work_macs_follow_the_arithmetic_of_the_issue():
    vgg = model_cost("vgg19", (224, 224), 1)
    cached = model_cost("vgg19-cached", (224, 224), 1)
    assert vgg.work_macs / 1e9 == pytest.approx(3 * 18.12, abs=0.1)  # forward on ŷ and y + input-only backward
    assert cached.work_macs / 1e9 == pytest.approx(2 * 18.12, abs=0.1)
    assert vgg.paper_macs / 1e9 == pytest.approx(108.84, abs=0.01)  # Table 6 convention
    assert model_cost("resnet4", (224, 224), 1).work_macs / 1e9 == pytest.approx(19.68, abs=0.01)
    assert model_cost("unet", (224, 224), 1).work_macs / 1e9 == pytest.approx(1.94, abs=0.01)
    assert model_cost("resnet4", (224, 224), 8).work_macs == 8 * model_cost("resnet4", (224, 224), 1).work_macs


def test_inputs_are_images_and_y_hat_is_degraded():
    y_hat, y = make_inputs(3, (32, 48))
    assert y_hat.shape == y.shape == (3, 3, 32, 48)
    assert float(y.min()) >= 0 and float(y.max()) <= 1 and float(y_hat.min()) >= 0 and float(y_hat.max()) <= 1
    assert not torch.equal(y_hat, y)
    again = make_inputs(3, (32, 48))
    assert torch.equal(again[0], y_hat)  # seeded


def test_runtime_names_resolve_with_a_hint():
    assert resolve_runtime("onnxruntime-int8").precision == "int8"
    with pytest.raises(PGNError, match="onnxruntime"):
        resolve_runtime("onnxruntim")


def test_vgg_on_an_exported_runtime_is_not_applicable():
    skip = check_runnable(RUNTIMES["onnxruntime"], "cpu", resolve_model("vgg19"))
    assert skip.status == "not-applicable" and "autograd" in skip.reason


def test_tensorrt_on_cpu_says_it_needs_a_gpu():
    skip = check_runnable(RUNTIMES["tensorrt"], "cpu", resolve_model("resnet4"))
    assert skip.status == "unavailable" and "--device cuda" in skip.reason


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML runs on macOS")
def test_coreml_off_macos_says_why():
    skip = check_runnable(RUNTIMES["coreml"], "cpu", resolve_model("unet"))
    assert skip.status == "unavailable" and "macOS" in skip.reason


def test_cuda_without_a_gpu_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    skip = check_runnable(RUNTIMES["torch"], "cuda", resolve_model("resnet4"))
    assert skip.status == "unavailable" and "CUDA" in skip.reason


def test_missing_export_package_is_a_reason(monkeypatch):
    monkeypatch.setattr(rt_mod, "export_package_unavailable", lambda: "export package not available (test)")
    skip = check_runnable(RUNTIMES["onnxruntime"], "cpu", resolve_model("resnet4"))
    assert skip.status == "unavailable" and "export package not available" in skip.reason


def test_torch_on_cpu_runs():
    assert check_runnable(RUNTIMES["torch"], "cpu", resolve_model("vgg19")) is None


def test_config_validates_sizes_names_and_counts():
    with pytest.raises(PGNError, match="multiples of 32"):
        BenchmarkConfig(models=("unet",), sizes=(48,))
    with pytest.raises(PGNError, match="unknown runtime"):
        BenchmarkConfig(runtimes=("tensorflow",))
    with pytest.raises(PGNError, match="repeats"):
        BenchmarkConfig(repeats=0)
    with pytest.raises(PGNError, match="directory"):
        BenchmarkConfig(models=("resnet4",), weights="/nonexistent/folder")
    cfg = BenchmarkConfig(models=("resnet4", "resnet4"), sizes=(32, (32, 64)))
    assert cfg.models == ("resnet4",) and cfg.sizes == ((32, 32), (32, 64))
    assert cfg.runtimes == rt_mod.default_runtimes("cpu")
    assert cfg.to_dict()["effective_warmup"] == 1 and cfg.repeats == 5 and cfg.to_dict()["matrix"] == "quick"
    assert BenchmarkConfig().sizes == ((128, 128),) and "vgg19-cached" not in BenchmarkConfig().models
    full = BenchmarkConfig(full=True)
    assert (full.sizes, full.repeats, full.effective_warmup) == (((224, 224),), 10, 2) and "vgg19-cached" in full.models
    assert BenchmarkConfig(full=True, repeats=3, sizes=(64,)).repeats == 3  # options given still apply


@pytest.mark.parametrize("native", [True, False])
def test_the_default_cpu_run_has_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(rt_mod, "bf16_native", lambda: native)
    assert ("torch-bf16" in BenchmarkConfig(full=True).runtimes) is native
    assert set(BenchmarkConfig(full=True).runtimes) | {"torch-bf16"} == set(rt_mod.DEFAULT_RUNTIMES["cpu"])
    assert "torch-bf16" in BenchmarkConfig(runtimes=("torch-bf16",)).runtimes  # asked for, it runs
    assert BenchmarkConfig(device="cuda", full=True).runtimes == rt_mod.DEFAULT_RUNTIMES["cuda"]


def test_the_default_run_is_fp32_on_every_runtime_family():
    for device in ("cpu", "cuda"):
        runtimes = [rt_mod.resolve_runtime(r) for r in BenchmarkConfig(device=device).runtimes]
        assert {r.family for r in runtimes} == {r.family for r in rt_mod.RUNTIMES.values() if device in r.devices}
        assert {r.precision for r in runtimes if r.family != "coreml"} == {"fp32"}  # Core ML programs are fp16 only
    assert set(BenchmarkConfig().models) == {"vgg19", "vgg11", "resnet4", "resnet6", "resnet8", "unet"}


def test_the_depthwise_runtime_is_not_applicable_where_its_graph_option_changes_nothing():
    skip = check_runnable(RUNTIMES["onnxruntime-dw"], "cpu", resolve_model("resnet4"))
    assert skip.status == "not-applicable"
    assert "decoder_conv=depthwise does not apply (decoder_conv: the ResNet has no UNet decoder)" in skip.reason
    assert rt_mod.graph_options_not_applied(RUNTIMES["onnxruntime-dw"], resolve_model("unet")) is None


@pytest.mark.skipif(not all(rt_mod.module_available(m) for m in ("onnx", "onnxscript", "onnxruntime")),
                    reason="the ONNX extra is not installed: pip install 'pgn-toolkit[onnx]'")
def test_exported_runtimes_are_a_target_a_precision_and_graph_options(tmp_path):
    import json

    from pgn.benchmarks.worker import Task, prepare

    def prepared(runtime, graph_options="default"):
        task = Task(mode="prepare", model="unet", runtime=runtime, device="cpu", size=(32, 32), batch=1, inputs="",
                    artifact_dir=str(tmp_path), graph_options=graph_options)
        result = prepare(task)
        assert result["status"] == "ok", result
        return json.loads(open(result["artifact"] + ".manifest.json").read())

    dw = prepared("onnxruntime-dw", "band_rows=16")  # the runtime's option over the run's
    assert (dw["target"], dw["precision"]) == ("onnx", "fp32")
    assert dw["graph"]["applied"]["decoder_conv"] == {"level 0": "depthwise"} and dw["graph"]["requested"]["band_rows"] == 16
    int8 = prepared("onnxruntime-int8")
    assert (int8["target"], int8["precision"], int8["target_info"]["quantization"]["ops"]) == ("onnx", "int8", "dense")
    assert int8["graph"]["applied"]["decoder_conv"] == {"level 0": "split"}  # the ONNX target's default graph
