"""End to end at a tiny size: one worker process per measurement, every row present, ratios from raw samples."""

import json

import numpy as np
import pytest

from benchmarks import BenchmarkConfig, run_benchmark
from benchmarks.environment import INT8_DOT_PRODUCT_FLAGS, cpu_flags
from benchmarks.runtimes import resolve_runtime, runtime_unavailable
from benchmarks.report import plot_scaling, plot_time_memory, render_table

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
    for runtime in ("onnxruntime", "onnxruntime-int8"):
        row = _row(result, "resnet4", runtime)
        missing = runtime_unavailable(resolve_runtime(runtime), "cpu")
        if missing is None:  # onnxruntime, onnxscript and the export package are installed: the row must be measured
            assert row.status == "ok", row.reason
        else:
            assert (row.status, row.reason) == ("unavailable", missing)


def test_exported_rows_run_the_artifact_and_check_accuracy(result):
    from benchmarks.runtimes import export_package_unavailable

    if export_package_unavailable():
        pytest.skip(export_package_unavailable())
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
