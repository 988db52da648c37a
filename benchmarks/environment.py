"""The machine and software a benchmark ran on, recorded next to every number so results stay comparable."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

#: CPU flags that decide which kernels run (vector width, bf16 and int8 dot products).
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile",
                         "asimd", "asimddp", "sve")
#: The int8 dot-product instructions ONNX Runtime's int8 convolutions use (x86 VNNI and AMX, ARM ``sdot``): without
#: one of them an int8 model is rarely faster than fp32.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt", "coremltools", "pgn-toolkit")
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_value(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line whose key is one of ``keys`` (lower case); None off Linux."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            return value.strip()
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS)."""
    name = cpuinfo_value("model name") if sys.platform.startswith("linux") else None
    if name:
        return name
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_flags(of_interest: tuple[str, ...] = CPU_FLAGS_OF_INTEREST) -> list[str]:
    """Which of ``of_interest`` this CPU has (x86 ``flags``, ARM ``Features``; Linux only, empty elsewhere)."""
    flags = set((cpuinfo_value("flags", "features") or "").split())
    return [f for f in of_interest if f in flags]


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none): was the machine idle?"""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for the numbers."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def torch_settings(device: str) -> dict:
    """PyTorch settings that change speed or precision: threads, oneDNN, TF32, cuDNN, matmul precision."""
    import torch

    out = {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device == "cuda" and torch.cuda.is_available():
        out.update(
            {
                "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "cudnn_deterministic": torch.backends.cudnn.deterministic,
                "cudnn_version": torch.backends.cudnn.version(),
            }
        )
    return out


def gpu_info() -> dict | None:
    """Name, memory, capability and driver/CUDA versions of GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    info = {
        "name": props.name,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda_runtime": torch.version.cuda,
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def onnxruntime_providers() -> list[str] | None:
    """Execution providers this ONNX Runtime build lists, or None without onnxruntime (listed is not loadable:
    see :func:`gpu_runtimes`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return list(ort.get_available_providers())


def gpu_runtimes() -> dict[str, str]:
    """Whether ONNX Runtime's CUDA provider and TensorRT really start here: ``ok`` or the reason (probed)."""
    from .probe import probe

    found = {"onnxruntime CUDAExecutionProvider": probe("onnxruntime", "CUDAExecutionProvider"), "tensorrt": probe("tensorrt")}
    return {name: reason or "ok" for name, reason in found.items()}


def collect_environment(device: str, threads: int) -> dict:
    """Everything above in one JSON-friendly dict (``threads``: the intra-op threads the runs use)."""
    import torch

    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "device": device,
        "gpu": gpu_info() if device == "cuda" else None,
        "cuda_available": torch.cuda.is_available(),
        "packages": package_versions(),
        "torch": torch_settings(device),
        "onnxruntime_providers": onnxruntime_providers(),
        "gpu_runtimes": gpu_runtimes() if device == "cuda" and torch.cuda.is_available() else None,
        "load_average_start": load_average(),
    }
