"""TensorRT engines, built from our ONNX graph with the TensorRT Python API (10.x and 11.x).

Steps: export the ONNX graph (:mod:`export.onnx`) into a temporary folder → ``trt.OnnxParser`` → builder config
(workspace limit, timing cache, optimization profile for dynamic shapes) → ``build_serialized_network`` →
the ``.engine`` file. fp16:

* TensorRT 10: the fp32 ONNX graph (with ``residual`` output) and ``BuilderFlag.FP16`` (weak typing);
* TensorRT 11: strongly typed networks only (the FP16 flag is gone), so the ONNX graph itself is fp16
  (float32 inputs/outputs, half arithmetic), and the network is created strongly typed.

TF32: TensorRT lets fp32 convolutions use TF32 math by default (10-bit mantissas), which breaks the fp32 parity
of 1e-4. ``BuilderFlag.TF32`` is therefore cleared unless ``ExportOptions.tf32`` asks for it (``--tf32``); the
manifest records which. A timing cache that TensorRT rejects (written by another TensorRT version or GPU model)
is reported with a warning and replaced by the new build's cache.

An engine runs only with the TensorRT version and GPU model that built it. Without TensorRT or a CUDA GPU
every entry point raises :class:`export.RuntimeUnavailable` before anything is written.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

import pgn
from pgn.errors import PGNError

from .errors import RuntimeUnavailable
from .graph import INPUT_NAMES, ExportGraph
from .manifest import metadata_strings
from .onnx import write_onnx
from .options import ExportOptions

SUPPORTED_MAJOR = (10, 11)
INSTALL_HINT = (
    'pip install "pgn-toolkit[tensorrt]" (TensorRT 10 or 11) on Linux or Windows with an NVIDIA GPU and driver'
)


def require_tensorrt():
    """Import ``tensorrt`` (10.x or 11.x); :class:`RuntimeUnavailable` with what to install otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeUnavailable(f"TensorRT is not installed: {INSTALL_HINT}") from None
    except OSError as e:  # the wheel is there but its CUDA libraries are not
        raise RuntimeUnavailable(f"TensorRT is installed but cannot load its libraries ({e}); {INSTALL_HINT}") from None
    major = tensorrt_major(trt)
    if major not in SUPPORTED_MAJOR:
        raise RuntimeUnavailable(f"TensorRT {trt.__version__} is not supported (need 10.x or 11.x): {INSTALL_HINT}")
    return trt


def require_cuda():
    """Return ``torch`` if a CUDA GPU is usable; :class:`RuntimeUnavailable` otherwise."""
    if not torch.cuda.is_available():
        raise RuntimeUnavailable(
            "TensorRT needs a CUDA GPU and none is usable here (torch.cuda.is_available() is False): run on a "
            "Linux/Windows machine with an NVIDIA GPU, its driver and a CUDA build of PyTorch"
        )
    return torch


def check_available() -> None:
    """Raise :class:`RuntimeUnavailable` unless TensorRT 10/11 and a CUDA GPU are both here."""
    require_tensorrt()
    require_cuda()


def tensorrt_major(trt) -> int:
    """Major version of an imported ``tensorrt`` module."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return -1


def uses_strong_typing(trt) -> bool:
    """TensorRT 11 only builds strongly typed networks; TensorRT 10 uses the FP16 builder flag (weak typing)."""
    return tensorrt_major(trt) >= 11


def export(model: "pgn.PGN", path: str | Path, options: ExportOptions) -> Path:
    """Build a TensorRT engine of ``model`` and write it to ``path``; returns ``path``.

    Raises:
        RuntimeUnavailable: without TensorRT 10/11 or a CUDA GPU (nothing is written).
        PGNError: if parsing or building fails (the TensorRT errors are in the message).
    """
    trt = require_tensorrt()
    require_cuda()
    path = Path(path)
    strong = uses_strong_typing(trt)
    half = options.precision == "fp16"
    graph = ExportGraph(
        model,
        outputs="residual" if half else "grad",
        dtype=torch.float16 if (half and strong) else torch.float32,
        size=options.size,
        dynamic=options.dynamic,
    )
    with tempfile.TemporaryDirectory(prefix="pgn-trt-") as tmp:
        onnx_path = Path(tmp) / "graph.onnx"
        write_onnx(graph, onnx_path, options, metadata_strings(model, options, "tensorrt", graph.output_names))
        engine = build_engine(trt, onnx_path, options, model.size_multiple)
    path.write_bytes(engine)
    return path


def build_engine(trt, onnx_path: Path, options: ExportOptions, size_multiple: int) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (see the module doc for the precision handling)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strong = uses_strong_typing(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PGNError(f"TensorRT's ONNX parser rejected the graph: {errors or 'no details'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if options.precision == "fp16" and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
    _set_tf32(trt, config, options.tf32)
    if options.dynamic:
        rng = options.shape_range(size_multiple)
        profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            profile.set_shape(name, rng.min, rng.opt, rng.max)
        config.add_optimization_profile(profile)
    cache_path = options.timing_cache
    _use_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PGNError("TensorRT could not build the engine (see the TensorRT log above)")
    if cache_path is not None:
        _atomic_write(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _set_tf32(trt, config, allow: bool) -> None:
    """Clear ``BuilderFlag.TF32`` (on by default in TensorRT) unless TF32 is asked for."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        if allow:
            raise PGNError(f"TensorRT {trt.__version__} has no BuilderFlag.TF32: build without --tf32")
        return
    if allow:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)


def _use_timing_cache(config, path: Path | None) -> None:
    """Give the builder the timing cache in ``path`` (if any); warn and start empty when TensorRT rejects it."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if data:
        warnings.warn(
            f"TensorRT rejected the timing cache {path} (written by another TensorRT version or GPU model): "
            "building without it; this build's cache replaces it",
            RuntimeWarning,
            stacklevel=3,
        )
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def describe(trt_module, options: ExportOptions, size_multiple: int) -> dict[str, Any]:
    """Builder facts for the manifest."""
    strong = uses_strong_typing(trt_module)
    info: dict[str, Any] = {
        "tensorrt": trt_module.__version__,
        "strongly_typed": strong,
        "fp16_via": None if options.precision != "fp16" else ("fp16 ONNX graph (strong typing)" if strong else "BuilderFlag.FP16"),
        "tf32": options.tf32,
        "tf32_flag": (("set" if options.tf32 else "cleared: fp32 layers compute in fp32")
                      if getattr(trt_module.BuilderFlag, "TF32", None) is not None else "not in this TensorRT"),
        "workspace_gb": options.workspace_gb,
        "timing_cache": str(options.timing_cache) if options.timing_cache else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "portability": "runs only with this TensorRT version on this GPU model",
    }
    if options.dynamic:
        info["optimization_profile"] = options.shape_range(size_multiple).to_dict()
    return info


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
