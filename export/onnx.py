"""The ONNX target (:class:`OnnxTarget`): ``torch.onnx.export`` with the dynamo exporter (default) or the legacy
TorchScript exporter, and :class:`OnnxRuntime`, ONNX Runtime on the CPU or the CUDA execution provider.

The graph (:class:`export.graph.ExportGraph`) has inputs ``y_hat``, ``y`` and outputs ``proxy`` and ``grad``
(fp32) or ``residual`` (fp16); BatchNorm is folded into the convolutions before export, and the written file is
checked: ``onnx.checker`` (full check), no ``BatchNormalization`` node, the expected input/output names. Metadata
(preset, head, constants, precision, gradient recipe) goes into ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import pgn
from pgn.errors import PGNError, first_line
from pgn.extras import install_hint

from .errors import RuntimeUnavailable
from .graph import INPUT_NAMES, ExportGraph
from .graph_options import GraphOptions
from .manifest import metadata_strings
from .options import ExportOptions
from .runtimes import Runtime, parse_device
from .target import ExportTarget, RuntimeSettings

#: Opset of the legacy exporter when none is asked for.
LEGACY_DEFAULT_OPSET = 17
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}


# --------------------------------------------------------------------------------------------------------
# The target


class OnnxTarget(ExportTarget):
    """An ``.onnx`` file (fp32, or fp16 arithmetic with float32 inputs and outputs), verified with ONNX Runtime."""

    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "fp16")
    options = ("opset", "legacy_exporter")
    packages = {"onnx": ("onnx",), "onnxscript": ("onnxscript",), "onnxruntime": ("onnxruntime-gpu", "onnxruntime")}
    runs_on = "any OS: ONNX Runtime (CPU, CUDA), and runtimes that read ONNX"
    verified_by = "ONNX Runtime (CPU execution provider)"
    #: Measured with ``python -m benchmarks.graph_study`` (UNet, 224², ONNX Runtime CPU): the split decoder conv
    #: is faster and halves the peak memory; row bands lower the memory further but cost time, so they are opt-in.
    default_graph_options = GraphOptions(decoder_conv="split")

    def check_available(self) -> None:
        """Raise :class:`export.RuntimeUnavailable` if ``onnx``, ``onnxscript`` or ``onnxruntime`` cannot be imported."""
        for name in ("onnx", "onnxscript", "onnxruntime"):
            try:
                __import__(name)
            except ImportError:
                raise RuntimeUnavailable(f"{name} is not installed: {install_hint('onnx')} (ONNX export runs on any OS)") from None

    def export(self, model: "pgn.PGN", path: Path, options: ExportOptions) -> None:
        """Write ``model`` (backbone + head) as an ONNX file at ``path``; fp16 computes in half between float32
        inputs and outputs."""
        half = options.precision == "fp16"
        graph = ExportGraph(
            model,
            outputs=self.output_names(options)[1],
            dtype=torch.float16 if half else torch.float32,
            size=options.size,
            dynamic=options.dynamic, graph_options=options.graph_options,
        )
        write_onnx(graph, Path(path), options, metadata_strings(model, options, self.name, graph.output_names))

    def describe(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Exporter facts read back from the written file (opset, producer, node counts)."""
        import onnx

        proto = onnx.load(str(artifact), load_external_data=False)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        ops: dict[str, int] = {}
        for node in proto.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return {
            "name": "torch.onnx.export (legacy TorchScript exporter)" if options.legacy_exporter else "torch.onnx.export (dynamo)",
            "opset": opset,
            "ir_version": proto.ir_version,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "nodes": len(proto.graph.node),
            "op_types": dict(sorted(ops.items())),
            "batchnorm_folded": "BatchNormalization" not in ops,
            "checker": "onnx.checker.check_model(full_check=True) passed",
        }

    def load_runtime(self, artifact: Path, manifest: dict[str, Any], settings: RuntimeSettings) -> "OnnxRuntime":
        """ONNX Runtime on ``settings.device`` with the session options of ``settings``."""
        return OnnxRuntime(artifact, manifest, device=settings.device, threads=settings.threads,
                           graph_optimization_level=settings.graph_optimization_level,
                           inter_op_threads=settings.inter_op_threads, tf32=settings.tf32)


#: The row of :data:`export.formats.FORMATS`.
TARGET = OnnxTarget()


# --------------------------------------------------------------------------------------------------------
# Writing and checking the graph


def write_onnx(graph: ExportGraph, path: Path, options: ExportOptions, metadata: dict[str, str] | None = None) -> Path:
    """Export an :class:`ExportGraph` to ``path``, post-process and check it; returns ``path``."""
    import onnx

    example = _example_inputs(options)
    names = graph.output_names
    buffer = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            if options.legacy_exporter:
                torch.onnx.export(
                    graph,
                    example,
                    str(path),
                    dynamo=False,
                    input_names=list(INPUT_NAMES),
                    output_names=list(names),
                    opset_version=options.opset or LEGACY_DEFAULT_OPSET,
                    do_constant_folding=True,
                    dynamic_axes=_dynamic_axes(names) if options.dynamic else None,
                )
                proto = onnx.load(str(path))
            else:
                program = torch.onnx.export(
                    graph,
                    example,
                    dynamo=True,
                    input_names=list(INPUT_NAMES),
                    output_names=list(names),
                    opset_version=options.opset,
                    dynamic_shapes=_dynamic_shapes() if options.dynamic else None,
                    optimize=True,
                    verbose=False,
                )
                proto = program.model_proto
    except Exception as e:  # noqa: BLE001 - exporter failures become one line
        which = "legacy (TorchScript)" if options.legacy_exporter else "dynamo"
        alt = "" if options.legacy_exporter else "; try legacy_exporter=True (--legacy-exporter)"
        raise PGNError(f"ONNX export ({which} exporter) failed: {type(e).__name__}: {first_line(e)}{alt}") from e
    if options.dynamic:
        _rename_dynamic_dims(proto)
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    check_graph(proto, names, half=graph.compute_dtype == torch.float16)
    onnx.save_model(proto, str(path))
    return path


def check_graph(proto: Any, names: tuple[str, ...], *, half: bool) -> None:
    """Structural checks of an exported graph; a :class:`PGNError` if one fails.

    ``onnx.checker`` (full check, with shape inference), input/output names, no ``BatchNormalization`` node
    (folded), and a half graph (``half``) really holds float16 convolution weights.
    """
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise PGNError(f"exported ONNX graph fails onnx.checker: {first_line(e)}") from e
    inputs = tuple(i.name for i in proto.graph.input)
    outputs = tuple(o.name for o in proto.graph.output)
    if inputs != INPUT_NAMES or outputs != tuple(names):
        raise PGNError(f"exported ONNX graph has inputs {inputs} and outputs {outputs}, expected {INPUT_NAMES} and {names}")
    left = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if left:
        raise PGNError(f"{len(left)} BatchNormalization node(s) left unfolded in the ONNX graph ({left[0]}, ...)")
    if half:
        dtypes = {init.data_type for init in proto.graph.initializer if len(init.dims) >= 4}
        if dtypes != {onnx.TensorProto.FLOAT16}:
            raise PGNError("fp16 export holds convolution weights that are not float16")


def _example_inputs(options: ExportOptions) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(options.shape, generator=gen), torch.rand(options.shape, generator=gen)


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    auto = torch.export.Dim.AUTO
    dims = {axis: auto for axis in DYNAMIC_DIMS}
    return {"y_hat": dict(dims), "y": dict(dims)}


def _dynamic_axes(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    return {name: dict(DYNAMIC_DIMS) for name in (*INPUT_NAMES, *names)}


def _rename_dynamic_dims(proto: Any) -> None:
    """Give the exporter's symbolic dims (``s17``…) the names ``batch``, ``height``, ``width`` everywhere."""
    first = proto.graph.input[0].type.tensor_type.shape.dim
    mapping = {first[axis].dim_param: name for axis, name in DYNAMIC_DIMS.items() if first[axis].dim_param}
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in mapping) + r")\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: mapping[m.group(1)], dim.dim_param)


# --------------------------------------------------------------------------------------------------------
# Runtime

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


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
            raise RuntimeUnavailable(f"onnxruntime is not installed: {install_hint('onnx')} (or \"pgn-toolkit[onnx-gpu]\" for CUDA)") from None
        if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise PGNError(f"unknown graph_optimization_level {graph_optimization_level!r}: use one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        kind, device_id = parse_device(device)
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
            raise PGNError(f"ONNX Runtime cannot load {artifact}: {first_line(e)}") from e
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

    def artifact_input_shapes(self) -> list[list]:
        """The graph's declared input shapes (dynamic dimensions by name)."""
        return [list(i.shape) for i in self.session.get_inputs()]

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
