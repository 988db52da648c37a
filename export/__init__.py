"""Export PGNs (backbone + gradient head) to every target of the :data:`FORMATS` table, each verified against PyTorch.

    import pgn
    from pgn import export
    results = export.export(pgn.build("unet"), "onnx", size=(224, 224))      # or any key of export.FORMATS, or "all"
    rt = export.load_runtime(results[0].artifact)                            # ONNX Runtime, CPU
    out = rt.run(y_hat, y)                                                   # {"proxy": P, "grad": g}

Each target is one :class:`ExportTarget` (its module: converter, checks, runtime) and one row of :data:`FORMATS`;
the list of targets below is read from that table.
Command line: ``pgn-export --backbone unet --target onnx`` (see ``pgn-export --help``).
"""

from .api import ExportResult, export, load_runtime
from .errors import RuntimeUnavailable
from .formats import FORMATS
from .manifest import manifest_path, read_manifest
from .options import ExportOptions
from .runtimes import Runtime
from .target import ExportTarget, RuntimeSettings

__doc__ = (__doc__ or "") + "\nTargets (:data:`FORMATS`):\n\n" + "\n".join(
    f"* ``{t.name}`` (``{t.suffix}``; {', '.join(t.precisions)}): {t.runs_on}" for t in FORMATS.values()
)

__all__ = [
    "FORMATS",
    "ExportOptions",
    "ExportResult",
    "ExportTarget",
    "Runtime",
    "RuntimeSettings",
    "RuntimeUnavailable",
    "export",
    "load_runtime",
    "manifest_path",
    "read_manifest",
]
