"""Run exported artifacts on emulated aarch64 CPUs and compare them with x86 on the same inputs.

What an app on a phone runs is the aarch64 build of ExecuTorch or ONNX Runtime, whose kernels (NEON,
dot-product, i8mm, SVE, SME) differ from x86's. :func:`check_on_arm` runs each artifact of a list of
:class:`ArmCase` inside ``qemu-aarch64 -cpu <model>`` (:mod:`export.arm_env`, :mod:`export.arm_guest`), one guest
process per CPU model with every case in it, and compares its outputs with

* ``x86``: the same artifact on this host, run with its target's runtime (:func:`export.load_runtime`), on the
  same inputs;
* ``pytorch``: the float64 PyTorch reference of the export parity check (:func:`export.verify.torch_reference`),
  where the model is at hand.

A row passes when the aarch64 outputs meet the artifact's own tolerance (its target's: fp32 relative errors
≤ 1e-4, int8 gradient cosine ≥ 0.99, see :mod:`export.verify`) against both. Emulation runs the phone's
instructions, not its timing: seconds are recorded only to size the check.

:func:`verify_artifact_on_arm` checks one exported artifact (``pgn-export --verify-on arm``) and
:func:`record_in_manifest` stores the result in its manifest under ``"arm"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pgn.errors import PGNError, first_line

from .arm_env import DEFAULT_CPUS, ArmEnvError, ArmEnvironment
from .verify import InputSet, Tolerance, compare, parity_inputs

GUEST_SCRIPT = Path(__file__).with_name("arm_guest.py")
#: Seconds one guest process may take (import torch alone takes about a minute under emulation).
DEFAULT_GUEST_TIMEOUT = 1500.0
#: Input pairs per set by default: enough to see real photographs and random inputs, few enough for emulation.
DEFAULT_RANDOM, DEFAULT_REAL = 1, 2


@dataclass
class ArmCase:
    """One artifact to run on the emulated CPUs.

    Attributes:
        id: a unique file-name-safe id (e.g. ``resnet4-executorch-int8``).
        label: what the table calls it (e.g. ``ExecuTorch int8``).
        kind: ``onnx``, ``pte`` or ``pte-step`` (:mod:`export.arm_guest`).
        artifact: the file.
        input_names, output_names: the graph's inputs and outputs in call order.
        tolerance: pass/fail thresholds (the artifact's target's).
        sets: named input sets; each is run in ``calls`` of ``batch`` pairs.
        batch: pairs per call (a fixed-shape artifact's batch).
        x86: runs the artifact on this host: list of input arrays → outputs by name.
        reference: float64 PyTorch outputs per set name (``proxy``, ``grad``), or ``None``.
        outputs: how raw outputs become the compared ``{"grad", "proxy"}`` (default: as named).
        note: said in the table (e.g. where the tolerance comes from).
    """

    id: str
    label: str
    kind: str
    artifact: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    tolerance: Tolerance
    sets: list[InputSet]
    batch: int
    x86: Callable[[list[np.ndarray]], dict[str, np.ndarray]]
    reference: dict[str, dict[str, np.ndarray]] | None = None
    outputs: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    note: str = ""
    backbone: str = ""

    def calls(self) -> list[tuple[str, list[str]]]:
        """(set name, array names) of each call, in order; arrays are named ``<set>/<input>/<start>``."""
        out = []
        for s in self.sets:
            for i in range(0, len(s.y), self.batch):
                out.append((s.name, [f"{s.name}/{n}/{i}" for n in self.input_names]))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The input arrays by the names :meth:`calls` uses."""
        out = {}
        for s in self.sets:
            for i in range(0, len(s.y), self.batch):
                for n, a in zip(self.input_names, (s.y_hat, s.y)):
                    out[f"{s.name}/{n}/{i}"] = np.ascontiguousarray(a[i : i + self.batch], dtype=np.float32)
        return out


@dataclass
class ArmRow:
    """One line of the result table: a case on one CPU model and one input set."""

    case: str
    label: str
    backbone: str
    cpu: str
    features: str
    set: str
    status: str  #: ``pass``, ``FAIL``, ``error`` or ``crash``
    vs_x86: dict[str, float] = field(default_factory=dict)
    vs_pytorch: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tolerance: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def pgn_case(artifact: Path, *, label: str | None = None, model=None, n_random: int = DEFAULT_RANDOM,
             n_real: int = DEFAULT_REAL, tolerance: Tolerance | None = None, note: str = "", threads: int = 1,
             references: dict | None = None) -> ArmCase:
    """The :class:`ArmCase` of an exported PGN artifact (``.pte`` or ``.onnx`` with its manifest).

    Args:
        artifact: the artifact; its manifest gives shape, batch, precision and outputs.
        label: the table's name for it (default: target and precision).
        model: the PGN it was exported from (adds the float64 PyTorch comparison); ``None``: x86 only.
        n_random, n_real: random and real (photograph) pairs.
        tolerance: thresholds (default: the target's own for the manifest's precision, :func:`tolerance_of`).
        threads: threads of the x86 run (the guest uses the same).
        references: cached float64 references per set name, shared between artifacts of one model.
    """
    from .api import load_runtime
    from .manifest import read_manifest
    from .verify import torch_reference

    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest.get("dynamic"):
        raise PGNError(f"{artifact.name} is dynamic: the aarch64 check runs fixed-shape artifacts (export without --dynamic)")
    kind = {"executorch": "pte", "onnx": "onnx"}.get(manifest.get("target"))
    if kind is None:
        raise PGNError(f"{artifact.name} is a {manifest.get('target')} artifact: the aarch64 check runs ExecuTorch (.pte) and ONNX artifacts")
    shape = manifest["inputs"][0]["shape"]
    batch, size = int(shape[0]), (int(shape[2]), int(shape[3]))
    if tolerance is None:
        tolerance, why = tolerance_of(manifest)
        note = note or why
    runtime = load_runtime(artifact, threads=threads)
    sets = parity_inputs(size, batch, n_random=n_random, n_real=n_real)
    reference = None
    if model is not None:
        reference = {} if references is None else references
        for s in sets:
            if s.name not in reference:
                reference[s.name] = torch_reference(model, s.y_hat, s.y)
    precision = manifest.get("precision")
    name = {"pte": "ExecuTorch", "onnx": "ONNX"}[kind]
    return ArmCase(
        id=artifact.name.replace(".", "_"), label=label or f"{name} {precision}", kind=kind, artifact=artifact,
        input_names=tuple(i["name"] for i in manifest["inputs"]), output_names=tuple(o["name"] for o in manifest["outputs"]),
        tolerance=tolerance, sets=sets, batch=batch, x86=lambda arrays: runtime.run(*arrays), reference=reference,
        outputs=lambda raw, shape=None: runtime.finish(raw, raw[runtime.output_names[0]].shape), note=note,
        backbone=manifest.get("model", {}).get("preset") or manifest.get("model", {}).get("backbone") or "",
    )


def tolerance_of(manifest: dict[str, Any]) -> tuple[Tolerance, str]:
    """The pass/fail thresholds of an artifact: its target's for its precision; int8 artifacts of a target
    without an int8 gate of its own (ONNX today) get the ExecuTorch target's. Returns (tolerance, note)."""
    from .executorch import TARGET as EXECUTORCH
    from .formats import resolve_targets

    precision = manifest.get("precision", "fp32")
    target = resolve_targets(manifest.get("target", "onnx"))[0]
    try:
        return target.tolerance(precision), ""
    except PGNError:
        if precision == "int8":
            return EXECUTORCH.tolerance("int8"), f"int8 gate of the executorch target ({target.name} defines none)"
        raise


def check_on_arm(cases: Sequence[ArmCase], cpus: Sequence[str] = DEFAULT_CPUS, *, env: ArmEnvironment | None = None,
                 workdir: Path | None = None, threads: int = 1, timeout: float = DEFAULT_GUEST_TIMEOUT, jobs: int = 1,
                 say: Callable[[str], None] = lambda m: None) -> tuple[list[ArmRow], dict[str, Any]]:
    """Run every case on every CPU model under emulation and compare with x86 (and float64 PyTorch).

    Args:
        cases: what to run (:func:`pgn_case`, or a fitting-step program's case).
        cpus: QEMU CPU models.
        env: the aarch64 environment (must be built: :meth:`ArmEnvironment.ensure`).
        workdir: where inputs and guest outputs go (default: a temporary folder, removed after).
        threads: threads of each guest runtime.
        timeout: seconds each guest process may take.
        jobs: guest processes at once (one per CPU model).

    Returns:
        The rows (case × CPU × input set) and per-CPU guest facts (features, versions, seconds).
    """
    env = env or ArmEnvironment()
    missing = env.ready()
    if missing:
        raise ArmEnvError(missing)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise PGNError(f"case ids must be unique, got {ids}")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="pgn-arm-")) if own else Path(workdir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for c in cases:
            arrays.update({f"{c.id}:{k}": v for k, v in c.arrays().items()})
        inputs = work / "inputs.npz"
        np.savez(inputs, **arrays)
        say("x86: running every artifact on this host")
        x86 = {c.id: _run_host(c) for c in cases}
        guests: dict[str, dict] = {}
        if jobs <= 1:
            for cpu in cpus:
                guests[cpu] = run_guest(env, cpu, cases, inputs, work / cpu, threads=threads, timeout=timeout, say=say)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(jobs) as pool:
                futures = {cpu: pool.submit(run_guest, env, cpu, cases, inputs, work / cpu, threads=threads, timeout=timeout, say=say)
                           for cpu in cpus}
                guests = {cpu: f.result() for cpu, f in futures.items()}
        rows = []
        for cpu in cpus:
            g = guests[cpu]
            for c in cases:
                rows += _rows(c, cpu, g, x86[c.id])
        facts = {cpu: {k: v for k, v in g.items() if k != "outputs"} for cpu, g in guests.items()}
        return rows, facts
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _run_host(case: ArmCase) -> dict[str, list[dict[str, np.ndarray]]]:
    """The x86 outputs of ``case`` per set (one dict per call)."""
    arrays = case.arrays()
    out: dict[str, list] = {}
    for set_name, names in case.calls():
        out.setdefault(set_name, []).append(case.x86([arrays[n] for n in names]))
    return out


def run_guest(env: ArmEnvironment, cpu: str, cases: Sequence[ArmCase], inputs: Path, out: Path, *, threads: int = 1,
              timeout: float = DEFAULT_GUEST_TIMEOUT, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run ``cases`` in one guest process on CPU model ``cpu``; start again after a native crash with the cases
    left. Returns ``{"guest": facts, "cases": {id: progress record}, "outputs": {id: {call/name: array}}}``."""
    out.mkdir(parents=True, exist_ok=True)
    todo = list(cases)
    records: dict[str, dict] = {}
    started = time.time()
    while todo:
        job = {"out": str(out), "inputs": str(inputs), "cpu": cpu, "threads": threads, "cases": [
            {"id": c.id, "kind": c.kind, "artifact": str(Path(c.artifact).resolve()), "input_names": list(c.input_names),
             "output_names": list(c.output_names), "calls": [[f"{c.id}:{n}" for n in names] for _, names in c.calls()]}
            for c in todo]}
        job_path = out / "job.json"
        job_path.write_text(json.dumps(job, indent=1))
        (out / "progress.jsonl").unlink(missing_ok=True)
        hw = _guest_features(env, cpu)
        cmd = env.guest_command(cpu, [str(GUEST_SCRIPT), str(job_path)], hw)
        say(f"{cpu}: running {len(todo)} artifact(s) under qemu-aarch64 -cpu {cpu}")
        left = max(30.0, timeout - (time.time() - started))
        with open(out / "guest.log", "a") as log:
            try:
                proc = subprocess.run(cmd, env=env.guest_env(), stdout=log, stderr=subprocess.STDOUT, timeout=left)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = None
        progress = _read_progress(out / "progress.jsonl")
        for c in todo:
            if c.id in progress and "ok" in progress[c.id]:
                records[c.id] = progress[c.id]
        unfinished = [c for c in todo if c.id not in records]
        if not unfinished:
            break
        crashed = next((c for c in unfinished if c.id in progress), None)
        if rc is None:
            for c in unfinished:
                records[c.id] = {"ok": False, "error": f"the guest ran out of time ({timeout:.0f} s)", "crash": True}
            break
        if crashed is None:  # died before the first case: the environment itself is broken
            tail = first_line(_tail(out / "guest.log"))
            for c in unfinished:
                records[c.id] = {"ok": False, "error": f"the guest exited with status {rc} before running it: {tail}", "crash": True}
            break
        records[crashed.id] = {"ok": False, "crash": True,
                               "error": f"the guest died (exit status {rc}{_signal_name(rc)}) running it: {first_line(_tail(out / 'guest.log'))}"}
        todo = [c for c in unfinished if c.id != crashed.id]
    guest_facts = {}
    try:
        guest_facts = json.loads((out / "guest.json").read_text())
    except (OSError, ValueError):
        pass
    outputs = {}
    for c in cases:
        path = out / f"{c.id}.npz"
        if records.get(c.id, {}).get("ok") and path.exists():
            with np.load(path) as z:
                outputs[c.id] = {k: z[k] for k in z.files}
    return {"guest": guest_facts, "cases": records, "outputs": outputs, "seconds": round(time.time() - started, 1)}


def _guest_features(env: ArmEnvironment, cpu: str) -> list[str]:
    """The HWCAP features QEMU gives ``cpu`` (asked once from a bare guest Python, cached per model), for the fake
    ``/proc/cpuinfo``."""
    cache = env.root / "cpus" / f"{cpu}.features.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import arm_guest, json; "
            "print(json.dumps(arm_guest.hwcaps()[2]))")
    cmd = env.guest_command(cpu, ["-S", "-c", code, str(GUEST_SCRIPT.parent)])
    env_vars = env.guest_env()
    env_vars["PYTHONPATH"] = env_vars["PYTHONPATH"]  # numpy comes from the wheels
    proc = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ArmEnvError(f"qemu-aarch64 -cpu {cpu} cannot start the guest Python: {first_line(proc.stderr or proc.stdout)}")
    features = json.loads(proc.stdout.strip().splitlines()[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(features))
    return features


def _read_progress(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.setdefault(rec["id"], {}).update(rec)
    return out


def _tail(path: Path, n: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")[-n:]
    except OSError:
        return ""
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def _signal_name(rc: int | None) -> str:
    import signal

    if rc is not None and rc < 0:
        try:
            return f", {signal.Signals(-rc).name}"
        except ValueError:
            return ""
    return ""


def judge(case: ArmCase, set_name: str, arm: dict[str, np.ndarray], host: dict[str, np.ndarray]) -> tuple[dict, dict, list[str]]:
    """``arm``'s outputs of one input set against x86's (``host``) and, where the case has it, the float64 PyTorch
    reference, by the case's tolerance: ``(vs_x86, vs_pytorch, failures)``."""
    vs_x86 = compare(arm, host)
    failures = [f"vs x86 {f}" for f in case.tolerance.failures(set_name, vs_x86)]
    vs_ref = {}
    if case.reference is not None and set_name in case.reference:
        vs_ref = compare(arm, case.reference[set_name])
        failures += [f"vs PyTorch {f}" for f in case.tolerance.failures(set_name, vs_ref)]
    return vs_x86, vs_ref, failures


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _rows(case: ArmCase, cpu: str, guest: dict[str, Any], x86: dict[str, list]) -> list[ArmRow]:
    """The rows of one case on one CPU: one per input set."""
    facts = guest.get("guest", {})
    features = " ".join(facts.get("features", []))
    record = guest["cases"].get(case.id, {"ok": False, "error": "not run"})
    base = dict(case=case.id, label=case.label, backbone=case.backbone, cpu=cpu, features=features,
                tolerance=asdict(case.tolerance), note=case.note)
    if not record.get("ok"):
        status = "crash" if record.get("crash") else "error"
        return [ArmRow(set="-", status=status, failures=[record.get("error", "?")], **base)]
    raw = guest["outputs"][case.id]
    finish = case.outputs or (lambda r: r)
    rows = []
    index = 0
    for s in case.sets:
        calls = len(range(0, len(s.y), case.batch))
        arm_chunks = []
        for i in range(index, index + calls):
            prefix = f"{i}/"
            arm_chunks.append(finish({k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}))
        index += calls
        arm = _concat(arm_chunks)
        host = _concat([finish(o) if case.outputs and "grad" not in o else o for o in x86[s.name]])
        vs_x86, vs_ref, failures = judge(case, s.name, arm, host)
        if not (vs_x86["grad_finite"] and vs_x86["proxy_finite"]):
            failures.append(f"{s.name}: non-finite outputs")
        rows.append(ArmRow(set=s.name, status="FAIL" if failures else "pass", vs_x86=vs_x86, vs_pytorch=vs_ref,
                           failures=failures, seconds=record.get("seconds"), **base))
    return rows


# --------------------------------------------------------------------------------------------------------
# Tables


def _cos(c: float | None) -> str:
    if c is None:
        return "-"
    return f"{c:.6f}" if c >= 1.0 else f"1-{1.0 - c:.1e}"


def markdown_table(rows: Sequence[ArmRow]) -> str:
    """The result table in Markdown: one line per artifact, CPU model and input set."""
    head = ("| artifact | CPU model | HWCAP features (guest) | set | g max abs | g rel | g cos | P max abs | P rel | "
            "P cos (centered) | vs PyTorch f64: g rel / g cos | tolerance | result |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        x, p = r.vs_x86, r.vs_pytorch
        tol = _tolerance_text(r.tolerance)
        feats = _short_features(r.features)
        if not x:
            lines.append(f"| {r.backbone} {r.label} | {r.cpu} | {feats} | {r.set} | - | - | - | - | - | - | - | {tol} | "
                         f"**{r.status}**: {'; '.join(r.failures)[:200]} |")
            continue
        ref = f"{p['grad_max_rel']:.1e} / {_cos(p['grad_cosine_min'])}" if p else "-"
        result = "pass" if r.status == "pass" else f"**{r.status}**: {'; '.join(r.failures)[:160]}"
        lines.append(
            f"| {r.backbone} {r.label} | {r.cpu} | {feats} | {r.set} | {x['grad_max_abs']:.1e} | {x['grad_max_rel']:.1e} | "
            f"{_cos(x['grad_cosine_min'])} | {x['proxy_max_abs']:.1e} | {x['proxy_max_rel']:.1e} | "
            f"{_cos(x['proxy_cosine_centered_min'])} | {ref} | {tol} | {result} |")
    return "\n".join(lines) + "\n"


def _tolerance_text(t: dict[str, Any]) -> str:
    parts = []
    if t.get("max_rel_grad") is not None:
        parts.append(f"rel ≤ {t['max_rel_grad']:g}")
    if t.get("min_grad_cosine") is not None:
        parts.append(f"g cos ≥ {t['min_grad_cosine']:g}")
    return ", ".join(parts) or "-"


#: Features that decide which kernels run; the table shows these (the JSON has all).
KEY_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "svei8mm", "sme", "sme2")


def _short_features(features: str) -> str:
    have = set(features.split())
    shown = [f for f in KEY_FEATURES if f in have]
    return " ".join(shown) or "-"


def summary(rows: Sequence[ArmRow]) -> dict[str, Any]:
    """Counts of passing and failing rows, and the failures."""
    return {
        "rows": len(rows),
        "passed": sum(r.status == "pass" for r in rows),
        "failed": [f"{r.backbone} {r.label} on {r.cpu} ({r.set}): {'; '.join(r.failures)}" for r in rows if r.status != "pass"],
        "all_passed": bool(rows) and all(r.status == "pass" for r in rows),
    }


# --------------------------------------------------------------------------------------------------------
# One artifact (pgn-export --verify-on arm)


def verify_artifact_on_arm(artifact: Path, *, model=None, cpus: Sequence[str] = DEFAULT_CPUS, build: bool = True,
                           say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run one exported artifact on the emulated CPUs; the record :func:`record_in_manifest` stores.

    Args:
        artifact: a fixed-shape ``.pte`` or ``.onnx`` with its manifest.
        model: the PGN it came from (adds the float64 PyTorch comparison).
        cpus: QEMU CPU models.
        build: build the aarch64 environment where it is not cached (downloads about 600 MB the first time).
    """
    env = ArmEnvironment(say=say)
    if build:
        env.ensure()
    case = pgn_case(artifact, model=model)
    rows, facts = check_on_arm([case], cpus, env=env, say=say)
    s = summary(rows)
    return {
        "what": "the artifact run under qemu-aarch64 user-mode emulation (same instructions as the CPU model, no timing), "
                "compared with this host's run of it (x86) and with float64 PyTorch",
        "passed": s["all_passed"],
        "cpus": {cpu: {"features": facts[cpu].get("guest", {}).get("features", []),
                       "passed": all(r.status == "pass" for r in rows if r.cpu == cpu)} for cpu in cpus},
        "tolerance": asdict(case.tolerance),
        "failures": s["failed"],
        "rows": [r.to_dict() for r in rows],
        "environment": {"qemu": env.details("qemu").get("qemu"), "wheels": env.details("wheels").get("installed", {})},
        "host": _host_cpu(),
    }


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def record_in_manifest(artifact: Path, record: dict[str, Any]) -> Path:
    """Store ``record`` as the ``"arm"`` entry of ``artifact``'s manifest (read, update, write)."""
    from .manifest import manifest_path, read_manifest, write_manifest

    manifest = read_manifest(artifact)
    manifest["arm"] = record
    return write_manifest(manifest_path(artifact), manifest)


def verify_results_on_arm(results, model, *, say: Callable[[str], None] = lambda m: None) -> list[str]:
    """``pgn-export --verify-on arm``: check every written ExecuTorch and ONNX artifact of ``results`` on the
    emulated CPUs, record it in its manifest (``"arm"``), and return one line per artifact for the console.

    A failing artifact is reported (and its manifest records it); other targets are left alone, said so.
    """
    lines = []
    for r in results:
        if not r.ok or r.artifact is None:
            continue
        if r.target not in ("executorch", "onnx"):
            lines.append(f"{r.artifact.name}: not checked on aarch64 (only ExecuTorch and ONNX artifacts run there)")
            continue
        record = verify_artifact_on_arm(r.artifact, model=model, say=say)
        record_in_manifest(r.artifact, record)
        worst = [row for row in record["rows"] if row["vs_x86"]]
        rel = max((row["vs_x86"]["grad_max_rel"] for row in worst), default=float("nan"))
        status = "passed" if record["passed"] else "FAILED: " + "; ".join(record["failures"][:2])
        lines.append(f"{r.artifact.name} on emulated {', '.join(record['cpus'])}: {status} "
                     f"(worst gradient rel. error vs x86 {rel:.1e}; recorded in its manifest under 'arm')")
    return lines
