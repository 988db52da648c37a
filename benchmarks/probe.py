"""Can a GPU runtime really start here? Each probe starts it for real, in a child process.

``onnxruntime.get_available_providers()`` lists the CUDA and TensorRT execution providers of an ``onnxruntime-gpu``
wheel even where their libraries (CUDA, cuDNN, TensorRT) cannot load; a session asked for them then runs on the
CPU without an error. A probe therefore creates a session on a tiny ONNX model built in memory and checks which
provider it got; the loader's own message (a missing ``libcublasLt.so.12``, say) becomes the reason. The TensorRT
probe imports ``tensorrt`` and creates a builder, which needs the CUDA driver.

Probes run in a child process (this file as a script: ``onnxruntime CUDAExecutionProvider``), so the parent
creates no CUDA context and captures what the libraries print on stderr. Results are cached per process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

#: Seconds a probe may take (loading CUDA libraries is slow on a cold machine).
PROBE_TIMEOUT = 180.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tiny_onnx_model() -> bytes:
    """A one-node ONNX model (``y = x + x``, float32, shape (1, 4)), opset 13, serialized."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "pgn-probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this toolkit supports
    return model.SerializeToString()


def start_onnxruntime(provider: str) -> str | None:
    """In this process: None if an ONNX Runtime session on ``provider`` starts and runs, else why not."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime cannot be imported ({e})"
    options = {"device_id": "0"} if provider == "CUDAExecutionProvider" else {}
    try:
        session = ort.InferenceSession(tiny_onnx_model(), providers=[(provider, options), "CPUExecutionProvider"])
        active = session.get_providers()
        if not active or active[0] != provider:
            return f"ONNX Runtime could not start {provider} (the session fell back to {', '.join(active) or 'nothing'})"
        session.run(None, {"x": np.ones((1, 4), np.float32)})
    except Exception as e:  # noqa: BLE001 - any failure is the reason
        return f"ONNX Runtime could not start {provider}: {_quote(e)}"
    return None


def start_tensorrt() -> str | None:
    """In this process: None if ``tensorrt`` imports and can create a builder (needs the CUDA driver), else why not."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return f'the tensorrt Python package is not installed ({e}): pip install "pgn-toolkit[tensorrt]" (needs an NVIDIA GPU)'
    except OSError as e:
        return f"tensorrt is installed but its libraries cannot load: {_quote(e)}"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # noqa: BLE001
        return f"TensorRT {trt.__version__} cannot create a builder: {_quote(e)}"
    if builder is None:
        return f"TensorRT {trt.__version__} cannot create a builder (no usable CUDA driver or GPU)"
    return None


@lru_cache(maxsize=None)
def probe(kind: str, provider: str = "") -> str | None:
    """Run a probe in a child process: None if the runtime starts, else one line saying why not.

    Args:
        kind: ``onnxruntime`` (with ``provider``, e.g. ``CUDAExecutionProvider``) or ``tensorrt``.
    """
    # this file run as a script, not ``-m pgn.benchmarks.probe``: importing the package would import torch, which
    # a probe does not need (1.5 s of each); ``-c`` keeps this folder's modules off the child's import path
    launcher = "import runpy, sys; path = sys.argv.pop(1); runpy.run_path(path, run_name='__main__')"
    cmd = [sys.executable, "-c", launcher, str(Path(__file__).resolve()), kind, *([provider] if provider else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT, env=_child_env())
    except subprocess.TimeoutExpired:
        return f"probing {provider or kind} took more than {PROBE_TIMEOUT:.0f} s"
    verdict = _verdict(proc.stdout)
    if verdict is not None and verdict.get("ok"):
        return None
    reason = verdict.get("reason") if verdict else f"the probe exited with status {proc.returncode}"
    loader = loader_message(proc.stderr)
    return f"{reason}: {loader}" if loader and loader not in reason else reason


def loader_message(stderr: str) -> str | None:
    """The first error a library loader printed (ONNX Runtime's ``[E:onnxruntime...] ... FAIL : ...`` lines), cleaned."""
    lines = [_ANSI.sub("", line).strip() for line in stderr.splitlines()]
    for line in lines:
        if "[E:" in line or "Failed to load" in line or "cannot open shared object" in line:
            text = line.split("FAIL : ", 1)[1] if "FAIL : " in line else line.rsplit("] ", 1)[-1]
            hint = next((re.search(r"Require [^.]*\.\*[^.]*\.\*", other) for other in lines if "Require " in other), None)
            return (text + (f" ({hint.group(0)})" if hint else ""))[:400]
    return None


def _verdict(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _quote(e: BaseException) -> str:
    """The first line of a runtime's error, without the terminal colours ONNX Runtime puts in its messages."""
    from pgn.errors import first_line  # here, not at the top: the probe itself runs without importing pgn

    return first_line(_ANSI.sub("", str(e))) or "no details"


def _child_env() -> dict:
    root = str(Path(__file__).resolve().parent.parent)  # this checkout, importable in the child
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/probe.py onnxruntime PROVIDER`` or ``... tensorrt`` (how :func:`probe` runs it): prints a JSON verdict."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["onnxruntime"] and len(argv) == 2:
        reason = start_onnxruntime(argv[1])
    elif argv == ["tensorrt"]:
        reason = start_tensorrt()
    else:
        reason = f"unknown probe {' '.join(argv)!r}: use 'onnxruntime PROVIDER' or 'tensorrt'"
    print(json.dumps({"ok": reason is None, "reason": reason}))
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
