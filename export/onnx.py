"""ONNX export: ``torch.onnx.export`` with the dynamo exporter (default) or the legacy TorchScript exporter.

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
from typing import Any

import torch

import pgn
from pgn.errors import PGNError

from .graph import INPUT_NAMES, ExportGraph
from .manifest import metadata_strings
from .options import ExportOptions

#: Opset of the legacy exporter when none is asked for.
LEGACY_DEFAULT_OPSET = 17
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}


def check_available() -> None:
    """Raise :class:`export.RuntimeUnavailable` if ``onnx`` or ``onnxruntime`` cannot be imported."""
    from .errors import RuntimeUnavailable

    for name, pip in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(name)
        except ImportError:
            raise RuntimeUnavailable(f"{name} is not installed: pip install {pip} (ONNX export runs on any OS)") from None


def export(model: "pgn.PGN", path: str | Path, options: ExportOptions) -> Path:
    """Write ``model`` (backbone + head) as an ONNX file at ``path``; returns ``path``.

    Args:
        model: the PGN (not modified).
        path: the ``.onnx`` file to write.
        options: resolved export options (precision set); fp16 keeps float32 inputs/outputs and computes in half.
    """
    path = Path(path)
    half = options.precision == "fp16"
    graph = ExportGraph(
        model,
        outputs="residual" if half else "grad",
        dtype=torch.float16 if half else torch.float32,
        size=options.size,
        dynamic=options.dynamic,
    )
    return write_onnx(graph, path, options, metadata_strings(model, options, "onnx", graph.output_names))


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
        raise PGNError(f"ONNX export ({which} exporter) failed: {type(e).__name__}: {_first_line(e)}{alt}") from e
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
        raise PGNError(f"exported ONNX graph fails onnx.checker: {_first_line(e)}") from e
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


def describe(path: Path, options: ExportOptions) -> dict[str, Any]:
    """Exporter facts for the manifest, read back from the written file (opset, producer, node counts)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
