"""``export.export``: write a PGN as ONNX / TensorRT / CoreML artifacts, verify each, and describe it.

For every target: check the options against the format table, convert into a temporary folder inside
``output_dir``, verify (parity against PyTorch where the runtime is here, structural checks otherwise), write the
manifest, and only then move artifact and manifest into place. A failed target leaves nothing behind.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pgn
from pgn.errors import PGNError
from pgn.model import nonfinite_tensors

from .errors import RuntimeUnavailable
from .formats import Format, resolve_targets
from .graph import check_exportable, output_names
from .manifest import artifact_stem, build_manifest, manifest_path, size_mb, write_manifest
from .options import ExportOptions
from .verify import Tolerance, not_executed, parity_inputs, verify_runtime

STATUSES = ("verified", "converted-not-run", "failed")
COREML_NOT_RUN = "not executed: CoreML predicts on macOS only"


@dataclass
class ExportResult:
    """What happened to one target.

    Attributes:
        target: ``onnx``, ``tensorrt`` or ``coreml``.
        status: ``verified`` (parity passed), ``converted-not-run`` (written and structurally checked, but its
            runtime is not here, e.g. CoreML on Linux) or ``failed`` (nothing written; see ``reason``).
        artifact: the artifact path, ``None`` if failed.
        manifest_path: its manifest, ``None`` if failed.
        parity: the parity record (metrics per input set, tolerance, runtime info) or why it did not run.
        seconds: wall time of conversion plus verification.
        size_mb: artifact size in MB.
        reason: why it failed or was not run.
    """

    target: str
    status: str
    artifact: Path | None
    manifest_path: Path | None
    parity: dict = field(default_factory=dict)
    seconds: float = 0.0
    size_mb: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True unless the target failed."""
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["artifact"] = str(self.artifact) if self.artifact else None
        d["manifest_path"] = str(self.manifest_path) if self.manifest_path else None
        return d


def export(
    model: "pgn.PGN",
    target: str = "onnx",
    *,
    output_dir: str | Path = "exports",
    size: int | tuple[int, int] = (224, 224),
    batch: int = 1,
    dynamic: bool = False,
    precision: str | None = None,
    opset: int | None = None,
    legacy_exporter: bool = False,
    verify: bool = True,
    weights_source: str | None = None,
    progress: Callable[[str], None] | None = None,
    **format_options: Any,
) -> list[ExportResult]:
    """Export a PGN (backbone + head) to one or all targets, verifying each artifact.

    Args:
        model: the PGN; never modified (a copy in eval mode is exported).
        target: ``onnx``, ``tensorrt``, ``coreml`` or ``all``.
        output_dir: folder for artifacts and their ``<artifact>.manifest.json``.
        size: (H, W) of the input (an int for square); must be a multiple of the backbone's size multiple
            (UNet 32, ResNet 2). With ``dynamic`` the optimal shape.
        batch: batch size (with ``dynamic`` the optimal one).
        dynamic: dynamic batch/height/width (TensorRT and CoreML: within ``min_size``/``max_size``/``max_batch``).
        precision: ``fp32`` or ``fp16``; ``None`` uses each format's default (ONNX/TensorRT fp32, CoreML fp16).
        opset: ONNX opset (ONNX and TensorRT); ``None`` = the exporter's default.
        legacy_exporter: use the TorchScript ONNX exporter instead of dynamo (ONNX and TensorRT).
        verify: run the parity check (default and recommended; ``False`` marks artifacts ``converted-not-run``).
        weights_source: where the weights came from, recorded in the manifest (the CLI fills it in).
        progress: called with short step messages (e.g. for a spinner).
        **format_options: ``min_size``, ``max_size``, ``max_batch``, ``workspace_gb``, ``timing_cache``,
            ``deployment_target`` (see :class:`export.options.ExportOptions`).

    Returns:
        One :class:`ExportResult` per target, in target order. Conversion or parity failures are results with
        status ``failed`` (nothing left on disk); check ``result.ok``.

    Raises:
        PGNError: bad arguments (unknown target with a "did you mean", an option the format does not take, a
            size the backbone does not allow) or NaN/infinite weights, before anything is written.
        RuntimeUnavailable: a single target whose converter/runtime is missing here (e.g. TensorRT).

    Example::

        import pgn, export
        results = export.export(pgn.build("unet"), "onnx", size=(256, 256))
        print(results[0].status, results[0].artifact)
    """
    if not isinstance(model, pgn.PGN):
        raise PGNError(f"export needs a pgn.PGN model, got {type(model).__name__}")
    nonfinite = nonfinite_tensors(model)
    if nonfinite:
        raise PGNError(f"the model has NaN or infinite weights in {len(nonfinite)} tensor(s) ({', '.join(nonfinite[:3])}): refusing to export it; load or train finite weights")
    formats = resolve_targets(target)
    base = ExportOptions.from_kwargs(
        size=size, batch=batch, dynamic=dynamic, precision=precision, opset=opset,
        legacy_exporter=legacy_exporter, **format_options,
    )
    base.check_size(model.size_multiple, model.config.backbone)
    if base.dynamic:
        base.shape_range(model.size_multiple)  # validates the bounds
    plan = [(fmt, base.for_format(fmt)) for fmt in formats]
    for fmt, opts in plan:
        check_exportable(model.config.head, fmt.name, dynamic=opts.dynamic, legacy_exporter=opts.legacy_exporter)
        validate = getattr(_module(fmt), "validate", None)
        try:
            if validate is not None:
                validate(opts)
        except RuntimeUnavailable:
            pass  # reported per target below (or raised by check_available for a single target)
    if len(plan) == 1:
        _module(plan[0][0]).check_available()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    references: dict = {}
    results = []
    for fmt, opts in plan:
        try:
            results.append(_export_one(model, fmt, opts, out_dir, verify, weights_source, references, say))
        except RuntimeUnavailable as e:
            results.append(ExportResult(fmt.name, "failed", None, None, not_executed(str(e)), 0.0, 0.0, str(e)))
    return results


RANDOM_WEIGHTS = (
    "RANDOM INIT (no checkpoint): fine for graph, size and latency work; its gradients are meaningless"
)


def load_model(backbone: str | None, *, head: str | None = None, checkpoint: str | Path | None = None) -> tuple["pgn.PGN", str]:
    """The model to export and a description of its weights (for the manifest).

    Args:
        backbone: a paper preset (``resnet4``, ``resnet6``, ``resnet8``, ``unet``); may be ``None`` with a checkpoint.
        head: head kind override (``constrained``, ``proxy``, ``direct``, ``hybrid``, ``warped``).
        checkpoint: a checkpoint file (ours or the authors'); ``None`` builds the preset with random weights.
    """
    overrides = {"head": head} if head else {}
    if checkpoint is None:
        if backbone is None:
            raise PGNError("pass a backbone (e.g. --backbone unet) or a checkpoint to export")
        return pgn.build(backbone, **overrides), RANDOM_WEIGHTS
    path = Path(checkpoint)
    if not path.is_file():
        raise PGNError(f"checkpoint not found: {path}")
    model = pgn.load(path, preset=backbone, **overrides)
    from .manifest import sha256_of

    fmt = getattr(model, "checkpoint_format", "?")
    return model, f"checkpoint {path.name} (sha256 {sha256_of(path)}, format {fmt})"


def _module(fmt: Format):
    return importlib.import_module(fmt.module)


def _export_one(model, fmt: Format, opts: ExportOptions, out_dir: Path, verify: bool, weights_source, references, say) -> ExportResult:
    start = time.perf_counter()
    module = _module(fmt)
    module.check_available()
    if fmt.name == "tensorrt" and opts.timing_cache is None:
        opts = replace(opts, timing_cache=out_dir / "tensorrt-timing.cache")
    final = out_dir / (artifact_stem(model, opts) + fmt.suffix)
    names = output_names(opts.precision)
    with tempfile.TemporaryDirectory(prefix=".pgn-export-", dir=out_dir) as tmp:
        artifact = Path(tmp) / final.name
        say(f"{fmt.name}: converting {final.name}")
        try:
            module.export(model, artifact, opts)
        except RuntimeUnavailable:
            raise
        except PGNError as e:
            return ExportResult(fmt.name, "failed", None, None, not_executed(str(e)), time.perf_counter() - start, 0.0, str(e))
        manifest = build_manifest(
            model=model, options=opts, target=fmt.name, artifact=artifact, output_names=names,
            exporter=_exporter_info(fmt, module, artifact, opts, model), target_info=_target_info(fmt, opts, model),
            parity={}, status="pending", weights_source=weights_source,
            shape_range=opts.shape_range(model.size_multiple).to_dict() if opts.dynamic else None,
        )
        write_manifest(manifest_path(artifact), manifest)
        say(f"{fmt.name}: verifying")
        try:
            parity = _verify(fmt, module, model, artifact, opts, names, verify, references)
        except PGNError as e:  # structural check failures and runtime errors
            return ExportResult(fmt.name, "failed", None, None, not_executed(str(e)), time.perf_counter() - start, 0.0, str(e))
        if parity.get("executed") and not parity["passed"]:
            reason = "parity failed: " + "; ".join(parity["failures"][:3])
            return ExportResult(fmt.name, "failed", None, None, parity, time.perf_counter() - start, 0.0, reason)
        status = "verified" if parity.get("executed") else "converted-not-run"
        manifest.update(status=status, parity=parity)
        write_manifest(manifest_path(artifact), manifest)
        _move_into_place(artifact, final)
        _move_into_place(manifest_path(artifact), manifest_path(final))
    reason = "" if status == "verified" else parity.get("reason", "")
    return ExportResult(fmt.name, status, final, manifest_path(final), parity, time.perf_counter() - start, round(size_mb(final), 3), reason)


def _verify(fmt: Format, module, model, artifact: Path, opts: ExportOptions, names, verify: bool, references) -> dict:
    checks = None
    if fmt.name == "coreml":
        checks = module.structural_checks(artifact, opts, names, model.size_multiple)
    if not verify:
        return not_executed("verification skipped (verify=False)", checks)
    if fmt.name == "coreml" and sys.platform != "darwin":
        return not_executed(COREML_NOT_RUN, checks)
    from .runtimes import load_runtime

    device = "cuda" if fmt.name == "tensorrt" else "cpu"
    runtime = load_runtime(artifact, target=fmt.name, device=device)
    sets = parity_inputs(opts.size, opts.batch, other_size=_other_size(opts, model.size_multiple) if opts.dynamic else None)
    parity = verify_runtime(runtime, model, sets, Tolerance.for_precision(opts.precision),
                            fixed_batch=None if opts.dynamic else opts.batch, references=references)
    if checks is not None:
        parity["structural_checks"] = checks
    return parity


def _other_size(opts: ExportOptions, multiple: int) -> tuple[int, int]:
    """A second (H, W) for dynamic parity: one step taller and one step narrower (or wider), within range."""
    rng = opts.shape_range(multiple)
    step = -(-32 // multiple) * multiple
    h, w = opts.size
    h2 = h + step if h + step <= rng.max[2] else h - step
    w2 = w - step if w - step >= rng.min[3] else w + step
    return h2, w2


def _exporter_info(fmt: Format, module, artifact: Path, opts: ExportOptions, model) -> dict:
    if fmt.name == "onnx":
        return module.describe(artifact, opts)
    if fmt.name == "coreml":
        return module.describe(opts)
    return {
        "name": "TensorRT Python API (OnnxParser → build_serialized_network) from "
        + ("the legacy TorchScript ONNX exporter" if opts.legacy_exporter else "the dynamo ONNX exporter"),
        "opset": opts.opset or "exporter default",
    }


def _target_info(fmt: Format, opts: ExportOptions, model) -> dict:
    info: dict[str, Any] = {"runs_on": fmt.runs_on, "verified_by": fmt.verified_by}
    if fmt.name == "tensorrt":
        from .tensorrt import describe, require_tensorrt

        info.update(describe(require_tensorrt(), opts, model.size_multiple))
    return info


def _move_into_place(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src`` (files or package folders)."""
    import os
    import shutil

    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)
