"""The export targets as data: one row per format, with the options it accepts.

====== ========== ========= ================ ==========================================================
target suffix     needs GPU default precision options beyond size/batch/dynamic/precision
====== ========== ========= ================ ==========================================================
onnx   .onnx      no        fp32             opset, legacy_exporter
tensorrt .engine  yes       fp32             opset, legacy_exporter, min_size, max_size, max_batch,
                                             workspace_gb, timing_cache, tf32
coreml .mlpackage no        fp16             min_size, max_size, max_batch, deployment_target
====== ========== ========= ================ ==========================================================

An option a format does not list is an error (never silently ignored); an unknown target gets a "did you mean".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pgn.errors import PGNError

#: Options every format accepts.
COMMON_OPTIONS = ("size", "batch", "dynamic", "precision")


@dataclass(frozen=True)
class Format:
    """One export target.

    Args:
        name: the target key (``onnx``, ``tensorrt``, ``coreml``).
        suffix: file (or package folder) suffix of the artifact.
        needs_gpu: whether building the artifact needs a CUDA GPU.
        options: options accepted besides :data:`COMMON_OPTIONS`.
        precisions: the precisions it can produce; the first is its default.
        module: the module whose ``export(graph_model, path, options)`` writes the artifact.
        runs_on: where the artifact runs (for tables and error messages).
        verified_by: what checks the artifact's numbers after export.
    """

    name: str
    suffix: str
    needs_gpu: bool
    options: tuple[str, ...]
    precisions: tuple[str, ...]
    module: str
    runs_on: str
    verified_by: str

    @property
    def default_precision(self) -> str:
        """The precision used when none is asked for."""
        return self.precisions[0]

    @property
    def all_options(self) -> tuple[str, ...]:
        """Every option this format accepts."""
        return COMMON_OPTIONS + self.options


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            name="onnx",
            suffix=".onnx",
            needs_gpu=False,
            options=("opset", "legacy_exporter"),
            precisions=("fp32", "fp16"),
            module="export.onnx",
            runs_on="any OS: ONNX Runtime (CPU, CUDA), and runtimes that read ONNX",
            verified_by="ONNX Runtime (CPU execution provider)",
        ),
        Format(
            name="tensorrt",
            suffix=".engine",
            needs_gpu=True,
            options=("opset", "legacy_exporter", "min_size", "max_size", "max_batch", "workspace_gb", "timing_cache", "tf32"),
            precisions=("fp32", "fp16"),
            module="export.tensorrt",
            runs_on="Linux/Windows with an NVIDIA GPU, the same TensorRT version and GPU model that built it",
            verified_by="the TensorRT engine on the GPU that built it",
        ),
        Format(
            name="coreml",
            suffix=".mlpackage",
            needs_gpu=False,
            options=("min_size", "max_size", "max_batch", "deployment_target"),
            precisions=("fp16", "fp32"),
            module="export.coreml",
            runs_on="macOS 13+/iOS 16+ (Core ML); converts on any OS",
            verified_by="MLModel.predict on macOS; structural checks elsewhere",
        ),
    )
}

#: ``target="all"`` expands to these, in this order.
ALL_TARGETS: tuple[str, ...] = tuple(FORMATS)


def resolve_targets(target: str) -> list[Format]:
    """The formats named by ``target`` (a key of :data:`FORMATS` or ``"all"``).

    Raises:
        PGNError: for an unknown target, with close matches ("did you mean") and the valid choices.
    """
    key = str(target).strip().lower()
    if key == "all":
        return [FORMATS[name] for name in ALL_TARGETS]
    if key in FORMATS:
        return [FORMATS[key]]
    choices = [*FORMATS, "all"]
    close = difflib.get_close_matches(key, choices, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise PGNError(f"unknown export target {target!r}.{hint} Valid targets: {', '.join(choices)}")


def check_options(fmt: Format, given: dict[str, object]) -> None:
    """Raise a :class:`PGNError` if ``given`` (options set away from their defaults) has one ``fmt`` does not take.

    Args:
        fmt: the target format.
        given: option name → value, only for options the caller actually set.
    """
    for name, value in given.items():
        if name not in fmt.all_options:
            takers = [f.name for f in FORMATS.values() if name in f.all_options]
            where = f"; it applies to {', '.join(takers)}" if takers else ""
            raise PGNError(
                f"option {name}={value!r} is not supported by target {fmt.name!r}{where}. "
                f"{fmt.name} accepts: {', '.join(fmt.all_options)}"
            )
    precision = given.get("precision")
    if precision is not None and precision not in fmt.precisions:
        raise PGNError(f"precision {precision!r} is not available for {fmt.name}: use one of {', '.join(fmt.precisions)}")
