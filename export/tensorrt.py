"""The TensorRT target (:class:`TensorRTTarget`): engines built from our ONNX graph with the TensorRT Python API
(10.x and 11.x), and :class:`TensorRTRuntime`, which runs them.

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
every entry point raises :class:`export.RuntimeUnavailable` before anything is written. Engines are verified,
and run, by :class:`TensorRTRuntime` on a CUDA stream of its own.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import pgn
from pgn.errors import PGNError, first_line

from .errors import RuntimeUnavailable
from .graph import INPUT_NAMES, ExportGraph
from .manifest import metadata_strings
from .onnx import write_onnx
from .options import ExportOptions
from .runtimes import Runtime, parse_device
from .target import ExportTarget, RuntimeSettings

SUPPORTED_MAJOR = (10, 11)
INSTALL_HINT = (
    'pip install "pgn-toolkit[tensorrt]" (TensorRT 10 or 11) on Linux or Windows with an NVIDIA GPU and driver'
)


#: The timing cache a build uses when none is given: this file in the output folder, reused across builds.
DEFAULT_TIMING_CACHE = "tensorrt-timing.cache"


# --------------------------------------------------------------------------------------------------------
# The target


class TensorRTTarget(ExportTarget):
    """A serialized TensorRT engine (``.engine``), built and verified on the CUDA GPU it will run on."""

    name = "tensorrt"
    suffix = ".engine"
    precisions = ("fp32", "fp16")
    options = ("opset", "legacy_exporter", "min_size", "max_size", "max_batch", "workspace_gb", "timing_cache", "tf32")
    packages = {"tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12")}
    verify_device = "cuda"
    runs_on = "Linux/Windows with an NVIDIA GPU, the same TensorRT version and GPU model that built it"
    verified_by = "the TensorRT engine on the GPU that built it"

    def check_available(self) -> None:
        """Raise :class:`RuntimeUnavailable` unless TensorRT 10/11 and a CUDA GPU are both here."""
        require_tensorrt()
        require_cuda()

    def with_defaults(self, options: ExportOptions, output_dir: Path) -> ExportOptions:
        """The timing cache defaults to :data:`DEFAULT_TIMING_CACHE` in ``output_dir``."""
        if options.timing_cache is not None:
            return options
        return replace(options, timing_cache=Path(output_dir) / DEFAULT_TIMING_CACHE)

    def export(self, model: "pgn.PGN", path: Path, options: ExportOptions) -> None:
        """Build a TensorRT engine of ``model`` and write it to ``path``.

        Raises:
            RuntimeUnavailable: without TensorRT 10/11 or a CUDA GPU (nothing is written).
            PGNError: if parsing or building fails (the TensorRT errors are in the message).
        """
        trt = require_tensorrt()
        require_cuda()
        strong = uses_strong_typing(trt)
        graph = ExportGraph(
            model,
            outputs=self.output_names(options)[1],
            dtype=torch.float16 if (options.precision == "fp16" and strong) else torch.float32,
            size=options.size,
            dynamic=options.dynamic, graph_options=options.graph_options,
        )
        with tempfile.TemporaryDirectory(prefix="pgn-trt-") as tmp:
            onnx_path = Path(tmp) / "graph.onnx"
            write_onnx(graph, onnx_path, options, metadata_strings(model, options, self.name, graph.output_names))
            engine = build_engine(trt, onnx_path, options, model.size_multiple)
        Path(path).write_bytes(engine)

    def describe(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """How the engine was made: the TensorRT Python API from which ONNX exporter, and the opset."""
        onnx_exporter = "the legacy TorchScript ONNX exporter" if options.legacy_exporter else "the dynamo ONNX exporter"
        return {
            "name": f"TensorRT Python API (OnnxParser → build_serialized_network) from {onnx_exporter}",
            "opset": options.opset or "exporter default",
        }

    def target_info(self, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Where the engine runs, plus the builder facts: version, typing, fp16 and TF32 handling, cache, GPU."""
        trt = require_tensorrt()
        strong = uses_strong_typing(trt)
        info = super().target_info(options, model)
        info.update({
            "tensorrt": trt.__version__,
            "strongly_typed": strong,
            "fp16_via": None if options.precision != "fp16" else ("fp16 ONNX graph (strong typing)" if strong else "BuilderFlag.FP16"),
            "tf32": options.tf32,
            "tf32_flag": (("set" if options.tf32 else "cleared: fp32 layers compute in fp32")
                          if getattr(trt.BuilderFlag, "TF32", None) is not None else "not in this TensorRT"),
            "workspace_gb": options.workspace_gb,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "portability": "runs only with this TensorRT version on this GPU model",
        })
        if options.dynamic:
            info["optimization_profile"] = options.shape_range(model.size_multiple).to_dict()
        return info

    def load_runtime(self, artifact: Path, manifest: dict[str, Any], settings: RuntimeSettings) -> "TensorRTRuntime":
        """The engine on ``settings.device`` (a CUDA device); the other settings do not apply to engines."""
        return TensorRTRuntime(artifact, manifest, device=settings.device)


#: The row of :data:`export.formats.FORMATS`.
TARGET = TensorRTTarget()


# --------------------------------------------------------------------------------------------------------
# Building engines


def require_tensorrt():
    """Import ``tensorrt`` (10.x or 11.x); :class:`RuntimeUnavailable` with what to install otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeUnavailable(f"TensorRT is not installed: {INSTALL_HINT}") from None
    except OSError as e:  # the wheel is there but its CUDA libraries are not
        raise RuntimeUnavailable(f"TensorRT is installed but cannot load its libraries ({first_line(e)}); {INSTALL_HINT}") from None
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


def tensorrt_major(trt) -> int:
    """Major version of an imported ``tensorrt`` module."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return -1


def uses_strong_typing(trt) -> bool:
    """TensorRT 11 only builds strongly typed networks; TensorRT 10 uses the FP16 builder flag (weak typing)."""
    return tensorrt_major(trt) >= 11


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


# --------------------------------------------------------------------------------------------------------
# Runtime


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine run with ``execute_async_v3``; buffers are CUDA tensors of PyTorch.

    The engine runs on a stream of its own, ordered after the caller's current stream (inputs written there are
    ready) and before it (later work there sees the outputs). Enqueueing on PyTorch's legacy default stream
    (handle 0) instead would make TensorRT synchronize around every call.
    """

    def __init__(self, artifact: Path, manifest: dict[str, Any], *, device: str = "cuda"):
        super().__init__(artifact, manifest)
        trt = require_tensorrt()
        torch = require_cuda()
        kind, device_id = parse_device(device)
        if kind != "cuda":
            raise PGNError("TensorRT engines run on an NVIDIA GPU: pass device='cuda'")
        self.torch, self.trt = torch, trt
        self.device = torch.device("cuda", device_id)
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(Path(artifact).read_bytes())
        if self.engine is None:
            raise PGNError(
                f"TensorRT {trt.__version__} cannot load {artifact}: engines only load with the TensorRT version and "
                "GPU model that built them; rebuild it here with pgn-export --target tensorrt"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.name = f"tensorrt-{manifest.get('precision', 'fp32')}"
        self.info.update(
            runtime="tensorrt",
            tensorrt=trt.__version__,
            device=f"cuda:{device_id} ({torch.cuda.get_device_name(self.device)})",
            strongly_typed=manifest.get("target_info", {}).get("strongly_typed"),
            io_tensors={n: str(self.engine.get_tensor_dtype(n)) for n in names},
            stream="dedicated CUDA stream, ordered after the caller's current stream",
            tf32=manifest.get("target_info", {}).get("tf32"),
        )

    def _torch_dtype(self, name: str):
        trt, torch = self.trt, self.torch
        dtype = self.engine.get_tensor_dtype(name)
        return {trt.float32: torch.float32, trt.float16: torch.float16}.get(dtype, torch.float32)

    def _bind(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        torch = self.torch
        tensors = {}
        for name, array in (("y_hat", y_hat), ("y", y)):
            t = torch.from_numpy(array).to(self.device, dtype=self._torch_dtype(name)).contiguous()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            tensors[name] = t
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            t = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, t.data_ptr())
            tensors[name] = t
        return tensors

    def _execute(self) -> None:
        """Enqueue one run on :attr:`stream`, between the caller's earlier and later work on its current stream."""
        current = self.torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise PGNError("TensorRT execution failed (see the TensorRT log)")
        current.wait_stream(self.stream)

    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        tensors = self._bind(y_hat, y)
        self._execute()
        self.torch.cuda.synchronize(self.device)
        return {n: tensors[n].float().cpu().numpy() for n in self.outputs}

    def prepare(self, y_hat: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
        """Inputs and outputs stay on the GPU; the function enqueues one run and waits for it."""
        y_hat, y = self.check_inputs(y_hat, y)
        tensors = self._bind(y_hat, y)

        def once():
            self._execute()
            self.torch.cuda.synchronize(self.device)
            return tensors

        return once
