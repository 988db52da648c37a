"""GPU runtimes are probed by starting them: a provider that is listed but cannot load is unavailable, with the reason."""

import pytest
import torch

from pgn.benchmarks import probe as probe_mod
from pgn.benchmarks import runtimes as rt_mod
from pgn.benchmarks.models import resolve_model
from pgn.benchmarks.runtimes import RUNTIMES, check_runnable

ort = pytest.importorskip("onnxruntime")

ORT_STDERR = (
    "\x1b[1;31m2026-01-01 10:00:00 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] /src/provider_bridge_ort.cc:2043 "
    "onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
    "libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open shared object file: No such file or directory\x1b[m\n"
    "\x1b[0;93m2026-01-01 10:00:00 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:1295 CreateExecutionProviderFactoryInstance] "
    "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 12.*. Please install all dependencies\x1b[m\n"
)


@pytest.fixture(autouse=True)
def fresh_probes():
    probe_mod.probe.cache_clear()
    yield
    probe_mod.probe.cache_clear()


def test_loader_message_is_the_libraries_own_reason():
    msg = probe_mod.loader_message(ORT_STDERR)
    assert msg.startswith("Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12")
    assert msg.endswith("(Require cuDNN 9.* and CUDA 12.*)") and "\x1b" not in msg
    assert probe_mod.loader_message("all fine\n") is None


def test_a_runtime_error_is_quoted_by_its_first_line_without_colours():
    error = RuntimeError("\x1b[1;31m[ONNXRuntimeError] : 1 : FAIL : no CUDA\x1b[m\n  stack frame 1\n  stack frame 2")
    assert probe_mod._quote(error) == "[ONNXRuntimeError] : 1 : FAIL : no CUDA"
    assert probe_mod._quote(RuntimeError("")) == "no details"


def test_cpu_provider_starts():
    assert probe_mod.probe("onnxruntime", "CPUExecutionProvider") is None


def test_listed_cuda_provider_that_cannot_start_is_an_unavailable_row(monkeypatch):
    """Before, a CUDA provider counted as available whenever onnxruntime listed it, loadable or not."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the child sees no GPU, on every machine
    monkeypatch.setattr(rt_mod, "_cuda_unavailable", lambda: None)  # as if PyTorch saw one
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    skip = check_runnable(RUNTIMES["onnxruntime"], "cuda", resolve_model("resnet4"))
    assert skip is not None and skip.status == "unavailable"
    assert "could not start CUDAExecutionProvider" in skip.reason and "\n" not in skip.reason


def test_tensorrt_is_probed_not_just_found(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(rt_mod, "_cuda_unavailable", lambda: None)
    skip = check_runnable(RUNTIMES["tensorrt"], "cuda", resolve_model("resnet4"))
    assert skip is not None and skip.status == "unavailable" and "tensorrt" in skip.reason.lower()


def test_tensorrt_probe_without_the_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    assert "not installed" in probe_mod.start_tensorrt()


def test_missing_onnxscript_makes_exported_runtimes_unavailable(monkeypatch):
    real = rt_mod.module_available
    monkeypatch.setattr(rt_mod, "module_available", lambda name: name != "onnxscript" and real(name))
    skip = check_runnable(RUNTIMES["onnxruntime"], "cpu", resolve_model("resnet4"))
    assert skip.status == "unavailable" and 'pip install "pgn-toolkit[onnx]"' in skip.reason
    assert check_runnable(RUNTIMES["torch"], "cpu", resolve_model("resnet4")) is None


def test_unknown_probe_is_a_reason():
    assert "unknown probe" in probe_mod.probe("nonsense")


@pytest.mark.gpu
def test_probe_agrees_with_a_real_session():
    """On a GPU machine: the probe's verdict for the CUDA provider matches what a session really gets."""
    assert torch.cuda.is_available()
    verdict = probe_mod.probe("onnxruntime", "CUDAExecutionProvider")
    assert (verdict is None) == (probe_mod.start_onnxruntime("CUDAExecutionProvider") is None)
