"""Run a benchmark: one worker process per measurement, rows for everything that could not run, ratios.

Every export and every measurement is its own process, forked from a warm server that imported torch once
(:mod:`benchmarks.forkserver`; a fresh interpreter per task where it does not run). Exported artifacts come from
the artifact cache when a checked entry exists (:mod:`export.cache`) and go into it when made.

Example::

    from pgn.benchmarks import BenchmarkConfig, run_benchmark
    result = run_benchmark(BenchmarkConfig(device="cpu", models=("vgg19", "resnet4"), runtimes=("torch",)))
    result.write_json("bench.json")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from pgn.files import write_json

from .config import BenchmarkConfig
from .environment import collect_environment, load_average
from .forkserver import ForkServer
from .measure import TimingStats
from .models import make_input_file, model_cost, resolve_model
from .progress import LiveProgress
from .results import BenchmarkResult, Row, attach_ratios
from .runtimes import check_runnable, resolve_runtime
from .worker import Task, artifact_size_mb

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: thread counts pinned, and this checkout importable."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_task(task: Task, workdir: Path, threads: int, timeout: float, server: ForkServer | None = None) -> dict:
    """Run ``task`` in its own worker process, forked by ``server`` or (None) a fresh ``python -m
    benchmarks.worker``; returns its result dict (never raises)."""
    fd, name = tempfile.mkstemp(prefix="task-", suffix=".json", dir=workdir)  # unique even when exports run in parallel
    os.close(fd)
    task_path = Path(name)
    result_path = task_path.with_name("result-" + task_path.name[len("task-"):])
    write_json(task.to_dict(), task_path)
    if server is not None:
        log_path = task_path.with_name("log-" + task_path.name[len("task-"):-len(".json")] + ".txt")
        reply = server.run(task_path, result_path, log_path, timeout)
        if reply is not None and reply["timed_out"]:
            return {"status": "failed", "reason": f"worker timed out after {timeout:.0f} s"}
        output = log_path.read_text(errors="replace") if log_path.is_file() else ""
        returncode = "unknown (the fork server died)" if reply is None else reply["exit"]
    else:
        cmd = [sys.executable, "-m", "pgn.benchmarks.worker", str(task_path), str(result_path)]
        try:
            proc = subprocess.run(cmd, env=worker_env(threads), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"worker timed out after {timeout:.0f} s"}
        output, returncode = proc.stderr or proc.stdout or "", proc.returncode
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = output.strip().splitlines()
    return {"status": "failed", "reason": f"worker exited with status {returncode}: {tail[-1] if tail else 'no output'}"}


def server_preload(config: BenchmarkConfig, exports: list[tuple[str, str, tuple[int, int]]]) -> tuple[str, ...]:
    """Modules the fork server imports for this run, beyond a measurement's (:data:`forkserver.BASE_PRELOAD`): the
    ExecuTorch runtime (which imports its exporter) for ExecuTorch rows, the ONNX exporter when ``exports`` (the
    (model, runtime, size) artifacts to make) has ONNX models."""
    preload = []
    if any(resolve_runtime(r).family == "executorch" for r in config.runtimes):
        preload += ["executorch.exir", "executorch.runtime", "executorch.backends.xnnpack.partition.xnnpack_partitioner"]
    if any(resolve_runtime(runtime).export_target in ("onnx", "tensorrt") for _, runtime, _ in exports):
        preload += ["onnxscript", "onnx"]
    return tuple(preload)


def _base_row(model: str, runtime: str, config: BenchmarkConfig, size: tuple[int, int]) -> Row:
    spec, rt = resolve_model(model), resolve_runtime(runtime)
    cost = model_cost(model, size, config.batch)
    return Row(
        model=model, display=spec.display, kind=spec.kind, runtime=runtime, family=rt.family, precision=rt.precision,
        device=config.device, size=list(size), batch=config.batch, status="ok", target_features=spec.target_features,
        params=cost.params, paper_macs=cost.paper_macs, work_macs=cost.work_macs,
    )


def _fill_measurement(row: Row, result: dict) -> None:
    row.samples_ms = [float(x) for x in result["samples_ms"]]
    row.cpu_samples_ms = [float(x) for x in result.get("cpu_samples_ms", [])]
    if row.cpu_samples_ms and row.device == "cpu":
        recorded = result.get("threads") or {}
        threads = recorded.get("executorch_threadpool") or recorded.get("torch_num_threads") or 1
        row.cpu_utilization = sum(row.cpu_samples_ms) / (sum(row.samples_ms) * threads)
    stats = TimingStats.from_samples(row.samples_ms)
    row.time_ms = stats.to_dict()
    row.timer, row.warmup = result.get("timer"), result.get("warmup")
    row.throughput_per_s = row.batch / (stats.median / 1e3)
    row.gflops = 2.0 * row.work_macs / (stats.median / 1e3) / 1e9 if row.work_macs else None
    row.memory = result.get("memory")
    row.memory_mb = row.memory["peak_mb"] if row.memory else None
    row.accuracy = result.get("accuracy")
    row.runtime_info = result.get("runtime_info")
    row.threads = result.get("threads")


def artifact_key(config: BenchmarkConfig, model: str, runtime: str, size: tuple[int, int], gpu: str | None = None) -> dict:
    """What determines the artifact ``runtime`` needs for ``model`` at ``size`` (the artifact cache adds the software
    versions, :func:`export.cache.software_versions`): weights (seed, or the checkpoint's sha256), export target,
    precision, graph options (the run's and the runtime's own), shape and batch; on CUDA the GPU (TensorRT engines are built
    for one)."""
    from pgn.export.manifest import sha256_of

    rt = resolve_runtime(runtime)
    weights = config.resolved_weights.get(model)
    return {
        "made_by": "pgn-bench", "runtime": runtime, "target": rt.export_target, "precision": rt.precision,
        "model": model, "weights": f"sha256:{sha256_of(weights)}" if weights else f"seeded-random:{config.seed}",
        "graph_options": config.graph_options, "runtime_graph_options": rt.graph_options, "size": list(size), "batch": config.batch, "dynamic": False,
        "device": config.device, "gpu": gpu if config.device == "cuda" else None,
    }


class _Artifacts:
    """Exported artifacts of this run, prepared once per (model, size, runtime) in their own worker, or taken from
    the artifact cache (``cache``: an :class:`export.cache.ArtifactCache`, None for none)."""

    def __init__(self, config: BenchmarkConfig, workdir: Path, server: ForkServer | None = None, cache=None,
                 warn=lambda message: None, gpu: str | None = None):
        self.config, self.workdir, self.server, self.cache, self.warn, self.gpu = config, workdir, server, cache, warn, gpu
        self.root = workdir / "artifacts"
        self.prepared: dict[tuple, dict] = {}

    def key(self, model: str, runtime: str, size: tuple[int, int]) -> dict:
        """The cache key of one artifact (:func:`artifact_key`)."""
        return artifact_key(self.config, model, runtime, size, self.gpu)

    def cached(self, model: str, runtime: str, size: tuple[int, int]) -> dict | None:
        """The prepared result from the cache (checked), or None."""
        path = self.cache.lookup(self.key(model, runtime, size)) if self.cache is not None else None
        if path is None:
            return None
        return {"status": "ok", "artifact": str(path), "artifact_mb": artifact_size_mb(path), "cached": True}

    def get(self, model: str, runtime: str, size: tuple[int, int], inputs: Path) -> dict:
        key = (model, runtime, size)
        if key in self.prepared:
            return self.prepared[key]
        hit = self.cached(model, runtime, size)
        if hit is not None:
            self.prepared[key] = hit
            return hit
        task = Task(mode="prepare", model=model, runtime=runtime, device=self.config.device, size=size, batch=self.config.batch,
                    inputs=str(inputs), threads=self.config.effective_threads, seed=self.config.seed,
                    weights=self.config.resolved_weights.get(model), artifact_dir=str(self.root),
                    graph_options=self.config.graph_options)
        result = run_task(task, self.workdir, self.config.effective_threads, self.config.timeout, server=self.server)
        self.prepared[key] = self._keep(model, runtime, size, result)
        return self.prepared[key]

    def _keep(self, model: str, runtime: str, size: tuple[int, int], result: dict) -> dict:
        """Store a fresh artifact in the cache (the run then uses the cached copy); a cache that fails is dropped with
        one warning."""
        cache = self.cache  # export threads share this object: another one may drop the cache meanwhile
        if cache is None or result.get("status") != "ok":
            return result
        try:
            stored = cache.store(self.key(model, runtime, size), result["artifact"])
        except OSError as e:
            self.warn(f"the artifact cache {cache.root} cannot be written ({e.strerror or e}): "
                      "this run goes on without it")
            self.cache = None
            return result
        return {**result, "artifact": str(stored)}

    def missing(self, jobs: list[tuple[tuple[int, int], str, str]]) -> list[tuple[str, str, tuple[int, int]]]:
        """The (model, runtime, size) artifacts ``jobs`` need that are neither prepared nor in the cache."""
        needed = [(model, runtime, size) for size, model, runtime in jobs
                  if resolve_runtime(runtime).export_target is not None
                  and check_runnable(resolve_runtime(runtime), self.config.device, resolve_model(model)) is None]
        out = []
        for model, runtime, size in needed:
            if (model, runtime, size) in self.prepared:
                continue
            hit = self.cached(model, runtime, size)
            if hit is not None:
                self.prepared[(model, runtime, size)] = hit
            else:
                out.append((model, runtime, size))
        return out

    def prepare_all(self, jobs: list[tuple[tuple[int, int], str, str]], inputs: dict[tuple[int, int], Path],
                    progress: LiveProgress | None = None) -> None:
        """Export every artifact ``jobs`` need and the cache lacks, ``config.export_jobs`` worker processes at a time.

        Each export is its own worker process, so the threads here only wait.
        """
        missing = self.missing(jobs)

        def export_one(job):
            model, runtime, size = job
            if progress is not None:
                progress.step(f"exporting {model} for {runtime}")
            result = self.get(model, runtime, size, inputs[size])
            if progress is not None:
                progress.advance(export_seconds(runtime))
            return result

        with ThreadPoolExecutor(max_workers=self.config.export_jobs) as pool:
            list(pool.map(export_one, missing))


#: Rough seconds of one export on a 2-core CPU, by runtime (weights of the progress bar's time-left estimate).
EXPORT_SECONDS = {"onnxruntime": 5.0, "onnxruntime-dw": 5.0, "onnxruntime-int8": 8.0, "executorch": 15.0, "executorch-int8": 50.0}


def export_seconds(runtime: str) -> float:
    """Rough seconds of exporting ``runtime``'s artifact (:data:`EXPORT_SECONDS`, 30 s for the others)."""
    return EXPORT_SECONDS.get(runtime, 30.0)


def measure_seconds(config: BenchmarkConfig, model: str, runtime: str, size: tuple[int, int]) -> float:
    """Rough seconds of one measurement: a second to start and load, plus every call at 30 GFLOP/s (a 2-core CPU)."""
    rt = resolve_runtime(runtime)
    if check_runnable(rt, config.device, resolve_model(model)) is not None:
        return 0.05
    calls = config.repeats + config.effective_warmup + config.memory_calls + (0 if rt.family == "torch" else 2)
    return 1.0 + calls * 2.0 * model_cost(model, size, config.batch).work_macs / 30e9


def measure_one(model: str, runtime: str, size: tuple[int, int], config: BenchmarkConfig, inputs: Path,
                artifacts: _Artifacts, workdir: Path, server: ForkServer | None = None) -> Row:
    """One row: skipped with a reason, or prepared (exported) and measured in its own worker process."""
    row = _base_row(model, runtime, config, size)
    spec, rt = resolve_model(model), resolve_runtime(runtime)
    skip = check_runnable(rt, config.device, spec)
    if skip is not None:
        row.status, row.reason = skip.status, skip.reason
        return row
    artifact = None
    if rt.export_target is not None:
        prepared = artifacts.get(model, runtime, size, inputs)
        row.artifact_mb = prepared.get("artifact_mb")
        if prepared["status"] != "ok":
            row.status, row.reason = prepared["status"], prepared.get("reason")
            return row
        artifact = prepared["artifact"]
    task = Task(mode="measure", model=model, runtime=runtime, device=config.device, size=size, batch=config.batch,
                inputs=str(inputs), repeats=config.repeats, warmup=config.effective_warmup, memory_calls=config.memory_calls,
                threads=config.effective_threads, seed=config.seed, weights=config.resolved_weights.get(model), artifact=artifact,
                check_values=config.check_values)
    result = run_task(task, workdir, config.effective_threads, config.timeout, server=server)
    if result["status"] != "ok":
        row.status, row.reason = result["status"], result.get("reason")
        row.accuracy = result.get("accuracy")
        return row
    _fill_measurement(row, result)
    return row


def run_benchmark(config: BenchmarkConfig, *, progress: bool = True, workdir: str | Path | None = None,
                  fork_server: bool = True, warn=None) -> BenchmarkResult:
    """Measure every model × runtime × size of ``config``; returns all rows with ratios and the environment.

    Args:
        config: what to measure.
        progress: show live progress on stderr where it is a terminal (:class:`benchmarks.progress.LiveProgress`).
        workdir: where inputs, fresh artifacts and worker files go (default: a temporary directory, removed after).
        fork_server: fork every worker from one warm server (:mod:`benchmarks.forkserver`) where it runs; False
            starts a fresh interpreter per worker.
        warn: called with a one-line warning (an artifact cache that cannot be written); default: printed on stderr.
    """
    from . import forkserver

    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
    jobs = [(size, model, runtime) for size in config.sizes for model in config.models for runtime in config.runtimes]
    rows: list[Row] = []
    holder = tempfile.TemporaryDirectory(prefix="pgn-bench-") if workdir is None else nullcontext(str(workdir))
    with holder as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        environment = collect_environment(config.device, config.effective_threads)
        artifacts = _Artifacts(config, tmp, None, open_artifact_cache(config.effective_cache_dir, warn), warn, (environment.get("gpu") or {}).get("name"))
        missing = artifacts.missing(jobs)  # checked cache entries are taken now
        runnable = any(check_runnable(resolve_runtime(r), config.device, resolve_model(m)) is None for _, m, r in jobs)
        # started before the inputs are made: it imports torch (ExecuTorch, the ONNX exporter) meanwhile
        server = (ForkServer(worker_env(config.effective_threads), server_preload(config, missing), log=tmp / "forkserver.log")
                  if fork_server and runnable and forkserver.available() else None)
        artifacts.server = server
        try:
            inputs = {size: make_input_file(tmp / f"inputs-{size[0]}x{size[1]}.pt", config.batch, size, config.seed)
                      for size in config.sizes}
            units = (sum(export_seconds(runtime) for _, runtime, _ in missing)
                     + sum(measure_seconds(config, model, runtime, size) for size, model, runtime in jobs))
            with LiveProgress(progress, len(jobs), units) as live:
                if missing:
                    live.say(f"exporting {len(missing)} artifact{'s' if len(missing) > 1 else ''} ({config.export_jobs} at a time), "
                             f"kept in {artifacts.cache.root if artifacts.cache else 'the run folder only (no cache)'}")
                artifacts.prepare_all(jobs, inputs, live)
                for size, model, runtime in jobs:
                    live.step(f"measuring {resolve_model(model).display} on {runtime} at {size[0]}×{size[1]}")
                    rows.append(measure_one(model, runtime, size, config, inputs[size], artifacts, tmp, server))
                    attach_ratios(rows)
                    live.advance(measure_seconds(config, model, runtime, size))
                    live.row(rows[-1])
        finally:
            if server is not None:
                server.close()
    environment["load_average_end"] = load_average()
    return BenchmarkResult(config=config.to_dict(), environment=environment, rows=attach_ratios(rows))


def open_artifact_cache(folder, warn):
    """The artifact cache at ``folder`` (:class:`export.cache.ArtifactCache`), or None: no folder, or it cannot be
    written (one warning through ``warn``)."""
    if folder is None:
        return None
    from pgn.export.cache import ArtifactCache

    cache, why = ArtifactCache.open(folder)
    if cache is None:
        warn(f"the artifact cache cannot be written ({why}): exporting without it")
    return cache
