"""The one input contract of every PGN entry point: the PyTorch API and every runtime of an exported artifact.

``model(y_hat, y)``, ``model.proxy``, :class:`pgn.PGNLoss`, :class:`pgn.PerceptualLoss` and every runtime of
``export.load_runtime`` (ONNX Runtime, TensorRT, Core ML, and any runtime added later) take the same images and
refuse the same mistakes with the same one-line :class:`pgn.PGNError`. The rules, in the order they are checked:

1. **type**: a dense ``torch.Tensor`` with data (runtimes also take NumPy arrays); lists, sparse and meta
   tensors are refused;
2. **layout**: 4-D ``(N, 3, H, W)`` (unbatched and channels-last inputs get a hint);
3. **dtype**: floating point. Integer and boolean images are refused: a uint8 image read as 0..255 would give a
   gradient hundreds of times too large. float16, bfloat16, float32 and float64 are all accepted: the PyTorch
   modules compute in their own parameter dtype (float32 unless you called ``.half()``/``.double()``) and return
   gradients and proxies in the dtype of ``y_hat``; runtimes compute in what their artifact holds;
4. **shape and device**: ``y_hat`` and ``y`` have one shape (and, for tensors, one device, the module's);
5. **size**: height and width at least ``min_size`` (VGG: 16, four 2×2 poolings) and multiples of the backbone's
   size multiple (UNet: 32), with the nearest valid sizes in the error;
6. **values** (read from the data): finite, and in the ``unit`` value space within :data:`PLAUSIBLE_UNIT_RANGE`,
   so a float image still in 0..255 is refused. The ``imagenet`` space (the authors' working space, unbounded
   while training) has no range rule.

Rule 6 reads the data, which on a GPU means waiting for the device (two synchronizations per call). It therefore
follows ``check_values``: ``"auto"`` (default) checks host data (CPU tensors, NumPy arrays) and skips tensors on
an accelerator, ``"always"`` checks everywhere (debugging a NaN on a GPU), ``"never"`` skips it. Each module has
a ``check_values`` attribute (``model.check_values = "always"``). Nothing is checked while a graph is traced or
exported (``torch.compile``, ONNX export), where data-dependent checks cannot run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import PGNError

#: Values of ``check_values``.
CHECK_VALUES = ("auto", "always", "never")
#: Unit-space (RGB [0, 1]) images must lie within this range. Generators overshoot [0, 1] a little; a 0..255
#: image does not fit.
PLAUSIBLE_UNIT_RANGE = (-8.0, 8.0)


def is_tracing() -> bool:
    """True while ``torch.jit``, ``torch.compile`` or the ONNX exporter traces the calling code."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())


def check_images(
    *named: tuple[str, Any],
    channels: int = 3,
    multiple_of: int = 1,
    min_size: int = 1,
    value_space: str | None = "unit",
    check_values: str = "auto",
    device: torch.device | None = None,
    accept_numpy: bool = False,
) -> None:
    """Validate images against the contract above; raise a one-line :class:`PGNError` on the first broken rule.

    Args:
        *named: ``(name, image)`` pairs; every image must have the shape of the first.
        channels: required channel count.
        multiple_of: height and width must be multiples of this.
        min_size: height and width must be at least this.
        value_space: ``unit`` (range rule applies), ``imagenet`` or ``None`` (no range rule).
        check_values: ``auto``, ``always`` or ``never`` (see the module docs).
        device: for tensors, the device of the module that will use them (``None``: not checked).
        accept_numpy: accept NumPy arrays too (runtimes of exported artifacts); PyTorch modules need tensors.
    """
    if check_values not in CHECK_VALUES:
        raise PGNError(f"check_values must be one of {', '.join(CHECK_VALUES)}, got {check_values!r}")
    if is_tracing():
        return
    shape = None
    for name, image in named:
        _check_layout(name, image, channels, accept_numpy)
        if shape is None:
            shape, first = tuple(image.shape), image
        elif tuple(image.shape) != shape:
            raise PGNError(f"y_hat and y must have the same shape, got {shape} and {tuple(image.shape)}")
        _check_device(name, image, first, device)
    if shape is None:
        return
    check_size(int(shape[2]), int(shape[3]), multiple_of=multiple_of, min_size=min_size)
    for name, image in named:
        if _reads_values(image, check_values):
            _check_values(name, image, value_space)


def check_size(height: int, width: int, *, multiple_of: int = 1, min_size: int = 1, what: str = "image size") -> None:
    """Raise a :class:`PGNError` unless ``height`` and ``width`` are ≥ ``min_size`` and multiples of ``multiple_of``."""
    smallest = max(min_size, 1)
    if height < smallest or width < smallest:
        raise PGNError(f"{what} {height}x{width} is too small: height and width must be at least {smallest}")
    if multiple_of > 1 and (height % multiple_of or width % multiple_of):
        raise PGNError(
            f"{what} {height}x{width} is not allowed: height and width must be multiples of {multiple_of}; "
            f"nearest valid height {nearest_valid_size(height, multiple_of)}, width {nearest_valid_size(width, multiple_of)}"
        )


def nearest_valid_size(n: int, multiple_of: int) -> str:
    """Describe the multiples of ``multiple_of`` closest to ``n``, e.g. ``'224 or 256'``."""
    low = (n // multiple_of) * multiple_of
    high = low + multiple_of
    return str(high) if low == 0 else f"{low} or {high}"


def as_float32_arrays(*named: tuple[str, Any], value_space: str = "unit", check_values: str = "auto") -> list[np.ndarray]:
    """Check images against the contract and return them as C-contiguous float32 NumPy arrays (for runtimes).

    Accepts NumPy arrays and torch tensors on any device (copied to the host).
    """
    check_images(*named, value_space=value_space, check_values=check_values, accept_numpy=True)
    out = []
    for _, image in named:
        if isinstance(image, torch.Tensor):
            image = image.detach().to("cpu", torch.float32).numpy()
        out.append(np.ascontiguousarray(image, dtype=np.float32))
    return out


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a module computes in: that of its first floating-point parameter (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# --------------------------------------------------------------------------------------------------------


def _check_layout(name: str, image: Any, channels: int, accept_numpy: bool) -> None:
    if accept_numpy and not isinstance(image, (torch.Tensor, np.ndarray)):
        raise PGNError(f"{name} must be a numpy array or a torch.Tensor, got {type(image).__name__}")
    if not accept_numpy and not isinstance(image, torch.Tensor):
        hint = f"; convert with torch.from_numpy({name})" if isinstance(image, np.ndarray) else ""
        raise PGNError(f"{name} must be a torch.Tensor, got {type(image).__name__}{hint}")
    if isinstance(image, torch.Tensor):
        if image.layout != torch.strided:  # sparse or nested: aminmax, convolutions and runtimes need dense data
            raise PGNError(f"{name} is a {str(image.layout).replace('torch.', '')} tensor: images must be dense; convert "
                           f"with {name}.to_dense()")
        if image.is_meta:
            raise PGNError(f"{name} is a meta tensor (a shape without data): pass real images")
    shape = tuple(image.shape)
    if len(shape) != 4:
        hint = f"; add a batch dimension with {name}[None]" if len(shape) == 3 else ""
        raise PGNError(f"{name} must be a 4-D (N, {channels}, H, W) image batch, got shape {shape}{hint}")
    if shape[1] != channels:
        hint = f" (channels-last? use {name}.permute(0, 3, 1, 2))" if shape[-1] == channels else ""
        raise PGNError(f"{name} must have {channels} channels (RGB), got shape {shape}{hint}")
    floating = image.is_floating_point() if isinstance(image, torch.Tensor) else image.dtype.kind == "f"
    if not floating:
        raise PGNError(
            f"{name} must be a floating-point image (RGB in [0, 1]), got {str(image.dtype).replace('torch.', '')}; "
            f"convert with {name}.float() / 255 (numpy: {name}.astype('float32') / 255)"
        )


def _check_device(name: str, image: Any, first: Any, device: torch.device | None) -> None:
    if not isinstance(image, torch.Tensor):
        return
    if isinstance(first, torch.Tensor) and image.device != first.device:
        raise PGNError(f"y_hat and y must be on one device, got {first.device} and {image.device}")
    if device is not None and image.device != torch.device(device):
        raise PGNError(f"{name} is on {image.device} but the model is on {device}: move one with .to(...)")


def _reads_values(image: Any, check_values: str) -> bool:
    if check_values == "never":
        return False
    if check_values == "always" or not isinstance(image, torch.Tensor):
        return True
    return image.device.type == "cpu"


def _check_values(name: str, image: Any, value_space: str | None) -> None:
    if isinstance(image, torch.Tensor):
        if image.numel() == 0:
            return
        low, high = (float(v) for v in torch.stack(torch.aminmax(image.detach())).float().tolist())
    else:
        if image.size == 0:
            return
        low, high = float(np.min(image)), float(np.max(image))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise PGNError(f"{name} contains NaN or infinite values")
    lowest, highest = PLAUSIBLE_UNIT_RANGE
    if value_space == "unit" and not (lowest <= low and high <= highest):
        hint = "; it looks like 0..255 pixel values: divide by 255" if high > highest else ""
        raise PGNError(
            f"{name} has values from {low:.4g} to {high:.4g}, far outside RGB [0, 1] (allowed: {lowest:g} to "
            f"{highest:g}){hint}"
        )


__all__ = [
    "CHECK_VALUES",
    "PLAUSIBLE_UNIT_RANGE",
    "as_float32_arrays",
    "check_images",
    "check_size",
    "compute_dtype",
    "is_tracing",
    "nearest_valid_size",
]
