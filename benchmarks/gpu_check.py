"""The GPU check: one command that measures and tests everything CUDA on a machine with one NVIDIA GPU.

Run ``benchmarks/gpu_check.sh`` from a plain checkout (it lays the checkout out as the ``pgn`` namespace in a temporary
folder and puts that on ``PYTHONPATH``; nothing is installed). In
under 10 minutes it runs, each step in its own process with its own time limit, in this order:

1. ``pgn-bench --device cuda`` for VGG-19, VGG-11 and every PGN at batch 1 and at batch 8, 224²: torch eager,
   torch-fp16, torch-bf16, ONNX Runtime CUDA and TensorRT (fp32, fp16) where they start (otherwise their rows say why);
2. the same PyTorch rows with ``--check-values always``: what checking input values on the GPU costs;
3. a one-rank NCCL distillation of 20 steps under ``torchrun``;
4. the ``gpu``-marked tests (``pytest -m gpu``);
5. the torch-compile rows at batch 1 and 8, one process per model (last, since compiling is slow).

A step that fails is recorded and the next one runs; a step that does not fit in what is left of the time budget
is skipped, saying so. Everything lands in ``results/gpu/<gpu-name>/``: per batch JSON, Markdown and a
plot (eager and compiled rows merged), the validation-cost run, the distillation's metrics and curves, the test
log, the environment, and ``summary.md`` / ``summary.json`` with the goals (every PGN faster than VGG-11
forward + backward; the UNet no slower than ResNet-4).

``--smoke`` runs the same plumbing on the CPU at tiny sizes in about two minutes (torch-compile replaced by
torch-bf16), to check the script itself; ``--dry-run`` only writes the plan.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgn.files import write_json, write_text

from .runtimes import module_available

ROOT = Path(__file__).resolve().parent.parent
#: Whole-run budget in seconds (the promise is "under 10 minutes"; the rest is start-up and the summary).
DEFAULT_BUDGET = 560.0
#: Seconds kept back for merging results and writing the summary.
RESERVE = 15.0
#: A step is not started with less time than this left.
MIN_STEP_SECONDS = 20.0
PGN_MODELS = ("resnet4", "resnet6", "resnet8", "unet")
#: Optional modules and what their absence costs on this path.
OPTIONAL_MODULES = {
    "onnxruntime": "no ONNX Runtime rows",
    "onnxscript": "no ONNX Runtime or TensorRT rows, since the ONNX exporter needs it",
    "tensorrt": "no TensorRT rows",
    "pytest": "the gpu-marked tests cannot run; put pytest on PYTHONPATH",
    "tqdm": "no progress bars, nothing else",
    "sklearn": "two fewer bundled sample photographs; scikit-image's remain",
    "coremltools": "nothing on this path; Core ML does not run on CUDA machines",
    "matplotlib": "no plots",
}


@dataclass(frozen=True)
class Plan:
    """What to run: the GPU check, or its CPU smoke version."""

    device: str
    size: int
    batches: tuple[int, ...]
    models: tuple[str, ...]
    eager_runtimes: tuple[str, ...]
    compiled_runtimes: tuple[str, ...]
    check_values_models: tuple[str, ...]
    repeats: int
    warmup: int
    distill_steps: int
    distill_args: tuple[str, ...]
    distill_threads: int  #: OMP_NUM_THREADS of the distillation (its data loading and CPU-side work)
    worker_timeout: int

    @classmethod
    def gpu(cls) -> "Plan":
        """The real check on one CUDA GPU."""
        return cls("cuda", 224, (1, 8), ("vgg19", "vgg11", *PGN_MODELS),
                   ("torch", "torch-fp16", "torch-bf16", "onnxruntime", "tensorrt", "tensorrt-fp16"), ("torch-compile",),
                   ("vgg19", "resnet4", "unet"), 20, 10, 20, ("--size", "128", "--batch-size", "8"), 4, 150)

    @classmethod
    def smoke(cls) -> "Plan":
        """The same plumbing on the CPU at tiny sizes (torch-compile replaced by torch-bf16, to stay fast)."""
        return cls("cpu", 32, (1, 2), ("vgg11", "resnet4"), ("torch", "torch-fp16"), ("torch-bf16",), ("resnet4",), 2, 1, 2,
                   ("--size", "32", "--batch-size", "4", "--num-blocks", "1", "--down-channels", "16,32", "--up-channels", "16",
                    "--val-images", "3"), 1, 120)


@dataclass
class Step:
    """One command of the check and what became of it."""

    name: str
    command: list[str]
    cap: float  #: its own time limit in seconds (the remaining budget may cut it shorter)
    needs: tuple[str, ...] = ()  #: modules without which it is skipped
    env: dict = field(default_factory=dict)
    status: str = "pending"  #: ok, failed, timed out, skipped
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict:
        """JSON-ready form."""
        d = asdict(self)
        d["command"] = shlex.join(self.command)
        return d


def gpu_slug(name: str) -> str:
    """A folder name for a GPU: ``NVIDIA H200`` → ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def plan_steps(plan: Plan, out: Path, work: Path) -> list[Step]:
    """The steps of ``plan`` in run order, writing into ``out`` (results) and ``work`` (scratch)."""
    py = sys.executable
    models = ",".join(plan.models)
    common = ["--device", plan.device, "--size", str(plan.size), "--repeats", str(plan.repeats), "--warmup", str(plan.warmup),
              "--timeout", str(plan.worker_timeout), "--quiet"]
    bench = [py, "-m", "pgn.benchmarks.cli", *common]
    steps = []
    for b in plan.batches:
        steps.append(Step(f"bench-batch{b}", [*bench, "--models", models, "--runtimes", ",".join(plan.eager_runtimes), "--batch", str(b),
                                              "--json", str(work / f"batch{b}-eager.json")], cap=170))
    steps.append(Step("check-values", [*bench, "--models", ",".join(plan.check_values_models), "--runtimes", "torch", "--batch", "1",
                                       "--check-values", "always", "--json", str(out / f"check-values-{plan.size}.json"),
                                       "--markdown", str(out / f"check-values-{plan.size}.md")], cap=60))
    weights = "imagenet" if _imagenet_vgg_cached() else "random"
    steps.append(Step("distill-nccl" if plan.device == "cuda" else "distill-gloo",
                      [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "pgn.distill.cli",
                       "--device", plan.device, "--steps", str(plan.distill_steps), "--vgg-weights", weights, "--no-progress",
                       "--save-every", str(plan.distill_steps), *plan.distill_args, "--run-dir", str(work / "distill"),
                       "--json", str(work / "distill" / "summary.json")], cap=150, env={"OMP_NUM_THREADS": str(plan.distill_threads)}))
    steps.append(Step("gpu-tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=-ra",
                                    "--junitxml", str(out / "gpu-tests.xml"), "--rootdir", str(ROOT), "-c", str(ROOT / "setup.cfg"),
                                    str(ROOT / "tests")], cap=240, needs=("pytest",)))
    for b in plan.batches:  # one process per model: a model that does not compile in time costs only its own rows
        for model in compile_order(plan.models):
            steps.append(Step(f"bench-batch{b}-compiled-{model}", [*bench, "--models", model, "--runtimes", ",".join(plan.compiled_runtimes),
                                                                   "--batch", str(b), "--json", str(work / f"batch{b}-compiled-{model}.json")],
                              cap=2 * plan.worker_timeout))
    return steps


def compile_order(models: tuple[str, ...]) -> list[str]:
    """VGG-11 and the UNet and ResNet-4 first: the goals compare them; VGG-19 last."""
    first = [m for m in ("vgg11", "resnet4", "unet") if m in models]
    return first + [m for m in models if m not in first and m != "vgg19"] + [m for m in models if m == "vgg19"]


def run_step(step: Step, left: float, logs: Path, cwd: Path) -> None:
    """Run ``step`` in ``cwd`` within ``min(step.cap, left)`` seconds; fills its status, time and detail (never raises).

    ``cwd`` is a scratch folder, never the checkout: ``python -m`` puts its working folder first on ``sys.path``, and
    the checkout's ``pgn/`` folder alone lacks the ``pgn.export``/``pgn.benchmarks``/... subpackages.
    """
    missing = [m for m in step.needs if not module_available(m)]
    if missing:
        step.status, step.detail = "skipped", f"{', '.join(missing)} not installed: {OPTIONAL_MODULES.get(missing[0], '')}"
        return
    limit = min(step.cap, left)
    if limit < MIN_STEP_SECONDS:
        step.status, step.detail = "skipped", f"not started: {left:.0f} s of the time budget left"
        return
    env = dict(os.environ, **step.env)
    log = logs / f"{step.name}.log"
    start = time.monotonic()
    with open(log, "w") as fh:
        fh.write(f"$ {shlex.join(step.command)}\n")
        fh.flush()
        try:
            proc = subprocess.run(step.command, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=limit)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    step.seconds = round(time.monotonic() - start, 1)
    text = log.read_text(errors="replace")
    if rc is None:
        step.status, step.detail = "timed out", f"stopped after {limit:.0f} s (log: logs/{log.name})"
    elif rc == 0:
        step.status, step.detail = "ok", _matching_line(text, TEST_COUNTS) or ""
    else:
        why = _matching_line(text, r"^error:|Error:|\bFAILED\b|\d+ failed", first=True) or _matching_line(text, ".")
        step.status, step.detail = "failed", f"exit {rc}: {why} (log: logs/{log.name})"


#: pytest's closing line, e.g. ``3 passed, 2 skipped in 40.1s``.
TEST_COUNTS = r"\d+ (passed|failed|skipped|deselected|errors?)\b"


def _matching_line(text: str, pattern: str, first: bool = False) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and re.search(pattern, ln.strip())]
    return (lines[0] if first else lines[-1])[:300] if lines else None


def _imagenet_vgg_cached() -> bool:
    try:
        from pgn.perceptual import imagenet_weights_path

        return imagenet_weights_path("vgg19").is_file()
    except Exception:  # noqa: BLE001 - then the distillation uses a random teacher, and says so
        return False


# --------------------------------------------------------------------------------------------------------
# Results


def merge_bench(parts: list[Path], out: Path, stem: str) -> dict | None:
    """Merge the eager and compiled runs of one batch into ``stem``.json/.md/.png; returns a short digest."""
    from .results import BenchmarkResult, attach_ratios

    results = [BenchmarkResult.from_dict(json.loads(p.read_text())) for p in parts if p.is_file()]
    if not results:
        return None
    merged = BenchmarkResult(config=dict(results[0].config), environment=results[0].environment,
                             rows=attach_ratios([r for res in results for r in res.rows]))
    merged.config["runtimes"] = [rt for res in results for rt in res.config.get("runtimes", [])]
    merged.config["command"] = " + ".join(re.sub(r" --json \S+", "", res.config.get("command", "?")) for res in results)
    merged.write_json(out / f"{stem}.json")
    from .report import render_markdown

    write_text(out / f"{stem}.md", f"`{merged.config['command']}`\n\n{render_markdown(merged)}")
    if module_available("matplotlib"):
        from .report import plot_time_memory

        plot_time_memory(merged, out / f"{stem}.png")
    return digest(merged)


def digest(result) -> dict:
    """The goals of one batch: each PGN's fastest fp32 row against VGG-11's and the UNet against ResNet-4."""
    best: dict[str, tuple[float, str]] = {}
    for row in result.rows:
        if row.ok and row.precision == "fp32" and row.samples_ms:
            ms = row.median_ms()
            if row.model not in best or ms < best[row.model][0]:
                best[row.model] = (ms, row.runtime)
    goals = []
    vgg11 = best.get("vgg11")
    for model in PGN_MODELS:
        if model in best and vgg11:
            ms, runtime = best[model]
            goals.append({"goal": f"{model} faster than VGG-11 forward+backward", "met": ms < vgg11[0],
                          "detail": f"{ms:.2f} ms ({runtime}) vs {vgg11[0]:.2f} ms ({vgg11[1]}): {vgg11[0] / ms:.2f}x"})
    if "unet" in best and "resnet4" in best:
        u, r = best["unet"], best["resnet4"]
        goals.append({"goal": "UNet no slower than ResNet-4", "met": u[0] <= r[0],
                      "detail": f"{u[0]:.2f} ms ({u[1]}) vs {r[0]:.2f} ms ({r[1]})"})
    fp16 = {row.model: row.accuracy.get("grad_cosine_min") for row in result.rows
            if row.ok and row.runtime == "torch-fp16" and row.accuracy}
    statuses: dict[str, int] = {}
    for row in result.rows:
        statuses[row.status] = statuses.get(row.status, 0) + 1
    return {"batch": result.config.get("batch"), "best_fp32_ms": {m: round(v[0], 3) for m, v in best.items()}, "goals": goals,
            "torch_fp16_grad_cosine": fp16, "rows": statuses}


def check_values_cost(out: Path, batch1: Path, size: int) -> list[dict]:
    """Median time of the PyTorch eager rows with the value check off the GPU (auto) and on it (always)."""
    always_path = out / f"check-values-{size}.json"
    if not (always_path.is_file() and batch1.is_file()):
        return []
    def medians(path: Path) -> dict[str, float]:
        import numpy as np

        rows = json.loads(path.read_text())["rows"]
        return {r["model"]: float(np.median(r["samples_ms"])) for r in rows if r["status"] == "ok" and r["runtime"] == "torch"}
    auto, always = medians(batch1), medians(always_path)
    return [{"model": m, "auto_ms": round(auto[m], 3), "always_ms": round(always[m], 3), "overhead_ms": round(always[m] - auto[m], 3)}
            for m in always if m in auto]


def distill_digest(work: Path, out: Path) -> dict | None:
    """Copy the distillation's small outputs into ``out/distill`` and summarize its first and last scalars."""
    run = work / "distill"
    if not (run / "metrics.jsonl").is_file():
        return None
    dest = out / "distill"
    dest.mkdir(exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "curves.png", "summary.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    start = next((x for x in lines if x.get("event") == "start"), {})
    losses = [x["train/loss"] for x in lines if "train/loss" in x]
    cos = [x["val/cos"] for x in lines if "val/cos" in x]
    return {"device": start.get("device"), "backend": start.get("backend"), "teacher": start.get("teacher"), "steps": len(losses),
            "train_loss_first_last": [losses[0], losses[-1]] if losses else None,
            "val_cos_first_last": [cos[0], cos[-1]] if cos else None}


def environment() -> dict:
    """GPU, software and which optional modules are missing here."""
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "host": platform.node()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                   gpu_count=torch.cuda.device_count())
    env["missing"] = {m: why for m, why in OPTIONAL_MODULES.items() if not module_available(m)}
    return env


def write_summary(out: Path, env: dict, steps: list[Step], batches: dict, validation: list[dict], distill: dict | None,
                  wall: float, smoke: bool) -> None:
    """``summary.json`` and ``summary.md``: steps, goals, validation cost, fp16 accuracy, distillation."""
    payload = {"environment": env, "wall_seconds": round(wall, 1), "smoke": smoke, "steps": [s.to_dict() for s in steps],
               "batches": batches, "check_values_cost": validation, "distill": distill}
    write_json(payload, out / "summary.json", indent=1)
    md = [f"# GPU check: {env.get('gpu', 'CPU smoke run' if smoke else 'no GPU')}", "",
          f"torch {env['torch']} (CUDA {env['cuda_build']}), Python {env['python']}; {wall / 60:.1f} minutes in all.", ""]
    if env["missing"]:
        md += ["Missing here: " + "; ".join(f"`{m}`: {why}" for m, why in env["missing"].items()) + ".", ""]
    md += ["| step | status | s | detail |", "|---|---|---:|---|"]
    md += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.detail.replace('|', '/')} |" for s in steps]
    for stem, d in batches.items():
        if not d:
            continue
        md += ["", f"## {stem} (batch {d['batch']}): [table]({stem}.md), [plot]({stem}.png)", ""]
        md += [f"- {'met' if g['met'] else 'MISSED'}: {g['goal']}: {g['detail']}" for g in d["goals"]] or ["- no goal measurable"]
        if d["torch_fp16_grad_cosine"]:
            md.append("- torch-fp16 gradient cosine vs fp32 (loss-scaled teachers): "
                      + ", ".join(f"{m} {c:.5f}" for m, c in d["torch_fp16_grad_cosine"].items()))
        md.append("- rows: " + ", ".join(f"{n} {k}" for k, n in d["rows"].items()))
    if validation:
        md += ["", "## Input value check on the GPU (torch eager, batch 1)", "", "| model | auto ms | always ms | overhead ms |",
               "|---|---:|---:|---:|"]
        md += [f"| {v['model']} | {v['auto_ms']:.3f} | {v['always_ms']:.3f} | {v['overhead_ms']:+.3f} |" for v in validation]
    if distill:
        md += ["", f"## Distillation ({distill['backend']} on {distill['device']}, {distill['steps']} steps)", "",
               f"train loss {distill['train_loss_first_last']}, held-out gradient cosine {distill['val_cos_first_last']}; "
               f"teacher {distill['teacher']}. Files in `distill/`."]
    write_text(out / "summary.md", "\n".join(md) + "\n")


def select_steps(steps: list, only: str | None) -> list:
    """The steps ``--only`` names: comma-separated step names or shell wildcards (``distill*``); all for None.

    Raises:
        ValueError: ``only`` names no step.
    """
    if not only:
        return steps
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [s for s in steps if any(fnmatch.fnmatchcase(s.name, w) for w in wanted)]
    if not chosen:
        raise ValueError(f"--only {only} names no step of the plan (see plan.json from --dry-run)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``benchmarks/gpu_check.sh``; exit status 0 when every step that ran succeeded."""
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU plumbing check at tiny sizes (about two minutes).")
    parser.add_argument("--dry-run", action="store_true", help="Write the plan (plan.json) and exit.")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="Seconds for the whole check (default %(default)s).")
    parser.add_argument("--results-root", type=Path, default=ROOT / "results" / "gpu", help="Where the GPU's folder goes.")
    parser.add_argument("--only", metavar="STEP,...",
                        help="Run only these steps (names as in plan.json and summary.md; shell wildcards allowed: 'distill*').")
    args = parser.parse_args(argv)
    started = time.monotonic()
    env = environment()
    if not args.smoke and not env["cuda_available"] and not args.dry_run:
        print(f"gpu_check: no CUDA GPU visible to PyTorch (torch {env['torch']}, CUDA build {env['cuda_build']}); "
              "nothing measured. Use --smoke to check the script on the CPU.", file=sys.stderr)
        return 1
    plan = Plan.smoke() if args.smoke else Plan.gpu()
    out = args.results_root / ("cpu-smoke" if args.smoke else gpu_slug(env.get("gpu", "gpu")))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    write_json(env, out / "environment.json", indent=1)
    with tempfile.TemporaryDirectory(prefix="pgn-gpu-check-") as tmp:
        work = Path(tmp)
        steps = plan_steps(plan, out, work)
        try:
            steps = select_steps(steps, args.only)
        except ValueError as e:
            print(f"gpu_check: {e}", file=sys.stderr)
            return 2
        if args.dry_run:
            write_json([s.to_dict() for s in steps], out / "plan.json", indent=1)
            print(f"gpu_check: plan of {len(steps)} steps written to {out / 'plan.json'}")
            return 0
        for step in steps:
            left = args.budget - (time.monotonic() - started) - RESERVE
            print(f"gpu_check: {step.name} …", flush=True)
            run_step(step, left, logs, work)
            print(f"gpu_check: {step.name}: {step.status} ({step.seconds:.0f} s) {step.detail}", flush=True)
        batches = {}
        for b in plan.batches:
            stem = f"batch{b}-{plan.size}"
            try:
                parts = [work / f"batch{b}-eager.json", *(work / f"batch{b}-compiled-{m}.json" for m in compile_order(plan.models))]
                batches[stem] = merge_bench(parts, out, stem)
            except Exception as e:  # noqa: BLE001 - the summary still gets written
                batches[stem] = None
                print(f"gpu_check: could not merge {stem}: {e}", file=sys.stderr)
        validation = check_values_cost(out, out / f"batch1-{plan.size}.json", plan.size)
        distill = distill_digest(work, out)
    wall = time.monotonic() - started
    write_summary(out, env, steps, batches, validation, distill, wall, args.smoke)
    print(f"gpu_check: done in {wall / 60:.1f} min; results in {out}/ (summary.md)")
    return 0 if all(s.status in ("ok", "skipped") for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
