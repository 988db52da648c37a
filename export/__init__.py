"""Export PGNs (backbone + gradient head) as ONNX, TensorRT and CoreML graphs, each verified against PyTorch.

    import pgn, export
    results = export.export(pgn.build("unet"), "onnx", size=(224, 224))      # or "tensorrt", "coreml", "all"
    rt = export.load_runtime(results[0].artifact)                            # ONNX Runtime, CPU
    out = rt.run(y_hat, y)                                                   # {"proxy": P, "grad": g}

Each target is one :class:`ExportTarget` (its module: converter, checks, runtime) and one row of :data:`FORMATS`.
Command line: ``pgn-export --backbone unet --target onnx`` (see ``pgn-export --help``).

The fitting step on the device (a generator, a frozen PGN or VGG loss, backward and SGD in one ExecuTorch program)::

    path = export.export_training_step(generator, (inputs,), loss=pgn.load("resnet4.pth"), mse_weight=20)
    program = export.load_training(path)                                     # ExecuTorch's training runtime
    program.step(inputs, target); generator.load_state_dict(program.state_dict(), strict=False)
"""

from .api import ExportResult, export, load_runtime
from .errors import RuntimeUnavailable
from .formats import FORMATS
from .manifest import manifest_path, read_manifest
from .options import ExportOptions
from .runtimes import Runtime
from .target import ExportTarget, RuntimeSettings
from .training import FittingLoss, SGDRecipe, TrainingProgram, export_training_step, load_training

__all__ = [
    "FORMATS",
    "ExportOptions",
    "ExportResult",
    "ExportTarget",
    "FittingLoss",
    "Runtime",
    "RuntimeSettings",
    "RuntimeUnavailable",
    "SGDRecipe",
    "TrainingProgram",
    "export",
    "export_training_step",
    "load_runtime",
    "load_training",
    "manifest_path",
    "read_manifest",
]
