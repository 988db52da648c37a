"""The ExecuTorch rows of pgn-bench: the export target's .pte programs, fp32 and int8, timed in ExecuTorch's runtime."""

import json

import pytest
import torch

from pgn.benchmarks import BenchmarkConfig, run_benchmark
from pgn.benchmarks import runtimes as rt_mod
from pgn.benchmarks.models import make_input_file, resolve_model
from pgn.benchmarks.runtimes import RUNTIMES, check_runnable

ET_RUNTIMES = ("executorch", "executorch-int8")
INSTALL_HINT = 'pip install "pgn-toolkit[executorch]"'


@pytest.fixture(scope="module")
def et_result(tmp_path_factory):
    pytest.importorskip("executorch")
    workdir = tmp_path_factory.mktemp("et-bench")
    # threads=1: ExecuTorch's own default is one thread per CPU it detects, so the pool must have been sized
    config = BenchmarkConfig(device="cpu", models=("resnet4",), runtimes=ET_RUNTIMES, sizes=(32,), repeats=2, warmup=1,
                             threads=1, memory_calls=1)
    return run_benchmark(config, progress=False, workdir=workdir), workdir


def _row(result, runtime):
    return next(r for r in result.rows if r.runtime == runtime)


def test_executorch_rows_are_measured_like_the_onnxruntime_rows(et_result):
    result, _ = et_result
    fp32, int8 = _row(result, "executorch"), _row(result, "executorch-int8")
    for row in (fp32, int8):
        assert row.status == "ok", row.reason
        assert len(row.samples_ms) == 2 and all(s > 0 for s in row.samples_ms)
        assert row.memory["method"] in ("rss_hwm", "rss_sampled") and row.memory_mb >= 0
        assert row.artifact_mb > 0 and row.runtime_info["library"] == "executorch-xnnpack"
    assert fp32.accuracy["grad_cosine_min"] >= 0.9999  # the same fp32 network
    assert fp32.accuracy["reference"] == "torch fp32 eager on cpu"
    assert int8.accuracy["grad_cosine_min"] >= 0.99
    assert int8.accuracy["proxy_cosine_centered_min"] < fp32.accuracy["proxy_cosine_centered_min"]  # really quantized
    assert int8.artifact_mb < fp32.artifact_mb  # int8 weights
    assert int8.runtime_info["precision"] == "int8" and "cpu_int8_dot_product" in int8.runtime_info


def test_executorch_thread_pool_is_sized_to_the_run_and_recorded(et_result):
    result, _ = et_result
    for runtime in ET_RUNTIMES:
        row = _row(result, runtime)
        assert row.runtime_info["threads_requested"] == 1
        assert row.runtime_info["threads"] == 1  # the pool's size read back from ExecuTorch
        assert row.threads["executorch_threadpool"] == 1 and row.threads["torch_num_threads"] == 1


def test_executorch_rows_record_the_program(et_result):
    from pgn.export import read_manifest

    result, _ = et_result
    for runtime in ET_RUNTIMES:
        row = _row(result, runtime)
        program = row.runtime_info["program"]
        exporter = read_manifest(row.runtime_info["artifact"])["exporter"]  # what the export read from the same .pte
        assert program == {key: exporter[key] for key in program}
        assert program["planned_memory_mb"] > 0 and program["delegates"]["XnnpackBackend"] >= 1
        assert program["operators_outside_delegate"] == sum(program["outside_delegate"].values())
    json.dumps([r.to_dict() for r in result.rows])  # all of it goes to the JSON


def test_int8_program_is_the_export_targets_recipe(et_result):
    from pgn.export import read_manifest
    from pgn.export.executorch import DEFAULT_INT8_OPS, int8_recipe

    result, _ = et_result
    manifest = read_manifest(_row(result, "executorch-int8").runtime_info["artifact"])
    assert manifest["precision"] == "int8"
    assert manifest["target_info"]["quantization"] == json.loads(json.dumps(int8_recipe(DEFAULT_INT8_OPS)))


def test_without_executorch_the_rows_name_the_extra(monkeypatch, tmp_path):
    installed = rt_mod.module_available
    monkeypatch.setattr(rt_mod, "module_available", lambda name: name != "executorch" and installed(name))
    config = BenchmarkConfig(device="cpu", models=("vgg19", "resnet4"), runtimes=ET_RUNTIMES, sizes=(32,), threads=1)
    result = run_benchmark(config, progress=False, workdir=tmp_path)
    for runtime in ET_RUNTIMES:
        row = next(r for r in result.rows if r.model == "resnet4" and r.runtime == runtime)
        assert row.status == "unavailable" and INSTALL_HINT in row.reason and "\n" not in row.reason
        vgg = next(r for r in result.rows if r.model == "vgg19" and r.runtime == runtime)
        assert vgg.status == "not-applicable"
    assert not list(tmp_path.glob("task-*.json"))  # no worker was started


def test_default_cpu_run_includes_executorch_when_installed():
    pytest.importorskip("executorch")
    assert "executorch" in BenchmarkConfig().runtimes and "executorch-int8" not in BenchmarkConfig().runtimes  # fp32 only
    runtimes = BenchmarkConfig(full=True).runtimes
    for name in ET_RUNTIMES:
        assert name in runtimes
        assert check_runnable(RUNTIMES[name], "cpu", resolve_model("resnet4")) is None  # measured, not a skip row
        assert check_runnable(RUNTIMES[name], "cuda", resolve_model("resnet4")).status == "unavailable"


def test_the_accuracy_check_runs_on_no_image_an_int8_export_calibrates_on(tmp_path):
    from pgn.export.verify import PARITY_PHOTOS, calibration_pairs, real_images

    size = (32, 32)
    inputs = torch.load(make_input_file(tmp_path / "inputs.pt", 2, size), weights_only=True)
    _, calib_y = calibration_pairs(size)  # what every export target's int8 recipe calibrates on
    # the accuracy check runs on the parity photographs, none of which is a calibration image
    assert torch.equal(inputs["eval_y"], real_images(size, 2, PARITY_PHOTOS))
    assert not any(torch.equal(e, c) for e in inputs["eval_y"] for c in calib_y)


def test_the_core_ml_delegate_row_says_where_it_runs(monkeypatch):
    import platform

    runtime = RUNTIMES["executorch-coreml"]
    assert runtime.export_target == "executorch-coreml" and runtime.precision == "fp16"
    skip = check_runnable(runtime, "cpu", resolve_model("resnet4"))
    if platform.system() != "Darwin":
        assert skip.status == "unavailable" and "only for Apple platforms" in skip.reason
    # on macOS the row runs only where this ExecuTorch build has the backend (the Linux build has not)
    pytest.importorskip("executorch")
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    from pgn.export.executorch_coreml import TARGET

    skip = check_runnable(runtime, "cpu", resolve_model("resnet4"))
    assert (skip is None) == (TARGET.runtime_missing_here() is None)
    if skip is not None:
        assert "no CoreMLBackend" in skip.reason
    assert "Apple hardware" in check_runnable(runtime, "cuda", resolve_model("resnet4")).reason
