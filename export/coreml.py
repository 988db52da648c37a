"""The CoreML target (:class:`CoreMLTarget`): an ML program (``.mlpackage``) converted with coremltools from a
traced graph, and :class:`CoreMLRuntime`, ``MLModel.predict`` on macOS.

fp16 compute by default (the Neural Engine runs fp16), fp32 on request; inputs and outputs stay float32.
Fixed shapes by default; ``dynamic`` gives ranged batch/height/width (``ct.RangeDim``). The model carries its
metadata (backbone, head, constants, input range, gradient recipe) in ``user_defined_metadata``.

Conversion runs on any OS; ``MLModel.predict`` runs only on macOS. Elsewhere :meth:`CoreMLTarget.structural_checks` inspects
the saved package instead: program type, inputs/outputs and their types and shapes, compute precision,
deployment target and metadata. (BatchNorm is folded before tracing; a ``batch_norm`` op in the program is
coremltools fusing the per-channel normalization ``(x - mean) / std`` into one op, not a model BatchNorm.)
"""

from __future__ import annotations

import contextlib
import io
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pgn
from pgn.errors import PGNError, first_line
from pgn.extras import install_hint

from .errors import RuntimeUnavailable
from .graph import INPUT_NAMES, ExportGraph
from .manifest import metadata_strings
from .options import ExportOptions
from .runtimes import Runtime
from .target import ExportTarget, RuntimeSettings

#: ML programs need Core ML specification version 6 (iOS 15 / macOS 12) or newer.
MIN_SPEC_VERSION = 6
#: Why a CoreML artifact is not run off macOS (its parity record's reason).
NOT_RUN_OFF_MACOS = "not executed: CoreML predicts on macOS only"


# --------------------------------------------------------------------------------------------------------
# The target


class CoreMLTarget(ExportTarget):
    """A CoreML ML program (``.mlpackage``), fp16 by default; converted anywhere, predicted on macOS only."""

    name = "coreml"
    suffix = ".mlpackage"
    precisions = ("fp16", "fp32")
    options = ("min_size", "max_size", "max_batch", "deployment_target")
    packages = {"coremltools": ("coremltools",)}
    runs_on = "macOS 13+/iOS 16+ (Core ML); converts on any OS"
    verified_by = "MLModel.predict on macOS; structural checks elsewhere"

    def check_available(self) -> None:
        """Raise :class:`RuntimeUnavailable` if coremltools cannot be imported."""
        import_coremltools()

    def validate(self, model: "pgn.PGN", options: ExportOptions) -> None:
        """The deployment target must be an ML-program one, and the warped head's ``grid_sample`` does not convert
        (coremltools 9.0 fails on the traced graph)."""
        if model.config.head.kind == "warped":
            raise PGNError("the warped head does not convert for CoreML (its grid_sample): export it to onnx or "
                           "tensorrt with the dynamo exporter")
        deployment_target(import_coremltools(), options.deployment_target)

    def export(self, model: "pgn.PGN", path: Path, options: ExportOptions) -> None:
        """Convert ``model`` (backbone + head) to an ML program saved at ``path`` (``.mlpackage``): traced in
        float32, with fp16 arithmetic from ``compute_precision=FLOAT16``."""
        ct = import_coremltools()
        target = deployment_target(ct, options.deployment_target)
        half = options.precision == "fp16"
        graph = ExportGraph(model, outputs=self.output_names(options)[1], dtype=torch.float32,
                            size=options.size, dynamic=options.dynamic, graph_options=options.graph_options)
        gen = torch.Generator().manual_seed(0)
        example = (torch.rand(options.shape, generator=gen), torch.rand(options.shape, generator=gen))
        if options.dynamic:
            rng = options.shape_range(model.size_multiple)
            shape = ct.Shape(tuple(
                ct.RangeDim(lower_bound=lo, upper_bound=hi, default=opt) if lo != hi else opt
                for lo, opt, hi in zip(rng.min, rng.opt, rng.max)
            ))
        else:
            shape = options.shape
        buffer = io.StringIO()
        try:
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(graph.eval(), example, check_trace=False)
                mlmodel = ct.convert(
                    traced,
                    inputs=[ct.TensorType(name=n, shape=shape, dtype=np.float32) for n in INPUT_NAMES],
                    outputs=[ct.TensorType(name=n, dtype=np.float32) for n in graph.output_names],
                    convert_to="mlprogram",
                    compute_precision=ct.precision.FLOAT16 if half else ct.precision.FLOAT32,
                    minimum_deployment_target=target,
                )
        except Exception as e:  # noqa: BLE001 - converter failures become one line
            raise PGNError(f"CoreML conversion failed: {type(e).__name__}: {first_line(e)}") from e
        mlmodel.author = "pgn-toolkit"
        mlmodel.version = pgn.__version__
        mlmodel.short_description = (
            f"Perceptual Gradient Network ({model.config.preset or model.config.backbone}, {model.config.head.kind} head): "
            "VGG-19 perceptual-loss gradient at y_hat in one forward pass"
        )
        mlmodel.input_description["y_hat"] = "generated image, (N, 3, H, W) RGB in [0, 1]"
        mlmodel.input_description["y"] = "target image, (N, 3, H, W) RGB in [0, 1]"
        mlmodel.output_description["proxy"] = "proxy target P in [0, 1] RGB space"
        if "residual" in graph.output_names:
            mlmodel.output_description["residual"] = "phi(y_hat_n - P_n); grad = residual * k*alpha/(3HW)/std[c] on the host in fp32"
        else:
            mlmodel.output_description["grad"] = "perceptual gradient w.r.t. the [0, 1] y_hat"
        mlmodel.user_defined_metadata.update(metadata_strings(model, options, self.name, graph.output_names))
        mlmodel.user_defined_metadata["pgn.minimum_deployment_target"] = options.deployment_target
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
            mlmodel.save(str(path))

    def structural_checks(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Inspect the saved ``.mlpackage`` without Core ML; raises :class:`PGNError` if a check fails.

        Returns the facts checked: program type, specification version, inputs/outputs (names, dtypes, shapes or
        ranges), op counts, fp16 ops, metadata keys.
        """
        ct = import_coremltools()
        output_names = self.output_names(options)
        spec = ct.models.MLModel(str(artifact), skip_model_load=True).get_spec()
        problems = []
        kind = spec.WhichOneof("Type")
        if kind != "mlProgram":
            problems.append(f"model type is {kind}, expected mlProgram")
        target_version = int(deployment_target(ct, options.deployment_target))
        if spec.specificationVersion < target_version:
            problems.append(f"specification version {spec.specificationVersion} < {target_version} ({options.deployment_target})")
        array = ct.proto.FeatureTypes_pb2.ArrayFeatureType
        inputs = {}
        for feature in spec.description.input:
            t = feature.type.multiArrayType
            entry = {"dtype": array.ArrayDataType.Name(t.dataType), "shape": list(t.shape)}
            if t.HasField("shapeRange"):
                entry["range"] = [[r.lowerBound, r.upperBound] for r in t.shapeRange.sizeRanges]
            inputs[feature.name] = entry
        outputs = {f.name: array.ArrayDataType.Name(f.type.multiArrayType.dataType) for f in spec.description.output}
        if tuple(inputs) != INPUT_NAMES:
            problems.append(f"inputs are {list(inputs)}, expected {list(INPUT_NAMES)}")
        if tuple(outputs) != tuple(output_names):
            problems.append(f"outputs are {list(outputs)}, expected {list(output_names)}")
        for name, entry in inputs.items():
            if entry["dtype"] != "FLOAT32":
                problems.append(f"input {name} is {entry['dtype']}, expected FLOAT32")
            if options.dynamic:
                rng = options.shape_range(model.size_multiple)
                want = [[lo, hi] for lo, hi in zip(rng.min, rng.max)]
                if entry.get("range") != want:
                    problems.append(f"input {name} has shape range {entry.get('range')}, expected {want}")
            elif entry["shape"] != list(options.shape):
                problems.append(f"input {name} has shape {entry['shape']}, expected {list(options.shape)}")
        for name, dtype in outputs.items():
            if dtype != "FLOAT32":
                problems.append(f"output {name} is {dtype}, expected FLOAT32")
        ops, fp16_ops = _op_counts(spec)
        compute_ops = sum(n for op, n in ops.items() if op != "const")
        if options.precision == "fp16" and fp16_ops < compute_ops // 2:
            problems.append(f"only {fp16_ops} of {compute_ops} ops compute in fp16")
        if options.precision == "fp32" and fp16_ops:
            problems.append(f"{fp16_ops} ops compute in fp16 in an fp32 model")
        meta = dict(spec.description.metadata.userDefined)
        required = ("pgn.backbone", "pgn.head", "pgn.constants", "pgn.input_range", "pgn.precision", "pgn.gradient")
        missing = [k for k in required if k not in meta]
        if missing:
            problems.append(f"metadata lacks {', '.join(missing)}")
        if problems:
            raise PGNError("CoreML package failed its structural checks: " + "; ".join(problems))
        return {
            "passed": True,
            "model_type": kind,
            "specification_version": spec.specificationVersion,
            "minimum_deployment_target": options.deployment_target,
            "inputs": inputs,
            "outputs": outputs,
            "ops": dict(sorted(ops.items())),
            "fp16_ops": fp16_ops,
            "metadata_keys": sorted(meta),
        }

    def runtime_missing_here(self) -> str | None:
        """Off macOS: ``MLModel.predict`` needs Core ML, so the package is checked structurally only."""
        return None if sys.platform == "darwin" else NOT_RUN_OFF_MACOS

    def describe(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Converter facts: coremltools version, compute precision, minimum deployment target."""
        ct = import_coremltools()
        return {
            "name": "coremltools.convert (TorchScript trace → ML program)",
            "coremltools": ct.__version__,
            "compute_precision": "FLOAT16" if options.precision == "fp16" else "FLOAT32",
            "minimum_deployment_target": options.deployment_target,
        }

    def load_runtime(self, artifact: Path, manifest: dict[str, Any], settings: RuntimeSettings) -> "CoreMLRuntime":
        """``MLModel.predict`` with ``settings.compute_units``; Core ML picks its own devices, so ``device`` stays ``cpu``."""
        if settings.device != "cpu":
            raise PGNError("CoreML picks its own compute units: leave device='cpu' and pass compute_units= instead")
        return CoreMLRuntime(artifact, manifest, compute_units=settings.compute_units)


#: The row of :data:`export.formats.FORMATS`.
TARGET = CoreMLTarget()


# --------------------------------------------------------------------------------------------------------
# Conversion helpers


def import_coremltools():
    """Import coremltools quietly (it prints version warnings at import); :class:`RuntimeUnavailable` if missing."""
    buffer = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            import logging

            logger = logging.getLogger("coremltools")
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                import coremltools as ct
            finally:
                logger.setLevel(level)
    except ImportError:
        raise RuntimeUnavailable(f'coremltools is not installed: {install_hint("coreml")} (converts on Linux and macOS)') from None
    return ct


def deployment_target(ct, name: str):
    """The ``ct.target`` member called ``name`` (e.g. ``iOS16``, ``macOS13``); a clear error if unknown or too old."""
    members = ct.target.__members__
    if name not in members or int(members[name]) < MIN_SPEC_VERSION:
        valid = [n for n, v in members.items() if int(v) >= MIN_SPEC_VERSION and not n.startswith(("watch", "tv"))]
        raise PGNError(f"unknown or too old deployment_target {name!r} for an ML program: use one of {', '.join(valid)}")
    return members[name]


def _op_counts(spec) -> tuple[dict[str, int], int]:
    """Op type → count over the program, and how many non-const ops output fp16 tensors."""
    from coremltools.proto import MIL_pb2

    counts: dict[str, int] = {}
    fp16 = 0
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] = counts.get(op.type, 0) + 1
                if op.type != "const" and op.outputs:
                    fp16 += int(op.outputs[0].type.tensorType.dataType == MIL_pb2.DataType.FLOAT16)
    return counts, fp16


# --------------------------------------------------------------------------------------------------------
# Runtime


class CoreMLRuntime(Runtime):
    """A ``.mlpackage`` run with ``MLModel.predict`` (macOS only).

    Args:
        compute_units: ``ALL`` (default: Neural Engine, GPU, CPU), ``CPU_AND_NE``, ``CPU_AND_GPU`` or ``CPU_ONLY``.
    """

    name = "coreml"

    def __init__(self, artifact: Path, manifest: dict[str, Any], *, compute_units: str = "ALL"):
        super().__init__(artifact, manifest)
        if sys.platform != "darwin":
            raise RuntimeUnavailable(
                f"{NOT_RUN_OFF_MACOS} (MLModel.predict needs Core ML); run this on a Mac with pip install "
                "coremltools, or load the .mlpackage in an iOS/macOS app"
            )
        ct = import_coremltools()
        units = getattr(ct.ComputeUnit, compute_units, None)
        if units is None:
            raise PGNError(f"unknown compute_units {compute_units!r}: use ALL, CPU_AND_NE, CPU_AND_GPU or CPU_ONLY")
        self.model = ct.models.MLModel(str(artifact), compute_units=units)
        self.info.update(runtime="coreml", coremltools=ct.__version__, compute_units=compute_units,
                         macos=platform.mac_ver()[0])

    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model.predict({"y_hat": y_hat, "y": y})
        return {n: np.asarray(out[n]) for n in self.output_names}
