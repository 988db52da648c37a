"""What one export is asked to produce: :class:`ExportOptions`, checked against the model (each target checks
the options it takes, :func:`export.formats.options_for`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pgn.errors import PGNError
from pgn.inputs import nearest_valid_size

from .graph_options import GraphOptions, resolve_graph_options

#: Ranged (dynamic) shapes default to this smallest and largest height/width and largest batch.
DEFAULT_MIN_SIZE = 64
DEFAULT_MAX_SIZE = 1024
DEFAULT_MAX_BATCH = 8


#: The ONNX opsets an export may ask for (inclusive).
OPSET_RANGE = (13, 23)


@dataclass(frozen=True)
class ShapeRange:
    """Smallest, export-time ("optimal") and largest input shape (N, 3, H, W) of a dynamic artifact."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        """Plain-dict form for manifests."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class ExportOptions:
    """Options of one export (see :func:`export.export` for their meaning).

    Args:
        size: (height, width) of the example input; with ``dynamic`` the optimal shape.
        batch: batch size of the example input.
        dynamic: dynamic batch, height and width (ONNX: unbounded; TensorRT/CoreML: ``min_size``..``max_size``).
        precision: one of the target's precisions (``fp32``, ``fp16``); ``None`` means the target's default.
        opset: ONNX opset (``None``: the exporter's default).
        legacy_exporter: use the TorchScript-based ONNX exporter instead of the dynamo exporter.
        min_size, max_size, max_batch: bounds of ranged shapes (TensorRT profile, CoreML RangeDim).
        workspace_gb: TensorRT builder workspace limit.
        timing_cache: TensorRT timing cache file (read if present, written after the build).
        tf32: TensorRT: let fp32 layers use TF32 math (TensorRT's own default). Off here, because TF32 rounds
            to 10-bit mantissas and an fp32 engine would fail the fp32 parity (relative error 1e-4).
        deployment_target: CoreML minimum deployment target (``iOS16`` … / ``macOS13`` …).
        int8_ops: int8: what is quantized, one of :data:`export.int8.INT8_OPS` that the target implements
            (``None``: the target's default).
        graph_options: how the export graph computes the backbone (:class:`export.graph_options.GraphOptions`,
            or its text form ``"band_rows=16,decoder_conv=split"``, whose unnamed options keep the target's
            defaults); ``None``: the target's defaults. The numbers stay the model's.
    """

    size: tuple[int, int] = (224, 224)
    batch: int = 1
    dynamic: bool = False
    precision: str | None = None
    opset: int | None = None
    legacy_exporter: bool = False
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    max_batch: int | None = None
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    tf32: bool = False
    deployment_target: str = "iOS16"
    int8_ops: str | None = None
    graph_options: GraphOptions | str | None = None

    def __post_init__(self):
        resolve_graph_options(self.graph_options)  # a bad name or value is an error now, before any export
        object.__setattr__(self, "size", parse_size(self.size, "size"))
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_size(value, name))
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise PGNError(f"batch must be a positive integer, got {self.batch!r}")
        low, high = OPSET_RANGE
        if self.opset is not None and (isinstance(self.opset, bool) or not isinstance(self.opset, int) or not low <= self.opset <= high):
            raise PGNError(f"opset must be an integer from {low} to {high}, got {self.opset!r}")
        if not self.workspace_gb > 0:
            raise PGNError(f"workspace_gb must be positive, got {self.workspace_gb!r}")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        ranged = [n for n in ("min_size", "max_size", "max_batch") if getattr(self, n) is not None]
        if ranged and not self.dynamic:
            raise PGNError(f"{', '.join(ranged)} bound dynamic shapes: pass dynamic=True (--dynamic) as well")
        if self.max_batch is not None and self.max_batch < self.batch:
            raise PGNError(f"max_batch {self.max_batch} is smaller than batch {self.batch}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ExportOptions":
        """Build from keyword arguments; an unknown keyword is a clear error listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PGNError(f"unknown export option(s) {', '.join(unknown)}: known are {', '.join(sorted(known))}")
        return cls(**kwargs)

    def given(self) -> dict[str, object]:
        """Options set away from their defaults (what a format must accept)."""
        defaults = ExportOptions()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(defaults, f.name) and f.name not in ("size", "batch"):
                out[f.name] = value
        return out

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The example input shape (N, 3, H, W)."""
        return (self.batch, 3, *self.size)

    def check_size(self, multiple: int, backbone: str) -> None:
        """Raise a :class:`PGNError` if a height or width is not a multiple of ``multiple``."""
        sizes = {"size": self.size}
        if self.dynamic:
            sizes.update(min_size=self.min_size, max_size=self.max_size)
        for name, hw in sizes.items():
            if hw is None:
                continue
            for dim, n in zip(("height", "width"), hw):
                if n % multiple:
                    raise PGNError(
                        f"{name} {hw[0]}x{hw[1]} is not allowed for the {backbone} backbone: {dim} must be a "
                        f"multiple of {multiple}; nearest valid {dim}: {nearest_valid_size(n, multiple)}"
                    )

    def shape_range(self, multiple: int) -> ShapeRange:
        """Bounds of a dynamic artifact; defaults are :data:`DEFAULT_MIN_SIZE`, :data:`DEFAULT_MAX_SIZE`, :data:`DEFAULT_MAX_BATCH`.

        Raises:
            PGNError: if the bounds do not contain the export size.
        """
        lo = self.min_size or tuple(min(_round_up(DEFAULT_MIN_SIZE, multiple), s) for s in self.size)
        hi = self.max_size or tuple(max(_round_up(DEFAULT_MAX_SIZE, multiple), s) for s in self.size)
        max_batch = self.max_batch or max(DEFAULT_MAX_BATCH, self.batch)
        for a, s, b in zip(lo, self.size, hi):
            if not a <= s <= b:
                raise PGNError(f"size {self.size[0]}x{self.size[1]} must lie within min_size {lo[0]}x{lo[1]} and max_size {hi[0]}x{hi[1]}")
        return ShapeRange((1, 3, *lo), self.shape, (max_batch, 3, *hi))


def parse_size(value, name: str = "size") -> tuple[int, int]:
    """``224``, ``(224, 256)`` or ``"224x256"`` → ``(height, width)``; a clear error otherwise."""
    if isinstance(value, str):
        parts = value.lower().replace("x", " ").replace(",", " ").split()
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise PGNError(f"{name} must be H W (e.g. 224 224), got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise PGNError(f"{name} must be an int or (height, width), got {value!r}") from None
    if h < 8 or w < 8:
        raise PGNError(f"{name} must be at least 8x8, got {h}x{w}")
    return h, w


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
