"""pgn-bench and its artifact cache, with a stand-in worker (no exporter, no measurement): a second run exports
nothing, a damaged entry is exported again, --no-cache and --clear-cache, and a cache that cannot be written is one
warning, not a failure."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgn.benchmarks import BenchmarkConfig, forkserver, harness, run_benchmark
from pgn.benchmarks.cli import main
from pgn.export.manifest import MANIFEST_FORMAT, manifest_path, sha256_of

MODELS, RUNTIMES = ("resnet4", "unet"), ("torch", "onnxruntime")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A cache folder of this test alone."""
    monkeypatch.setenv("PGN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def worker(monkeypatch):
    """A stand-in for the worker processes: ``prepare`` writes a small artifact with its manifest, ``measure`` records
    which artifact it was given. Returns the list of (mode, model, runtime, artifact) calls."""
    calls = []

    def fake_run_task(task, workdir, threads, timeout, server=None):
        calls.append((task.mode, task.model, task.runtime, task.artifact))
        if task.mode == "prepare":
            folder = Path(task.artifact_dir)
            folder.mkdir(parents=True, exist_ok=True)
            artifact = folder / f"{task.model}-{task.size[0]}-{task.runtime}.onnx"
            artifact.write_bytes(f"{task.model} {task.runtime} {len(calls)}".encode() * 50)
            manifest_path(artifact).write_text(json.dumps({"format": MANIFEST_FORMAT, "target": "onnx", "sha256": sha256_of(artifact)}))
            return {"status": "ok", "artifact": str(artifact), "artifact_mb": 0.01}
        return {"status": "failed", "reason": "not measured in this test"}

    monkeypatch.setattr(harness, "run_task", fake_run_task)
    monkeypatch.setattr(harness, "make_input_file", lambda path, *args: Path(path))  # the stand-in reads no inputs
    monkeypatch.setattr(forkserver, "available", lambda: False)  # nor needs a server to fork it
    return calls


def _run(tmp_path, warnings=None, **options):
    config = BenchmarkConfig(models=MODELS, runtimes=RUNTIMES, sizes=(32,), threads=1, **options)
    return run_benchmark(config, progress=False, workdir=tmp_path / "work", fork_server=False,
                         warn=(warnings.append if warnings is not None else None))


def _prepared(calls):
    return sorted((c[1], c[2]) for c in calls if c[0] == "prepare")


def _measured_artifacts(calls):
    return {c[1]: c[3] for c in calls if c[0] == "measure" and c[2] == "onnxruntime"}


def test_a_second_run_measures_without_exporting(worker, tmp_path, home):
    _run(tmp_path)
    assert _prepared(worker) == [("resnet4", "onnxruntime"), ("unet", "onnxruntime")]
    first = _measured_artifacts(worker)
    assert all(Path(a).is_relative_to(home / "bench") for a in first.values())  # measured from the cache
    worker.clear()
    result = _run(tmp_path)
    assert _prepared(worker) == []
    assert _measured_artifacts(worker) == first
    assert len([r for r in result.rows if r.runtime == "onnxruntime"]) == 2


def test_a_corrupted_cached_artifact_is_exported_again(worker, tmp_path):
    _run(tmp_path)
    cached = Path(_measured_artifacts(worker)["unet"])
    cached.write_bytes(cached.read_bytes()[:20])  # truncated
    worker.clear()
    _run(tmp_path)
    assert _prepared(worker) == [("unet", "onnxruntime")]
    fresh = Path(_measured_artifacts(worker)["unet"])
    assert sha256_of(fresh) == json.loads(manifest_path(fresh).read_text())["sha256"]


def test_an_artifact_of_other_options_is_not_reused(worker, tmp_path):
    _run(tmp_path)
    worker.clear()
    _run(tmp_path, graph_options="decoder_conv=split")
    assert _prepared(worker) == [("resnet4", "onnxruntime"), ("unet", "onnxruntime")]
    worker.clear()
    _run(tmp_path, seed=1)
    assert _prepared(worker) == [("resnet4", "onnxruntime"), ("unet", "onnxruntime")]


def test_without_the_cache_every_artifact_is_exported_and_none_kept(worker, tmp_path, home):
    for _ in range(2):
        _run(tmp_path, cache=False)
    assert _prepared(worker) == sorted([("resnet4", "onnxruntime"), ("unet", "onnxruntime")] * 2)
    assert not (home / "bench").exists()


def test_a_cache_folder_that_cannot_be_written_is_one_warning(worker, tmp_path, read_only_dir):
    warnings = []
    result = _run(tmp_path, warnings, cache_dir=str(read_only_dir / "bench"))
    assert len(warnings) == 1 and "cannot be written" in warnings[0] and "\n" not in warnings[0]
    assert _prepared(worker) == [("resnet4", "onnxruntime"), ("unet", "onnxruntime")]  # exported, measured all the same
    assert [r.status for r in result.rows if r.runtime == "onnxruntime"] == ["failed", "failed"]  # the stand-in's measure
    assert all(not Path(a).is_relative_to(read_only_dir) for a in _measured_artifacts(worker).values())


def test_a_cache_that_fails_during_the_run_is_one_warning(worker, tmp_path, monkeypatch):
    from pgn.export.cache import ArtifactCache

    def disk_full(self, key, artifact):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ArtifactCache, "store", disk_full)
    warnings = []
    _run(tmp_path, warnings)
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert len(_measured_artifacts(worker)) == 2  # both rows still measured, from the run's own folder


def test_cli_no_cache_and_clear_cache(worker, tmp_path, home):
    common = ["--models", "resnet4", "--runtimes", "onnxruntime", "--size", "32", "--threads", "1", "--quiet"]
    CliRunner().invoke(main, [*common, "--no-cache"])
    assert not (home / "bench").exists()
    CliRunner().invoke(main, common)
    assert len(list((home / "bench").iterdir())) == 1
    out = CliRunner().invoke(main, ["--clear-cache"])
    assert out.exit_code == 0 and f"removed 1 cached artifact from {home / 'bench'}" in out.output
    assert list((home / "bench").iterdir()) == []
    worker.clear()
    CliRunner().invoke(main, common)
    assert _prepared(worker) == [("resnet4", "onnxruntime")]  # exported again after clearing
