"""Ratios come from the raw samples; the JSON schema stays stable."""

import json

import numpy as np
import pytest

from pgn.benchmarks.results import SCHEMA, BenchmarkResult, Row, attach_ratios

ROW_KEYS = {
    "model", "display", "kind", "runtime", "family", "precision", "device", "size", "batch", "status", "reason", "target_features",
    "samples_ms", "cpu_samples_ms", "cpu_utilization", "timer", "warmup", "time_ms", "throughput_per_s", "memory_mb", "memory", "params", "paper_macs", "work_macs",
    "gflops", "artifact_mb", "accuracy", "runtime_info", "threads", "ratios",
}


def test_ratios_use_the_fastest_fp32_vgg19_row_and_medians_of_raw_samples(synthetic_result):
    rows = [r for r in synthetic_result.rows if r.size == [32, 32]]
    pgn_row = next(r for r in rows if r.model == "resnet4" and r.ok)
    ratio = pgn_row.ratios["vgg19"]
    assert ratio["reference"] == "vgg19/torch-compile"  # 55 ms beats 100 ms; the faster bf16 row is no fp32 reference
    assert ratio["time"] == pytest.approx(np.median([50, 55, 60]) / np.median([10, 12, 11, 30]))
    assert ratio["memory_reference"] == "vgg19/torch-compile"  # 80 MB is leaner than 120 MB
    assert ratio["memory"] == pytest.approx(80.0 / 20.0)
    assert ratio["macs"] == pytest.approx(30 / 10)
    assert pgn_row.ratios["vgg11"]["time"] == pytest.approx(75 / 11.5)


def test_reduced_precision_vgg_gets_a_ratio_against_fp32(synthetic_result):
    bf16 = next(r for r in synthetic_result.rows if r.size == [32, 32] and r.runtime == "torch-bf16")
    assert bf16.ratios["vgg19"]["time"] == pytest.approx(55 / 22.5)


def test_time_and_memory_references_can_differ(make_row):
    rows = attach_ratios([make_row("vgg19", "torch", [10.0], 300.0), make_row("vgg19", "torch-compile", [12.0], 150.0),
                          make_row("unet", "onnxruntime", [2.0], 50.0)])
    ratio = rows[2].ratios["vgg19"]
    assert ratio["reference"] == "vgg19/torch" and ratio["time"] == pytest.approx(5.0)
    assert ratio["memory_reference"] == "vgg19/torch-compile" and ratio["memory"] == pytest.approx(3.0)


def test_ratios_are_per_size(synthetic_result):
    big = next(r for r in synthetic_result.rows if r.size == [64, 64] and r.model == "resnet4" and r.ok)
    assert big.ratios["vgg19"]["time"] == pytest.approx(np.median([200, 220, 240]) / np.median([40, 48, 44, 120]))


def test_rows_that_did_not_run_get_no_ratio(synthetic_result):
    skipped = [r for r in synthetic_result.rows if not r.ok]
    assert skipped and all(r.ratios == {} for r in skipped)


def test_tiny_memory_gets_no_memory_ratio(make_row):
    rows = attach_ratios([make_row("vgg19", "torch", [10.0], 50.0), make_row("unet", "onnxruntime", [1.0], 0.0)])
    assert rows[1].ratios["vgg19"]["memory"] is None
    assert rows[1].ratios["vgg19"]["time"] == pytest.approx(10.0)


def test_without_a_vgg_row_there_are_no_ratios(make_row):
    rows = attach_ratios([make_row("resnet4", "torch", [10.0], 5.0)])
    assert rows[0].ratios == {}


def test_json_schema_is_stable(tmp_path, synthetic_result):
    path = synthetic_result.write_json(tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert set(data) == {"schema", "config", "environment", "rows"}
    assert data["schema"] == SCHEMA
    for row in data["rows"]:
        assert set(row) == ROW_KEYS
    assert set(data["rows"][0]["ratios"]["vgg19"]) == {"reference", "time", "memory_reference", "memory", "macs"}
    again = BenchmarkResult.from_dict(data)
    assert [r.to_dict() for r in again.rows] == data["rows"]


def test_row_fields_are_the_schema():
    from dataclasses import fields

    assert {f.name for f in fields(Row)} == ROW_KEYS


def test_from_dict_rejects_other_files():
    from pgn.errors import PGNError

    with pytest.raises(PGNError, match="pgn-bench"):
        BenchmarkResult.from_dict({"schema": "something-else"})
