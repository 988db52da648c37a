"""The interface every export target implements: :class:`ExportTarget`.

A target is one artifact format (ONNX, a TensorRT engine, a CoreML ML program, ...). Its module holds the
converter, the runtime that executes the artifact and one :class:`ExportTarget` object; the ``FORMATS`` table
(:mod:`export.formats`) lists those objects, and :func:`export.export` and :func:`export.load_runtime` reach a
target only through it. A new target is therefore one module and one row of the table::

    class MyTarget(ExportTarget):
        name, suffix, precisions = "mine", ".mine", ("fp32",)
        runs_on, verified_by = "where it runs", "what checks its numbers"

        def check_available(self): ...                                   # RuntimeUnavailable if the converter is missing
        def export(self, model, path, options): ...                      # write the artifact at path
        def describe(self, artifact, options, model): return {...}       # the manifest's "exporter" entry
        def load_runtime(self, artifact, manifest, settings): return MyRuntime(artifact, manifest)

The other methods have defaults that a target overrides where it differs (options it fills in, checks before
anything is written, structural checks, why its runtime cannot run here, the parity tolerance of a precision).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .graph import output_names
from .graph_options import GraphOptions
from .options import ExportOptions
from .verify import Tolerance

if TYPE_CHECKING:
    import pgn

    from .runtimes import Runtime

#: Options every target accepts.
COMMON_OPTIONS = ("size", "batch", "dynamic", "precision", "graph_options")


@dataclass(frozen=True)
class RuntimeSettings:
    """How :func:`export.load_runtime` was asked to run an artifact; each target reads the settings it has.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: intra-op threads (``None``: the runtime's default).
        graph_optimization_level: ONNX Runtime: ``disable``, ``basic``, ``extended`` or ``all``.
        inter_op_threads: ONNX Runtime inter-op threads (``None``: its default).
        compute_units: CoreML: ``ALL``, ``CPU_AND_NE``, ``CPU_AND_GPU`` or ``CPU_ONLY``.
        tf32: ONNX Runtime on CUDA: allow TF32 math in fp32 layers (off: it breaks the fp32 parity).
    """

    device: str = "cpu"
    threads: int | None = None
    graph_optimization_level: str = "all"
    inter_op_threads: int | None = None
    compute_units: str = "ALL"
    tf32: bool = False


class ExportTarget(ABC):
    """One export target: write the artifact, check it, load a runtime for it, and describe it for the manifest.

    Class attributes (the target's row of facts):
        name: the target key (``--target`` value and the manifest's ``target``).
        suffix: file (or package folder) suffix of the artifact.
        precisions: the precisions it can produce; the first is its default.
        options: options it accepts besides :data:`COMMON_OPTIONS` (any other one is an error).
        packages: what it converts and runs with, as name in the manifest's ``versions`` → the distributions
            providing it (the first one installed is recorded). Every manifest records the packages of all targets.
        verify_device: the ``device`` its runtime is loaded on to verify a fresh artifact.
        runs_on: where the artifact runs (manifest ``target_info`` and tables).
        verified_by: what checks the artifact's numbers after export.
        default_graph_options: the export-graph options used where none are given (chosen by measurement on
            the target's runtime, see :mod:`export.graph_options`).
        int8_ops: for a target with an ``int8`` precision, the selections of :data:`export.int8.INT8_OPS` its
            quantizer implements, its default first (it then lists ``int8_ops`` among its options).
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    options: tuple[str, ...] = ()
    packages: Mapping[str, tuple[str, ...]] = {}
    verify_device: str = "cpu"
    runs_on: str
    verified_by: str
    default_graph_options: GraphOptions = GraphOptions()
    int8_ops: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<export target {self.name!r}>"

    @property
    def default_precision(self) -> str:
        """The precision used when none is asked for."""
        return self.precisions[0]

    @property
    def all_options(self) -> tuple[str, ...]:
        """Every option this target accepts."""
        return COMMON_OPTIONS + self.options

    # -- every target implements these -------------------------------------------------------------------
    @abstractmethod
    def check_available(self) -> None:
        """Raise :class:`export.RuntimeUnavailable` (what to install, where it runs) if it cannot export here."""

    @abstractmethod
    def export(self, model: "pgn.PGN", path: Path, options: ExportOptions) -> None:
        """Write ``model`` (backbone + head) as an artifact at ``path``; a one-line :class:`PGNError` on failure."""

    @abstractmethod
    def describe(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """The manifest's ``exporter`` entry: the converter, its version and settings, facts read from the artifact."""

    @abstractmethod
    def load_runtime(self, artifact: Path, manifest: dict[str, Any], settings: RuntimeSettings) -> "Runtime":
        """A :class:`export.Runtime` executing ``artifact`` with ``settings`` (a :class:`RuntimeUnavailable` if it
        cannot run here, a :class:`PGNError` for a setting this runtime does not take)."""

    # -- defaults a target overrides where it differs ----------------------------------------------------
    @property
    def default_int8_ops(self) -> str | None:
        """What an int8 artifact quantizes when ``int8_ops`` is not given (``None`` for a target without int8)."""
        return self.int8_ops[0] if self.int8_ops else None

    def with_defaults(self, options: ExportOptions, output_dir: Path) -> ExportOptions:
        """``options`` with this target's own defaults filled in (e.g. a cache file in ``output_dir``)."""
        return options

    def validate(self, model: "pgn.PGN", options: ExportOptions) -> None:
        """Raise a :class:`PGNError` for a model or options this target cannot export, before anything is written.

        A :class:`RuntimeUnavailable` raised here is reported as that target's failure (or raised for one target).
        """

    def output_names(self, options: ExportOptions) -> tuple[str, str]:
        """Graph outputs of an artifact at ``options.precision``: ``(proxy, grad)``, or ``(proxy, residual)`` where
        the gradient would underflow and the host applies the scale (:class:`export.graph.GradientRecipe`)."""
        return output_names(options.precision)

    def structural_checks(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any] | None:
        """Checks of the written artifact that need no runtime; the facts checked, ``None`` if the target has none.

        Raises:
            PGNError: if a check fails (the export then fails and leaves nothing behind).
        """
        return None

    def runtime_missing_here(self) -> str | None:
        """Why this target's runtime cannot run on this machine (its artifacts are then ``converted-not-run``,
        checked structurally only), or ``None`` when verification runs here."""
        return None

    def tolerance(self, precision: str) -> Tolerance:
        """The parity thresholds an artifact at ``precision`` must meet (see :class:`export.verify.Tolerance`)."""
        return Tolerance.for_precision(precision)

    def target_info(self, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """The manifest's ``target_info`` entry: where the artifact runs, and the target's build facts."""
        return {"runs_on": self.runs_on, "verified_by": self.verified_by}
