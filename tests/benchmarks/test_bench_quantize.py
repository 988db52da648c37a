"""int8 quantization of an fp32 ONNX PGN: it runs in ONNX Runtime and stays close to the fp32 gradient."""

import pytest
import torch
from proxy_runtimes import export_onnx

from benchmarks.models import build_pgn, make_inputs
from benchmarks.quantize import quantize_int8
from benchmarks.runners import compare_outputs

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

