"""Exported artifacts on a CUDA GPU: ONNX Runtime's CUDA provider and TensorRT engines with parity (skipped without them)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from pgn import export
from pgn.benchmarks.probe import probe
from pgn.benchmarks.runtimes import RUNTIMES, runtime_unavailable

from export_helpers import build

pytestmark = pytest.mark.gpu


def _needs(runtime: str) -> None:
    """Skip, with the reason, unless ``runtime`` (and the ONNX exporter it needs) really starts here."""
    reason = runtime_unavailable(RUNTIMES[runtime], "cuda")
    if reason:
        pytest.skip(reason)


def test_onnxruntime_cuda_parity_without_tf32(tmp_path):
    _needs("onnxruntime")
    artifact = export.export(build("resnet4"), "onnx", output_dir=tmp_path, size=64)[0].artifact
    rt = export.load_runtime(artifact, device="cuda")
    assert rt.info["providers"][0] == "CUDAExecutionProvider"
    assert rt.info["provider_options"]["CUDAExecutionProvider"]["use_tf32"] == "0"
    from pgn.export.verify import Tolerance, parity_inputs, verify_runtime

    parity = verify_runtime(rt, build("resnet4"), parity_inputs((64, 64), 1), Tolerance.for_precision("fp32"), fixed_batch=1)
    assert parity["passed"], parity["failures"]


def test_tensorrt_fp32_export_passes_parity(tmp_path):
    _needs("tensorrt")
    result = export.export(build("resnet4"), "tensorrt", output_dir=tmp_path, size=64)[0]
    assert result.status == "verified", result.reason
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["target_info"]["tf32"] is False and manifest["parity"]["passed"]
    assert (tmp_path / "tensorrt-timing.cache").is_file()


def test_tensorrt_engine_follows_the_callers_stream(tmp_path):
    """Run on a non-default current stream: the engine's own stream is ordered after it and before later work."""
    _needs("tensorrt")
    result = export.export(build("resnet4"), "tensorrt", output_dir=tmp_path, size=64)[0]
    rt = export.load_runtime(result.artifact, device="cuda")
    assert rt.stream.cuda_stream != 0
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    expected = rt.run(y_hat, y)["grad"]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        tensors = rt.prepare(y_hat, y)()
        got = tensors["grad"].float().cpu().numpy()  # a copy on the caller's stream, after the engine's run
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * float(np.abs(expected).max()))


def test_tensorrt_fp16_export_passes_its_tolerance(tmp_path):
    _needs("tensorrt")
    result = export.export(build("unet"), "tensorrt", output_dir=tmp_path, size=64, precision="fp16")[0]
    assert result.status == "verified", result.reason


def test_tensorrt_import_state_is_consistent():
    """The probe and a plain import agree about whether tensorrt is installed."""
    if importlib.util.find_spec("tensorrt") is None:
        assert "not installed" in probe("tensorrt")
    assert torch.cuda.is_available()
