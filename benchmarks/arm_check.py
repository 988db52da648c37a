"""The aarch64 check: every mobile artifact kind, run on emulated ARM CPUs, against x86 on the same inputs.

Run ``benchmarks/arm_check.sh`` (or ``python -m pgn.benchmarks.arm_check``). It

1. builds (first run) or re-uses the aarch64 environment in the user's cache folder (:mod:`export.arm_env`);
2. exports tiny artifacts of every mobile kind for each backbone (default ResNet-4 and UNet at 64², batch 1,
   seeded random weights): ExecuTorch fp32 and int8, ONNX fp32 and int8, and the ExecuTorch fitting-step program
   (fp32, :func:`step_program`), each through the export package (its targets, ``export_training_step``);
3. runs all of them in one guest process per CPU model (default: cortex-a53 without dot-product, cortex-a76 with
   it, a64fx with SVE, max with SVE2/SME) under ``qemu-aarch64`` and on this host (:mod:`export.arm_verify`);
4. runs the ``.pte`` programs once more through a small C++ runner on ExecuTorch's ``Module`` API, built for x86
   and for aarch64 against the executorch package's own ``include/`` and ``lib/`` (:mod:`benchmarks.arm_cxx`;
   installs ``g++-aarch64-linux-gnu`` when run as root and it is missing);
5. writes ``arm_check.md`` (the table, the CPU facts, the command, host CPU and times) and ``arm_check.json``
   into ``--out`` (default ``results/arm``); the artifacts and the guests' outputs stay in the cache
   folder (``check/``), replaced on every run.

Emulation executes the CPU model's instructions (the kernels its HWCAP features select); it says nothing about
speed. Exit status 0 only if every row passes.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pgn.errors import PGNError
from pgn.files import write_json, write_text

from .environment import cpu_name

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "results" / "arm"
DEFAULT_BACKBONES = ("resnet4", "unet")
KINDS = ("executorch-fp32", "executorch-int8", "onnx-fp32", "onnx-int8", "executorch-step")
DEFAULT_SIZE = 64
#: The step program's generator works at this size at most (its cost grows fast under emulation).
STEP_SIZE = 32


# --------------------------------------------------------------------------------------------------------
# The fitting-step program


def step_program(model, size: tuple[int, int], out: Path, precision: str = "fp32") -> tuple[bytes, tuple[np.ndarray, np.ndarray]]:
    """The ExecuTorch fitting-step program of ``model`` (the demo's small pose generator, the frozen PGN, the
    surrogate loss + 20·MSE, the backward), written by :func:`export.export_training_step`, and one training batch."""
    import torch

    from pgn.demos.frames import edge_map, face_frames
    from pgn.demos.generators import Embedder, PoseGenerator, personalize
    from pgn.export import FittingLoss, export_training_step

    torch.manual_seed(0)
    target, _ = face_frames(size[0], train=1, holdout=1)
    poses = edge_map(target).float().contiguous()
    target = target.float().contiguous()
    generator = personalize(PoseGenerator(), Embedder(), target, poses).train()
    path = export_training_step(generator, (poses,), FittingLoss.pgn(model, 20.0, precision), target=target,
                                output=out / f"{model.config.preset}-{size[0]}x{size[1]}-fitting-step.pte")
    gc.collect()  # the export's verification runtime holds ExecuTorch's one thread pool until it is collected
    return Path(path).read_bytes(), (poses.numpy(), target.numpy())


def step_case(model, backbone: str, out: Path, size: tuple[int, int], threads: int = 1):
    """The :class:`export.arm_verify.ArmCase` of the fitting-step program: compared are the generator's parameter
    gradients (``g`` columns) and the generated image (``P`` columns), against the same program on this host."""
    from pgn.export.arm_guest import StepCase
    from pgn.export.arm_verify import ArmCase
    from pgn.export.verify import InputSet, Tolerance

    pte, (poses, target) = step_program(model, size, out)
    path = out / f"{backbone}-step-{size[0]}x{size[1]}-b1-fp32.pte"
    path.write_bytes(pte)
    spec = {"artifact": str(path), "output_names": ["loss", "image"]}
    host = StepCase(spec, threads)

    def outputs(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        grads = [raw[k].ravel() for k in sorted(raw) if k.startswith("grad/")]
        return {"grad": np.concatenate(grads)[None].astype(np.float64), "proxy": raw["image"]}

    return ArmCase(
        id=path.name.replace(".", "_"), label="ExecuTorch fitting step fp32", kind="pte-step", artifact=path,
        input_names=("poses", "target"), output_names=("loss", "image"), tolerance=Tolerance.for_precision("fp32"),
        sets=[InputSet("poses", poses, target)], batch=1, x86=lambda arrays: outputs(host.run(arrays)), outputs=outputs,
        note="g = generator parameter gradients of one forward_backward, P = generated image", backbone=backbone,
    )


# --------------------------------------------------------------------------------------------------------
# The check


def export_artifacts(backbone: str, size: int, kinds: tuple[str, ...], out: Path, say: Callable[[str], None],
                     threads: int = 1, n_random: int = 1, n_real: int = 2, step: bool = True) -> list:
    """Export ``backbone`` as each kind of ``kinds`` into ``out``; the :class:`export.arm_verify.ArmCase` of each
    (``step``: include the fitting-step program, which the check builds for its first backbone only)."""
    import torch

    from pgn import export
    import pgn
    from pgn.export.arm_verify import pgn_case

    torch.manual_seed(0)
    model = pgn.build(backbone)
    cases, references = [], {}
    for kind in kinds:
        target, _, precision = kind.partition("-")
        if kind == "executorch-step" and not step:
            continue
        if kind == "executorch-step":
            s = min(size, STEP_SIZE)
            say(f"{backbone}: exporting the ExecuTorch fitting-step program at {s}²")
            cases.append(step_case(model, backbone, out, (s, s), threads))
            continue
        artifact = _export(model, target, precision, size, out, say)
        cases.append(pgn_case(artifact, model=model, n_random=n_random, n_real=n_real, threads=threads, references=references))
    return cases


def _export(model, target: str, precision: str, size: int, out: Path, say) -> Path:
    from pgn import export
    say(f"{model.config.preset}: exporting {target} {precision} at {size}²")
    [result] = export.export(model, target, output_dir=out, size=(size, size), batch=1, precision=precision,
                             weights_source="seeded random init (torch.manual_seed(0)): the aarch64 check")
    if not result.ok:
        raise PGNError(f"exporting {model.config.preset} as {target} {precision} failed: {result.reason}")
    return result.artifact


def run_check(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Build the environment, export, run, and write the results; the JSON written."""
    from pgn.export.arm_env import ArmEnvironment
    from pgn.export.arm_verify import check_on_arm, markdown_table, summary

    timings: dict[str, float] = {}
    start = time.time()
    env = ArmEnvironment(say=lambda m: say(f"setup: {m}"))
    cached = not env.missing_steps()
    env.ensure()
    timings["setup"] = round(time.time() - start, 1)
    if args.setup_only:
        say(f"the aarch64 environment is ready in {env.root}")
        return {}
    out = Path(args.out)
    work = env.root / "check"  # artifacts and guest outputs: large and binary, so in the cache, not the repository
    artifacts = work / "artifacts"
    shutil.rmtree(work, ignore_errors=True)
    artifacts.mkdir(parents=True)
    t = time.time()
    cases = []
    for i, backbone in enumerate(args.backbones):
        cases += export_artifacts(backbone, args.size, args.kinds, artifacts, say, n_random=args.random, n_real=args.real,
                                  step=i == 0)
    timings["export_and_x86"] = round(time.time() - t, 1)
    t = time.time()
    rows, facts = check_on_arm(cases, args.cpus, env=env, workdir=work / "guest", jobs=args.jobs, say=say)
    timings["emulated"] = round(time.time() - t, 1)
    if not args.no_cxx:
        from .arm_cxx import cxx_rows

        t = time.time()
        rows += cxx_rows(cases, args.cpus, env, work / "cxx", say=say)
        timings["cxx_runner"] = round(time.time() - t, 1)
    timings["total"] = round(time.time() - start, 1)
    s = summary(rows)
    host = cpu_name()
    payload = {
        "command": args.command_line, "host_cpu": host, "cache": str(env.root), "cache_was_warm": cached,
        "timings_s": timings, "summary": s, "cpus": facts,
        "environment": {step: {k: v for k, v in env.details(step).items() if k != "pins"} for step in ("qemu", "wheels", "sysroot")},
        "rows": [r.to_dict() for r in rows],
    }
    write_json(payload, out / "arm_check.json")
    write_text(out / "arm_check.md", _markdown(payload, rows, markdown_table(rows)))
    return payload


def _markdown(payload: dict[str, Any], rows, table: str) -> str:
    lines = ["# aarch64 check (QEMU user-mode emulation)", "",
             f"Command: `{payload['command']}`  ", f"Host CPU: {payload['host_cpu']}  ",
             f"Cache: `{payload['cache']}` ({'warm' if payload['cache_was_warm'] else 'built in this run'})  ",
             "Times (s): " + ", ".join(f"{k} {v}" for k, v in payload["timings_s"].items()), "",
             "Emulation runs each CPU model's instructions (the kernels its HWCAP features select), not its timing. "
             "Errors are of the aarch64 outputs against the same artifact run on this x86 host; the `vs PyTorch f64` "
             "column is against the float64 PyTorch reference of the export parity check. A row passes when both "
             "meet the artifact's own tolerance.", "",
             "## Guests", ""]
    for cpu, f in payload["cpus"].items():
        g = f.get("guest", {})
        lines.append(f"- **{cpu}**: {g.get('machine', '?')}, AT_HWCAP {g.get('hwcap', '?')} / AT_HWCAP2 {g.get('hwcap2', '?')}: "
                     f"{' '.join(g.get('features', []))} (guest process {f.get('seconds', '?')} s)")
    lines += ["", "## Results", "", table, ""]
    s = payload["summary"]
    lines.append(f"{s['passed']} of {s['rows']} rows pass." + ("" if s["all_passed"] else " Failures:"))
    lines += [f"- {f}" for f in s["failed"]]
    return "\n".join(lines) + "\n"


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("give at least one comma-separated name")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    from pgn.export.arm_env import DEFAULT_CPUS

    p = argparse.ArgumentParser(prog="benchmarks/arm_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=_csv, default=DEFAULT_CPUS, help=f"QEMU CPU models (default {','.join(DEFAULT_CPUS)})")
    p.add_argument("--backbones", type=_csv, default=DEFAULT_BACKBONES, help=f"default {','.join(DEFAULT_BACKBONES)}")
    p.add_argument("--kinds", type=_csv, default=KINDS, help=f"artifact kinds (default all: {','.join(KINDS)})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="square input size (default 64; the step program at most 32)")
    p.add_argument("--random", type=int, default=1, help="random pairs (default 1)")
    p.add_argument("--real", type=int, default=2, help="photograph pairs (default 2)")
    p.add_argument("--jobs", type=int, default=2, help="guest processes at once (default 2)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default results/arm)")
    p.add_argument("--no-cxx", action="store_true", help="skip the C++ Module runner (x86 and aarch64 builds)")
    p.add_argument("--setup-only", action="store_true", help="only build (or check) the cached environment")
    args = p.parse_args(argv)
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kind {bad[0]!r}: use {', '.join(KINDS)}")
    if args.size % 32:
        p.error("--size must be a multiple of 32 (the UNet's size multiple)")
    args.command_line = "benchmarks/arm_check.sh " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 if every row passes, 1 otherwise (one line on stderr for an error)."""
    args = parse_args(argv)

    def say(message: str) -> None:
        print(f"arm_check: {message}", file=sys.stderr, flush=True)

    try:
        payload = run_check(args, say)
    except PGNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if not payload:
        return 0
    s = payload["summary"]
    print((Path(args.out) / "arm_check.md").read_text())
    say(f"{s['passed']}/{s['rows']} rows pass; results in {args.out}/arm_check.md and arm_check.json "
        f"({payload['timings_s']['total']} s)")
    return 0 if s["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
