"""The ONNX target (:class:`OnnxTarget`): ``torch.onnx.export`` with the dynamo exporter (default) or the legacy
TorchScript exporter, and :class:`OnnxRuntime`, ONNX Runtime on the CPU or the CUDA execution provider.

The graph (:class:`export.graph.ExportGraph`) has inputs ``y_hat``, ``y`` and outputs ``proxy`` and ``grad``
(fp32) or ``residual`` (fp16); BatchNorm is folded into the convolutions before export, and the written file is
checked: ``onnx.checker`` (full check), no ``BatchNormalization`` node, the expected input/output names. Metadata
(preset, head, constants, precision, gradient recipe) goes into ``metadata_props``.

int8 (:func:`quantize_int8`, :data:`INT8_RECIPE`): the fp32 graph statically quantized by ONNX Runtime's
``quantize_static`` in QDQ format, int8 weights per channel and uint8 activations per tensor, calibrated (min-max) on
bundled photographs disjoint from the parity ones (:func:`export.verify.calibration_pairs`). By default only the
dense convolutions (one group) are quantized (``int8_ops="dense"``): ONNX Runtime has no fast int8 depthwise or
grouped kernel, and on the UNet, whose arithmetic is mostly depthwise and grouped, quantizing them made the int8
model about 3× slower than fp32 against about 1.2× with the dense ones only (``python -m pgn.benchmarks.graph_study``;
the ResNets have only dense convolutions). The closed-form head, residual additions and upsampling stay fp32:
quantizing every operator was no faster and passed the gradient itself through a uint8 quantizer (on a random-init
ResNet-4 at 224² the centered-proxy cosine dropped from 0.996 to 0.983, on the UNet from 0.98 to 0.73), and this
ONNX Runtime no longer loads such a model, so ``int8_ops="all"`` is not offered here. ONNX Runtime's int8
convolutions are fast only with dot-product instructions (x86 VNNI or AMX, ARM ``asimddp``). The quantized file
keeps the input and output names and metadata of the fp32 graph.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
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
from .int8 import CALIBRATION_RECORD, INT8_OPS, conv_selected
from .manifest import metadata_strings
from .options import ExportOptions
from .runtimes import Runtime, parse_device
from .target import ExportTarget, RuntimeSettings
from .verify import calibration_pairs

#: Opset of the legacy exporter when none is asked for.
LEGACY_DEFAULT_OPSET = 17
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}
#: What an int8 ONNX model is, recorded in its manifest (``target_info.quantization``).
INT8_RECIPE = {
    "method": "static post-training quantization: onnxruntime.quantization quant_pre_process → quantize_static",
    "format": "QDQ",
    "weights": "int8, per channel, symmetric",
    "activations": "uint8, per tensor",
    "calibration": "min-max",
    "inputs_outputs": "float32 (QuantizeLinear/DequantizeLinear pairs inside the graph)",
    **CALIBRATION_RECORD,
}


# --------------------------------------------------------------------------------------------------------
# The target


class OnnxTarget(ExportTarget):
    """An ``.onnx`` file (fp32; fp16 or int8 arithmetic with float32 inputs and outputs), verified with ONNX Runtime."""

    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "fp16", "int8")
    options = ("opset", "legacy_exporter", "int8_ops")
    #: ``all`` is left out: ONNX Runtime's quantizer then writes QLinearMul nodes for the head's scalar products
    #: that ONNX Runtime itself refuses to load (scale and zero-point shapes).
    int8_ops = ("dense", "conv", "pointwise")
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
        inputs and outputs; int8 is the fp32 graph quantized (:func:`quantize_int8`)."""
        half = options.precision == "fp16"
        graph = ExportGraph(
            model,
            outputs=self.output_names(options)[1],
            dtype=torch.float16 if half else torch.float32,
            size=options.size,
            dynamic=options.dynamic, graph_options=options.graph_options,
        )
        metadata = metadata_strings(model, options, self.name, graph.output_names)
        if options.precision != "int8":
            write_onnx(graph, Path(path), options, metadata)
            return
        with tempfile.TemporaryDirectory(prefix=".pgn-onnx-fp32-", dir=Path(path).parent) as tmp:
            fp32 = write_onnx(graph, Path(tmp) / "fp32.onnx", options, metadata)
            quantize_int8(fp32, Path(path), calibration_pairs(options.size), batch=options.batch,
                          ops=options.int8_ops or self.default_int8_ops)

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

    def target_info(self, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Where the file runs, and for int8 the quantization recipe."""
        info = super().target_info(options, model)
        info["quantization"] = int8_recipe(options.int8_ops or self.default_int8_ops) if options.precision == "int8" else None
        return info

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


# --------------------------------------------------------------------------------------------------------
# int8


def int8_recipe(ops: str) -> dict[str, Any]:
    """:data:`INT8_RECIPE` for the selection ``ops`` of :data:`export.int8.INT8_OPS`."""
    return dict(INT8_RECIPE, ops=ops, quantized_ops=f"Conv nodes: {INT8_OPS[ops]}")


def selected_convs(proto: Any, ops: str) -> list[str]:
    """Names of the ``Conv`` nodes of an ONNX model that the selection ``ops`` quantizes."""
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    names = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if conv_selected(ops, groups, shapes.get(node.input[1], ())[2:]):
            names.append(node.name)
    return names


class _Calibration:
    """Feeds (ŷ, y) batches to ``quantize_static`` under the graph's input names."""

    def __init__(self, y_hat: np.ndarray, y: np.ndarray, batch: int):
        self.batches = [(y_hat[i : i + batch], y[i : i + batch]) for i in range(0, len(y) - batch + 1, batch)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        a, b = self.batches[self.index]
        self.index += 1
        return {INPUT_NAMES[0]: np.ascontiguousarray(a, np.float32), INPUT_NAMES[1]: np.ascontiguousarray(b, np.float32)}

    def rewind(self) -> None:
        self.index = 0


def quantize_int8(src: Path, dst: Path, calibration: tuple[torch.Tensor, torch.Tensor], *, batch: int = 1, ops: str = "dense") -> Path:
    """Statically quantize the fp32 ONNX PGN ``src`` to int8 QDQ at ``dst`` (see the module docs); returns ``dst``.

    Args:
        src: an fp32 graph written by :func:`write_onnx`.
        dst: where to write the quantized graph.
        calibration: (ŷ, y) pairs, (n, 3, H, W) each (:func:`export.verify.calibration_pairs`).
        batch: the calibration batch (a fixed-shape graph takes only its own batch).
        ops: a selection of :data:`export.int8.INT8_OPS` other than ``all``; what it leaves out stays fp32.

    Raises:
        PGNError: the selection quantizes nothing in this graph, or ONNX Runtime's quantizer fails (one line).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    metadata = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}

    class Reader(_Calibration, CalibrationDataReader):
        pass

    y_hat, y = (t.float().numpy() for t in calibration)
    try:
        with tempfile.TemporaryDirectory(prefix=".pgn-onnx-int8-", dir=Path(dst).parent) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pre = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            nodes = selected_convs(onnx.load(str(pre), load_external_data=False), ops)
            if not nodes:
                raise PGNError(f"int8_ops={ops!r} quantizes nothing in this graph: it has no such convolution")
            quantize_static(str(pre), str(dst), Reader(y_hat, y, batch), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=["Conv"], nodes_to_quantize=nodes)
    except PGNError:
        raise
    except Exception as e:  # noqa: BLE001 - quantizer failures become one line
        raise PGNError(f"int8 quantization for ONNX failed: {type(e).__name__}: {first_line(e)}") from e
    proto = onnx.load(str(dst))
    onnx.helper.set_model_props(proto, dict(metadata, **{"pgn.int8_ops": ops}))
    onnx.save_model(proto, str(dst))
    return dst


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
