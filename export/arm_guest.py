"""The guest side of the aarch64 check: runs artifacts inside ``qemu-aarch64`` with the aarch64 runtimes.

Run by :mod:`export.arm_verify` as a script, ``python3.11 arm_guest.py JOB.json``, with the guest's own CPython
(nothing of pgn is importable there, and ``import torch`` takes about a minute under emulation), so it imports
only the standard library and NumPy up front, ONNX Runtime for ``onnx`` cases, and torch with ExecuTorch's
runtime (not its compiler: :mod:`export.executorch_runtime`) only when a ``pte`` or ``pte-step`` case comes. All
cases of one CPU model run in one process, ONNX first.

The job (JSON) holds ``inputs`` (an ``.npz`` of named float32 arrays), ``out`` (a folder), ``threads`` and
``cases``: ``{"id", "kind": "onnx"|"pte"|"pte-step", "artifact", "input_names", "output_names", "calls": [[array
names], ...]}``. For every case it writes ``<out>/<id>.npz`` (``<call index>/<output name>`` → array; for a
step program also ``<call>/grad/<parameter>``) and appends one JSON line to ``<out>/progress.jsonl``: first
``{"id", "started"}``, then ``{"id", "ok", "seconds"}`` or ``{"id", "error"}``. A native crash leaves a case
started and never finished, which is how the host tells a crash from an error. ``<out>/guest.json`` records
what the guest saw: the AT_HWCAP words and their features, ``/proc/cpuinfo``'s MIDR and the runtime versions.
"""

import ctypes
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

#: Linux arm64 AT_HWCAP / AT_HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h); defined here, where the guest
#: can read them, and imported by the host (:mod:`export.arm_env`).
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
               "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 "
                "sme_f16f32 sme_b16f32 sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1 sme2 sme2p1 "
                "sme_i16i32 sme_bi32i32 sme_b16b16 sme_f16f16 mops hbc sve_b16b16 lrcpc3 lse128").split()
AT_HWCAP, AT_HWCAP2 = 16, 26


def hwcaps():
    """The AT_HWCAP and AT_HWCAP2 words the (emulated) kernel gave this process, and their feature names."""
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    h1, h2 = int(libc.getauxval(AT_HWCAP)), int(libc.getauxval(AT_HWCAP2))
    names = [n for i, n in enumerate(HWCAP_NAMES) if h1 >> i & 1] + [n for i, n in enumerate(HWCAP2_NAMES) if h2 >> i & 1]
    return h1, h2, names


def log(out, record):
    """Append one JSON line to the progress file (flushed: the host reads it after a crash)."""
    with open(os.path.join(out, "progress.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class OnnxCase:
    """An ONNX model in ONNX Runtime's CPU provider."""

    def __init__(self, case, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(case["artifact"], sess_options=opts, providers=["CPUExecutionProvider"])
        self.case = case

    def run(self, arrays):
        names = self.case["input_names"]
        outs = self.session.run(self.case["output_names"], dict(zip(names, arrays)))
        return dict(zip(self.case["output_names"], outs))


def executorch_runtime(training=False):
    """ExecuTorch's runtime without its compiler (:func:`export.executorch_runtime.import_runtime`, loaded from the
    file beside this one: nothing of pgn is importable here)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "executorch_runtime.py")
    spec = importlib.util.spec_from_file_location("pgn_executorch_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.import_runtime(training=training)


class PteCase:
    """A ``.pte`` program's ``forward`` in ExecuTorch's runtime (``executorch.runtime``, as the x86 check runs it)."""

    def __init__(self, case, threads):
        import torch

        et = executorch_runtime()
        if et.portable_lib._threadpool_get_thread_count() != threads:
            et.portable_lib._unsafe_reset_threadpool(threads)
        with open(case["artifact"], "rb") as f:
            self.data = f.read()
        self.program = et.Runtime.get().load_program(self.data, verification=et.Verification.InternalConsistency)
        self.method = self.program.load_method(case.get("method", "forward"))
        self.case, self.torch = case, torch

    def run(self, arrays):
        outs = self.method.execute([self.torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        return {n: o.numpy().copy() for n, o in zip(self.case["output_names"], outs)}


class StepCase:
    """A fitting-step program: one ``forward_backward`` in ExecuTorch's training runtime (outputs and gradients)."""

    def __init__(self, case, threads):
        import torch

        et = executorch_runtime(training=True)
        if et.portable_lib._threadpool_get_thread_count() != threads:
            et.portable_lib._unsafe_reset_threadpool(threads)
        with open(case["artifact"], "rb") as f:
            self.data = f.read()
        self.module = et.load_for_training(self.data)
        self.case, self.torch = case, torch

    def run(self, arrays):
        outs = self.module.forward_backward(self.case.get("method", "forward"), tuple(self.torch.from_numpy(a) for a in arrays))
        result = {n: o.detach().numpy().copy() for n, o in zip(self.case["output_names"], outs)}
        for name, g in self.module.named_gradients().items():
            result[f"grad/{name}"] = g.detach().numpy().copy()
        return result


KINDS = {"onnx": OnnxCase, "pte": PteCase, "pte-step": StepCase}


def main(job_path):
    """Run every case of the job (see the module docs)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # export/executorch.py would shadow executorch
    with open(job_path) as f:
        job = json.load(f)
    out = job["out"]
    os.makedirs(out, exist_ok=True)
    h1, h2, names = hwcaps()
    info = {"machine": platform.machine(), "cpu": job.get("cpu"), "hwcap": hex(h1), "hwcap2": hex(h2), "features": names,
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpuinfo_part"] = next((l.split(":")[1].strip() for l in f if l.startswith("CPU part")), None)
    except OSError:
        info["cpuinfo_part"] = None
    with open(os.path.join(out, "guest.json"), "w") as f:
        json.dump(info, f, indent=1)
    inputs = np.load(job["inputs"])
    threads = int(job.get("threads", 1))
    order = sorted(job["cases"], key=lambda c: list(KINDS).index(c["kind"]))  # ONNX first: no torch import needed
    for case in order:
        log(out, {"id": case["id"], "started": time.time()})
        start = time.time()
        try:
            runner = KINDS[case["kind"]](case, threads)
            loaded = time.time()
            results = {}
            for i, call in enumerate(case["calls"]):
                outs = runner.run([np.ascontiguousarray(inputs[name]) for name in call])
                for name, value in outs.items():
                    results[f"{i}/{name}"] = np.asarray(value)
            np.savez(os.path.join(out, case["id"] + ".npz"), **results)
            versions = runtime_versions(case["kind"])
            log(out, {"id": case["id"], "ok": True, "seconds": round(time.time() - start, 2),
                      "load_seconds": round(loaded - start, 2), "versions": versions})
        except Exception as e:  # noqa: BLE001 - reported to the host, which prints it in the table
            log(out, {"id": case["id"], "ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                      "traceback": traceback.format_exc()[-2000:]})
        finally:
            runner = None
    return 0


def runtime_versions(kind):
    """The versions of the runtime a case ran in."""
    from importlib import metadata

    names = ["onnxruntime"] if kind == "onnx" else ["executorch", "torch"]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
