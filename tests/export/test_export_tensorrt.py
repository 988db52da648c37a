"""TensorRT: the clear error where it cannot run, and the build logic for TensorRT 10 and 11 (with a stand-in module).

The stand-in records what our code asks of TensorRT's Python API (network flags, builder flags, the ONNX it
parses, the optimization profile, the timing cache); it does not build engines. Real engines need an NVIDIA GPU.
"""

import importlib.util
import sys
import types

import onnx
import pytest
import torch

import export
from export import tensorrt as trt_export
from export.options import ExportOptions

from export_helpers import build

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
    reason="TensorRT and a GPU are present",
)


@needs_no_tensorrt
def test_missing_tensorrt_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(export.RuntimeUnavailable) as e:
        export.export(build("resnet4"), "tensorrt", output_dir=tmp_path / "out", size=64)
    msg = str(e.value)
    assert "\n" not in msg
    assert ("TensorRT is not installed" in msg and 'pip install "pgn-toolkit[tensorrt]"' in msg) or "CUDA GPU" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@needs_no_tensorrt
def test_all_reports_tensorrt_as_failed_and_exports_the_rest(tmp_path):
    results = export.export(build("unet"), "all", output_dir=tmp_path, size=64)
    by = {r.target: r for r in results}
    assert [r.target for r in results] == ["onnx", "tensorrt", "coreml"]
    assert by["onnx"].status == "verified"
    assert by["tensorrt"].status == "failed" and by["tensorrt"].artifact is None
    assert "TensorRT" in by["tensorrt"].reason or "CUDA" in by["tensorrt"].reason
    assert by["coreml"].ok
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n.endswith(".engine") or n.startswith(".pgn-export") for n in names)


@needs_no_tensorrt
def test_tensorrt_runtime_is_a_clear_error(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"")
    (tmp_path / "x.engine.manifest.json").write_text('{"format": "pgn-export-manifest", "target": "tensorrt", '
                                                     '"gradient": {"alpha": 40, "k": 2, "phi": "identity", "std": [1, 1, 1]}, "outputs": []}')
    with pytest.raises(export.RuntimeUnavailable):
        export.load_runtime(engine, device="cuda")


# ------------------------------------------------------------------------------------------------------
# A stand-in for the tensorrt module


class _Recorder:
    def __init__(self):
        self.calls = []


def fake_tensorrt(version: str, rec: _Recorder) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    builder_flags = types.SimpleNamespace() if version.startswith("11") else types.SimpleNamespace(FP16="FP16")

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec.calls.append(("profile", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + self.data

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("workspace", size))

        def set_flag(self, flag):
            rec.calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            rec.calls.append(("add_profile",))

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(("network_flags", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.onnx = onnx.load(path)
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.BuilderFlag = builder_flags
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version):
        rec = _Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, rec))
        monkeypatch.setattr(trt_export, "require_cuda", lambda: torch)  # pretend a GPU is there
        return rec

    return install


def _weights_dtype(proto):
    return {t.data_type for t in proto.graph.initializer if len(t.dims) == 4 and t.dims[0] > 3}


def test_tensorrt10_fp16_uses_the_builder_flag(fake_trt, tmp_path):
    rec = fake_trt("10.9.0")
    opts = ExportOptions(size=(64, 64), precision="fp16", timing_cache=tmp_path / "timing.cache")
    path = trt_export.export(build("resnet4"), tmp_path / "m.engine", opts)
    assert path.read_bytes() == b"ENGINE"
    assert ("network_flags", 0) in rec.calls and ("flag", "FP16") in rec.calls
    assert _weights_dtype(rec.onnx) == {onnx.TensorProto.FLOAT}  # weak typing: fp32 graph, builder lowers it
    assert [o.name for o in rec.onnx.graph.output] == ["proxy", "residual"]
    assert (tmp_path / "timing.cache").read_bytes() == b"cache:"
    assert ("workspace", 4 << 30) in rec.calls


def test_tensorrt11_fp16_is_strongly_typed_from_an_fp16_onnx(fake_trt, tmp_path):
    rec = fake_trt("11.0.0")
    opts = ExportOptions(size=(64, 64), precision="fp16")
    trt_export.export(build("resnet4"), tmp_path / "m.engine", opts)
    assert ("network_flags", 1 << 5) in rec.calls
    assert not [c for c in rec.calls if c[0] == "flag"]  # BuilderFlag.FP16 does not exist in 11
    assert _weights_dtype(rec.onnx) == {onnx.TensorProto.FLOAT16}
    assert {i.type.tensor_type.elem_type for i in rec.onnx.graph.input} == {onnx.TensorProto.FLOAT}


def test_tensorrt_dynamic_shapes_get_an_optimization_profile(fake_trt, tmp_path):
    rec = fake_trt("10.9.0")
    opts = ExportOptions(size=(64, 64), batch=2, dynamic=True, max_size=(256, 256), max_batch=4)
    trt_export.export(build("resnet4"), tmp_path / "m.engine", opts)
    profiles = [c for c in rec.calls if c[0] == "profile"]
    assert profiles == [("profile", n, (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 256, 256)) for n in ("y_hat", "y")]
    assert ("add_profile",) in rec.calls
    dims = [d.dim_param for d in rec.onnx.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_unsupported_tensorrt_version(fake_trt):
    fake_trt("8.6.1")
    with pytest.raises(export.RuntimeUnavailable, match="need 10.x or 11.x"):
        trt_export.require_tensorrt()
