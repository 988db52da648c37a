"""int8 PGNs for ONNX Runtime: static quantization of an exported fp32 ONNX model.

The recipe: ONNX Runtime's shape-inference pre-processing, then ``quantize_static`` in QDQ format with
per-channel int8 weights and uint8 activations, calibrated (min-max) on bundled photographs that are disjoint
from the ones the accuracy check uses (:func:`export.verify.calibration_pairs`). Only convolutions are
quantized: the closed-form head (sigmoid, normalization, ŷ − P), residual additions and upsampling stay in
fp32. Quantizing every op is no faster here and loses accuracy: the gradient output itself then passes through
a uint8 quantizer (on a random-init ResNet-4 at 224², the centered-proxy cosine drops from 0.996 to 0.983, on
the UNet from 0.98 to 0.73). Only the dense convolutions (one group) are quantized by default: ONNX Runtime has no fast int8 depthwise or grouped
kernel, and on the UNet, whose arithmetic is mostly depthwise and grouped, quantizing them made the int8 model
about 3× slower than fp32 against about 1.2× with the dense ones only (``python -m benchmarks.graph_study``; the
ResNets have only dense convolutions, so nothing changes for them). Even so the UNet's int8 model stays slower
than its fp32 one on ONNX Runtime: its 1×1 convolutions are small, and the quantize/dequantize pair around each
costs about what int8 arithmetic saves. ONNX Runtime's int8 convolutions are fast only with dot-product instructions
(x86 VNNI or AMX, ARM ``asimddp``); each int8 row records which of them the CPU has
(``runtime_info["cpu_int8_dot_product"]``). The fp32 model's input and output names and its metadata are kept, so the quantized file loads
like the original.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from pgn.cliutils import write_json
from pgn.errors import PGNError

INT8_RECIPE = {
    "format": "QDQ",
    "weights": "int8, per channel, symmetric",
    "activations": "uint8, per tensor",
    "calibration": "min-max",
    "ops": "Conv only, by default the dense ones (depthwise and grouped convs, head, residual adds, concatenation, "
           "upsampling stay fp32)",
}
#: ONNX op types that are quantized (see the module docs for why only convolutions).
QUANTIZED_OPS = ("Conv",)
#: Which convolutions are quantized: every one, the dense ones (one group: 1×1 convs, stems and full convs;
#: depthwise and grouped convs stay fp32), or the 1×1 convs only.
CONV_SELECTIONS = ("all", "dense", "pointwise")


def selected_convs(model, convs: str) -> list[str]:
    """Names of the ``Conv`` nodes of an ONNX ``model`` that ``convs`` (one of :data:`CONV_SELECTIONS`) quantizes."""
    if convs not in CONV_SELECTIONS:
        raise PGNError(f"unknown conv selection {convs!r}: use one of {', '.join(CONV_SELECTIONS)}")
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        kernel = shapes.get(node.input[1], ())[2:]
        if convs == "all" or (group == 1 and (convs == "dense" or all(k == 1 for k in kernel))):
            names.append(node.name)
    return names


class _Calibration:
    """Feeds (ŷ, y) batches to ``quantize_static`` under the model's input names."""

    def __init__(self, names: tuple[str, str], y_hat: np.ndarray, y: np.ndarray):
        self.names = names
        self.batches = list(zip(y_hat, y))
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        a, b = self.batches[self.index]
        self.index += 1
        return {self.names[0]: np.ascontiguousarray(a, np.float32), self.names[1]: np.ascontiguousarray(b, np.float32)}

    def rewind(self) -> None:
        self.index = 0


def quantize_int8(src: str | Path, dst: str | Path, calib_y_hat: np.ndarray, calib_y: np.ndarray, convs: str = "dense") -> Path:
    """Statically quantize the fp32 ONNX PGN ``src`` to int8 QDQ at ``dst``; return ``dst``.

    Args:
        src: an fp32 ONNX model with two image inputs (ŷ first, then y) of a fixed shape.
        dst: where to write the quantized model.
        calib_y_hat, calib_y: (k, N, 3, H, W) float32 calibration batches in [0, 1], N the model's batch.
        convs: which convolutions to quantize (:data:`CONV_SELECTIONS`; default ``dense``, see the module docs);
            the others stay fp32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    names = tuple(i.name for i in model.graph.input)
    if len(names) != 2:
        raise PGNError(f"{src} has inputs {names}; expected two image inputs (y_hat, y)")
    metadata = {p.key: p.value for p in model.metadata_props}

    class Reader(_Calibration, CalibrationDataReader):
        pass

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        nodes = selected_convs(onnx.load(str(pre), load_external_data=False), convs)
        if not nodes:
            raise PGNError(f"{src} has no convolution that the selection {convs!r} quantizes")
        quantize_static(
            str(pre),
            str(dst),
            Reader(names, calib_y_hat, calib_y),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=nodes,
        )
    out = onnx.load(str(dst))
    recipe = dict(INT8_RECIPE, convs=convs)
    metadata.update({"precision": "int8", "int8_recipe": ", ".join(f"{k}: {v}" for k, v in recipe.items())})
    del out.metadata_props[:]
    for key, value in metadata.items():
        out.metadata_props.add(key=key, value=value)
    onnx.save(out, str(dst))
    return dst


def write_int8_manifest(src: str | Path, dst: str | Path) -> Path:
    """Write the ``export`` manifest of the quantized model ``dst``, derived from the fp32 model ``src``'s.

    ``export.load_runtime`` reads the manifest beside an artifact (its inputs, outputs and gradient recipe,
    which quantization does not change). Precision, file name, hash and size are updated and the int8 recipe
    is recorded; parity is left to the benchmark's accuracy check against fp32 PyTorch.
    """
    from pgn.export import manifest_path, read_manifest

    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    manifest.update(
        artifact=dst.name,
        sha256=hashlib.sha256(dst.read_bytes()).hexdigest(),
        size_mb=round(dst.stat().st_size / 2**20, 3),
        precision="int8",
        status="quantized",
        quantization={"tool": "onnxruntime.quantization.quantize_static", "source": src.name, **INT8_RECIPE,
                      "quantized_ops": list(QUANTIZED_OPS)},
        parity={"checked_by": "pgn-bench accuracy check (gradient cosine against fp32 PyTorch)"},
    )
    return write_json(manifest, manifest_path(dst))
