"""``python -m benchmarks.graph_study``: export-graph options and int8 op selections, compared inside one run.

Each variant is ``RUNTIME[@INT8OPS]:OPTIONS``: a runtime (``onnxruntime``, ``onnxruntime-int8``, ``executorch``,
``executorch-int8``), for int8 what is quantized (a selection of :data:`export.int8.INT8_OPS` the target implements,
``pgn-export --int8-ops``; default: the target's), and the graph options (:class:`export.graph_options.GraphOptions` text, or
``default`` / ``plain``). Example::

    python -m benchmarks.graph_study --model unet \\
        --variants "onnxruntime:plain;onnxruntime:default;executorch:plain;executorch:default"

Every variant is exported once (no parity run: the accuracy columns check each artifact against fp32 PyTorch).
Then, in this one process, the variants are timed in rounds, A/B/C/A/B/C…, and each variant's median per round
is divided by the first variant's of the same runtime family in that round: the reported ratio is the median of
those ratios, so load from other processes cancels. Peak working memory is read in a fresh child process per
variant (peak RSS above the loaded baseline, ONNX Runtime with the memory pattern off as in ``pgn-bench``);
ExecuTorch variants also report the activation memory planned in the ``.pte`` and the operators left outside the
XNNPACK delegate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pgn.errors import PGNError

RUNTIMES = ("onnxruntime", "onnxruntime-int8", "executorch", "executorch-int8")
DEFAULT_VARIANTS = (
    "onnxruntime:plain;onnxruntime:default;onnxruntime:decoder_conv=depthwise;onnxruntime:decoder_conv=split;"
    "executorch:plain;executorch:default;executorch:decoder_conv=depthwise;executorch:decoder_conv=split"
)


@dataclass
class Variant:
    """One artifact to compare and what was measured on it."""

    text: str
    runtime: str
    int8_ops: str | None
    options: str
    artifact: str = ""
    peak_mb: float | None = None
    planned_memory_mb: float | None = None
    outside_delegate: dict = field(default_factory=dict)
    round_ms: list[float] = field(default_factory=list)
    ratio: float | None = None
    max_rel_grad: float | None = None
    grad_cosine: float | None = None

    @property
    def family(self) -> str:
        return self.runtime.split("-")[0]


def parse_variant(text: str) -> Variant:
    """``RUNTIME[@INT8OPS]:OPTIONS`` → :class:`Variant` (see the module docs)."""
    head, sep, options = text.strip().partition(":")
    runtime, _, ops = head.partition("@")
    if not sep or runtime not in RUNTIMES:
        raise PGNError(f"variant {text!r}: write RUNTIME[@INT8OPS]:OPTIONS with RUNTIME one of {', '.join(RUNTIMES)}")
    if ops and not runtime.endswith("int8"):
        raise PGNError(f"variant {text!r}: @INT8OPS goes with an int8 runtime only")
    return Variant(text.strip(), runtime, ops or None, options.strip() or "default")


def export_variant(variant: Variant, model, size: tuple[int, int], batch: int, workdir: Path, index: int) -> None:
    """Write the variant's artifact under ``workdir`` and record its path (and ExecuTorch's program facts)."""
    from pgn.export import export
    from pgn.export.graph_options import GraphOptions

    options = GraphOptions.parse(variant.options)
    target = "executorch" if variant.family == "executorch" else "onnx"
    precision = "int8" if variant.runtime.endswith("-int8") else "fp32"
    extra = {"int8_ops": variant.int8_ops} if variant.int8_ops else {}
    out = workdir / f"v{index}"
    results = export(model, target, output_dir=out, size=size, batch=batch, precision=precision, verify=False,
                     graph_options=options, **extra)
    if not results or results[0].artifact is None:
        raise PGNError(f"{variant.text}: export failed: {results[0].reason if results else 'no result'}")
    artifact = Path(results[0].artifact)
    if variant.family == "executorch":
        from pgn.export.executorch import read_program

        program = read_program(artifact.read_bytes())
        variant.planned_memory_mb = program["planned_memory_mb"]
        variant.outside_delegate = program["outside_delegate"]
    variant.artifact = str(artifact)


def load(artifact: str, threads: int):
    """A runtime on ``artifact`` as ``pgn-bench`` runs it (ONNX Runtime with its memory pattern off)."""
    from pgn.export import load_runtime

    from .runners import disable_memory_pattern

    rt = load_runtime(Path(artifact), threads=threads)
    if Path(artifact).suffix == ".onnx":
        disable_memory_pattern(rt)
    return rt


def peak_memory(artifact: str, size: tuple[int, int], batch: int, threads: int) -> float:
    """Peak working memory (MB) of calls on ``artifact``, read in this process (run it in a fresh one)."""
    from .measure import measure_cpu_memory
    from .models import make_inputs

    y_hat, y = (np.ascontiguousarray(t.numpy(), np.float32) for t in make_inputs(batch, size))
    rt = load(artifact, threads)
    call = rt.prepare(y_hat, y)
    return measure_cpu_memory(call, calls=2).peak_mb  # no warm-up: ONNX Runtime's arena keeps what it grew


def _child_peak_memory(artifact: str, size, batch: int, threads: int) -> float:
    cmd = [sys.executable, "-m", "pgn.benchmarks.graph_study", "--memory-of", artifact, "--size", str(size[0]), str(size[1]),
           "--batch", str(batch), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PGNError(f"memory child for {artifact} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def compare(variants: list[Variant], model, size, batch: int, threads: int, rounds: int, calls: int) -> None:
    """Accuracy against fp32 PyTorch, then interleaved timing rounds (see the module docs)."""
    from .measure import time_calls
    from .models import make_inputs

    y_hat_t, y_t = make_inputs(batch, size)
    with torch.no_grad():
        ref = model.double().outputs(y_hat_t.double(), y_t.double()).grad.numpy()
    model.float()
    y_hat, y = (np.ascontiguousarray(t.numpy(), np.float32) for t in (y_hat_t, y_t))
    steps = []
    for v in variants:
        rt = load(v.artifact, threads)
        grad = np.asarray(rt.run(y_hat, y)["grad"], np.float64)
        v.max_rel_grad = float(np.abs(grad - ref).max() / np.abs(ref).max())
        v.grad_cosine = float((grad.ravel() @ ref.ravel()) / (np.linalg.norm(grad) * np.linalg.norm(ref)))
        steps.append((rt, rt.prepare(y_hat, y)))
    for _ in range(rounds):
        for v, (_, call) in zip(variants, steps):
            v.round_ms.append(statistics.median(time_calls(call, calls, 1).wall_ms))
    for v in variants:
        base = next(b for b in variants if b.family == v.family)
        v.ratio = statistics.median(a / b for a, b in zip(v.round_ms, base.round_ms)) if rounds else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet", help="PGN preset (default unet)")
    parser.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="';'-separated RUNTIME[@INT8OPS]:OPTIONS")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per variant and round")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--json", type=Path, help="write every variant's numbers here")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = tuple(args.size)
    if args.memory_of:
        print(peak_memory(args.memory_of, size, args.batch, args.threads))
        return 0
    from .models import build_pgn

    try:
        variants = [parse_variant(t) for t in args.variants.split(";") if t.strip()]
        model = build_pgn(args.model, seed=0)
        with tempfile.TemporaryDirectory(prefix="pgn-graph-study-") as tmp:
            for i, v in enumerate(variants):
                print(f"exporting {v.text}", file=sys.stderr, flush=True)
                export_variant(v, model, size, args.batch, Path(tmp), i)
                if not args.no_memory:
                    v.peak_mb = _child_peak_memory(v.artifact, size, args.batch, args.threads)
            compare(variants, model, size, args.batch, args.threads, args.rounds, args.calls)
    except PGNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.model} {size[0]}x{size[1]} batch {args.batch}, {args.threads} threads, {args.rounds} rounds x {args.calls} calls")
    print(f"{'variant':58s} {'time ratio':>10s} {'peak MB':>8s} {'planned MB':>10s} {'max rel g':>9s} {'cos g':>8s}  outside delegate")
    for v in variants:
        print(f"{v.text:58s} {_num(v.ratio, 3):>10s} {_num(v.peak_mb):>8s} {_num(v.planned_memory_mb):>10s} "
              f"{v.max_rel_grad:9.1e} {v.grad_cosine:8.5f}  {v.outside_delegate or ''}")
    if args.json:
        args.json.write_text(json.dumps([asdict(v) for v in variants], indent=2) + "\n")
    return 0


def _num(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
