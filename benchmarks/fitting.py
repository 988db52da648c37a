"""``pgn-bench --fitting``: the whole fitting step of a generator, per loss, in eager PyTorch and in ExecuTorch.

One row = generator × size × batch × loss × runtime: the median time of one whole step (generator forward, loss,
backward to the generator's parameters, SGD update) and its peak memory, and what the loss adds over the MSE-only
row of the same runtime, generator, size and batch (the generator's own cost).

* generators: ``talking-head`` (the demo's ``PoseGenerator``, personalized: its identity code trains too) and
  ``skip-net`` (Deep Image Prior's encoder-decoder in train mode, BatchNorm on batch statistics);
* losses: ``mse`` (normalized-space MSE), ``vgg19``, ``vgg11`` (:class:`pgn.PerceptualLoss`, autograd in eager;
  the hand-written input gradient in ExecuTorch), ``pgn`` and ``pgn-int8`` (ResNet-4 PGN, its surrogate + 20·MSE);
  eager PyTorch has no int8 kernels for the PGN, so ``pgn-int8`` is an ExecuTorch row only;
* runtimes: ``eager`` (PyTorch autograd, ``torch.optim.SGD``) and ``executorch`` (``export.export_training_step``,
  XNNPACK; the program is exported in one worker process and measured in another). Exported programs are kept in
  ``pgn-bench``'s artifact cache (:mod:`export.cache`), keyed by the case, this module's and the generator's
  sources and the software versions, so a second run re-measures without exporting again.

Every measurement runs in a fresh process (:func:`benchmarks.harness.run_task`'s environment). Memory: the peak
resident set during ``memory_calls`` steps above the process's resident set just before — for eager PyTorch after
the generator and loss are built, for ExecuTorch before the program is loaded but after ExecuTorch's modules are
imported (so ExecuTorch's planned memory, which it allocates at load, and XNNPACK's packed weights count; the
imports, ~140 MiB of anonymous memory, and the ``.pte`` bytes do not).
Weights are random (VGG ``random``, PGN untrained): time and memory do not depend on them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

GENERATORS = ("talking-head", "skip-net")
LOSSES = ("mse", "vgg19", "vgg11", "pgn", "pgn-int8")
RUNTIMES = ("eager", "executorch")
#: The PGN of the ``pgn`` rows and its λ·MSE term (the demo's).
PGN_PRESET, PGN_MSE_WEIGHT = "resnet4", 20.0
#: The SGD learning rate written into the measured programs (time and memory do not depend on it).
EXPORT_LR = 1e-4


@dataclass(frozen=True)
class FittingGrid:
    """What ``pgn-bench --fitting`` measures; the default fits a 2-core machine (the full grid is :meth:`full`)."""

    generators: tuple[str, ...] = ("talking-head",)
    sizes: tuple[int, ...] = (64, 128)
    batches: tuple[int, ...] = (1, 8)
    losses: tuple[str, ...] = LOSSES
    runtimes: tuple[str, ...] = RUNTIMES
    repeats: int = 5
    warmup: int = 1
    memory_calls: int = 2
    threads: int = 2
    timeout: float = 1800.0
    cache: bool = True  #: keep exported programs in pgn-bench's artifact cache

    @classmethod
    def full(cls, **overrides) -> "FittingGrid":
        """The issue's grid: both generators, 64², 128², 256², batch 1 and 8."""
        return cls(**{"generators": GENERATORS, "sizes": (64, 128, 256), **overrides})

    def cases(self) -> list[dict]:
        """Every (generator, size, batch, loss, runtime) to measure, MSE rows first within each group."""
        return [dict(generator=g, size=s, batch=b, loss=loss, runtime=r)
                for g in self.generators for s in self.sizes for b in self.batches for r in self.runtimes
                for loss in self.losses if not (r == "eager" and loss == "pgn-int8")]


# --------------------------------------------------------------------------------------------------------
# Inside a worker process


def build_case(case: dict):
    """The generator, its inputs and the target of ``case`` (seeded)."""
    import torch

    torch.manual_seed(0)
    n, s = case["batch"], case["size"]
    target = torch.rand(n, 3, s, s)
    if case["generator"] == "talking-head":
        from pgn.demos.generators.talking_head import Embedder, PoseGenerator, personalize

        poses = torch.rand(n, 1, s, s)
        generator = personalize(PoseGenerator(), Embedder(), target, poses).train()
        return generator, (poses,), target
    from pgn.demos.generators.skip_net import SkipNet

    return SkipNet().train(), (torch.rand(n, 3, s, s) * 0.1,), target


def fitting_loss(name: str):
    """The :class:`export.FittingLoss` of a loss name."""
    import pgn
    from pgn.export import FittingLoss

    if name == "mse":
        return FittingLoss.mse(1.0)
    if name in ("vgg19", "vgg11"):
        return FittingLoss.vgg(name, "random")
    return FittingLoss.pgn(pgn.build(PGN_PRESET), PGN_MSE_WEIGHT, "int8" if name == "pgn-int8" else "fp32")


def _export(case: dict, pte: Path) -> dict:
    from pgn.export import SGDRecipe, export_training_step
    from pgn.export.manifest import read_manifest
    from pgn.export.training import check_training_manifest

    generator, inputs, target = build_case(case)
    start = time.perf_counter()
    export_training_step(generator, inputs, fitting_loss(case["loss"]), output=pte, target=target,
                         optimizer=SGDRecipe(EXPORT_LR), verify=False)
    return {"export_s": time.perf_counter() - start, **_export_summary(read_manifest(pte, check=check_training_manifest))}


def _export_summary(manifest: dict) -> dict:
    return {"planned_memory_mb": manifest["exporter"]["planned_memory_mb"], "pte_mb": manifest["size_mb"],
            "operators_outside_delegate": manifest["exporter"]["operators_outside_delegate"]}


def _measure(case: dict, grid: dict, pte: Path | None) -> dict:
    import torch

    from pgn.benchmarks.measure import measure_cpu_memory, release_free_heap, time_calls

    generator, inputs, target = build_case(case)
    if case["runtime"] == "executorch":
        from pgn.export.executorch import import_executorch
        from pgn.export.training import SGDRecipe, StepRunner, executorch_training_available

        # ExecuTorch's Python modules and libraries are imported before the baseline: their import is no part of
        # the step's memory (it was, ~250 MiB, before); the program's load (planned memory, packed weights) is
        import_executorch(compiler=False)
        executorch_training_available()
        data = pte.read_bytes()
        tensors = tuple(t.float().contiguous() for t in (*inputs, target))

        def load():
            return StepRunner(data, tensors, SGDRecipe(EXPORT_LR), threads=grid["threads"])

        holder: dict = {}

        def first():  # the load (ExecuTorch allocates its planned memory then) counts towards the peak
            holder.setdefault("runner", load()).step(tensors)

        memory = measure_cpu_memory(first, 1)  # load + one step
        runner = holder["runner"]
        extra = measure_cpu_memory(lambda: runner.step(tensors), grid["memory_calls"] - 1) if grid["memory_calls"] > 1 else None
        peak = max(memory.peak_mb, (extra.peak_mb + extra.baseline_mb - memory.baseline_mb) if extra else 0.0)

        def step():
            runner.step(tensors)
    else:
        loss = fitting_loss(case["loss"]).reference()
        sgd = torch.optim.SGD(generator.parameters(), lr=EXPORT_LR)

        def step():
            sgd.zero_grad(set_to_none=True)
            loss(generator(*inputs), target).backward()
            sgd.step()

        release_free_heap()
        memory = measure_cpu_memory(step, grid["memory_calls"])
        peak = memory.peak_mb
    times = time_calls(step, grid["repeats"], grid["warmup"])
    return {"median_ms": statistics.median(times.wall_ms), "wall_ms": times.wall_ms, "cpu_ms": times.cpu_ms, "peak_mb": peak}


def worker(task_path: str, result_path: str) -> int:
    """``python -m benchmarks.fitting TASK RESULT``: run one task (``export`` or ``measure``), write its result."""
    import torch

    task = json.loads(Path(task_path).read_text())
    torch.set_num_threads(task["grid"]["threads"])
    try:
        pte = Path(task["pte"]) if task.get("pte") else None
        result = _export(task["case"], pte) if task["kind"] == "export" else _measure(task["case"], task["grid"], pte)
        result["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a row that cannot run says why
        from pgn.errors import first_line

        result = {"status": f"{type(e).__name__}: {first_line(e)}"}
    Path(result_path).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------------------
# The run


@dataclass
class FittingRow:
    """One measured (or failed) case."""

    generator: str
    size: int
    batch: int
    loss: str
    runtime: str
    status: str = "ok"
    median_ms: float | None = None
    peak_mb: float | None = None
    loss_ms: float | None = None  #: median_ms minus the MSE row's (same generator, size, batch, runtime)
    loss_mb: float | None = None  #: peak_mb minus the MSE row's
    details: dict = field(default_factory=dict)


def _run(task: dict, workdir: Path, grid: FittingGrid) -> dict:
    from pgn.benchmarks.harness import worker_env

    fd, name = tempfile.mkstemp(prefix="fit-", suffix=".json", dir=workdir)
    os.close(fd)
    result = Path(name + ".result")
    Path(name).write_text(json.dumps(task))
    try:
        subprocess.run([sys.executable, "-m", "pgn.benchmarks.fitting", name, str(result)], env=worker_env(grid.threads),
                       capture_output=True, text=True, timeout=grid.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {grid.timeout:.0f} s"}
    return json.loads(result.read_text()) if result.is_file() else {"status": "worker crashed"}


def program_key(case: dict) -> dict:
    """What determines the ExecuTorch program of ``case`` besides the toolkit and runtime versions (which
    :class:`export.cache.ArtifactCache` adds): the case, the export settings and the sources that build it."""
    import hashlib

    from pgn.demos.generators import skip_net, talking_head

    digest = hashlib.sha256()
    for module in (sys.modules[__name__], talking_head, skip_net):
        digest.update(Path(module.__file__).read_bytes())
    return {"kind": "fitting-step", **{k: case[k] for k in ("generator", "size", "batch", "loss")}, "lr": EXPORT_LR,
            "seed": 0, "sources": digest.hexdigest()[:16]}


def _program_cache(grid: FittingGrid, warn):
    """pgn-bench's artifact cache, or None: not asked for, or it cannot be written (one warning)."""
    from pgn.benchmarks.harness import open_artifact_cache
    from pgn.export.cache import default_cache_dir

    return open_artifact_cache(default_cache_dir("bench") if grid.cache else None, lambda m: warn(f"warning: {m}"))


def _exported_program(case: dict, grid: FittingGrid, workdir: Path, pte: Path, cache) -> tuple[dict, Path]:
    """The export task's result and the program to measure: the cached one, or one exported now (then cached)."""
    key = program_key(case)
    cached = cache.lookup(key) if cache is not None else None
    if cached is not None:
        from pgn.errors import PGNError
        from pgn.export.manifest import read_manifest
        from pgn.export.training import check_training_manifest

        try:
            return {**_export_summary(read_manifest(cached, check=check_training_manifest)), "cached": True, "status": "ok"}, cached
        except (PGNError, KeyError, TypeError):  # not a fitting step's manifest, or one without the export's facts:
            pass  # exported again below, and storing it replaces the entry
    exported = _run({"kind": "export", "case": case, "grid": asdict(grid), "pte": str(pte)}, workdir, grid)
    if exported["status"] == "ok" and cache is not None:
        try:
            pte = cache.store(key, pte)
        except OSError as e:  # measured from the work folder; the next run exports again
            exported["cache"] = f"not cached: {e}"
    return exported, pte


def run_fitting(grid: FittingGrid, progress=print) -> list[FittingRow]:
    """Measure every case of ``grid``; rows with the loss's addition over the MSE row filled in."""
    rows = []
    cache = _program_cache(grid, progress)
    with tempfile.TemporaryDirectory(prefix="pgn-bench-fitting-") as tmp:
        workdir = Path(tmp)
        for i, case in enumerate(grid.cases()):
            row = FittingRow(**case)
            pte = workdir / f"case{i}.pte"
            grid_dict = asdict(grid)
            if case["runtime"] == "executorch":
                exported, pte = _exported_program(case, grid, workdir, pte, cache)
                row.details.update(exported)
                if exported["status"] != "ok":
                    row.status = exported["status"]
            if row.status == "ok":
                measured = _run({"kind": "measure", "case": case, "grid": grid_dict, "pte": str(pte)}, workdir, grid)
                row.status = measured.pop("status")
                row.median_ms, row.peak_mb = measured.pop("median_ms", None), measured.pop("peak_mb", None)
                row.details.update(measured)
            rows.append(row)
            progress(f"[{i + 1}/{len(grid.cases())}] {case}: {row.status} {row.median_ms} ms {row.peak_mb} MB")
    for row in rows:
        base = next((r for r in rows if r.loss == "mse" and (r.generator, r.size, r.batch, r.runtime)
                     == (row.generator, row.size, row.batch, row.runtime) and r.status == "ok"), None)
        if base is not None and row.status == "ok":
            row.loss_ms, row.loss_mb = row.median_ms - base.median_ms, row.peak_mb - base.peak_mb
    return rows


def markdown(rows: list[FittingRow], command: str, cpu: str) -> str:
    """The rows as a Markdown table, with the command and the CPU."""
    lines = [f"`{command}` on {cpu}", "",
             "| generator | size | batch | loss | runtime | step ms | step CPU ms | peak MiB | loss adds ms | loss adds MiB | status |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    fmt = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
    for r in rows:
        cpu_ms = statistics.median(r.details["cpu_ms"]) if r.details.get("cpu_ms") else None
        lines.append(f"| {r.generator} | {r.size}² | {r.batch} | {r.loss} | {r.runtime} | {fmt(r.median_ms)} | {fmt(cpu_ms)} | {fmt(r.peak_mb)} | "
                     f"{fmt(r.loss_ms)} | {fmt(r.loss_mb)} | {r.status} |")
    return "\n".join(lines) + "\n"


def rows_from_json(path: Path) -> tuple[list[FittingRow], dict]:
    """The rows and the header (command, cpu) of a ``--json`` file written by :func:`main_fitting`."""
    data = json.loads(Path(path).read_text())
    return [FittingRow(**r) for r in data["rows"]], {"command": data["command"], "cpu": data["cpu"]}


def plot(rows: list[FittingRow], path: Path) -> Path:
    """Step time and peak memory per loss, eager against ExecuTorch, one panel pair per (generator, size, batch)."""
    import matplotlib

    from pgn.files import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.generator, r.size, r.batch) for r in rows})
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3 * len(groups)), squeeze=False)
    for (ax_t, ax_m), group in zip(axes, groups):
        for offset, runtime in ((-0.2, "eager"), (0.2, "executorch")):
            sel = [r for r in rows if (r.generator, r.size, r.batch) == group and r.runtime == runtime and r.status == "ok"]
            xs = [LOSSES.index(r.loss) + offset for r in sel]
            ax_t.bar(xs, [r.median_ms for r in sel], width=0.4, label=runtime)
            ax_m.bar(xs, [r.peak_mb for r in sel], width=0.4, label=runtime)
        for ax, unit in ((ax_t, "step ms"), (ax_m, "peak MiB")):
            ax.set_xticks(range(len(LOSSES)), LOSSES)
            ax.set_ylabel(unit)
            ax.set_title(f"{group[0]} {group[1]}² batch {group[2]}")
            ax.legend()
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def main_fitting(grid: FittingGrid, json_path: Path | None, markdown_path: Path | None, plot_path: Path | None, command: str) -> list[FittingRow]:
    """Run the grid and write what was asked for; prints the Markdown table."""
    from pgn.benchmarks.environment import cpu_flags, cpu_name, load_average
    from pgn.files import write_json, write_text

    rows = run_fitting(grid)
    cpu = f"{cpu_name()} ({', '.join(f for f in cpu_flags() if f.startswith('avx'))}), load average {load_average()}"
    text = markdown(rows, command, cpu)
    print(text)
    write_json({"command": command, "cpu": cpu, "grid": asdict(grid), "rows": [asdict(r) for r in rows]}, json_path)
    if markdown_path is not None:
        write_text(markdown_path, text)
    if plot_path is not None:
        plot(rows, plot_path)
    return rows


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], sys.argv[2]))
