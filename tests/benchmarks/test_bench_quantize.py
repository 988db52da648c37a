"""int8 quantization of an fp32 ONNX PGN: it runs in ONNX Runtime and stays close to the fp32 gradient."""

import pytest
import torch
from proxy_runtimes import export_onnx

from pgn.benchmarks.models import build_pgn, make_inputs
from pgn.benchmarks.quantize import quantize_int8
from pgn.benchmarks.runners import compare_outputs

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _export(model, path, batch, size):
    export_onnx(model, path, (batch, 3, *size), opset_version=17)
    m = onnx.load(str(path))
    m.metadata_props.add(key="pgn.preset", value="resnet4")
    onnx.save(m, str(path))


def test_int8_model_runs_and_tracks_fp32(tmp_path):
    size, batch = (32, 32), 1
    model = build_pgn("resnet4", 0)
    src = tmp_path / "resnet4.onnx"
    _export(model, src, batch, size)
    calib_hat, calib = make_inputs(4 * batch, size, seed=2)
    dst = quantize_int8(src, tmp_path / "resnet4.int8.onnx", calib_hat.view(4, batch, 3, *size).numpy(), calib.view(4, batch, 3, *size).numpy())
    q = onnx.load(str(dst))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert {p.key: p.value for p in q.metadata_props}["precision"] == "int8"
    assert {p.key: p.value for p in q.metadata_props}["pgn.preset"] == "resnet4"  # kept from the fp32 model

    e_hat, e = make_inputs(batch, size, seed=9)
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    proxy, grad = sess.run(["proxy", "grad"], {"y_hat": e_hat.numpy(), "y": e.numpy()})
    with torch.no_grad():
        ref = model.outputs(e_hat, e)
    acc = compare_outputs({"grad": ref.grad.numpy(), "proxy": ref.proxy.numpy()}, {"grad": grad, "proxy": proxy})
    assert acc["grad_cosine_min"] > 0.99
    assert acc["grad_rel_error_max"] > 0  # it really is quantized



def _conv_graph():
    """Three convolutions: 1×1 dense, 3×3 dense, 3×3 grouped (4 groups)."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weights = {"w1": (8, 8, 1, 1), "w3": (8, 8, 3, 3), "wg": (8, 2, 3, 3)}
    inits = [numpy_helper.from_array(np.ones(s, np.float32), name) for name, s in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pointwise"),
             helper.make_node("Conv", ["a", "w3"], ["b"], name="dense3x3", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "wg"], ["y"], name="grouped", pads=[1, 1, 1, 1], group=4)]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, (1, 8, 4, 4)) for n in ("x", "y")]
    return helper.make_model(helper.make_graph(nodes, "g", [io[0]], [io[1]], inits))


@pytest.mark.parametrize("convs, names", [("all", ["pointwise", "dense3x3", "grouped"]), ("dense", ["pointwise", "dense3x3"]),
                                          ("pointwise", ["pointwise"])])
def test_conv_selections_pick_the_right_nodes(convs, names):
    from pgn.benchmarks.quantize import selected_convs

    assert selected_convs(_conv_graph(), convs) == names


def test_unknown_conv_selection_is_an_error():
    from pgn.benchmarks.quantize import selected_convs
    from pgn.errors import PGNError

    with pytest.raises(PGNError, match="all, dense, pointwise"):
        selected_convs(_conv_graph(), "depthwise")
