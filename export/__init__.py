"""Export PGNs (backbone + gradient head) as ONNX, TensorRT and CoreML graphs, each verified against PyTorch.

    import pgn, export
    results = export.export(pgn.build("unet"), "onnx", size=(224, 224))      # or "tensorrt", "coreml", "all"
    rt = export.load_runtime(results[0].artifact)                            # ONNX Runtime, CPU
    out = rt.run(y_hat, y)                                                   # {"proxy": P, "grad": g}

Each target is one :class:`ExportTarget` (its module: converter, checks, runtime) and one row of :data:`FORMATS`.
Command line: ``pgn-export --backbone unet --target onnx`` (see ``pgn-export --help``).
"""

from .api import ExportResult, export, load_runtime
from .errors import RuntimeUnavailable
from .formats import FORMATS
from .manifest import manifest_path, read_manifest
from .options import ExportOptions
from .runtimes import Runtime
from .target import ExportTarget, RuntimeSettings

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
