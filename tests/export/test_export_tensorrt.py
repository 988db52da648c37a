"""TensorRT: the clear error where it cannot run, and the build logic for TensorRT 10 and 11 (with a stand-in module).

The stand-in records what our code asks of TensorRT's Python API (network flags, builder flags, the ONNX it
parses, the optimization profile, the timing cache); it does not build engines. Real engines need an NVIDIA GPU.
"""

import sys
import json
import types

import onnx
import pytest
import torch

from pgn import export
import pgn
from pgn.export import tensorrt as trt_export
from pgn.export.options import ExportOptions

from export_helpers import build

@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT not installed (simulated, so these tests also run where it is)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_missing_tensorrt_is_a_clear_error_and_writes_nothing(tmp_path, no_tensorrt):
    with pytest.raises(export.RuntimeUnavailable) as e:
        export.export(build("resnet4"), "tensorrt", output_dir=tmp_path / "out", size=64)
    msg = str(e.value)
    assert "\n" not in msg
    assert "TensorRT is not installed" in msg and 'pip install "pgn-toolkit[tensorrt]"' in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_all_reports_tensorrt_as_failed_and_exports_the_rest(tmp_path, no_tensorrt, no_executorch):
    # ExecuTorch is made missing too (test_export_executorch.py exports it), and "all" reports it the same way
    results = export.export(build("unet"), "all", output_dir=tmp_path, size=64)
    by = {r.target: r for r in results}
    assert [r.target for r in results] == ["onnx", "tensorrt", "coreml", "executorch", "executorch-coreml"]
    assert by["onnx"].status == "verified"
    assert by["tensorrt"].status == "failed" and by["tensorrt"].artifact is None
    assert "TensorRT is not installed" in by["tensorrt"].reason
    assert by["coreml"].ok
    for name in ("executorch", "executorch-coreml"):
        assert by[name].status == "failed" and 'pip install "pgn-toolkit[executorch]"' in by[name].reason
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n.endswith((".engine", ".pte")) or n.startswith(".pgn-export") for n in names)


def test_tensorrt_runtime_is_a_clear_error(tmp_path, no_tensorrt):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"")
    import hashlib

    shape = [1, 3, 64, 64]
    manifest = {"format": "pgn-export-manifest", "target": "tensorrt", "sha256": hashlib.sha256(b"").hexdigest(),
                "gradient": {"alpha": 40, "k": 2, "phi": "identity", "std": [1, 1, 1]}, "model": {"size_multiple": 2},
                "inputs": [{"name": "y_hat", "shape": shape}, {"name": "y", "shape": shape}],
                "outputs": [{"name": "proxy", "shape": shape}, {"name": "grad", "shape": shape}],
                "dynamic": False, "export_size": [64, 64], "export_batch": 1}
    (tmp_path / "x.engine.manifest.json").write_text(json.dumps(manifest))
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

    builder_flags = types.SimpleNamespace(TF32="TF32") if version.startswith("11") else types.SimpleNamespace(FP16="FP16", TF32="TF32")

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

        def clear_flag(self, flag):
            rec.calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            rec.calls.append(("add_profile",))

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data.startswith(b"foreign"):  # TensorRT refuses caches of another version or GPU model
                return False
            self.cache = cache
            return True

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
    trt_export.TARGET.export(build("resnet4"), tmp_path / "m.engine", opts)
    assert (tmp_path / "m.engine").read_bytes() == b"ENGINE"
    assert ("network_flags", 0) in rec.calls and ("flag", "FP16") in rec.calls
    assert [c for c in rec.calls if c[0] == "flag"] == [("flag", "FP16")]  # no TF32
    assert _weights_dtype(rec.onnx) == {onnx.TensorProto.FLOAT}  # weak typing: fp32 graph, builder lowers it
    assert [o.name for o in rec.onnx.graph.output] == ["proxy", "residual"]
    assert (tmp_path / "timing.cache").read_bytes() == b"cache:"
    assert ("workspace", 4 << 30) in rec.calls


def test_tensorrt11_fp16_is_strongly_typed_from_an_fp16_onnx(fake_trt, tmp_path):
    rec = fake_trt("11.0.0")
    opts = ExportOptions(size=(64, 64), precision="fp16")
    trt_export.TARGET.export(build("resnet4"), tmp_path / "m.engine", opts)
    assert ("network_flags", 1 << 5) in rec.calls
    assert not [c for c in rec.calls if c[0] == "flag"]  # BuilderFlag.FP16 does not exist in 11
    assert ("clear_flag", "TF32") in rec.calls
    assert _weights_dtype(rec.onnx) == {onnx.TensorProto.FLOAT16}
    assert {i.type.tensor_type.elem_type for i in rec.onnx.graph.input} == {onnx.TensorProto.FLOAT}


def test_tensorrt_dynamic_shapes_get_an_optimization_profile(fake_trt, tmp_path):
    rec = fake_trt("10.9.0")
    opts = ExportOptions(size=(64, 64), batch=2, dynamic=True, max_size=(256, 256), max_batch=4)
    trt_export.TARGET.export(build("resnet4"), tmp_path / "m.engine", opts)
    profiles = [c for c in rec.calls if c[0] == "profile"]
    assert profiles == [("profile", n, (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 256, 256)) for n in ("y_hat", "y")]
    assert ("add_profile",) in rec.calls
    dims = [d.dim_param for d in rec.onnx.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_unsupported_tensorrt_version(fake_trt):
    fake_trt("8.6.1")
    with pytest.raises(export.RuntimeUnavailable, match="need 10.x or 11.x"):
        trt_export.require_tensorrt()


@pytest.mark.parametrize("version", ["10.9.0", "11.0.0"])
def test_fp32_engines_clear_tf32_unless_asked(fake_trt, tmp_path, version):
    """TensorRT enables TF32 by default, which fails the fp32 parity: cleared, and recorded in the manifest."""
    rec = fake_trt(version)
    trt_export.TARGET.export(build("resnet4"), tmp_path / "a.engine", ExportOptions(size=(64, 64)))
    assert ("clear_flag", "TF32") in rec.calls and ("flag", "TF32") not in rec.calls
    info = trt_export.TARGET.target_info(ExportOptions(size=(64, 64)), build("resnet4"))
    assert info["tf32"] is False and info["tf32_flag"].startswith("cleared")

    rec.calls.clear()
    trt_export.TARGET.export(build("resnet4"), tmp_path / "b.engine", ExportOptions(size=(64, 64), tf32=True))
    assert ("flag", "TF32") in rec.calls and ("clear_flag", "TF32") not in rec.calls
    assert trt_export.TARGET.target_info(ExportOptions(size=(64, 64), tf32=True), build("resnet4"))["tf32"] is True


def test_tf32_is_a_tensorrt_option_only():
    with pytest.raises(pgn.PGNError, match="tf32.*not supported by target 'onnx'.*tensorrt"):
        export.export(build("resnet4"), "onnx", size=64, tf32=True)


def test_rejected_timing_cache_warns_and_is_replaced(fake_trt, tmp_path):
    fake_trt("10.9.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"foreign GPU")
    with pytest.warns(RuntimeWarning, match="rejected the timing cache"):
        trt_export.TARGET.export(build("resnet4"), tmp_path / "m.engine", ExportOptions(size=(64, 64), timing_cache=cache))
    assert cache.read_bytes() == b"cache:"  # this build's (empty, fake) cache replaced the foreign one


def test_accepted_timing_cache_is_silent(fake_trt, tmp_path):
    import warnings

    fake_trt("10.9.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"ours")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trt_export.TARGET.export(build("resnet4"), tmp_path / "m.engine", ExportOptions(size=(64, 64), timing_cache=cache))
    assert cache.read_bytes() == b"cache:ours"


# ------------------------------------------------------------------------------------------------------
# The engine's stream


class _FakeStream:
    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))


def test_engine_runs_on_its_own_stream_ordered_with_the_callers(monkeypatch):
    """execute_async_v3 must not get the legacy default stream (handle 0), and must be ordered both ways."""
    from pgn.export.tensorrt import TensorRTRuntime

    log = []
    current = _FakeStream(0, log)  # PyTorch's current stream is the legacy default one unless the caller set another
    rt = TensorRTRuntime.__new__(TensorRTRuntime)
    rt.device = "cuda:0"
    rt.torch = types.SimpleNamespace(cuda=types.SimpleNamespace(current_stream=lambda device=None: current))
    rt.stream = _FakeStream(1234, log)

    class Context:
        def execute_async_v3(self, handle):
            log.append(("execute", handle))
            return True

    rt.context = Context()
    rt._execute()
    assert log == [("wait", 1234, 0), ("execute", 1234), ("wait", 0, 1234)]
