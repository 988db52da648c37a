"""The worker process: one measurement (or one artifact export) per process, so runtimes cannot disturb each other.

The parent (:mod:`benchmarks.harness`) writes a :class:`Task` as JSON and runs::

    python -m benchmarks.worker TASK.json RESULT.json

``prepare`` tasks export the artifact an exported runtime needs (its target, precision and graph options);
``measure`` tasks load the model or artifact, read peak memory, time the calls and check accuracy (:mod:`benchmarks.measure`). The
result file always exists afterwards unless the process died: ``{"status": "ok" | "failed" | "skipped", ...}``.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from pgn.files import write_json
from pgn.errors import first_line


@dataclass(frozen=True)
class Task:
    """One unit of work for a worker process (JSON round-trips through :meth:`to_dict` / :meth:`from_dict`).

    Args:
        mode: ``prepare`` (export an artifact) or ``measure``.
        model, runtime, device: what to run where (see :mod:`benchmarks.models`, :mod:`benchmarks.runtimes`).
        size: (H, W). batch: images per gradient call.
        inputs: the input file (:func:`benchmarks.models.make_input_file`).
        repeats, warmup: timed and untimed calls. memory_calls: calls inside the memory measurement.
        threads: intra-op threads, None for the library default.
        seed: seed of the random weights. weights: a PGN checkpoint instead.
        artifact: exported file to measure. artifact_dir: where ``prepare`` writes.
        check_values: the PyTorch modules' input value check (``auto``, ``always``, ``never``; :mod:`pgn.inputs`).
        graph_options: export-graph options of a ``prepare`` export (:class:`export.graph_options.GraphOptions` text).
    """

    mode: str
    model: str
    runtime: str
    device: str
    size: tuple[int, int]
    batch: int
    inputs: str
    repeats: int = 10
    warmup: int = 2
    memory_calls: int = 2
    threads: int | None = None
    seed: int = 0
    weights: str | None = None
    artifact: str | None = None
    artifact_dir: str | None = None
    check_values: str = "auto"
    graph_options: str = "default"

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["size"] = tuple(d["size"])
        return cls(**d)


def _configure_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def _load_inputs(path: str) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def measure(task: Task) -> dict:
    """Load, read memory, time, and check accuracy of one model on one runtime; returns the result dict."""
    from .measure import (
        measure_cpu_memory,
        measure_cuda_device_memory,
        measure_cuda_torch_memory,
        thread_environment,
        time_calls,
    )
    from .runners import compare_outputs, make_runner, reference_outputs

    inputs = _load_inputs(task.inputs)
    runner = make_runner(task.model, task.runtime, task.device, inputs, seed=task.seed, weights=task.weights,
                         threads=task.threads, artifact=task.artifact, check_values=task.check_values)
    runner.prepare()
    memory_fn = {"cpu": measure_cpu_memory, "cuda_torch": measure_cuda_torch_memory, "cuda_device": measure_cuda_device_memory}[runner.memory]
    # On a GPU the warm-up comes first, so that one-time work (cuDNN autotuning) stays out of the peak.
    memory_warmup = 0 if runner.memory == "cpu" else task.warmup
    memory = memory_fn(runner.step, task.memory_calls, warmup=memory_warmup)
    times = time_calls(runner.step, task.repeats, task.warmup if memory_warmup == 0 else 1, runner.timer)
    accuracy = None
    if not (runner.runtime.name == "torch"):
        y_hat, y = runner.accuracy_inputs()
        accuracy = compare_outputs(reference_outputs(runner, y_hat, y), runner.run(y_hat, y))
        accuracy["reference"] = f"torch fp32 eager on {task.device}"
        accuracy["inputs"] = "timed pair" if runner.model.is_teacher else "held-out photos (not used for int8 calibration)"
        broken = _broken_artifact_reason(runner.runtime, accuracy)
        if broken:
            return {"status": "failed", "reason": broken, "accuracy": accuracy, "runtime_info": runner.info()}
    info = runner.info()
    threads = thread_environment()
    if runner.runtime.family == "executorch":  # its own pool, one per process, sized by the runtime when it loaded
        threads["executorch_threadpool"] = info["threads"]
    return {
        "status": "ok",
        "samples_ms": times.wall_ms,
        "cpu_samples_ms": times.cpu_ms,
        "timer": runner.timer,
        "warmup": task.warmup,
        "memory": memory.to_dict(),
        "accuracy": accuracy,
        "runtime_info": info,
        "threads": threads,
    }


#: An fp32 exported graph whose worst-sample gradient cosine to fp32 PyTorch falls below this computes something else.
FP32_ARTIFACT_MIN_COSINE = 0.999


def _broken_artifact_reason(runtime, accuracy: dict) -> str | None:
    """Why an exported fp32 artifact's numbers must not be reported (its gradient is not the PyTorch one), or None."""
    if runtime.family == "torch" or runtime.precision != "fp32":
        return None
    cosine = accuracy["grad_cosine_min"]
    if cosine >= FP32_ARTIFACT_MIN_COSINE:
        return None
    return (f"the exported graph disagrees with PyTorch (gradient cosine {cosine:.4f} < {FP32_ARTIFACT_MIN_COSINE}): "
            "re-export it with pgn-export, which verifies parity, and report the failure")


def prepare(task: Task) -> dict:
    """Export the artifact ``task.runtime`` needs: its export target, at its precision (int8: the target's own
    recipe and calibration pairs), with its graph options over the run's."""
    from pgn.export import FORMATS, export
    from pgn.export.graph_options import GraphOptions

    from .models import build_pgn
    from .runtimes import resolve_runtime

    runtime = resolve_runtime(task.runtime)
    h, w = task.size
    variant = "-" + runtime.graph_options.replace("=", "-").replace(",", "-") if runtime.graph_options else ""
    root = Path(task.artifact_dir) / f"{task.model}-{h}x{w}-b{task.batch}-{runtime.export_target}-{runtime.precision}{variant}"
    model = build_pgn(task.model, task.seed, task.weights)
    graph_options = GraphOptions.parse(task.graph_options, FORMATS[runtime.export_target].default_graph_options)
    if runtime.graph_options:
        graph_options = GraphOptions.parse(runtime.graph_options, graph_options)
    # The export's own float64 parity check would take a third of the default run; the measurement checks every
    # artifact against fp32 PyTorch instead (accuracy columns) and fails a row whose graph disagrees (see measure).
    results = export(model, runtime.export_target, output_dir=root, size=(h, w), batch=task.batch, dynamic=False,
                     precision=runtime.precision, verify=False, graph_options=graph_options)
    chosen = results[0] if results else None
    if chosen is None:
        return {"status": "failed", "reason": f"export to {runtime.export_target} returned no result"}
    if chosen.status == "failed" or chosen.artifact is None:
        return {"status": "failed", "reason": f"export failed: {chosen.reason}"}
    artifact = Path(chosen.artifact)
    info = {"export_status": chosen.status, "export_reason": chosen.reason, "artifact_mb": artifact_size_mb(artifact)}
    return {"status": "ok", "artifact": str(artifact), **info}


def artifact_size_mb(path: str | Path) -> float:
    """Size of a file, or of a directory's files (Core ML packages), in MiB."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.worker TASK.json RESULT.json``."""
    argv = sys.argv[1:] if argv is None else argv
    task_path, result_path = Path(argv[0]), Path(argv[1])
    task = Task.from_dict(json.loads(task_path.read_text()))
    _configure_threads(task.threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = measure(task) if task.mode == "measure" else prepare(task)
    except Exception as e:  # the parent turns this into a row that says what failed
        reason = f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
        result = {"status": "failed", "reason": reason, "traceback": traceback.format_exc()}
    write_json(result, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
