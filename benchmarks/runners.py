"""One runner per runtime: load a model or artifact, compute one gradient per ``step()``, report what ran.

Runners live inside a worker process (:mod:`benchmarks.worker`); :mod:`benchmarks.measure` times them.

* :class:`TorchPGNRunner`: a PGN forward under ``torch.inference_mode`` (eager, ``torch.compile``, autocast).
* :class:`TorchTeacherRunner`: a VGG perceptual-loss gradient, ``pgn.PerceptualLoss.gradient``: forward on ŷ
  (and on y unless the target features are cached), backward to the input only, VGG frozen.
* :class:`ExportedRunner`: an artifact of the ``export`` package (ONNX Runtime, ExecuTorch, TensorRT, Core ML)
  through ``export.load_runtime``; the timed call is the runtime's ``prepare``d one (inputs bound once, on the GPU
  for CUDA). ExecuTorch has one thread pool per process: the runtime sizes it to ``threads`` when it loads.

Every runner can also :meth:`Runner.run` on other inputs, for the accuracy check against fp32 PyTorch
(:func:`compare_outputs`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from pgn.errors import PGNError
from pgn.perceptual import FP16_LOSS_SCALE, input_gradient

from .environment import INT8_DOT_PRODUCT_FLAGS, cpu_flags
from .models import ModelSpec, build_pgn, build_teacher, resolve_model
from .runtimes import RuntimeSpec, bf16_native, resolve_runtime

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Runner:
    """Base class. Subclasses set how they are timed (``timer``) and how their memory is read (``memory``).

    Args:
        model: what to compute.
        runtime: where to compute it.
        device: ``cpu`` or ``cuda``.
        inputs: the worker's input file contents (see :func:`benchmarks.models.make_input_file`).
        seed: seed of the random PGN / VGG weights (the same in every process).
        weights: a PGN checkpoint path, or None for seeded random weights.
        threads: intra-op threads (None: the library default).
        artifact: the exported file for exported runtimes.
        check_values: when the PyTorch modules read their inputs to check them (``auto``: not on the GPU, where
            it synchronizes; ``always``; ``never``), see :mod:`pgn.inputs`.
    """

    timer = "wall"  #: ``wall`` or ``cuda_events``
    memory = "cpu"  #: ``cpu``, ``cuda_torch`` or ``cuda_device``

    def __init__(self, model: ModelSpec, runtime: RuntimeSpec, device: str, inputs: dict[str, torch.Tensor], *,
                 seed: int = 0, weights: str | None = None, threads: int | None = None, artifact: str | None = None,
                 check_values: str = "auto"):
        self.model, self.runtime, self.device = model, runtime, device
        self.inputs, self.seed, self.weights, self.threads, self.artifact = inputs, seed, weights, threads, artifact
        self.check_values = check_values

    def prepare(self) -> None:
        """Load the model or artifact and place the timed inputs; everything here belongs to the baseline."""
        raise NotImplementedError

    def step(self) -> None:
        """Compute one gradient of the timed batch (returns when the result exists, except on CUDA in torch)."""
        raise NotImplementedError

    def run(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """Outputs for another (ŷ, y) batch of the timed shape: ``grad`` and, for PGNs, ``proxy`` (host float32)."""
        raise NotImplementedError

    def accuracy_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs of the accuracy check: held-out photos for PGNs, the timed pair for teachers."""
        if self.model.is_teacher:
            return self.inputs["y_hat"], self.inputs["y"]
        return self.inputs["eval_y_hat"], self.inputs["eval_y"]

    def info(self) -> dict:
        """What actually ran (library, providers, precision settings)."""
        return {}


# --------------------------------------------------------------------------------------------------------
# PyTorch


class _TorchRunner(Runner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.device == "cuda":
            self.timer, self.memory = "cuda_events", "cuda_torch"
        self.torch_device = torch.device(self.device)

    def _autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.runtime.precision)
        return torch.autocast(self.torch_device.type, dtype=dtype) if dtype is not None else nullcontext()

    @property
    def compiled(self) -> bool:
        """True for ``torch-compile``: the first call (in :meth:`prepare`) compiles, outside every measurement."""
        return self.runtime.name == "torch-compile"

    def info(self) -> dict:
        out = {"library": f"torch {torch.__version__}", "mode": self.runtime.description, "check_values": self.check_values}
        if self.model.is_teacher and self.runtime.precision == "fp16":
            out["loss_scale"] = f"{FP16_LOSS_SCALE:g} (reduced on overflow), gradient unscaled in fp32"
        if self.runtime.precision in AUTOCAST_DTYPES:
            out["autocast"] = str(AUTOCAST_DTYPES[self.runtime.precision]).replace("torch.", "")
            if self.device == "cpu" and self.runtime.precision == "bf16":
                out["native_bf16"] = bf16_native()
        if self.device == "cuda":
            out["gpu"] = torch.cuda.get_device_name()
        return out


class TorchPGNRunner(_TorchRunner):
    """A PGN forward in PyTorch (eager, compiled, or under autocast)."""

    def prepare(self) -> None:
        self.net = build_pgn(self.model.net, self.seed, self.weights).to(self.torch_device)
        self.net.check_values = self.check_values
        self.y_hat = self.inputs["y_hat"].to(self.torch_device)
        self.y = self.inputs["y"].to(self.torch_device)
        self.fn = self.net.outputs
        if self.compiled:
            import torch._inductor.config as inductor_config

            # Inference graph: "freezing" folds BatchNorm into the convolutions and pre-packs their weights.
            with inductor_config.patch(freezing=True):
                self.fn = torch.compile(self.net.outputs)
                self.step()

    def step(self) -> None:
        with torch.inference_mode(), self._autocast():
            self.fn(self.y_hat, self.y)

    def run(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode(), self._autocast():
            out = self.fn(y_hat.to(self.torch_device), y.to(self.torch_device))
        return {"grad": _host(out.grad), "proxy": _host(out.proxy)}


class TorchTeacherRunner(_TorchRunner):
    """A VGG perceptual-loss gradient in PyTorch: ``PerceptualLoss.gradient`` (compiled: its forward)."""

    def prepare(self) -> None:
        self.teacher = build_teacher(self.model, self.seed).to(self.torch_device)
        self.teacher.check_values = self.check_values
        self.y_hat = self.inputs["y_hat"].to(self.torch_device)
        self.y = self.inputs["y"].to(self.torch_device)
        if self.model.cached_target:
            with self._autocast():
                self.teacher.cache_target(self.y)
        self.per_sample = torch.compile(self.teacher.per_sample) if self.compiled else self.teacher.per_sample
        if self.compiled:
            self.step()  # compiles forward and backward

    def _gradient(self, y_hat: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """In fp16 the backward is loss-scaled and unscaled in fp32 (``pgn.perceptual.input_gradient``)."""
        with self._autocast():
            if not self.compiled:
                return self.teacher.gradient(y_hat, y)
            return input_gradient(self.per_sample, y_hat, y, fp16=self.runtime.precision == "fp16")[0]

    def step(self) -> None:
        self._gradient(self.y_hat, None if self.model.cached_target else self.y)

    def run(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        if not (torch.equal(y_hat, self.inputs["y_hat"]) and torch.equal(y, self.inputs["y"])):
            raise PGNError("a teacher runner only re-runs its timed inputs")
        return {"grad": _host(self._gradient(self.y_hat, None if self.model.cached_target else self.y))}


# --------------------------------------------------------------------------------------------------------
# Exported artifacts


class ExportedRunner(Runner):
    """An ``export`` artifact through ``export.load_runtime`` (ONNX Runtime, ExecuTorch, TensorRT, Core ML)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.device == "cuda":
            self.memory = "cuda_device"

    def prepare(self) -> None:
        from pgn.export import load_runtime

        if self.artifact is None:
            raise PGNError(f"{self.runtime.name} needs an exported artifact")
        if self.device == "cuda":
            torch.cuda.init()  # the device-memory reading needs a CUDA context before the baseline
        self.rt = load_runtime(Path(self.artifact), target=self.runtime.export_target, device=self.device, threads=self.threads)
        if self.runtime.family == "onnxruntime":
            disable_memory_pattern(self.rt)
        _check_provider(self.runtime, self.device, getattr(self.rt, "info", {}) or {})
        self.y_hat = np.ascontiguousarray(self.inputs["y_hat"].numpy(), dtype=np.float32)
        self.y = np.ascontiguousarray(self.inputs["y"].numpy(), dtype=np.float32)
        # Inputs bound once; on CUDA they stay on the GPU and so do the outputs (IO binding / device buffers).
        self.call = self.rt.prepare(self.y_hat, self.y)

    def step(self) -> None:
        self.call()

    def run(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        out = self.rt.run(np.ascontiguousarray(y_hat.numpy(), np.float32), np.ascontiguousarray(y.numpy(), np.float32))
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items() if k in ("grad", "proxy")}

    def info(self) -> dict:
        info = dict(getattr(self.rt, "info", {}) or {})
        out = {"library": getattr(self.rt, "name", self.runtime.family), **_jsonable(info)}
        if self.runtime.precision == "int8" and self.device == "cpu":
            # int8 convolutions beat fp32 only with dot-product instructions: say which of them this CPU has
            out["cpu_int8_dot_product"] = cpu_flags(INT8_DOT_PRODUCT_FLAGS)
        if self.runtime.family == "executorch":
            out["program"] = executorch_program_facts(Path(self.artifact))
        return out


def executorch_program_facts(artifact: Path) -> dict:
    """What a ``.pte`` holds (:func:`export.executorch.read_program`): the memory ExecuTorch plans for tensors
    outside the delegate (allocated when the method loads, so it is in the baseline, not in the peak), the
    delegated subgraphs, and the operators that run on ExecuTorch's own kernels."""
    from pgn.export.executorch import read_program

    return read_program(artifact.read_bytes())


def disable_memory_pattern(rt) -> None:
    """Recreate an ``export`` ONNX Runtime session with ONNX Runtime's memory pattern off, all else unchanged.

    With the memory pattern on (ONNX Runtime's default) the CPU provider preallocates one block for the
    planned tensors and the peak working memory doubles: at 224² ResNet-4 104 → 57 MB, UNet 290 → 147 MB, for
    at most a few percent of time (measured in ``results/RESULTS.md``). ``export.load_runtime`` has no
    option for it yet, so the benchmark copies the session's own options, turns the pattern off, and records
    it in ``info``.
    """
    import onnxruntime as ort

    session = rt.session
    options = session.get_session_options()
    if not options.enable_mem_pattern:
        return
    options.enable_mem_pattern = False
    provider_options = session.get_provider_options()
    providers = [(name, provider_options.get(name, {})) for name in session.get_providers()]
    rt.session = ort.InferenceSession(str(rt.artifact), sess_options=options, providers=providers)
    rt.info["enable_mem_pattern"] = False
    rt.info["session_rebuilt_by"] = "pgn-bench (memory pattern off; see benchmarks.runners.disable_memory_pattern)"


def _check_provider(runtime: RuntimeSpec, device: str, info: dict) -> None:
    """ONNX Runtime falls back to the CPU provider silently: insist the requested one is active."""
    if runtime.family != "onnxruntime":
        return
    providers = info.get("providers")
    wanted = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if providers is not None and wanted not in providers:
        raise PGNError(f"ONNX Runtime did not activate {wanted} (active: {', '.join(providers)})")


# --------------------------------------------------------------------------------------------------------


def make_runner(model: str, runtime: str, device: str, inputs: dict[str, torch.Tensor], **kwargs) -> Runner:
    """The runner for ``model`` on ``runtime`` (see the module docs); ``kwargs`` as for :class:`Runner`."""
    spec, rt = resolve_model(model), resolve_runtime(runtime)
    if rt.family == "torch":
        cls = TorchTeacherRunner if spec.is_teacher else TorchPGNRunner
        return cls(spec, rt, device, inputs, **kwargs)
    if spec.is_teacher:
        raise PGNError(f"{runtime} cannot compute a VGG gradient (needs autograd)")
    return ExportedRunner(spec, rt, device, inputs, **kwargs)


def reference_outputs(runner: Runner, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """fp32 PyTorch eager outputs for the same model, weights, device and inputs (the accuracy reference)."""
    device = torch.device(runner.device)
    if runner.model.is_teacher:
        teacher = build_teacher(runner.model, runner.seed).to(device)
        return {"grad": _host(teacher.gradient(y_hat.to(device), y.to(device)))}
    net = build_pgn(runner.model.net, runner.seed, runner.weights).to(device)
    with torch.inference_mode():
        out = net.outputs(y_hat.to(device), y.to(device))
    return {"grad": _host(out.grad), "proxy": _host(out.proxy)}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict:
    """How close a runtime's outputs are to the fp32 PyTorch reference, per sample (worst sample reported).

    ``grad_cosine_min``: cosine similarity of the gradients (what the accuracy thresholds in RESULTS.md and the export targets' parity checks are stated in). ``grad_rel_error_max``:
    ‖g − g_ref‖ / ‖g_ref‖. ``proxy_cosine_centered_min`` (PGNs): cosine of the proxies after subtracting the
    reference proxy's per-channel mean, a stricter view than the gradient, whose ŷ term both sides share.
    """
    g_ref, g = _flat(reference["grad"]), _flat(candidate["grad"])
    out = {
        "grad_cosine_min": float(_cosine(g_ref, g).min()),
        "grad_cosine_mean": float(_cosine(g_ref, g).mean()),
        "grad_rel_error_max": float((np.linalg.norm(g - g_ref, axis=1) / np.maximum(np.linalg.norm(g_ref, axis=1), 1e-30)).max()),
    }
    if "proxy" in reference and "proxy" in candidate:
        p_ref, p = reference["proxy"].astype(np.float64), candidate["proxy"].astype(np.float64)
        mean = p_ref.mean(axis=(2, 3), keepdims=True)
        out["proxy_cosine_centered_min"] = float(_cosine(_flat(p_ref - mean), _flat(p - mean)).min())
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return (a * b).sum(axis=1) / den


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, (list, tuple)):
            out[str(k)] = [x if isinstance(x, (str, int, float, bool)) or x is None else str(x) for x in v]
        elif isinstance(v, dict):
            out[str(k)] = _jsonable(v)
        else:
            out[str(k)] = str(v)
    return out
