"""The export targets as a table: :data:`FORMATS`, one :class:`export.target.ExportTarget` object per row.

:func:`export.export` and :func:`export.load_runtime` reach a target only through this table, so a new target is
its module and one row here. Each row says what it accepts (suffix, precisions with the default first, options
beyond size/batch/dynamic/precision); an option a target does not list is an error, never silently ignored,
and an unknown target gets a "did you mean".
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from pgn.errors import PGNError

from . import coreml, executorch, executorch_coreml, onnx, tensorrt
from .graph_options import resolve_graph_options
from .int8 import check_int8_ops
from .options import ExportOptions
from .target import ExportTarget

#: Every export target by name; ``target="all"`` exports to each, in this order.
FORMATS: dict[str, ExportTarget] = {
    t.name: t for t in (onnx.TARGET, tensorrt.TARGET, coreml.TARGET, executorch.TARGET, executorch_coreml.TARGET)
}


def resolve_targets(target: str) -> list[ExportTarget]:
    """The targets named by ``target`` (a key of :data:`FORMATS` or ``"all"``).

    Raises:
        PGNError: for an unknown target, with close matches ("did you mean") and the valid choices.
    """
    key = str(target).strip().lower()
    if key == "all":
        return list(FORMATS.values())
    if key in FORMATS:
        return [FORMATS[key]]
    choices = [*FORMATS, "all"]
    close = difflib.get_close_matches(key, choices, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise PGNError(f"unknown export target {target!r}.{hint} Valid targets: {', '.join(choices)}")


def target_of(artifact: Path) -> ExportTarget:
    """The target whose suffix ``artifact`` has (the longest that matches: ``.coreml.pte`` before ``.pte``); a
    clear error if none does."""
    matches = [t for t in FORMATS.values() if artifact.name.endswith(t.suffix)]
    if matches:
        return max(matches, key=lambda t: len(t.suffix))
    suffixes = ", ".join(t.suffix for t in FORMATS.values())
    raise PGNError(f"cannot tell the runtime of {artifact.name} from its suffix (known: {suffixes}); pass target=")


def precisions() -> tuple[str, ...]:
    """Every precision some target produces, in table order (``fp32``, ``fp16``, ...)."""
    return tuple(dict.fromkeys(p for t in FORMATS.values() for p in t.precisions))


def packages() -> dict[str, tuple[str, ...]]:
    """The packages every manifest records the versions of: those of all targets (:attr:`ExportTarget.packages`)."""
    return {name: dists for t in FORMATS.values() for name, dists in t.packages.items()}


def check_options(target: ExportTarget, given: dict[str, object]) -> None:
    """Raise a :class:`PGNError` if ``given`` (options set away from their defaults) has one ``target`` does not take.

    Args:
        target: the export target.
        given: option name → value, only for options the caller actually set.
    """
    for name, value in given.items():
        if name not in target.all_options:
            takers = [t.name for t in FORMATS.values() if name in t.all_options]
            where = f"; it applies to {', '.join(takers)}" if takers else ""
            raise PGNError(
                f"option {name}={value!r} is not supported by target {target.name!r}{where}. "
                f"{target.name} accepts: {', '.join(target.all_options)}"
            )
    precision = given.get("precision")
    if precision is not None and precision not in precisions():
        raise PGNError(f"unknown precision {precision!r}: use one of {', '.join(precisions())}")
    if precision is not None and precision not in target.precisions:
        raise PGNError(f"precision {precision!r} is not available for {target.name}: use one of {', '.join(target.precisions)}")
    check_int8_ops(target.name, target.int8_ops, precision, given.get("int8_ops"))


def options_for(target: ExportTarget, options: ExportOptions, output_dir: Path) -> ExportOptions:
    """``options`` checked against ``target``, with its default precision and its own defaults filled in."""
    check_options(target, options.given())
    precision = options.precision or target.default_precision
    resolved = replace(options, precision=precision,
                       int8_ops=(options.int8_ops or target.default_int8_ops) if precision == "int8" else None,
                       graph_options=resolve_graph_options(options.graph_options, target.default_graph_options))
    return target.with_defaults(resolved, Path(output_dir))
