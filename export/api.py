"""``export.export`` and ``export.load_runtime``: both reach a target only through the ``FORMATS`` table.

For every target of an export: check the options against the target, convert into a temporary folder inside
``output_dir``, verify (parity against PyTorch where the runtime is here, structural checks otherwise), write the
manifest, and only then move artifact and manifest into place. A failed target leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pgn
from pgn.errors import PGNError
from pgn.files import check_input_file, hold_folder
from pgn.heap import new_objects_collected_only
from pgn.model import nonfinite_tensors

from .errors import RuntimeUnavailable
from .formats import FORMATS, options_for, packages, resolve_targets, target_of
from .graph import check_exportable
from .manifest import (artifact_stem, build_manifest, check_artifact, check_input_shapes, manifest_path, read_manifest,
                       sha256_of, size_mb, write_manifest)
from .options import ExportOptions
from .runtimes import Runtime, check_threads
from .target import ExportTarget, RuntimeSettings
from .verify import not_executed, parity_inputs, verify_runtime


@dataclass
class ExportResult:
    """What happened to one target.

    Attributes:
        target: the target's name (``onnx``, ``tensorrt``, ``coreml``, ...).
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
        target: a key of :data:`export.FORMATS` (``onnx``, ``tensorrt``, ``coreml``) or ``all``.
        output_dir: folder for artifacts and their ``<artifact>.manifest.json``.
        size: (H, W) of the input (an int for square); must be a multiple of the backbone's size multiple
            (UNet 32, ResNet 2). With ``dynamic`` the optimal shape.
        batch: batch size (with ``dynamic`` the optimal one).
        dynamic: dynamic batch/height/width (TensorRT and CoreML: within ``min_size``/``max_size``/``max_batch``).
        precision: one of the target's precisions (``fp32``, ``fp16``); ``None`` uses each target's default
            (ONNX/TensorRT fp32, CoreML fp16).
        opset: ONNX opset (ONNX and TensorRT); ``None`` = the exporter's default.
        legacy_exporter: use the TorchScript ONNX exporter instead of dynamo (ONNX and TensorRT).
        verify: run the parity check (default and recommended; ``False`` marks artifacts ``converted-not-run``).
        weights_source: where the weights came from, recorded in the manifest (the CLI fills it in).
        progress: called with short step messages (e.g. for a spinner).
        **format_options: ``min_size``, ``max_size``, ``max_batch``, ``workspace_gb``, ``timing_cache``,
            ``deployment_target``, ``graph_options`` (see :class:`export.options.ExportOptions`).

    Returns:
        One :class:`ExportResult` per target, in target order. Conversion or parity failures are results with
        status ``failed`` (nothing left on disk); check ``result.ok``.

    Raises:
        PGNError: bad arguments (unknown target with a "did you mean", an option the target does not take, a
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
    targets = resolve_targets(target)
    base = ExportOptions.from_kwargs(
        size=size, batch=batch, dynamic=dynamic, precision=precision, opset=opset,
        legacy_exporter=legacy_exporter, **format_options,
    )
    base.check_size(model.size_multiple, model.config.backbone)
    if base.dynamic:
        base.shape_range(model.size_multiple)  # validates the bounds
    out_dir = Path(output_dir)
    plan = [(t, options_for(t, base, out_dir)) for t in targets]
    check_exportable(model.config.head, dynamic=base.dynamic, legacy_exporter=base.legacy_exporter)
    for t, opts in plan:
        try:
            t.validate(model, opts)
        except RuntimeUnavailable:
            pass  # reported per target below (or raised by check_available for a single target)
    if len(plan) == 1:
        plan[0][0].check_available()
    say = progress or (lambda message: None)
    references: dict = {}
    results = []
    with hold_folder(out_dir, "export", "output folder"):  # one export at a time per folder
        for stale in remove_stale_temporaries(out_dir):
            say(f"removed {stale.name}, the temporary folder of an export that was killed")
        for t, opts in plan:
            try:
                results.append(_export_one(model, t, opts, out_dir, verify, weights_source, references, say))
            except RuntimeUnavailable as e:
                results.append(ExportResult(t.name, "failed", None, None, not_executed(str(e)), 0.0, 0.0, str(e)))
    return results


#: Prefix of the temporary folder each target is converted in, inside the output folder.
TEMPORARY_PREFIX = ".pgn-export-"


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporary folders (``.pgn-export-*``) that a killed export left in ``out_dir``; returns them.

    Call it only while holding ``out_dir`` (:func:`pgn.files.hold_folder`): every live export holds its folder,
    so a temporary folder found then belongs to a process that is gone.
    """
    stale = [p for p in Path(out_dir).glob(TEMPORARY_PREFIX + "*") if p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def load_runtime(
    artifact: str | Path,
    *,
    target: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    graph_optimization_level: str = "all",
    inter_op_threads: int | None = None,
    compute_units: str = "ALL",
    tf32: bool = False,
) -> Runtime:
    """Load an exported artifact with its target's runtime; reads the manifest beside it.

    Args:
        artifact: an artifact written by :func:`export.export` (``.onnx`` file, ``.engine`` file, ``.mlpackage``
            folder, ...).
        target: a key of :data:`export.FORMATS`; inferred from the suffix if ``None``.
        device: ``cpu`` or ``cuda`` (``cuda:N``). ONNX: picks the execution provider; TensorRT needs ``cuda``;
            CoreML chooses its own units (see ``compute_units``).
        threads, graph_optimization_level, inter_op_threads: ONNX Runtime session options.
        compute_units: CoreML compute units.
        tf32: ONNX Runtime on CUDA: allow TF32 math (off by default, for fp32 parity; TensorRT engines fix
            it when they are built, see ``ExportOptions.tf32``).

    Raises:
        RuntimeUnavailable: the runtime, device or OS is missing here (says what to install / where it runs).
        PGNError: the artifact or its manifest is missing, is not what it should be (not a regular file, not a
            JSON object), or does not match (the artifact's sha256 or input shapes differ from the manifest's);
            a thread count that no machine has.
    """
    artifact = Path(artifact)
    if target is None:
        chosen = target_of(artifact)
    else:
        targets = resolve_targets(target)
        if len(targets) != 1:
            raise PGNError(f"load_runtime needs one target: one of {', '.join(FORMATS)}")
        chosen = targets[0]
    if not os.path.isdir(artifact):  # a package (.mlpackage) is a folder; every other artifact a regular file
        check_input_file(artifact, "artifact")
    check_threads(threads, "threads")
    check_threads(inter_op_threads, "inter_op_threads")
    manifest = read_manifest(artifact)
    if manifest.get("target") != chosen.name:
        raise PGNError(f"{artifact} is a {manifest.get('target')} artifact according to its manifest, not {chosen.name}")
    check_artifact(artifact, manifest)
    settings = RuntimeSettings(device=device, threads=threads, graph_optimization_level=graph_optimization_level,
                               inter_op_threads=inter_op_threads, compute_units=compute_units, tf32=tf32)
    runtime = chosen.load_runtime(artifact, manifest, settings)
    check_input_shapes(artifact, manifest, runtime.artifact_input_shapes())
    return runtime


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
    path = check_input_file(checkpoint, "checkpoint")
    model = pgn.load(path, preset=backbone, **overrides)
    fmt = getattr(model, "checkpoint_format", "?")
    return model, f"checkpoint {path.name} (sha256 {sha256_of(path)}, format {fmt})"


# lowering and verifying allocate enough to trigger many full garbage collections: the heap from before is set aside
@new_objects_collected_only(collect=False)
def _export_one(model, target: ExportTarget, opts: ExportOptions, out_dir: Path, verify: bool, weights_source, references, say) -> ExportResult:
    start = time.perf_counter()

    def failed(reason: str, parity: dict | None = None) -> ExportResult:
        return ExportResult(target.name, "failed", None, None, parity or not_executed(reason), time.perf_counter() - start, 0.0, reason)

    target.check_available()
    final = out_dir / (artifact_stem(model, opts) + target.suffix)
    with tempfile.TemporaryDirectory(prefix=TEMPORARY_PREFIX, dir=out_dir) as tmp:
        artifact = Path(tmp) / final.name
        say(f"{target.name}: converting {final.name}")
        try:
            target.export(model, artifact, opts)
        except RuntimeUnavailable:
            raise
        except PGNError as e:
            return failed(str(e))
        manifest = build_manifest(
            model=model, options=opts, target=target.name, artifact=artifact, output_names=target.output_names(opts),
            exporter=target.describe(artifact, opts, model), target_info=target.target_info(opts, model),
            parity={}, status="pending", weights_source=weights_source,
            shape_range=opts.shape_range(model.size_multiple).to_dict() if opts.dynamic else None, packages=packages(),
        )
        write_manifest(manifest_path(artifact), manifest)
        say(f"{target.name}: verifying")
        try:
            parity = _verify(target, model, artifact, opts, verify, references)
        except PGNError as e:  # structural check failures and runtime errors
            return failed(str(e))
        if parity.get("executed") and not parity["passed"]:
            return failed("parity failed: " + "; ".join(parity["failures"][:3]), parity)
        status = "verified" if parity.get("executed") else "converted-not-run"
        manifest.update(status=status, parity=parity)
        write_manifest(manifest_path(artifact), manifest)
        _move_into_place(artifact, final)
        _move_into_place(manifest_path(artifact), manifest_path(final))
    reason = "" if status == "verified" else parity.get("reason", "")
    return ExportResult(target.name, status, final, manifest_path(final), parity, time.perf_counter() - start, round(size_mb(final), 3), reason)


def _verify(target: ExportTarget, model, artifact: Path, opts: ExportOptions, verify: bool, references) -> dict:
    """The parity record: structural checks, then parity against PyTorch where the target's runtime runs here."""
    checks = target.structural_checks(artifact, opts, model)
    if not verify:
        return not_executed("verification skipped (verify=False)", checks)
    missing = target.runtime_missing_here()
    if missing:
        return not_executed(missing, checks)
    runtime = load_runtime(artifact, target=target.name, device=target.verify_device)
    sets = parity_inputs(opts.size, opts.batch, other_size=_other_size(opts, model.size_multiple) if opts.dynamic else None)
    batch = opts.shape_range(model.size_multiple).max[0] if opts.dynamic else opts.batch  # the largest it takes
    parity = verify_runtime(runtime, model, sets, target.tolerance(opts.precision), fixed_batch=batch, references=references)
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


def _move_into_place(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src`` (files or package folders)."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)
