"""Run a benchmark: one worker process per measurement, rows for everything that could not run, ratios.

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
from .measure import TimingStats
from .models import make_input_file, model_cost, resolve_model
from .results import BenchmarkResult, Row, attach_ratios
from .runtimes import check_runnable, resolve_runtime
from .worker import Task

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: thread counts pinned, and this checkout importable."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_task(task: Task, workdir: Path, threads: int, timeout: float) -> dict:
    """Run ``task`` in a fresh ``python -m benchmarks.worker`` process; returns its result dict (never raises)."""
    fd, name = tempfile.mkstemp(prefix="task-", suffix=".json", dir=workdir)  # unique even when exports run in parallel
    os.close(fd)
    task_path = Path(name)
    result_path = task_path.with_name("result-" + task_path.name[len("task-"):])
    write_json(task.to_dict(), task_path)
    cmd = [sys.executable, "-m", "pgn.benchmarks.worker", str(task_path), str(result_path)]
    try:
        proc = subprocess.run(cmd, env=worker_env(threads), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"worker timed out after {timeout:.0f} s"}
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()
    return {"status": "failed", "reason": f"worker exited with status {proc.returncode}: {tail[-1] if tail else 'no output'}"}


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


class _Artifacts:
    """Exported artifacts of this run, prepared once per (model, size, runtime) in their own worker."""

    def __init__(self, config: BenchmarkConfig, workdir: Path):
        self.config, self.workdir = config, workdir
        self.root = workdir / "artifacts"
        self.cache: dict[tuple, dict] = {}

    def get(self, model: str, runtime: str, size: tuple[int, int], inputs: Path) -> dict:
        key = (model, runtime, size)
        if key in self.cache:
            return self.cache[key]
        task = Task(mode="prepare", model=model, runtime=runtime, device=self.config.device, size=size, batch=self.config.batch,
                    inputs=str(inputs), threads=self.config.effective_threads, seed=self.config.seed,
                    weights=self.config.resolved_weights.get(model), artifact_dir=str(self.root),
                    graph_options=self.config.graph_options)
        self.cache[key] = run_task(task, self.workdir, self.config.effective_threads, self.config.timeout)
        return self.cache[key]

    def prepare_all(self, jobs: list[tuple[tuple[int, int], str, str]], inputs: dict[tuple[int, int], Path]) -> None:
        """Export every artifact ``jobs`` need, ``config.export_jobs`` worker processes at a time.

        Each export is its own worker process, so the threads here only wait.
        """
        needed = [(model, runtime, size) for size, model, runtime in jobs
                  if resolve_runtime(runtime).export_target is not None
                  and check_runnable(resolve_runtime(runtime), self.config.device, resolve_model(model)) is None]
        with ThreadPoolExecutor(max_workers=self.config.export_jobs) as pool:
            list(pool.map(lambda job: self.get(*job, inputs[job[2]]), needed))


def measure_one(model: str, runtime: str, size: tuple[int, int], config: BenchmarkConfig, inputs: Path,
                artifacts: _Artifacts, workdir: Path) -> Row:
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
    result = run_task(task, workdir, config.effective_threads, config.timeout)
    if result["status"] != "ok":
        row.status, row.reason = result["status"], result.get("reason")
        row.accuracy = result.get("accuracy")
        return row
    _fill_measurement(row, result)
    return row


def run_benchmark(config: BenchmarkConfig, *, progress: bool = True, workdir: str | Path | None = None) -> BenchmarkResult:
    """Measure every model × runtime × size of ``config``; returns all rows with ratios and the environment.

    Args:
        config: what to measure.
        progress: show a progress bar on stderr.
        workdir: where inputs, artifacts and worker files go (default: a temporary directory, removed after).
    """
    environment = collect_environment(config.device, config.effective_threads)
    jobs = [(size, model, runtime) for size in config.sizes for model in config.models for runtime in config.runtimes]
    rows: list[Row] = []
    holder = tempfile.TemporaryDirectory(prefix="pgn-bench-") if workdir is None else nullcontext(str(workdir))
    with holder as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        artifacts = _Artifacts(config, tmp)
        inputs = {size: make_input_file(tmp / f"inputs-{size[0]}x{size[1]}.pt", config.batch, size, config.seed)
                  for size in config.sizes}
        with _progress(progress, len(jobs) + 1) as advance:
            advance(f"exporting artifacts ({config.export_jobs} at a time)")
            artifacts.prepare_all(jobs, inputs)
            for size, model, runtime in jobs:
                advance(f"{model} / {runtime} @ {size[0]}x{size[1]}")
                rows.append(measure_one(model, runtime, size, config, inputs[size], artifacts, tmp))
            advance(None)
    environment["load_average_end"] = load_average()
    return BenchmarkResult(config=config.to_dict(), environment=environment, rows=attach_ratios(rows))


class _progress:
    """A rich progress bar on stderr (or nothing); calling the handle names the job about to start."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda description: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task("pgn-bench", total=self.total)
        self.started = False

        def advance(description: str | None) -> None:
            if self.started:
                self.bar.advance(self.task)
            self.started = True
            self.bar.update(self.task, description=description or "done")

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
