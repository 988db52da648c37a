"""Export PGNs (backbone + gradient head) to every target of the :data:`FORMATS` table, each verified against PyTorch.

    import pgn
    from pgn import export
    results = export.export(pgn.build("unet"), "onnx", size=(224, 224))      # or any key of export.FORMATS, or "all"
    rt = export.load_runtime(results[0].artifact)                            # ONNX Runtime, CPU
    out = rt.run(y_hat, y)                                                   # {"proxy": P, "grad": g}

Each target is one :class:`ExportTarget` (its module: converter, checks, runtime) and one row of :data:`FORMATS`;
the list of targets below is read from that table.
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

__doc__ = (__doc__ or "") + "\nTargets (:data:`FORMATS`):\n\n" + "\n".join(
    f"* ``{t.name}`` (``{t.suffix}``; {', '.join(t.precisions)}): {t.runs_on}" for t in FORMATS.values()
)

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
