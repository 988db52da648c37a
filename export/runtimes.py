"""Runners for exported artifacts: ONNX Runtime (CPU / CUDA), TensorRT engines, CoreML (macOS).

Every runner takes (N, 3, H, W) RGB [0, 1] images (NumPy arrays or torch tensors of any floating dtype, checked
against the input contract of the PyTorch API, :mod:`pgn.inputs`) and returns ``{"proxy", "grad"}``, the same
numbers as ``pgn.PGN`` with ``value_space="unit"``. A new runner subclasses :class:`Runtime` and implements
:meth:`Runtime.run_graph`; :meth:`Runtime.check_inputs` applies the contract for it. For fp16 artifacts, whose graph outputs the residual, the gradient scale
is applied here on the host in fp32 (:class:`export.graph.GradientRecipe`). Runners record what actually ran in
``info`` (execution providers, device, precision, versions, thread settings), so benchmarks can store it.

Example::

    from export import load_runtime
    rt = load_runtime("exports/unet-224x224-b1-fp32.onnx", device="cpu", threads=1)
    out = rt.run(y_hat, y)          # out["grad"], out["proxy"]
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pgn.errors import PGNError
from pgn.inputs import as_float32_arrays

from .errors import RuntimeUnavailable
from .formats import FORMATS, Format
from .graph import GradientRecipe
from .manifest import read_manifest

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class Runtime:
    """A loaded artifact. Subclasses implement :meth:`run_graph` (raw graph outputs by name)."""

    #: e.g. ``onnxruntime-cpu``, ``onnxruntime-cuda``, ``tensorrt-fp16``, ``coreml``
    name: str = "runtime"
    #: When the value check (finite, plausible range) reads the inputs (see :mod:`pgn.inputs`); the inputs
    #: of :meth:`run` are host arrays, so ``auto`` checks them.
    check_values: str = "auto"

    def __init__(self, artifact: Path, manifest: dict[str, Any]):
        self.artifact = Path(artifact)
        self.manifest = manifest
        self.recipe = GradientRecipe.from_dict(manifest["gradient"])
        self.output_names = tuple(o["name"] for o in manifest["outputs"])
        self.info: dict[str, Any] = {"artifact": str(self.artifact), "precision": manifest.get("precision")}

    # -- to implement ------------------------------------------------------------------------------------
    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph once on checked float32 inputs; its outputs by name (``proxy`` and ``grad``/``residual``)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------
    def run(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """The proxy and gradient for a batch.

        Args:
            y_hat, y: (N, 3, H, W) float32 RGB in [0, 1] (numpy arrays or CPU torch tensors).

        Returns:
            ``{"proxy": P in [0, 1] space, "grad": g w.r.t. the [0, 1] y_hat}``, float32, shape of ``y_hat``.
        """
        y_hat, y = self.check_inputs(y_hat, y)
        return self.finish(self.run_graph(y_hat, y), y_hat.shape)

    def prepare(self, y_hat: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
        """Bind inputs once and return a function running the graph on them (for timing loops).

        The base version calls :meth:`run_graph` (host copies included); device runners override it to keep
        inputs and outputs on the device.
        """
        y_hat, y = self.check_inputs(y_hat, y)
        return lambda: self.run_graph(y_hat, y)

    def finish(self, raw: dict[str, np.ndarray], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Graph outputs → ``{"proxy", "grad"}``; applies the fp16 recipe's host-side scale in fp32."""
        proxy = np.asarray(raw["proxy"], dtype=np.float32)
        if "grad" in raw:
            return {"proxy": proxy, "grad": np.asarray(raw["grad"], dtype=np.float32)}
        scale = self.recipe.scale(int(shape[2]), int(shape[3]))
        return {"proxy": proxy, "grad": np.asarray(raw["residual"], dtype=np.float32) * scale}

    def check_inputs(self, y_hat, y) -> tuple[np.ndarray, np.ndarray]:
        """Check the inputs against the PGN input contract (:mod:`pgn.inputs`: layout, floating dtype, finite
        values in RGB [0, 1]) and the artifact's shapes; return contiguous float32 arrays, a clear error otherwise."""
        arrays = as_float32_arrays(("y_hat", y_hat), ("y", y), value_space="unit", check_values=self.check_values)
        shape = arrays[0].shape
        m = self.manifest
        if not m.get("dynamic"):
            expected = tuple(m["inputs"][0]["shape"])
            if shape != expected:
                raise PGNError(f"{self.artifact.name} takes inputs of shape {expected}, got {shape}; re-export with --size/--batch or --dynamic")
        else:
            multiple = m["model"]["size_multiple"]
            if shape[2] % multiple or shape[3] % multiple:
                raise PGNError(f"height and width must be multiples of {multiple} for this {m['model']['backbone']} artifact, got {shape[2]}x{shape[3]}")
            rng = m.get("shape_range")
            if rng and self.respects_shape_range:
                lo, hi = rng["min"], rng["max"]
                if not all(lo[i] <= shape[i] <= hi[i] for i in (0, 2, 3)):
                    raise PGNError(f"input shape {shape} is outside the artifact's range {tuple(lo)}..{tuple(hi)}")
        return arrays[0], arrays[1]

    #: whether the artifact enforces the manifest's shape_range (TensorRT profiles and CoreML ranges do; ONNX not)
    respects_shape_range = True


# --------------------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntime(Runtime):
    """ONNX Runtime with explicit providers and session options; IO binding on CUDA.

    Args:
        artifact: the ``.onnx`` file.
        manifest: its manifest.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        graph_optimization_level: ``disable``, ``basic``, ``extended`` or ``all`` (default).
        inter_op_threads: inter-op threads (``None``: default); only used with parallel execution.
        tf32: let the CUDA execution provider use TF32 math in fp32 convolutions and matmuls. Off by default
            (ONNX Runtime's own default is on): TF32 keeps 10 mantissa bits and breaks fp32 parity (1e-4).
    """

    respects_shape_range = False

    def __init__(
        self,
        artifact: Path,
        manifest: dict[str, Any],
        *,
        device: str = "cpu",
        threads: int | None = None,
        graph_optimization_level: str = "all",
        inter_op_threads: int | None = None,
        tf32: bool = False,
    ):
        super().__init__(artifact, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailable("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)") from None
        if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise PGNError(f"unknown graph_optimization_level {graph_optimization_level!r}: use one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        kind, device_id = _parse_device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization_level]
        if threads is not None:
            if threads < 1:
                raise PGNError(f"threads must be ≥ 1, got {threads}")
            options.intra_op_num_threads = threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3  # errors only; a failed EP is detected below, not just logged
        if kind == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeUnavailable(
                    f"this onnxruntime has no CUDA execution provider (available: {', '.join(available)}): "
                    "pip install onnxruntime-gpu on a machine with an NVIDIA GPU"
                )
            providers: list = [("CUDAExecutionProvider", cuda_provider_options(device_id, tf32=tf32)), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(artifact), sess_options=options, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise PGNError(f"ONNX Runtime cannot load {artifact}: {str(e).splitlines()[0][:300]}") from e
        active = self.session.get_providers()
        wanted = "CUDAExecutionProvider" if kind == "cuda" else "CPUExecutionProvider"
        if not active or active[0] != wanted:
            raise RuntimeUnavailable(
                f"ONNX Runtime could not start {wanted} (active: {', '.join(active)}); for CUDA you need an NVIDIA "
                "GPU, its driver, and the CUDA/cuDNN libraries onnxruntime-gpu was built for"
            )
        self.device = kind
        self.device_id = device_id
        self.name = f"onnxruntime-{kind}"
        self.info.update(
            runtime="onnxruntime",
            onnxruntime=ort.__version__,
            providers=active,
            requested_providers=[p if isinstance(p, str) else p[0] for p in providers],
            device=f"cuda:{device_id}" if kind == "cuda" else "cpu",
            intra_op_threads=threads if threads is not None else "default (onnxruntime: one per physical core)",
            inter_op_threads=inter_op_threads if inter_op_threads is not None else "default",
            graph_optimization_level=graph_optimization_level,
            io_binding=kind == "cuda",
            provider_options=self.session.get_provider_options(),
        )
        if manifest.get("precision") == "fp16" and kind == "cpu":
            self.info["note"] = "the CPU execution provider may upcast fp16 nodes that lack fp16 kernels to fp32"

    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        if self.device == "cuda":
            binding = self._bind(y_hat, y)
            self.session.run_with_iobinding(binding)
            outs = binding.copy_outputs_to_cpu()
        else:
            outs = self.session.run(list(self.output_names), {"y_hat": y_hat, "y": y})
        return dict(zip(self.output_names, outs))

    def prepare(self, y_hat: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
        """On CUDA: inputs copied to the GPU once, outputs kept there (IO binding); the function runs the graph."""
        y_hat, y = self.check_inputs(y_hat, y)
        if self.device != "cuda":
            feeds = {"y_hat": y_hat, "y": y}
            names = list(self.output_names)
            return lambda: self.session.run(names, feeds)
        binding = self._bind(y_hat, y)
        return lambda: self.session.run_with_iobinding(binding)

    def _bind(self, y_hat: np.ndarray, y: np.ndarray):
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in (("y_hat", y_hat), ("y", y)):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id))
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        return binding


def cuda_provider_options(device_id: int, *, tf32: bool = False) -> dict[str, str]:
    """Options of ONNX Runtime's CUDA execution provider: the device, and TF32 off unless asked for."""
    return {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}


# --------------------------------------------------------------------------------------------------------
# TensorRT


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine run with ``execute_async_v3``; buffers are CUDA tensors of PyTorch.

    The engine runs on a stream of its own, ordered after the caller's current stream (inputs written there are
    ready) and before it (later work there sees the outputs). Enqueueing on PyTorch's legacy default stream
    (handle 0) instead would make TensorRT synchronize around every call.
    """

    def __init__(self, artifact: Path, manifest: dict[str, Any], *, device: str = "cuda"):
        super().__init__(artifact, manifest)
        from .tensorrt import require_cuda, require_tensorrt

        trt = require_tensorrt()
        torch = require_cuda()
        kind, device_id = _parse_device(device)
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


# --------------------------------------------------------------------------------------------------------
# CoreML


class CoreMLRuntime(Runtime):
    """A ``.mlpackage`` run with ``MLModel.predict`` (macOS only).

    Args:
        compute_units: ``ALL`` (default: Neural Engine, GPU, CPU), ``CPU_AND_NE``, ``CPU_AND_GPU`` or ``CPU_ONLY``.
    """

    name = "coreml"

    def __init__(self, artifact: Path, manifest: dict[str, Any], *, compute_units: str = "ALL"):
        super().__init__(artifact, manifest)
        if sys.platform != "darwin":
            raise RuntimeUnavailable(
                "not executed: CoreML predicts on macOS only (MLModel.predict needs Core ML); run this on a Mac "
                "with pip install coremltools, or load the .mlpackage in an iOS/macOS app"
            )
        from .coreml import import_coremltools

        ct = import_coremltools()
        units = getattr(ct.ComputeUnit, compute_units, None)
        if units is None:
            raise PGNError(f"unknown compute_units {compute_units!r}: use ALL, CPU_AND_NE, CPU_AND_GPU or CPU_ONLY")
        self.model = ct.models.MLModel(str(artifact), compute_units=units)
        self.info.update(runtime="coreml", coremltools=ct.__version__, compute_units=compute_units,
                         macos=platform.mac_ver()[0])

    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model.predict({"y_hat": y_hat, "y": y})
        return {n: np.asarray(out[n]) for n in self.output_names}


# --------------------------------------------------------------------------------------------------------


def load_runtime(
    artifact: str | Path,
    *,
    target: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    graph_optimization_level: str = "all",
    inter_op_threads: int | None = None,
    compute_units: str = "ALL",
    tf32: bool = False,
) -> Runtime:
    """Load an exported artifact with its runtime; reads the manifest beside it.

    Args:
        artifact: a ``.onnx`` file, ``.engine`` file or ``.mlpackage`` folder written by :func:`export.export`.
        target: ``onnx``, ``tensorrt`` or ``coreml``; inferred from the suffix if ``None``.
        device: ``cpu`` or ``cuda`` (``cuda:N``). ONNX: picks the execution provider; TensorRT needs ``cuda``;
            CoreML chooses its own units (see ``compute_units``).
        threads, graph_optimization_level, inter_op_threads: ONNX Runtime session options.
        compute_units: CoreML compute units.
        tf32: ONNX Runtime on CUDA: allow TF32 math (off by default, for fp32 parity; TensorRT engines fix
            it when they are built, see ``ExportOptions.tf32``).

    Raises:
        RuntimeUnavailable: the runtime, device or OS is missing here (says what to install / where it runs).
        PGNError: the artifact or its manifest is missing or does not match.
    """
    artifact = Path(artifact)
    fmt = _format_of(artifact, target)
    if not artifact.exists():
        raise PGNError(f"artifact not found: {artifact}")
    manifest = read_manifest(artifact)
    if manifest.get("target") != fmt.name:
        raise PGNError(f"{artifact} is a {manifest.get('target')} artifact according to its manifest, not {fmt.name}")
    if fmt.name == "onnx":
        return OnnxRuntime(artifact, manifest, device=device, threads=threads,
                           graph_optimization_level=graph_optimization_level, inter_op_threads=inter_op_threads, tf32=tf32)
    if fmt.name == "tensorrt":
        return TensorRTRuntime(artifact, manifest, device=device)
    if device not in ("cpu",):
        raise PGNError("CoreML picks its own compute units: leave device='cpu' and pass compute_units= instead")
    return CoreMLRuntime(artifact, manifest, compute_units=compute_units)


def _format_of(artifact: Path, target: str | None) -> Format:
    if target is not None:
        from .formats import resolve_targets

        fmts = resolve_targets(target)
        if len(fmts) != 1:
            raise PGNError("load_runtime needs one target: onnx, tensorrt or coreml")
        return fmts[0]
    for fmt in FORMATS.values():
        if artifact.name.endswith(fmt.suffix):
            return fmt
    suffixes = ", ".join(f.suffix for f in FORMATS.values())
    raise PGNError(f"cannot tell the runtime of {artifact.name} from its suffix (known: {suffixes}); pass target=")


def _parse_device(device: str) -> tuple[str, int]:
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise PGNError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
