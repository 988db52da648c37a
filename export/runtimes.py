"""What every runner of an exported artifact shares: :class:`Runtime`.

Each runner lives with its target (:class:`export.onnx.OnnxRuntime`, :class:`export.tensorrt.TensorRTRuntime`,
:class:`export.coreml.CoreMLRuntime`), and :func:`export.load_runtime` picks it from the artifact's manifest.
Every runner takes (N, 3, H, W) RGB [0, 1] images (NumPy arrays or torch tensors of any floating dtype, checked
against the input contract of the PyTorch API, :mod:`pgn.inputs`) and returns ``{"proxy", "grad"}``, the same
numbers as ``pgn.PGN`` with ``value_space="unit"``. A new runner subclasses :class:`Runtime` and implements
:meth:`Runtime.run_graph`; :meth:`Runtime.check_inputs` applies the contract for it. For artifacts whose graph
outputs the residual (fp16), the gradient scale is applied here on the host in fp32
(:class:`export.graph.GradientRecipe`). Runners record what actually ran in ``info`` (execution providers,
device, precision, versions, thread settings), so benchmarks can store it.

Example::

    from pgn.export import load_runtime
    rt = load_runtime("exports/unet-224x224-b1-fp32.onnx", device="cpu", threads=1)
    out = rt.run(y_hat, y)          # out["grad"], out["proxy"]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pgn.errors import PGNError
from pgn.inputs import as_float32_arrays

from .graph import GradientRecipe


class Runtime:
    """A loaded artifact. Subclasses implement :meth:`run_graph` (raw graph outputs by name)."""

    #: e.g. ``onnxruntime-cpu``, ``onnxruntime-cuda``, ``tensorrt-fp16``, ``coreml``
    name: str = "runtime"
    #: When the value check (finite, plausible range) reads the inputs (see :mod:`pgn.inputs`); the inputs
    #: of :meth:`run` are host arrays, so ``auto`` checks them.
    check_values: str = "auto"
    #: whether the artifact enforces the manifest's shape_range (TensorRT profiles and CoreML ranges do; ONNX not)
    respects_shape_range: bool = True

    def __init__(self, artifact: Path, manifest: dict[str, Any]):
        self.artifact = Path(artifact)
        self.manifest = manifest
        self.recipe = GradientRecipe.from_dict(manifest["gradient"])
        self.output_names = tuple(o["name"] for o in manifest["outputs"])
        self.info: dict[str, Any] = {"artifact": str(self.artifact), "precision": manifest.get("precision")}

    # -- to implement ------------------------------------------------------------------------------------
    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph once on checked float32 inputs; its outputs by name (``proxy`` and ``grad``/``residual``)."""
        raise NotImplementedError

    def artifact_input_shapes(self) -> list[list] | None:
        """The input shapes the loaded artifact declares (symbolic dimensions as strings), compared with the
        manifest's by :func:`export.load_runtime`; ``None`` where this runtime cannot tell."""
        return None

    # -- shared ------------------------------------------------------------------------------------------
    def run(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """The proxy and gradient for a batch.

        Args:
            y_hat, y: (N, 3, H, W) float32 RGB in [0, 1] (numpy arrays or CPU torch tensors).

        Returns:
            ``{"proxy": P in [0, 1] space, "grad": g w.r.t. the [0, 1] y_hat}``, float32, shape of ``y_hat``.
        """
        y_hat, y = self.check_inputs(y_hat, y)
        return self.finish(self.run_graph(y_hat, y), y_hat.shape)

    def prepare(self, y_hat: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
        """Bind inputs once and return a function running the graph on them (for timing loops).

        The base version calls :meth:`run_graph` (host copies included); device runners override it to keep
        inputs and outputs on the device.
        """
        y_hat, y = self.check_inputs(y_hat, y)
        return lambda: self.run_graph(y_hat, y)

    def finish(self, raw: dict[str, np.ndarray], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Graph outputs → ``{"proxy", "grad"}``; applies the fp16 recipe's host-side scale in fp32."""
        proxy = np.asarray(raw["proxy"], dtype=np.float32)
        if "grad" in raw:
            return {"proxy": proxy, "grad": np.asarray(raw["grad"], dtype=np.float32)}
        scale = self.recipe.scale(int(shape[2]), int(shape[3]))
        return {"proxy": proxy, "grad": np.asarray(raw["residual"], dtype=np.float32) * scale}

    def check_inputs(self, y_hat, y) -> tuple[np.ndarray, np.ndarray]:
        """Check the inputs against the PGN input contract (:mod:`pgn.inputs`: layout, floating dtype, finite
        values in RGB [0, 1]) and the artifact's shapes; return contiguous float32 arrays, a clear error otherwise."""
        arrays = as_float32_arrays(("y_hat", y_hat), ("y", y), value_space="unit", check_values=self.check_values)
        shape = arrays[0].shape
        m = self.manifest
        if not m.get("dynamic"):
            expected = tuple(m["inputs"][0]["shape"])
            if shape != expected:
                raise PGNError(f"{self.artifact.name} takes inputs of shape {expected}, got {shape}; re-export with --size/--batch or --dynamic")
        else:
            multiple = m["model"]["size_multiple"]
            if shape[2] % multiple or shape[3] % multiple:
                raise PGNError(f"height and width must be multiples of {multiple} for this {m['model']['backbone']} artifact, got {shape[2]}x{shape[3]}")
            rng = m.get("shape_range")
            if rng and self.respects_shape_range:
                lo, hi = rng["min"], rng["max"]
                if not all(lo[i] <= shape[i] <= hi[i] for i in (0, 2, 3)):
                    raise PGNError(f"input shape {shape} is outside the artifact's range {tuple(lo)}..{tuple(hi)}")
        return arrays[0], arrays[1]


#: More threads than any machine this runs on has cores: a larger count is a mistake, not a setting.
MAX_THREADS = 1024


def check_threads(threads: int | None, name: str = "threads") -> None:
    """Raise a one-line :class:`PGNError` unless ``threads`` is ``None`` or an integer from 1 to :data:`MAX_THREADS`."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise PGNError(f"{name} must be a positive integer (a thread count), got {threads!r}")
    if threads > MAX_THREADS:
        raise PGNError(f"{name}={threads} is not a usable thread count: at most {MAX_THREADS} "
                       f"(this machine has {os.cpu_count()} CPUs)")


def parse_device(device: str) -> tuple[str, int]:
    """``cpu``, ``cuda`` or ``cuda:N`` → (kind, device index); a clear error for anything else."""
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise PGNError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
