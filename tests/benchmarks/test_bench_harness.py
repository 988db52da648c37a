"""End to end at a tiny size: one worker process per measurement, every row present, ratios from raw samples."""

import json

import numpy as np
import pytest

from pgn.benchmarks import BenchmarkConfig, run_benchmark
from pgn.benchmarks.environment import INT8_DOT_PRODUCT_FLAGS, cpu_flags
from pgn.benchmarks import runtimes as rt_mod
from pgn.extras import install_hint
from pgn.benchmarks.report import plot_scaling, plot_time_memory, render_table

#: The rows of the exported ONNX runtimes need the ONNX extra; without it they must say so (see the last test).
needs_onnx = pytest.mark.skipif(not all(rt_mod.module_available(m) for m in ("onnx", "onnxscript", "onnxruntime")),
                                reason=f"the ONNX extra is not installed: {install_hint('onnx')}")
MODELS = ("vgg19", "vgg11-cached", "resnet4")
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    config = BenchmarkConfig(device="cpu", models=MODELS, runtimes=RUNTIMES, sizes=(32,), repeats=3, warmup=1, threads=1, memory_calls=1)
    return run_benchmark(config, progress=False, workdir=tmp_path_factory.mktemp("bench"))


def _row(result, model, runtime):
    return next(r for r in result.rows if r.model == model and r.runtime == runtime)


def test_every_model_runtime_pair_has_a_row(result):
    assert sorted((r.model, r.runtime) for r in result.rows) == sorted((m, rt) for m in MODELS for rt in RUNTIMES)


def test_torch_rows_are_measured_with_raw_samples_and_memory(result):
    for model in MODELS:
        row = _row(result, model, "torch")
        assert row.status == "ok", row.reason
        assert len(row.samples_ms) == 3 and all(s > 0 for s in row.samples_ms)
        assert len(row.cpu_samples_ms) == 3 and 0 < row.cpu_utilization
        assert row.time_ms["median"] == pytest.approx(np.median(row.samples_ms))
        assert row.memory["method"] in ("rss_hwm", "rss_sampled") and row.memory_mb >= 0
        assert row.throughput_per_s == pytest.approx(1000.0 / row.time_ms["median"])
        assert row.gflops > 0 and row.work_macs > 0 and row.params > 0
        assert row.threads["torch_num_threads"] == 1
    assert _row(result, "vgg11-cached", "torch").target_features == "cached"
    assert _row(result, "vgg19", "torch").target_features == "recomputed"


def test_rows_that_cannot_run_say_why(result):
    trt = _row(result, "resnet4", "tensorrt")
    assert trt.status == "unavailable" and "NVIDIA GPU" in trt.reason
    vgg_ort = _row(result, "vgg19", "onnxruntime")
    assert vgg_ort.status == "not-applicable" and "autograd" in vgg_ort.reason


def test_without_onnxscript_the_onnx_rows_name_the_extra(monkeypatch, tmp_path):
    installed = rt_mod.module_available
    monkeypatch.setattr(rt_mod, "module_available", lambda name: name != "onnxscript" and installed(name))
    config = BenchmarkConfig(device="cpu", models=("resnet4",), runtimes=("onnxruntime", "onnxruntime-int8"), sizes=(32,), threads=1)
    for row in run_benchmark(config, progress=False, workdir=tmp_path).rows:
        assert row.status == "unavailable" and "onnxscript is not installed" in row.reason and install_hint("onnx") in row.reason
    assert not list(tmp_path.glob("task-*.json"))  # no worker was started


@needs_onnx
def test_exported_rows_run_the_artifact_and_check_accuracy(result):
    fp32, int8 = _row(result, "resnet4", "onnxruntime"), _row(result, "resnet4", "onnxruntime-int8")
    assert fp32.status == "ok", fp32.reason
    assert int8.status == "ok", int8.reason
    assert fp32.runtime_info["providers"][0] == "CPUExecutionProvider"
    assert fp32.artifact_mb > 0 and int8.artifact_mb > 0
    assert fp32.accuracy["grad_cosine_min"] > 0.9999  # same fp32 network
    assert int8.accuracy["grad_cosine_min"] > 0.99 and int8.accuracy["grad_rel_error_max"] > 0
    assert int8.runtime_info["precision"] == "int8"
    # the int8 row says which int8 dot-product instructions this CPU has (what makes int8 fast); fp32 rows do not
    assert int8.runtime_info["cpu_int8_dot_product"] == cpu_flags(INT8_DOT_PRODUCT_FLAGS)
    assert "cpu_int8_dot_product" not in fp32.runtime_info


def test_ratios_against_vgg19_come_from_the_raw_samples(result):
    vgg = _row(result, "vgg19", "torch")
    pgn_row = _row(result, "resnet4", "torch")
    ratio = pgn_row.ratios["vgg19"]
    assert ratio["reference"] == "vgg19/torch"
    assert ratio["time"] == pytest.approx(np.median(vgg.samples_ms) / np.median(pgn_row.samples_ms))
    assert ratio["macs"] == pytest.approx(vgg.work_macs / pgn_row.work_macs)
    assert "vgg11" not in pgn_row.ratios  # only the cached VGG-11 was measured, which is no reference


def test_environment_is_recorded(result):
    env = result.environment
    for key in ("cpu", "cpu_flags", "threads", "packages", "torch", "load_average_start", "load_average_end"):
        assert key in env
    assert env["threads"] == 1 and "torch" in env["packages"]


def test_table_and_plots(result, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    render_table(result, console)
    text = console.export_text()
    assert "ResNet-4" in text and "VGG-19" in text and "tensorrt" in text and "NVIDIA GPU" in text
    png = plot_time_memory(result, tmp_path / "plot.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    scaling = plot_scaling(result, tmp_path / "scaling.png")
    assert scaling.is_file()
    json.loads(result.write_json(tmp_path / "r.json").read_text())


def test_artifacts_are_exported_in_parallel_before_any_measurement(tmp_path, monkeypatch):
    """Exports run export_jobs at a time and all finish before the first measurement; each artifact once."""
    import threading
    import time

    from pgn.benchmarks import harness

    calls, running, peak, lock = [], [0], [0], threading.Lock()

    def fake_run_task(task, workdir, threads, timeout, server=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls.append((task.mode, task.model, task.runtime, task.artifact))
        time.sleep(0.2 if task.mode == "prepare" else 0)
        with lock:
            running[0] -= 1
        if task.mode == "prepare":
            return {"status": "ok", "artifact": f"{task.model}-{task.runtime}.onnx", "artifact_mb": 1.0}
        return {"status": "failed", "reason": "not measured in this test"}

    monkeypatch.setattr(harness, "run_task", fake_run_task)
    config = BenchmarkConfig(device="cpu", models=("resnet4", "unet"), runtimes=("torch", "onnxruntime", "onnxruntime-int8"),
                             sizes=(32,), repeats=1, warmup=0, threads=1, export_jobs=2, cache=False)
    run_benchmark(config, progress=False, workdir=tmp_path, fork_server=False)
    modes = [c[0] for c in calls]
    assert modes.index("measure") == modes.count("prepare") == 4  # every export before the first measurement
    prepared = [(c[1], c[2]) for c in calls if c[0] == "prepare"]
    assert sorted(prepared) == sorted({(m, r) for m in ("resnet4", "unet") for r in ("onnxruntime", "onnxruntime-int8")})
    assert peak[0] == 2  # two exports at a time
    for model in ("resnet4", "unet"):  # the int8 artifact is the export target's own, not made from the fp32 one
        int8 = next(c for c in calls if c[:3] == ("prepare", model, "onnxruntime-int8"))
        assert int8[3] is None


def test_export_jobs_must_be_positive():
    from pgn.errors import PGNError

    with pytest.raises(PGNError, match="export_jobs must be a positive integer"):
        BenchmarkConfig(export_jobs=0)


def test_parallel_worker_tasks_get_their_own_files(tmp_path, monkeypatch):
    """Two tasks started at once (parallel exports) never share a task or result file."""
    import subprocess
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pgn.benchmarks import harness
    from pgn.benchmarks.worker import Task

    barrier = threading.Barrier(2)
    real_write_json = harness.write_json

    def write_after_both_chose_a_name(data, path):
        barrier.wait(timeout=10)
        real_write_json(data, path)

    def fake_worker(cmd, **kwargs):
        barrier.wait(timeout=10)  # both task files written before either worker reads its own
        task = json.loads(open(cmd[-2]).read())
        with open(cmd[-1], "w") as f:
            json.dump({"status": "ok", "runtime": task["runtime"]}, f)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(harness, "write_json", write_after_both_chose_a_name)
    monkeypatch.setattr(harness.subprocess, "run", fake_worker)
    tasks = [Task(mode="prepare", model="resnet4", runtime=name, device="cpu", size=(32, 32), batch=1, inputs="x")
             for name in ("executorch", "executorch-int8")]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: harness.run_task(t, tmp_path, 1, 60), tasks))
    assert [r["runtime"] for r in results] == ["executorch", "executorch-int8"]
