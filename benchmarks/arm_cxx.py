"""The native side of the aarch64 check: ``benchmarks/arm_runner/pte_runner.cpp``, what an app does with a ``.pte``.

The runner loads a program with ExecuTorch's ``Module`` API and calls ``forward``, built against the ``include/``
and ``lib/`` that the executorch pip package ships: for x86 with the host's ``g++`` and the host's package, for
aarch64 with Debian's ``g++-aarch64-linux-gnu`` and the aarch64 wheel's package (no torch involved). Both run on
the same inputs as the Python check (the aarch64 one under ``qemu-aarch64 -cpu <model>``), and the aarch64
outputs are compared with the x86 runner's and with float64 PyTorch (:func:`cxx_rows`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pgn.errors import first_line

HERE = Path(__file__).resolve().parent / "arm_runner"
CROSS_PACKAGE = "g++-aarch64-linux-gnu"


def host_executorch_dir() -> Path:
    """The installed executorch package (its include/ and lib/)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    return Path(list(spec.submodule_search_locations)[0])


def ensure_cross_compiler(say: Callable[[str], None]) -> str | None:
    """``None`` when ``aarch64-linux-gnu-g++`` is on PATH (installing :data:`CROSS_PACKAGE` with apt-get when
    running as root), else one line saying what is missing."""
    if shutil.which("aarch64-linux-gnu-g++"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"aarch64-linux-gnu-g++ is missing: install {CROSS_PACKAGE} (apt-get install {CROSS_PACKAGE})"
    say(f"installing {CROSS_PACKAGE} (Debian's aarch64 cross compiler)")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", CROSS_PACKAGE],
                          capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or not shutil.which("aarch64-linux-gnu-g++"):
        return f"apt-get install {CROSS_PACKAGE} failed: {first_line(proc.stderr or proc.stdout)}"
    return None


def build(arch: str, package: Path, out: Path) -> str | None:
    """Build the runner for ``arch`` (``x86``, ``aarch64``) against ``package``; ``None`` or one line of why not."""
    proc = subprocess.run([str(HERE / "build.sh"), arch, str(package), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).splitlines() if "error" in l or "lacks" in l or "missing" in l]
        return f"building the {arch} runner failed: {first_line(lines[0] if lines else proc.stderr or proc.stdout)}"
    return None


def run_runner(cmd_prefix: Sequence[str], pte: Path, arrays: Sequence[np.ndarray], work: Path, tag: str, outputs: int,
               env: dict | None = None, timeout: float = 600) -> list[np.ndarray]:
    """Run the runner (``cmd_prefix``: the binary, or qemu plus the binary) on one call's inputs; its outputs."""
    work.mkdir(parents=True, exist_ok=True)
    shape = arrays[0].shape
    paths = []
    for i, a in enumerate(arrays):
        p = work / f"{tag}-in{i}.f32"
        np.ascontiguousarray(a, np.float32).tofile(p)
        paths.append(str(p))
    prefix = work / f"{tag}-out"
    proc = subprocess.run([*cmd_prefix, str(pte), *map(str, shape), *paths, str(prefix)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"pte_runner exited with {proc.returncode}: {first_line(proc.stderr[-2000:] or proc.stdout)}")
    return [np.fromfile(f"{prefix}{i}.f32", np.float32).reshape(shape) for i in range(outputs)]


def cxx_rows(cases, cpus: Sequence[str], env, work: Path, say: Callable[[str], None] = lambda m: None) -> list:
    """Rows of the C++ runner for every ``pte`` case on every CPU model (an ``error`` row per case where a piece is
    missing, naming it)."""
    from pgn.export.arm_verify import ArmRow, judge

    pte_cases = [c for c in cases if c.kind == "pte"]
    if not pte_cases:
        return []
    work.mkdir(parents=True, exist_ok=True)
    x86_bin, arm_bin = work / "pte_runner-x86", work / "pte_runner-aarch64"
    problem = build("x86", host_executorch_dir(), x86_bin) or ensure_cross_compiler(say) \
        or build("aarch64", env.site_dirs[1] / "executorch", arm_bin)
    rows = []
    for c in pte_cases:
        base = dict(case=c.id + "-cxx", label=f"{c.label} (C++ Module)", backbone=c.backbone, tolerance=_asdict(c.tolerance),
                    note="benchmarks/arm_runner/pte_runner.cpp against the executorch package's include/ and lib/")
        if problem:
            rows += [ArmRow(cpu=cpu, features="", set="-", status="error", failures=[problem], **base) for cpu in cpus]
            continue
        arrays = c.arrays()
        calls = c.calls()
        try:
            x86 = [run_runner([str(x86_bin)], c.artifact, [arrays[n] for n in names], work / "io", f"{c.id}-x86-{i}", len(c.output_names))
                   for i, (_, names) in enumerate(calls)]
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rows += [ArmRow(cpu=cpu, features="", set="-", status="error", failures=[f"x86: {first_line(str(e))}"], **base) for cpu in cpus]
            continue
        for cpu in cpus:
            say(f"{cpu}: {c.id} through the C++ runner")
            features = " ".join(_features(env, cpu))
            prefix = [str(env.qemu), "-cpu", cpu, "-L", str(env.cpu_root(cpu, _features(env, cpu))), str(arm_bin)]
            try:
                arm = [run_runner(prefix, c.artifact, [arrays[n] for n in names], work / "io", f"{c.id}-{cpu}-{i}",
                                  len(c.output_names), env={"LC_ALL": "C"}) for i, (_, names) in enumerate(calls)]
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                rows.append(ArmRow(cpu=cpu, features=features, set="-", status="crash" if "-" in str(e)[:40] else "error",
                                   failures=[first_line(str(e))], **base))
                continue
            index = 0
            for s in c.sets:
                n = len(range(0, len(s.y), c.batch))
                named = lambda outs: {k: np.concatenate([o[j] for o in outs]) for j, k in enumerate(c.output_names)}
                a, h = named(arm[index:index + n]), named(x86[index:index + n])
                index += n
                vs_x86, vs_ref, failures = judge(c, s.name, a, h)
                rows.append(ArmRow(cpu=cpu, features=features, set=s.name, status="FAIL" if failures else "pass",
                                   vs_x86=vs_x86, vs_pytorch=vs_ref, failures=failures, **base))
    return rows


def _features(env, cpu: str) -> list[str]:
    from pgn.export.arm_verify import _guest_features

    return _guest_features(env, cpu)


def _asdict(t):
    from dataclasses import asdict

    return asdict(t)
