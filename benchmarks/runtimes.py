"""The runtimes ``pgn-bench`` knows, as data, and why one cannot run here.

================== ========== ========= ===============================================================
runtime            devices    precision what runs
================== ========== ========= ===============================================================
torch              cpu, cuda  fp32      PyTorch eager (VGG: forward + input-only backward; PGN: forward)
torch-compile      cpu, cuda  fp32      ``torch.compile`` (inductor); compile time excluded
torch-bf16         cpu, cuda  bf16      PyTorch eager under ``torch.autocast(dtype=bfloat16)``
torch-fp16         cuda       fp16      PyTorch eager under ``torch.autocast(dtype=float16)``
onnxruntime        cpu, cuda  fp32      ``export`` ONNX artifact, ONNX Runtime CPU / CUDA execution provider
onnxruntime-dw     cpu, cuda  fp32      as onnxruntime, exported with ``--graph-options decoder_conv=depthwise`` (the
                                        UNet's one-output-per-group convs as depthwise conv + group sum)
onnxruntime-int8   cpu        int8      the ``export`` ONNX target's int8 artifact (QDQ, dense convolutions)
executorch         cpu        fp32      ``export`` ExecuTorch program (``.pte``), XNNPACK delegate
executorch-int8    cpu        int8      the ``export`` target's int8 program (pt2e, int8 convolutions)
executorch-coreml  cpu        fp16      ``export`` ExecuTorch program with the Core ML delegate; Apple platforms
tensorrt           cuda       fp32      ``export`` TensorRT engine
tensorrt-fp16      cuda       fp16      ``export`` TensorRT engine built with fp16 kernels
coreml             cpu        fp16      ``export`` Core ML ML program; runs only on macOS
================== ========== ========= ===============================================================

An exported runtime is an export target, a precision and graph options (over the run's ``--graph-options``):
exactly what ``pgn-export --target T --precision P --graph-options G`` writes.

Only the PyTorch runtimes can compute a VGG gradient (it needs autograd); the exported runtimes run PGN
forwards. Everything here is cheap to call in the parent process: no model is built and no CUDA context is
created. Whether ONNX Runtime's CUDA provider or TensorRT really start is probed once, in a child process
(:mod:`benchmarks.probe`): a provider that is listed but cannot load becomes an ``unavailable`` row with the
loader's reason.
"""

from __future__ import annotations

import difflib
import importlib.util
import platform
import shutil
from dataclasses import dataclass

from pgn.errors import PGNError
from pgn.extras import install_hint

from .models import ModelSpec


@dataclass(frozen=True)
class RuntimeSpec:
    """One row of the runtimes table.

    Args:
        name: the ``--runtimes`` name.
        family: ``torch``, ``onnxruntime``, ``executorch``, ``tensorrt`` or ``coreml``.
        devices: the ``--device`` values it runs on.
        precision: arithmetic precision of the timed computation.
        export_target: the ``export`` package target its artifact comes from (None for PyTorch runtimes).
        description: one line for tables and help.
        graph_options: export-graph options of its artifact, in :class:`export.graph_options.GraphOptions` text,
            applied over the run's ``--graph-options`` (empty: the run's options as they are).
    """

    name: str
    family: str
    devices: tuple[str, ...]
    precision: str
    export_target: str | None
    description: str
    graph_options: str = ""

    @property
    def runs_teachers(self) -> bool:
        """Can it compute a VGG gradient (forward + backward)? Only PyTorch can."""
        return self.family == "torch"


RUNTIMES: dict[str, RuntimeSpec] = {
    r.name: r
    for r in (
        RuntimeSpec("torch", "torch", ("cpu", "cuda"), "fp32", None, "PyTorch eager"),
        RuntimeSpec("torch-compile", "torch", ("cpu", "cuda"), "fp32", None, "torch.compile (inductor), compile time excluded"),
        RuntimeSpec("torch-bf16", "torch", ("cpu", "cuda"), "bf16", None, "PyTorch eager under autocast bfloat16"),
        RuntimeSpec("torch-fp16", "torch", ("cuda",), "fp16", None, "PyTorch eager under autocast float16"),
        RuntimeSpec("onnxruntime", "onnxruntime", ("cpu", "cuda"), "fp32", "onnx", "ONNX Runtime (CPU / CUDA execution provider)"),
        RuntimeSpec("onnxruntime-dw", "onnxruntime", ("cpu", "cuda"), "fp32", "onnx",
                    "ONNX Runtime, grouped convs as depthwise + group sum (exact)", graph_options="decoder_conv=depthwise"),
        RuntimeSpec("onnxruntime-int8", "onnxruntime", ("cpu",), "int8", "onnx",
                    "ONNX Runtime CPU, static int8 quantization (QDQ; the export target's recipe)"),
        RuntimeSpec("executorch", "executorch", ("cpu",), "fp32", "executorch", "ExecuTorch, XNNPACK delegate"),
        RuntimeSpec("executorch-int8", "executorch", ("cpu",), "int8", "executorch",
                    "ExecuTorch, XNNPACK delegate, static int8 convolutions (the export target's recipe)"),
        RuntimeSpec("executorch-coreml", "executorch", ("cpu",), "fp16", "executorch-coreml",
                    "ExecuTorch, Core ML delegate (Apple platforms)"),
        RuntimeSpec("tensorrt", "tensorrt", ("cuda",), "fp32", "tensorrt", "TensorRT engine"),
        RuntimeSpec("tensorrt-fp16", "tensorrt", ("cuda",), "fp16", "tensorrt", "TensorRT engine with fp16 kernels"),
        RuntimeSpec("coreml", "coreml", ("cpu",), "fp16", "coreml", "Core ML ML program (macOS)"),
    )
}

#: What a plain ``pgn-bench --device D`` runs: the fp32 runtime of every family (the quick matrix). Runtimes that
#: cannot run here become rows that say why.
QUICK_RUNTIMES: dict[str, tuple[str, ...]] = {
    "cpu": ("torch", "onnxruntime", "executorch", "coreml"),
    "cuda": ("torch", "onnxruntime", "tensorrt"),
}

#: What ``pgn-bench --full --device D`` runs: every precision and compiler on top of the quick matrix.
DEFAULT_RUNTIMES: dict[str, tuple[str, ...]] = {
    "cpu": ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8", "executorch", "executorch-int8", "executorch-coreml",
            "tensorrt", "coreml"),
    "cuda": ("torch", "torch-compile", "torch-fp16", "onnxruntime", "tensorrt", "tensorrt-fp16"),
}

#: Left out of the default CPU run where the CPU has no native bfloat16 (:func:`bf16_native`): oneDNN then emulates
#: it, and one VGG-19 row ran past the 900 s worker limit on a 2-core AVX2 CPU. ``--runtimes`` still runs it.
EMULATED_ON_CPU = ("torch-bf16",)


def default_runtimes(device: str, full: bool = False) -> tuple[str, ...]:
    """What a plain ``pgn-bench --device D`` runs here, :data:`QUICK_RUNTIMES`; with ``full``, what ``pgn-bench --full``
    runs: :data:`DEFAULT_RUNTIMES`, without bfloat16 on a CPU that would only emulate it."""
    runtimes = DEFAULT_RUNTIMES[device] if full else QUICK_RUNTIMES[device]
    if device == "cpu" and not bf16_native():
        runtimes = tuple(r for r in runtimes if r not in EMULATED_ON_CPU)
    return runtimes


_WRONG_DEVICE = {
    "torch-fp16": "float16 autocast is a GPU path; on the CPU use torch-bf16",
    "onnxruntime-int8": "the int8 QDQ model runs on the CPU execution provider; use --device cpu",
    "executorch": "ExecuTorch runs .pte programs on the CPU here (XNNPACK): use --device cpu",
    "executorch-int8": "ExecuTorch runs .pte programs on the CPU here (XNNPACK): use --device cpu",
    "executorch-coreml": "ExecuTorch's Core ML delegate runs on Apple hardware, not CUDA: run with --device cpu on macOS",
    "tensorrt": "TensorRT needs an NVIDIA GPU: run with --device cuda",
    "tensorrt-fp16": "TensorRT needs an NVIDIA GPU: run with --device cuda",
    "coreml": "Core ML runs on Apple hardware, not CUDA: run with --device cpu on macOS",
}


def resolve_runtime(name: str) -> RuntimeSpec:
    """The :class:`RuntimeSpec` named ``name``; a one-line error with close matches otherwise."""
    if name in RUNTIMES:
        return RUNTIMES[name]
    close = difflib.get_close_matches(name, list(RUNTIMES), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise PGNError(f"unknown runtime {name!r}.{hint} Available: {', '.join(RUNTIMES)}")


@dataclass(frozen=True)
class Skip:
    """Why a (model, runtime) pair is not measured: ``unavailable`` here, or ``not-applicable`` anywhere."""

    status: str
    reason: str


def check_runnable(runtime: RuntimeSpec, device: str, model: ModelSpec) -> Skip | None:
    """None if ``model`` can be measured on ``runtime`` and ``device`` here, else a :class:`Skip` saying why."""
    if model.is_teacher and not runtime.runs_teachers:
        return Skip("not-applicable", "a VGG gradient needs autograd (forward + backward): only the torch runtimes compute it")
    if runtime.graph_options and not model.is_teacher:
        reason = graph_options_not_applied(runtime, model)
        if reason:
            return Skip("not-applicable", reason)
    reason = runtime_unavailable(runtime, device)
    return Skip("unavailable", reason) if reason else None


def graph_options_not_applied(runtime: RuntimeSpec, model: ModelSpec) -> str | None:
    """Why ``runtime``'s own graph options do not change ``model``'s graph (its row would repeat another), or None."""
    import pgn
    from pgn.export.graph import describe_graph
    from pgn.export.graph_options import GraphOptions

    named = [item.partition("=")[0].strip() for item in runtime.graph_options.split(",")]
    not_applied = describe_graph(pgn.build(model.net).backbone, GraphOptions.parse(runtime.graph_options), None)["not_applied"]
    missing = [f"{name}: {not_applied[name]}" for name in named if name in not_applied]
    if not missing:
        return None
    return f"{runtime.graph_options} does not apply ({'; '.join(missing)}): the same graph as {runtime.family}"


def runtime_unavailable(runtime: RuntimeSpec, device: str) -> str | None:
    """Why ``runtime`` cannot run on ``device`` on this machine (missing package, OS, GPU), or None."""
    if device not in runtime.devices:
        return _WRONG_DEVICE.get(runtime.name, f"{runtime.name} does not run on {device}")
    if device == "cuda":
        reason = _cuda_unavailable()
        if reason:
            return reason
    if runtime.family == "torch":
        return _torch_unavailable(runtime, device)
    reason = None
    if runtime.family in ("onnxruntime", "tensorrt") and not module_available("onnxscript"):
        reason = f"onnxscript is not installed, and the ONNX exporter needs it: {install_hint('onnx')}"
    elif runtime.family == "onnxruntime":
        reason = _onnxruntime_unavailable(runtime, device)
    elif runtime.family == "executorch":
        reason = export_package_unavailable() or _executorch_unavailable()
        if not reason and runtime.export_target == "executorch-coreml":
            reason = _executorch_coreml_unavailable()
    elif runtime.family == "tensorrt":
        from .probe import probe

        reason = probe("tensorrt")
    elif runtime.family == "coreml":
        if platform.system() != "Darwin":
            reason = f"Core ML models run only on macOS (this is {platform.system()}); pgn-export can still write the artifact here"
        elif not module_available("coremltools"):
            reason = f"coremltools is not installed: {install_hint('coreml')}"
    return reason or export_package_unavailable()


def module_available(name: str) -> bool:
    """True if ``name`` can be found for import here (a finder that refuses it counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def export_package_unavailable() -> str | None:
    """Why the ``export`` package cannot be used, or None when ``export``, ``load_runtime`` import."""
    try:
        from pgn.export import export, load_runtime  # noqa: F401
    except ImportError as e:
        return f"export package not available ({e})"
    return None


def _cuda_unavailable() -> str | None:
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda or "none"
        return f"no CUDA GPU is visible to PyTorch (torch {torch.__version__}, CUDA build {build})"
    return None


def _torch_unavailable(runtime: RuntimeSpec, device: str) -> str | None:
    import torch

    if runtime.name == "torch-compile" and device == "cpu":
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            return "torch.compile on the CPU needs a C++ compiler (c++, g++ or clang++) on PATH"
    if runtime.name == "torch-bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support; use torch-fp16"
    return None


def _onnxruntime_unavailable(runtime: RuntimeSpec, device: str) -> str | None:
    if not module_available("onnxruntime"):
        return f"onnxruntime is not installed: {install_hint('onnx')} (CPU) or \"pgn-toolkit[onnx-gpu]\" (CUDA)"
    import onnxruntime as ort

    wanted = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    available = ort.get_available_providers()
    if wanted not in available:
        return f"ONNX Runtime has no {wanted} here (available: {', '.join(available)}); for CUDA install onnxruntime-gpu"
    if runtime.precision == "int8" and not module_available("onnxruntime.quantization"):
        return "onnxruntime.quantization is missing from this onnxruntime build"
    if device == "cuda":
        from .probe import probe

        return probe("onnxruntime", wanted)
    return None


def _executorch_unavailable() -> str | None:
    from pgn.export.executorch import INSTALL_HINT

    missing = [name for name in ("executorch", "torchao") if not module_available(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return f"{' and '.join(missing)} {verb} not installed: {INSTALL_HINT} (ExecuTorch, PyTorch's on-device runtime, with XNNPACK)"
    return None


def _executorch_coreml_unavailable() -> str | None:
    if platform.system() != "Darwin":
        return (f"ExecuTorch's Core ML backend is built only for Apple platforms (this is {platform.system()}); "
                "pgn-export --target executorch-coreml can still write the program here")
    from pgn.export.executorch_coreml import TARGET

    return TARGET.runtime_missing_here()


def bf16_native() -> bool:
    """True when this CPU has native bfloat16 arithmetic for oneDNN (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
