"""ONNX export + parity for every preset, dynamic shapes, fp16 accuracy, and the failure path."""

import json

import numpy as np
import onnx
import pytest
import torch

from pgn import export
import pgn
from pgn.export.manifest import manifest_path, sha256_of

from export_helpers import PRESETS, build

SIZE = 64


@pytest.fixture(scope="module")
def onnx_exports(models, tmp_path_factory):
    """One verified fp32 ONNX artifact per preset at 64×64."""
    out = tmp_path_factory.mktemp("onnx")
    return {name: export.export(models[name], "onnx", output_dir=out, size=SIZE)[0] for name in PRESETS}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_exports_and_verifies(onnx_exports, name):
    r = onnx_exports[name]
    assert r.status == "verified", r.reason
    assert r.artifact.name == f"{name}-64x64-b1-fp32.onnx" and r.artifact.is_file()
    assert r.manifest_path == manifest_path(r.artifact) and r.manifest_path.is_file()
    assert r.size_mb > 1 and r.seconds > 0
    sets = r.parity["sets"]
    assert set(sets) == {"random", "real"}
    for m in sets.values():
        assert m["grad_max_rel"] <= 1e-4 and m["proxy_max_rel"] <= 1e-4
        assert m["grad_cosine_min"] > 0.99999
    assert r.parity["runtime"] == "onnxruntime-cpu" and r.parity["runtime_info"]["providers"][0] == "CPUExecutionProvider"


@pytest.mark.parametrize("name", ["resnet4", "unet"])
def test_graph_structure(onnx_exports, name):
    proto = onnx.load(str(onnx_exports[name].artifact))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["y_hat", "y"]
    assert [o.name for o in proto.graph.output] == ["proxy", "grad"]
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["pgn.preset"] == name and meta["pgn.head"] == "constrained" and meta["pgn.precision"] == "fp32"
    assert json.loads(meta["pgn.constants"])["imagenet_std"] == [0.229, 0.224, 0.225]


def test_manifest_describes_the_artifact(onnx_exports, models):
    r = onnx_exports["unet"]
    m = json.loads(r.manifest_path.read_text())
    assert m["status"] == "verified" and m["target"] == "onnx" and m["artifact"] == r.artifact.name
    assert m["sha256"] == sha256_of(r.artifact)
    assert m["model"]["backbone"] == "unet" and m["model"]["head"]["grad_scale"] == 0.048
    assert m["model"]["params"] == sum(p.numel() for p in models["unet"].parameters())
    assert m["constants"]["alpha"] == pytest.approx(1 / 0.048)
    assert [i["name"] for i in m["inputs"]] == ["y_hat", "y"] and m["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert [o["name"] for o in m["outputs"]] == ["proxy", "grad"]
    assert m["precision"] == "fp32" and m["exporter"]["opset"] >= 17 and "dynamo" in m["exporter"]["name"]
    assert m["exporter"]["batchnorm_folded"] is True
    for key in ("torch", "onnx", "onnxruntime", "coremltools", "tensorrt"):
        assert key in m["versions"]
    assert m["parity"]["passed"] is True


def test_load_runtime_gives_the_models_numbers(onnx_exports, models, pair64):
    rt = export.load_runtime(onnx_exports["resnet6"].artifact, threads=1)
    assert rt.name == "onnxruntime-cpu" and rt.info["intra_op_threads"] == 1
    y_hat, y = pair64
    out = rt.run(y_hat.numpy(), y)  # numpy and torch inputs both work
    with torch.no_grad():
        ref = models["resnet6"].outputs(y_hat, y)
    np.testing.assert_allclose(out["grad"], ref.grad.numpy(), rtol=0, atol=1e-5 * float(ref.grad.abs().max()))
    np.testing.assert_allclose(out["proxy"], ref.proxy.numpy(), rtol=0, atol=1e-5)
    assert rt.prepare(y_hat, y)() is not None


def test_runtime_rejects_wrong_shapes(onnx_exports):
    rt = export.load_runtime(onnx_exports["resnet4"].artifact)
    with pytest.raises(export.errors.PGNError, match=r"takes inputs of shape \(1, 3, 64, 64\)"):
        rt.run(np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(export.errors.PGNError, match="same shape"):
        rt.run(np.zeros((1, 3, 64, 64), np.float32), np.zeros((2, 3, 64, 64), np.float32))


def _photo_pair():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, SIZE, SIZE, generator=g), torch.rand(1, 3, SIZE, SIZE, generator=g)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: (a * 255).round().to(torch.uint8), "floating-point.*uint8.*/ 255"),  # was: gradient 474x too large
        (lambda a: (a * 255).round().numpy().astype(np.uint8), "floating-point.*uint8"),
        (lambda a: a * 255, "0..255 pixel values: divide by 255"),
        (lambda a: a.masked_fill(a > 0.99, float("nan")), "NaN"),  # was: NaN gradients, silently
        (lambda a: a.numpy()[0], "4-D.*add a batch dimension"),
        (lambda a: a.permute(0, 2, 3, 1), "3 channels.*channels-last"),
        (lambda a: a.tolist(), "numpy array or a torch.Tensor, got list"),
        (lambda a: a > 0.5, "floating-point.*bool"),
        (lambda a: torch.empty_like(a, device="meta"), "meta tensor"),  # was: a raw copy error
        (lambda a: a.to_sparse(), "sparse_coo tensor: images must be dense"),  # was: aminmax on a sparse tensor
    ],
)
def test_runtime_applies_the_pytorch_input_contract(onnx_exports, models, change, match):
    """The runtime refuses exactly what model(y_hat, y) refuses, with the same one-line message."""
    rt = export.load_runtime(onnx_exports["resnet4"].artifact)
    y_hat, y = _photo_pair()
    bad = change(y_hat)
    with pytest.raises(pgn.PGNError, match=match) as from_runtime:
        rt.run(bad, y)
    assert "\n" not in str(from_runtime.value)
    if isinstance(bad, torch.Tensor):
        with pytest.raises(pgn.PGNError) as from_torch:
            models["resnet4"](bad, y)
        assert str(from_torch.value) == str(from_runtime.value)


def test_runtime_converts_other_float_dtypes(onnx_exports):
    rt = export.load_runtime(onnx_exports["resnet4"].artifact)
    y_hat, y = _photo_pair()
    ref = rt.run(y_hat, y)["grad"]
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        out = rt.run(y_hat.to(dtype), y.to(dtype))["grad"]
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-2 * float(np.abs(ref).max()))
    np.testing.assert_array_equal(rt.run(y_hat.double().numpy(), y.numpy())["grad"], ref)


def test_cuda_runtime_is_a_clear_error_without_a_cuda_provider(onnx_exports, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(export.RuntimeUnavailable, match="no CUDA execution provider"):
        export.load_runtime(onnx_exports["resnet4"].artifact, device="cuda")


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession: keeps the providers asked for; ``loads`` says which start."""

    loads = ("CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path, sess_options=None, providers=()):
        from types import SimpleNamespace

        self.requested = [p if isinstance(p, tuple) else (p, {}) for p in providers]
        graph = onnx.load(str(path)).graph  # the runtime checks the declared input shapes against the manifest
        self.inputs = [SimpleNamespace(name=i.name, shape=[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
                       for i in graph.input]

    def get_inputs(self):
        return self.inputs

    def get_providers(self):
        return [name for name, _ in self.requested if name in self.loads]

    def get_provider_options(self):
        return {name: {k: str(v) for k, v in opts.items()} for name, opts in self.requested if name in self.loads}


def test_cuda_provider_that_cannot_load_is_a_clear_error(onnx_exports, monkeypatch):
    """onnxruntime-gpu lists CUDAExecutionProvider even where its libraries cannot load; the session then runs on CPU."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", type("CpuOnly", (_FakeSession,), {"loads": ("CPUExecutionProvider",)}))
    with pytest.raises(export.RuntimeUnavailable, match="could not start CUDAExecutionProvider"):
        export.load_runtime(onnx_exports["resnet4"].artifact, device="cuda")


@pytest.mark.parametrize("tf32, expected", [(False, "0"), (True, "1")])
def test_cuda_provider_runs_without_tf32_unless_asked(onnx_exports, monkeypatch, tf32, expected):
    """ONNX Runtime's CUDA provider uses TF32 by default, which breaks fp32 parity; the options are recorded."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    rt = export.load_runtime(onnx_exports["resnet4"].artifact, device="cuda:1", tf32=tf32)
    cuda = rt.session.requested[0]
    assert cuda[0] == "CUDAExecutionProvider" and cuda[1]["use_tf32"] == expected and cuda[1]["device_id"] == "1"
    assert rt.info["provider_options"]["CUDAExecutionProvider"]["use_tf32"] == expected


def test_parity_record_keeps_the_provider_options(onnx_exports):
    info = onnx_exports["resnet4"].parity["runtime_info"]
    assert "CPUExecutionProvider" in info["provider_options"]


def test_dynamic_export_runs_at_other_shapes(tmp_path):
    model = build("unet")
    r = export.export(model, "onnx", output_dir=tmp_path, size=SIZE, dynamic=True)[0]
    assert r.status == "verified", r.reason
    assert r.artifact.name == "unet-64x64-b1-fp32-dynamic.onnx"
    assert set(r.parity["sets"]) == {"random", "real", "random-96x96"}
    proto = onnx.load(str(r.artifact))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    rt = export.load_runtime(r.artifact)
    y_hat, y = torch.rand(3, 3, 128, 96), torch.rand(3, 3, 128, 96)
    out = rt.run(y_hat, y)
    with torch.no_grad():
        ref = model.outputs(y_hat, y)
    np.testing.assert_allclose(out["grad"], ref.grad.numpy(), rtol=0, atol=1e-5 * float(ref.grad.abs().max()))
    with pytest.raises(export.errors.PGNError, match="multiples of 32"):
        rt.run(torch.rand(1, 3, 80, 64), torch.rand(1, 3, 80, 64))


@pytest.mark.parametrize("head", ["direct", "constrained"])
def test_fp16_onnx_gradient_is_accurate(tmp_path, head):
    model = build("resnet4", head=head)
    r = export.export(model, "onnx", output_dir=tmp_path, size=SIZE, precision="fp16")[0]
    assert r.status == "verified", r.reason
    proto = onnx.load(str(r.artifact))
    assert [o.name for o in proto.graph.output] == ["proxy", "residual"]
    assert {i.type.tensor_type.elem_type for i in proto.graph.input} == {onnx.TensorProto.FLOAT}
    assert {t.data_type for t in proto.graph.initializer if len(t.dims) == 4 and t.dims[0] > 3} == {onnx.TensorProto.FLOAT16}
    assert r.parity["tolerance"]["min_grad_cosine"] == 0.999
    for m in r.parity["sets"].values():
        assert m["grad_cosine_min"] >= 0.999
    manifest = json.loads(r.manifest_path.read_text())
    assert manifest["gradient"]["output"] == "residual" and "host" in manifest["gradient"]["recipe"]
    assert r.size_mb < 0.6 * (sum(p.numel() for p in model.parameters()) * 4 / 1e6)  # half-size weights
    # the runtime applies the host-side scale: its "grad" is the gradient
    y_hat, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    out = export.load_runtime(r.artifact).run(y_hat, y)
    with torch.no_grad():
        ref = model(y_hat, y).numpy()
    cos = float((out["grad"].ravel() @ ref.ravel()) / np.linalg.norm(out["grad"]) / np.linalg.norm(ref))
    assert cos >= 0.999


def test_legacy_exporter(tmp_path):
    r = export.export(build("resnet4"), "onnx", output_dir=tmp_path, size=SIZE, legacy_exporter=True, opset=17)[0]
    assert r.status == "verified", r.reason
    m = json.loads(r.manifest_path.read_text())
    assert m["exporter"]["opset"] == 17 and "legacy" in m["exporter"]["name"]


def test_parity_failure_fails_the_export_and_leaves_nothing(tmp_path, monkeypatch):
    from pgn.export import verify

    strict = verify.Tolerance("fp32", max_rel_grad=0.0, max_rel_proxy=0.0, min_grad_cosine=None)
    monkeypatch.setattr(verify.Tolerance, "for_precision", classmethod(lambda cls, p: strict))
    r = export.export(build("resnet4"), "onnx", output_dir=tmp_path, size=SIZE)[0]
    assert r.status == "failed" and r.artifact is None and r.manifest_path is None
    assert r.reason.startswith("parity failed: random: grad rel error")
    assert r.parity["passed"] is False and r.parity["sets"]["random"]["grad_max_rel"] > 0
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# int8: a precision of the ONNX target, with the shared vocabulary and gate


def test_int8_onnx_is_exported_verified_and_manifested(tmp_path):
    from pgn.export.verify import INT8_MIN_GRAD_COSINE

    r = export.export(build("resnet4"), "onnx", output_dir=tmp_path, size=32, precision="int8")[0]
    assert r.status == "verified", r.reason
    assert r.artifact.name == "resnet4-32x32-b1-int8.onnx" and r.manifest_path.is_file()
    manifest = json.loads(r.manifest_path.read_text())
    assert manifest["precision"] == "int8" and manifest["parity"]["tolerance"]["min_grad_cosine"] == INT8_MIN_GRAD_COSINE
    recipe = manifest["target_info"]["quantization"]
    assert recipe["ops"] == "dense" and recipe["format"] == "QDQ"  # the ONNX target's default selection
    assert set(recipe["calibration_photos"]).isdisjoint(recipe["parity_photos"])
    for m in manifest["parity"]["sets"].values():
        assert m["grad_cosine_min"] >= INT8_MIN_GRAD_COSINE
        assert m["grad_max_rel"] > 1e-4  # really quantized: far from fp32 agreement
    proto = onnx.load(str(r.artifact))
    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in dequantized for n in convs)  # every (dense) ResNet conv reads an int8 weight
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["pgn.precision"] == "int8" and metadata["pgn.int8_ops"] == "dense" and metadata["pgn.preset"] == "resnet4"
    assert [i.name for i in proto.graph.input] == ["y_hat", "y"] and [o.name for o in proto.graph.output] == ["proxy", "grad"]


def _conv_graph():
    """Three convolutions: 1×1 dense, 3×3 dense, 3×3 grouped (4 groups)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = {"w1": (8, 8, 1, 1), "w3": (8, 8, 3, 3), "wg": (8, 2, 3, 3)}
    inits = [numpy_helper.from_array(np.ones(s, np.float32), name) for name, s in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pointwise"),
             helper.make_node("Conv", ["a", "w3"], ["b"], name="dense3x3", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "wg"], ["y"], name="grouped", pads=[1, 1, 1, 1], group=4)]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, (1, 8, 4, 4)) for n in ("x", "y")]
    return helper.make_model(helper.make_graph(nodes, "g", [io[0]], [io[1]], inits))


@pytest.mark.parametrize("ops, names", [("conv", ["pointwise", "dense3x3", "grouped"]), ("dense", ["pointwise", "dense3x3"]),
                                        ("pointwise", ["pointwise"])])
def test_int8_ops_pick_the_convolutions_their_names_say(ops, names):
    from pgn.export.onnx import selected_convs

    assert selected_convs(_conv_graph(), ops) == names


@pytest.mark.parametrize("target, kwargs, message", [
    ("onnx", {"precision": "int8", "int8_ops": "all"}, "int8_ops 'all' .* is not available for onnx: use one of dense, conv, pointwise"),
    ("onnx", {"int8_ops": "conv"}, "precision='int8'"),
    ("tensorrt", {"precision": "int8"}, "precision 'int8' is not available for tensorrt"),
])
def test_int8_requests_a_target_cannot_honour_are_one_line_errors(tmp_path, target, kwargs, message):
    with pytest.raises(pgn.PGNError, match=message):
        export.export(build("resnet4"), target, output_dir=tmp_path, size=32, **kwargs)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------
# Integrity: what a runtime loads is what was exported (sha256 and shapes against the manifest)


def _copy(artifact, folder):
    import shutil

    copy = folder / artifact.name
    shutil.copy(artifact, copy)
    shutil.copy(manifest_path(artifact), manifest_path(copy))
    return copy


def _flip_a_weight_byte(onnx_file):
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # the middle of a 64x64 ResNet-4 file is weight data
    onnx_file.write_bytes(bytes(data))


def _edit_manifest(onnx_file, edit):
    path = manifest_path(onnx_file)
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


def _claim_size(manifest, size):
    for entry in manifest["inputs"] + manifest["outputs"]:
        entry["shape"] = [1, 3, size, size]
    return dict(manifest, export_size=[size, size])


@pytest.mark.parametrize(
    "tamper, match",
    [
        (_flip_a_weight_byte, "does not match its manifest"),  # was: ran normally
        (lambda f: _edit_manifest(f, lambda m: dict(m, sha256="0" * 64)), "does not match its manifest .*manifest 000000"),
        (lambda f: manifest_path(f).write_text("[1, 2]"), "holds an array, not a JSON object"),
        (lambda f: manifest_path(f).write_text("null"), "holds null, not a JSON object"),
        (lambda f: _edit_manifest(f, lambda m: {k: v for k, v in m.items() if k != "gradient"}), "'gradient' is missing"),
        (lambda f: _edit_manifest(f, lambda m: dict(m, inputs=m["inputs"][:1])), "must list two inputs"),
        (lambda f: _edit_manifest(f, lambda m: _claim_size(m, 128)), r"takes inputs of shape \[1, 3, 64, 64\] but its manifest claims \[1, 3, 128, 128\]"),
    ],
)
def test_a_tampered_artifact_or_manifest_is_refused_in_one_line(onnx_exports, tmp_path, tamper, match):
    onnx_file = _copy(onnx_exports["resnet4"].artifact, tmp_path)
    export.load_runtime(onnx_file)  # the copy loads
    tamper(onnx_file)
    with pytest.raises(pgn.PGNError, match=match) as err:
        export.load_runtime(onnx_file)
    assert "\n" not in str(err.value)


def test_a_manifest_that_is_not_a_regular_file_is_refused(onnx_exports, tmp_path):
    onnx_file = _copy(onnx_exports["resnet4"].artifact, tmp_path)
    manifest_path(onnx_file).unlink()
    manifest_path(onnx_file).symlink_to("/dev/zero")
    with pytest.raises(pgn.PGNError, match="not a regular file: it is a character device"):
        export.load_runtime(onnx_file)


@pytest.mark.parametrize("threads, match", [(10**9, "at most 1024"), (0, "positive integer"), (True, "positive integer")])
def test_thread_counts_no_machine_has_are_refused(onnx_exports, threads, match):
    with pytest.raises(pgn.PGNError, match=match):
        export.load_runtime(onnx_exports["resnet4"].artifact, threads=threads)
