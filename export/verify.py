"""Parity: run an artifact and PyTorch on the same inputs and compare ``P`` and ``g``.

The reference is the PGN itself evaluated in float64 (a copy; the user's model is not touched), so the
measured error is the artifact's own error and not the float32 round-off of the reference. Inputs are

* ``random``: independent uniform [0, 1] pairs (ŷ, y);
* ``real``: bundled photographs (:data:`PARITY_PHOTOS`) as y, and ŷ a blurred, noisy copy of y, the regime a
  generator fine-tuned with a PGN lives in;
* for dynamic artifacts also ``random-other-size``: random pairs at a second shape, to prove the shape is free.

Metrics per set: max abs and max relative error of ``grad`` and ``proxy`` (relative = max |Δ| / max |reference|),
the cosine similarity of the gradient per sample (min and mean), and the cosine of the proxies after subtracting
the reference proxy's per-channel mean (a stricter view than the gradient, whose ŷ term both sides share).
Tolerances (:class:`Tolerance`): fp32 needs relative errors ≤ 1e-4 for both; fp16 needs a gradient cosine
≥ 0.999 on every pair (the proxy's errors are reported: the gradient is computed from it, so its cosine already
judges the proxy where it matters); int8, of every target that offers it, a gradient cosine ≥
:data:`INT8_MIN_GRAD_COSINE` on every pair. A target may define its own thresholds (:meth:`ExportTarget.tolerance`).

Quantized artifacts are calibrated on :func:`calibration_pairs`, built from :data:`CALIBRATION_PHOTOS`, which
share no photograph with :data:`PARITY_PHOTOS`: an int8 artifact is never checked on the images it was
calibrated on.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

import pgn
from pgn.images import resize_min_side, sample_images
from pgn.errors import PGNError

if TYPE_CHECKING:
    from .runtimes import Runtime


#: Bundled photographs (keys of :func:`pgn.images.sample_images`) the parity check's ``real`` set uses as y.
PARITY_PHOTOS = ("skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/immunohistochemistry")
#: Parity threshold of every int8 artifact: the gradient's cosine with float64 PyTorch, per pair.
INT8_MIN_GRAD_COSINE = 0.99
#: Bundled photographs int8 calibration uses (:func:`calibration_pairs`): none of them is a parity photograph.
CALIBRATION_PHOTOS = ("skimage/rocket", "sklearn/china", "sklearn/flower")
#: How many (ŷ, y) pairs an int8 export calibrates on (:func:`calibration_pairs`).
CALIBRATION_PAIRS = 8


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail thresholds of one precision; ``None`` means "not checked"."""

    precision: str
    max_rel_grad: float | None
    max_rel_proxy: float | None
    min_grad_cosine: float | None

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerance":
        """fp32: rel ≤ 1e-4 for g and P; fp16: gradient cosine ≥ 0.999 (P errors are reported, not judged); int8:
        gradient cosine ≥ :data:`INT8_MIN_GRAD_COSINE`.

        Another precision has no default thresholds: its target defines them (:meth:`ExportTarget.tolerance`).
        """
        if precision == "int8":
            return cls("int8", max_rel_grad=None, max_rel_proxy=None, min_grad_cosine=INT8_MIN_GRAD_COSINE)
        if precision == "fp16":
            return cls("fp16", max_rel_grad=None, max_rel_proxy=None, min_grad_cosine=0.999)
        if precision == "fp32":
            return cls("fp32", max_rel_grad=1e-4, max_rel_proxy=1e-4, min_grad_cosine=None)
        raise PGNError(f"no parity tolerance for precision {precision!r}: its export target must define one (ExportTarget.tolerance)")

    def failures(self, set_name: str, m: dict[str, float]) -> list[str]:
        """Human-readable reasons ``m`` (metrics of one input set) fails; empty if it passes."""
        out = []
        if self.max_rel_grad is not None and not m["grad_max_rel"] <= self.max_rel_grad:
            out.append(f"{set_name}: grad rel error {m['grad_max_rel']:.2e} > {self.max_rel_grad:g}")
        if self.max_rel_proxy is not None and not m["proxy_max_rel"] <= self.max_rel_proxy:
            out.append(f"{set_name}: proxy rel error {m['proxy_max_rel']:.2e} > {self.max_rel_proxy:g}")
        if self.min_grad_cosine is not None and not m["grad_cosine_min"] >= self.min_grad_cosine:
            out.append(f"{set_name}: grad cosine {m['grad_cosine_min']:.5f} < {self.min_grad_cosine:g}")
        return out


@dataclass(frozen=True)
class InputSet:
    """A named batch of (ŷ, y) pairs, (N, 3, H, W) float32 in [0, 1]."""

    name: str
    y_hat: np.ndarray
    y: np.ndarray


def parity_inputs(
    size: tuple[int, int],
    batch: int,
    *,
    n_random: int = 2,
    n_real: int = 4,
    other_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> list[InputSet]:
    """The input sets of a parity check; counts are rounded up to multiples of ``batch``.

    Args:
        size: (H, W) of the artifact.
        batch: the artifact's batch size (fixed-shape artifacts only accept it).
        n_random, n_real: number of random and real pairs.
        other_size: for dynamic artifacts, a second (H, W) to run at (with batch 2).
        seed: seed of the random pairs and the noise.
    """
    gen = torch.Generator().manual_seed(seed)
    n_random, n_real = _round_up(n_random, batch), _round_up(n_real, batch)
    h, w = size
    sets = [InputSet("random", *_np(torch.rand(n_random, 3, h, w, generator=gen), torch.rand(n_random, 3, h, w, generator=gen)))]
    y = real_images(size, n_real)
    y_hat = degrade(y, gen)
    sets.append(InputSet("real", *_np(y_hat, y)))
    if other_size is not None:
        oh, ow = other_size
        sets.append(InputSet(f"random-{oh}x{ow}", *_np(torch.rand(2, 3, oh, ow, generator=gen), torch.rand(2, 3, oh, ow, generator=gen))))
    return sets


def real_images(size: tuple[int, int], n: int, photos: tuple[str, ...] = PARITY_PHOTOS) -> torch.Tensor:
    """``n`` bundled photographs center-cropped to ``size``, (n, 3, H, W) in [0, 1].

    Args:
        size: (H, W).
        n: how many; the photographs are cycled when ``n`` exceeds their number.
        photos: keys of :func:`pgn.images.sample_images` to use (default: the parity photographs); those not
            installed here are skipped.

    Raises:
        PGNError: if none of ``photos`` is available.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only sample arrays (harmless)
        imgs = sample_images()
    keys = [k for k in photos if k in imgs]
    if not keys:
        raise PGNError(f"none of the bundled photographs {', '.join(photos)} is available: install scikit-image and scikit-learn")
    h, w = size
    out = []
    for i in range(n):
        img = resize_min_side(imgs[keys[i % len(keys)]], max(h, w))
        top, left = (img.shape[1] - h) // 2, (img.shape[2] - w) // 2
        out.append(img[:, top : top + h, left : left + w])
    return torch.stack(out).clamp(0, 1)


def calibration_pairs(size: tuple[int, int], n: int = CALIBRATION_PAIRS, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (ŷ, y) pairs for calibrating a quantized artifact, (n, 3, H, W) each, in [0, 1].

    ``y`` cycles through :data:`CALIBRATION_PHOTOS`, which share no photograph with the parity check's
    :data:`PARITY_PHOTOS`; ŷ is a blurred, noisy copy (:func:`degrade`, with its own seed), as in the parity check.
    """
    overlap = set(CALIBRATION_PHOTOS) & set(PARITY_PHOTOS)
    if overlap:  # a guard against editing one list without the other
        raise PGNError(f"calibration and parity photographs overlap ({', '.join(sorted(overlap))}): keep them disjoint")
    y = real_images(size, n, CALIBRATION_PHOTOS)
    return degrade(y, torch.Generator().manual_seed(seed)), y


def degrade(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A plausible generator output for target ``y``: 3×3 box blur plus Gaussian noise (σ = 0.05), clamped."""
    blurred = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (blurred + 0.05 * torch.randn(y.shape, generator=gen)).clamp(0, 1)


def torch_reference(model: "pgn.PGN", y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """``proxy`` and ``grad`` (w.r.t. the [0, 1] ŷ) of ``model`` in float64 on the CPU, without changing ``model``."""
    ref = copy.deepcopy(model).cpu().double().eval()
    x_hat, x = torch.from_numpy(y_hat).double(), torch.from_numpy(y).double()
    vs = ref.value_space
    with torch.no_grad():
        if vs == "unit":
            out = ref.outputs(x_hat, x)
            return {"proxy": out.proxy.numpy(), "grad": out.grad.numpy()}
        out = ref.outputs(pgn.normalize(x_hat), pgn.normalize(x))
        std = torch.tensor(pgn.constants.IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
        return {"proxy": pgn.denormalize(out.proxy).numpy(), "grad": (out.grad / std).numpy()}


def compare(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Error metrics of ``out`` against ``ref`` (both with ``proxy`` and ``grad``)."""
    m: dict[str, float] = {}
    for key in ("grad", "proxy"):
        a, b = np.asarray(out[key], dtype=np.float64), np.asarray(ref[key], dtype=np.float64)
        if a.shape != b.shape:
            raise PGNError(f"artifact output {key!r} has shape {a.shape}, PyTorch gives {b.shape}")
        err = np.abs(a - b)
        m[f"{key}_max_abs"] = float(err.max())
        m[f"{key}_max_rel"] = float(err.max() / max(np.abs(b).max(), 1e-30))
        m[f"{key}_finite"] = bool(np.isfinite(a).all())
    b = np.asarray(ref["grad"], dtype=np.float64)
    cos = _cosine(np.asarray(out["grad"], dtype=np.float64), b)
    m["grad_cosine_min"] = float(cos.min())
    m["grad_cosine_mean"] = float(cos.mean())
    m["grad_ref_max_abs"] = float(np.abs(b).max())
    p_ref = np.asarray(ref["proxy"], dtype=np.float64)
    centre = p_ref.mean(axis=(2, 3), keepdims=True)
    m["proxy_cosine_centered_min"] = float(_cosine(np.asarray(out["proxy"], dtype=np.float64) - centre, p_ref - centre).min())
    return m


def run_in_batches(runtime: "Runtime", inputs: InputSet, batch: int | None) -> dict[str, np.ndarray]:
    """Run ``runtime`` over a set in chunks of ``batch`` (all at once if ``None``) and concatenate."""
    n = len(inputs.y)
    step = batch or n
    chunks = [runtime.run(inputs.y_hat[i : i + step], inputs.y[i : i + step]) for i in range(0, n, step)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in ("proxy", "grad")}


def verify_runtime(
    runtime: "Runtime",
    model: "pgn.PGN",
    sets: list[InputSet],
    tolerance: Tolerance,
    *,
    fixed_batch: int | None,
    references: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Compare ``runtime`` with PyTorch on every input set; returns the parity record of a manifest.

    Args:
        runtime: a loaded artifact (:func:`export.load_runtime`).
        model: the PGN it was exported from.
        sets: the input sets (:func:`parity_inputs`).
        tolerance: pass/fail thresholds.
        fixed_batch: how many pairs to run at once: the batch of a fixed-shape artifact, at most the largest batch
            of a dynamic one (``None``: a whole set at once).
        references: cached :func:`torch_reference` outputs per set name (filled in when given).
    """
    results, failures = {}, []
    for s in sets:
        if references is not None and s.name in references:
            ref = references[s.name]
        else:
            ref = torch_reference(model, s.y_hat, s.y)
            if references is not None:
                references[s.name] = ref
        out = run_in_batches(runtime, s, fixed_batch)
        metrics = compare(out, ref)
        metrics["pairs"] = int(len(s.y))
        metrics["shape"] = list(s.y.shape)
        results[s.name] = metrics
        if not (metrics["grad_finite"] and metrics["proxy_finite"]):
            failures.append(f"{s.name}: non-finite outputs")
        failures += tolerance.failures(s.name, metrics)
    return {
        "executed": True,
        "runtime": runtime.name,
        "runtime_info": runtime.info,
        "reference": "pgn.PGN in float64 on the CPU",
        "tolerance": asdict(tolerance),
        "sets": results,
        "passed": not failures,
        "failures": failures,
    }


def not_executed(reason: str, checks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parity record of an artifact that could not be run here (e.g. CoreML on Linux)."""
    record: dict[str, Any] = {"executed": False, "reason": reason, "passed": None}
    if checks is not None:
        record["structural_checks"] = checks
    return record


def summary(parity: dict[str, Any]) -> str:
    """One short line for tables: worst gradient error and cosine, or why nothing ran."""
    if not parity.get("executed"):
        return parity.get("reason", "not executed")
    sets = parity.get("sets", {})
    if not sets:
        return "no inputs"
    rel = max(m["grad_max_rel"] for m in sets.values())
    prel = max(m["proxy_max_rel"] for m in sets.values())
    cos = min(m["grad_cosine_min"] for m in sets.values())
    return f"g rel {rel:.1e}, P rel {prel:.1e}, cos {_fmt_cos(cos)}"


def _fmt_cos(c: float) -> str:
    if c >= 1.0 or math.isnan(c):
        return f"{c:.6f}"
    return f"1-{1.0 - c:.1e}"


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample of two (N, ...) arrays."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _np(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return a.float().contiguous().numpy(), b.float().contiguous().numpy()
