"""int8 as a precision of an export target: the one vocabulary for what gets quantized, and the gate it must pass.

A target that offers ``precision="int8"`` lists ``"int8"`` among its precisions and ``"int8_ops"`` among its
options, names the selections of :data:`INT8_OPS` its quantizer implements (:attr:`ExportTarget.int8_ops`, the
default first), and quantizes in its own ``export``. Everything else is shared: ``pgn-export --int8-ops``,
``export.export(..., int8_ops=...)`` and ``pgn-bench`` use these names for every target, :func:`check_int8_ops`
refuses a selection a target does not implement, calibration uses :func:`export.verify.calibration_pairs`
(photographs disjoint from the parity ones), and parity is the shared int8 gate: gradient cosine ≥
:data:`export.verify.INT8_MIN_GRAD_COSINE` against float64 PyTorch on every pair
(:meth:`export.verify.Tolerance.for_precision`). So an int8 recipe for a target touches that target's module only.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgn.errors import PGNError

from .verify import CALIBRATION_PAIRS, CALIBRATION_PHOTOS, INT8_MIN_GRAD_COSINE, PARITY_PHOTOS

#: What an int8 artifact quantizes: selection → its meaning. Whatever a selection leaves out stays fp32.
INT8_OPS: dict[str, str] = {
    "conv": "every convolution",
    "dense": "convolutions with one group (1x1, stem and full convs); depthwise and grouped convs stay fp32",
    "pointwise": "1x1 convolutions with one group only",
    "all": "every operator the target's quantizer supports, the closed-form head's arithmetic included",
}

#: How every int8 artifact is calibrated and checked: part of each target's recipe in the manifest.
CALIBRATION_RECORD = {
    "calibration_photos": list(CALIBRATION_PHOTOS),
    "parity_photos": list(PARITY_PHOTOS),
    "calibration_pairs": CALIBRATION_PAIRS,
    "calibration_y_hat": "y blurred (3x3 box) with Gaussian noise of std 0.05, as in the parity check",
    "min_grad_cosine": INT8_MIN_GRAD_COSINE,
}


def conv_selected(ops: str, groups: int, kernel: Sequence[int]) -> bool:
    """Whether the selection ``ops`` quantizes a convolution with ``groups`` groups and spatial ``kernel`` size."""
    if ops in ("conv", "all"):
        return True
    if ops == "dense":
        return groups == 1
    if ops == "pointwise":
        return groups == 1 and all(k == 1 for k in kernel)
    raise PGNError(f"unknown int8_ops {ops!r}: use one of {', '.join(INT8_OPS)}")


def check_int8_ops(target_name: str, supported: Sequence[str], precision: str | None, ops: str | None) -> None:
    """Raise a one-line :class:`PGNError` unless ``ops`` (``None``: the target's default) fits an int8 export.

    Args:
        target_name: the target, for the message.
        supported: the selections the target implements (:attr:`ExportTarget.int8_ops`).
        precision: the precision asked for; ``int8_ops`` needs ``int8``.
        ops: the selection asked for.
    """
    if ops is None:
        return
    if precision != "int8":
        raise PGNError("int8_ops selects what an int8 artifact quantizes: pass precision='int8' (--precision int8) with it")
    if ops not in INT8_OPS:
        raise PGNError(f"unknown int8_ops {ops!r}: use one of {', '.join(INT8_OPS)}")
    if ops not in supported:
        raise PGNError(f"int8_ops {ops!r} ({INT8_OPS[ops]}) is not available for {target_name}: use one of {', '.join(supported)}")
