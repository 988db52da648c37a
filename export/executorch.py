"""The ExecuTorch target (:class:`ExecuTorchTarget`): a ``.pte`` program whose operators run in the XNNPACK
delegate, and :class:`ExecuTorchRuntime`, ExecuTorch's own runtime (``executorch.runtime``), which runs it.

ExecuTorch is PyTorch's on-device runtime (Android, iOS, embedded Linux). XNNPACK is the CPU kernel library it
uses on phones; the same kernels run on x86, so a ``.pte`` is verified here with the code path a phone runs.

Steps: :class:`export.graph.ExportGraph` (fp32, outputs ``proxy`` and ``grad``) → ``torch.export.export``
(fixed shapes, or bounded ``torch.export.Dim`` ranges whose height and width are multiples of the backbone's
size multiple) → for int8, static pt2e quantization (:func:`quantize_int8`) → ``to_edge_transform_and_lower``
with the ``XnnpackPartitioner`` → ``to_executorch`` → the ``.pte`` bytes. Operators the delegate does not take
run on ExecuTorch's own (portable) kernels; :func:`read_program` reads them back from the written program
for the manifest, and an operator this runtime has no kernel for fails the export with its name.

int8 (:data:`INT8_RECIPE`): by default only the convolutions are quantized (int8 weights per output channel, int8
activations per tensor; ``int8_ops`` picks another selection of :data:`export.int8.INT8_OPS`), calibrated on
bundled photographs disjoint from the parity photographs (:func:`export.verify.calibration_pairs`). The ImageNet
normalization, residual additions, concatenations, upsampling and the closed-form head stay fp32, so the gradient
never passes through an 8-bit quantizer; inputs and outputs stay float32. Parity: the shared int8 gate, gradient
cosine ≥ :data:`export.verify.INT8_MIN_GRAD_COSINE` against float64 PyTorch.

Threads: ExecuTorch has one thread pool per process (XNNPACK and the portable kernels share it), and a method
keeps using the pool it was loaded with. :class:`ExecuTorchRuntime` sizes it to ``threads`` before loading its
method, refuses to resize it while another loaded program uses it (:class:`SharedThreadPool`), and records the
size in use in ``info["threads"]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import warnings
import weakref
from dataclasses import fields, replace
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

import pgn
from pgn.errors import PGNError, first_line

from .errors import RuntimeUnavailable
from .executorch_runtime import import_runtime
from .graph import INPUT_NAMES, ExportGraph
from .graph_options import GraphOptions
from .options import ExportOptions
from .runtimes import Runtime, parse_device
from .target import ExportTarget, RuntimeSettings
from .int8 import CALIBRATION_RECORD, conv_selected
from .verify import CALIBRATION_PAIRS, INT8_MIN_GRAD_COSINE, calibration_pairs  # noqa: F401 (the int8 gate, re-exported)

INSTALL_HINT = 'pip install "pgn-toolkit[executorch]"'
#: The method every pgn ``.pte`` program holds.
METHOD = "forward"
#: The delegate every pgn ``.pte`` program uses.
DELEGATE = "XnnpackBackend"
#: Default largest height/width and batch of a dynamic program. ExecuTorch allocates the memory it plans for
#: tensors outside the delegate (the UNet's bilinear upsamplings at dynamic shapes, the ResNets' nearest
#: upsampling) at the largest shape: the shared defaults (1024², batch 8) would plan 5.7 GB for the UNet.
DEFAULT_MAX_SIZE = 512
DEFAULT_MAX_BATCH = 2
#: The selections of :data:`export.int8.INT8_OPS` :func:`quantize_int8` implements, the default first.
INT8_OPS = ("conv", "dense", "pointwise", "all")
DEFAULT_INT8_OPS = INT8_OPS[0]
#: What an int8 program is, recorded in its manifest (``target_info.quantization``).
INT8_RECIPE = {
    "method": "static post-training quantization: torch.export → torchao prepare_pt2e → calibration → convert_pt2e",
    "quantizer": "executorch XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True)",
    "weights": "int8, symmetric, per output channel (min-max)",
    "activations": "int8, affine, per tensor (histogram observer)",
    "quantized_ops": "conv2d only",
    "fp32_ops": "ImageNet normalization, residual additions, concatenations, upsampling and the closed-form head",
    "inputs_outputs": "float32: (de)quantization happens inside the XNNPACK delegate",
    **CALIBRATION_RECORD,
}
#: ``quantized_ops`` of :data:`INT8_RECIPE` for each selection of :data:`INT8_OPS`, in ExecuTorch's operator names.
QUANTIZED_OPS = {
    "conv": "conv2d only",
    "dense": "conv2d with one group (1x1, stem and full convs); depthwise and grouped convs stay fp32",
    "pointwise": "1x1 conv2d with one group only",
    "all": "every operator XNNPACKQuantizer supports, the closed-form head's arithmetic included",
}


def int8_recipe(ops: str) -> dict[str, Any]:
    """:data:`INT8_RECIPE` for the int8 op selection ``ops`` (one of :data:`INT8_OPS`)."""
    return dict(INT8_RECIPE, ops=ops, quantized_ops=QUANTIZED_OPS[ops])


# --------------------------------------------------------------------------------------------------------
# The target


class ExecuTorchTarget(ExportTarget):
    """An ExecuTorch program (``.pte``) with the XNNPACK delegate, fp32 or int8, verified in ExecuTorch's runtime."""

    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "int8")
    options = ("min_size", "max_size", "max_batch", "int8_ops")
    int8_ops = INT8_OPS
    packages = {"executorch": ("executorch",), "torchao": ("torchao",)}
    runs_on = ("Android and iOS apps (ExecuTorch runtime, XNNPACK CPU kernels), embedded Linux; "
               "Linux and macOS through the executorch Python package")
    verified_by = "ExecuTorch's runtime (executorch.runtime) with the XNNPACK delegate on this machine's CPU"
    #: Measured with ``python -m benchmarks.graph_study`` (224², XNNPACK): UNet row bands and the split decoder conv
    #: are each faster and leaner; the transposed upsample conv keeps the ResNets' upsampling inside the delegate.
    default_graph_options = GraphOptions(band_rows=32, band_levels=2, decoder_conv="split", upsample_conv="transposed")

    def check_available(self) -> None:
        """Raise :class:`RuntimeUnavailable` (naming the ``executorch`` extra) if ExecuTorch cannot be imported."""
        import_executorch()

    def with_defaults(self, options: ExportOptions, output_dir: Path) -> ExportOptions:
        """Dynamic programs get the tighter default bounds :data:`DEFAULT_MAX_SIZE` and :data:`DEFAULT_MAX_BATCH`
        (ExecuTorch plans the memory of tensors outside the delegate for the largest shape)."""
        if not options.dynamic:
            return options
        max_size = options.max_size or tuple(max(DEFAULT_MAX_SIZE, s) for s in options.size)
        return replace(options, max_size=max_size, max_batch=options.max_batch or max(DEFAULT_MAX_BATCH, options.batch))

    def export(self, model: "pgn.PGN", path: Path, options: ExportOptions) -> None:
        """Write ``model`` (backbone + head) as a ``.pte`` program at ``path``; a one-line :class:`PGNError`
        naming the operator if it cannot be lowered."""
        et = import_executorch()
        graph = ExportGraph(model, outputs="grad", size=options.size, dynamic=options.dynamic, graph_options=options.graph_options)
        example, dynamic_shapes = trace_inputs(options, model.size_multiple)
        program = capture_graph(graph, example, dynamic_shapes)
        if options.precision == "int8":
            program = quantize_int8(program, example, dynamic_shapes, calibration_pairs(options.size, CALIBRATION_PAIRS),
                                    batch=options.batch, ops=options.int8_ops or DEFAULT_INT8_OPS)
        buffer = lower(et, program)
        Path(path).write_bytes(buffer)

    def describe(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Facts read back from the written program: delegates, and the operators left outside them."""
        ops = read_program(Path(artifact).read_bytes())
        return {
            "name": "torch.export → executorch.exir.to_edge_transform_and_lower (XnnpackPartitioner) → to_executorch",
            "executorch": _version("executorch"),
            "method": METHOD,
            **ops,
        }

    def target_info(self, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Where the program runs, its delegate, and for int8 the quantization recipe."""
        info = super().target_info(options, model)
        info["delegate"] = DELEGATE
        info["quantization"] = int8_recipe(options.int8_ops or DEFAULT_INT8_OPS) if options.precision == "int8" else None
        return info

    def load_runtime(self, artifact: Path, manifest: dict[str, Any], settings: RuntimeSettings) -> "ExecuTorchRuntime":
        """ExecuTorch's runtime on the CPU with ``settings.threads``; other settings are ONNX Runtime's or
        Core ML's and are refused when set."""
        if parse_device(settings.device)[0] != "cpu":
            raise PGNError("ExecuTorch runs .pte programs on the CPU here (XNNPACK): leave device='cpu'")
        defaults = RuntimeSettings()
        foreign = [f.name for f in fields(settings) if f.name not in ("device", "threads")
                   and getattr(settings, f.name) != getattr(defaults, f.name)]
        if foreign:
            raise PGNError(f"ExecuTorch takes only threads= among the runtime settings, not {', '.join(foreign)}")
        return ExecuTorchRuntime(artifact, manifest, threads=settings.threads)


#: The row of :data:`export.formats.FORMATS`.
TARGET = ExecuTorchTarget()


# --------------------------------------------------------------------------------------------------------
# Capturing, quantizing and lowering


def import_executorch(compiler: bool = True) -> SimpleNamespace:
    """The ExecuTorch pieces this target uses, imported quietly; :class:`RuntimeUnavailable` if missing.

    Always the runtime (``portable_lib``, ``Runtime``, ``Verification``); with ``compiler``, also what lowers a
    program (``XnnpackPartitioner``, ``to_edge_transform_and_lower``). Without it, the compiler is not imported at
    all (:mod:`export.executorch_runtime`): seconds less for a process that only runs programs.
    """
    try:
        with quiet_native_output():
            et = import_runtime()
            if compiler:
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                et.XnnpackPartitioner = XnnpackPartitioner
                et.to_edge_transform_and_lower = keeping_operator_order(to_edge_transform_and_lower)
            et.portable_lib._threadpool_get_thread_count()  # creates the pool now, while its CPU probing is silenced
    except ImportError as e:
        raise RuntimeUnavailable(
            f"ExecuTorch is not installed ({first_line(e, 120)}): {INSTALL_HINT} "
            "(exports and runs .pte programs on Linux and macOS; apps run them on Android and iOS)"
        ) from None
    return et


@contextlib.contextmanager
def operator_order_kept():
    """Within this context, ExecuTorch keeps the traced order of a graph's operators wherever their dependencies
    allow while it cuts delegates out of the graph.

    ExecuTorch (1.5) re-sorts the graph after cutting out each delegate with ``torch.fx``'s ``legalize_graph``, a
    breadth-first topological sort: every operator whose inputs are ready runs before any of their successors, so
    a computation written tile by tile (:mod:`export.matmul_conv`) computes all of its tiles before it adds any of
    them up. The delegates that are cut out later, XNNPACK's workspace (sized by the largest delegate's live
    tensors) and ExecuTorch's memory plan all inherit that order: the talking-head fitting step at 128², batch 8,
    needed a 755 MiB workspace in that order and 100 MiB in the traced one. Here the re-sort is torch's
    ``stable_topological_sort``, which moves an operator only where a dependency requires it.
    """
    try:
        import executorch.exir.lowered_backend_module as lowered
        from torch.fx.passes.tools_common import stable_topological_sort
    except ImportError:
        lowered = None
    if getattr(lowered, "legalize_graph", None) is None:  # another ExecuTorch layout: lower as it does
        yield
        return
    original, lowered.legalize_graph = lowered.legalize_graph, stable_topological_sort
    try:
        yield
    finally:
        lowered.legalize_graph = original


def keeping_operator_order(lower: Callable) -> Callable:
    """``lower`` (``to_edge_transform_and_lower``) run within :func:`operator_order_kept`."""

    def lower_keeping_order(*args, **kwargs):
        with operator_order_kept():
            return lower(*args, **kwargs)

    return lower_keeping_order


def trace_inputs(options: ExportOptions, multiple: int) -> tuple[tuple[torch.Tensor, torch.Tensor], dict | None]:
    """Example inputs for ``torch.export`` and, for dynamic shapes, their bounded ranges.

    Dynamic height and width are ``multiple · Dim(lo/multiple … hi/multiple)``, so every shape the program
    accepts is one the backbone allows; the batch is ``Dim(1 … max_batch)``. A range of one value stays static.
    The example batch is at least 2 where the batch is dynamic (``torch.export`` fixes a dimension traced at 1).
    """
    gen = torch.Generator().manual_seed(0)
    if not options.dynamic:
        return (torch.rand(options.shape, generator=gen), torch.rand(options.shape, generator=gen)), None
    rng = options.shape_range(multiple)
    dims: dict[int, Any] = {}
    if rng.max[0] > rng.min[0]:
        dims[0] = torch.export.Dim("batch", min=rng.min[0], max=rng.max[0])
    for axis, name in ((2, "height"), (3, "width")):
        if rng.max[axis] > rng.min[axis]:
            dims[axis] = multiple * torch.export.Dim(f"{name}_in_{multiple}s", min=rng.min[axis] // multiple,
                                                     max=rng.max[axis] // multiple)
    batch = max(options.batch, 2) if 0 in dims else options.batch
    shape = (batch, 3, *options.size)
    example = (torch.rand(shape, generator=gen), torch.rand(shape, generator=gen))
    return example, {name: dict(dims) for name in INPUT_NAMES}


def quantize_int8(
    program: torch.export.ExportedProgram,
    example: tuple[torch.Tensor, torch.Tensor],
    dynamic_shapes: dict | None,
    calibration: tuple[torch.Tensor, torch.Tensor],
    *,
    batch: int = 1,
    ops: str = "conv",
) -> torch.export.ExportedProgram:
    """Static int8 quantization of a captured graph for XNNPACK (pt2e), calibrated on ``calibration``.

    Args:
        program: the fp32 graph from ``torch.export.export``.
        example, dynamic_shapes: what it was captured with (the quantized graph is captured again with them).
        calibration: (ŷ, y) pairs, (n, 3, H, W) each (:func:`export.verify.calibration_pairs`).
        batch: the calibration batch (a fixed-shape graph takes only its own batch).
        ops: a selection of :data:`export.int8.INT8_OPS` (``all``: everything XNNPACKQuantizer supports).

    Returns:
        The quantized graph, captured again, ready for :func:`lower`.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    if ops not in INT8_OPS:
        raise PGNError(f"unknown int8 op selection {ops!r}: use one of {', '.join(INT8_OPS)}")
    if ops == "all":
        quantizer.set_global(config)
    else:
        quantizer.set_operator_type(torch.ops.aten.conv2d.default, config)
        if ops != "conv":
            quantizer.set_filter_function(lambda node: _conv_selected(node, ops))
    y_hat, y = calibration
    try:
        with warnings.catch_warnings(), quiet_native_output():
            warnings.simplefilter("ignore")
            prepared = prepare_pt2e(program.module(), quantizer)
            with torch.no_grad():
                for i in range(0, len(y), batch):
                    prepared(y_hat[i : i + batch], y[i : i + batch])
            converted = convert_pt2e(prepared)
            return torch.export.export(converted, example, dynamic_shapes=dynamic_shapes)
    except PGNError:
        raise
    except Exception as e:  # noqa: BLE001 - quantizer failures become one line
        raise PGNError(f"int8 quantization for ExecuTorch failed: {type(e).__name__}: {first_line(e)}") from e


def _conv_selected(node: torch.fx.Node, ops: str) -> bool:
    """Whether the selection ``ops`` quantizes ``node`` (non-convolution nodes pass)."""
    if node.target != torch.ops.aten.conv2d.default:
        return True
    groups = node.args[6] if len(node.args) > 6 else 1
    return conv_selected(ops, groups, tuple(node.args[1].meta["val"].shape[2:]))


def lower(et: SimpleNamespace, program: torch.export.ExportedProgram) -> bytes:
    """Lower a captured graph to the XNNPACK delegate and serialize it; the ``.pte`` bytes.

    Raises:
        PGNError: naming the operator that cannot be lowered, or one left outside the delegate that this
            ExecuTorch runtime has no kernel for.
    """
    try:
        with warnings.catch_warnings(), quiet_native_output():
            warnings.simplefilter("ignore")
            edge = et.to_edge_transform_and_lower(program, partitioner=[et.XnnpackPartitioner()])
            buffer = edge.to_executorch().buffer
    except Exception as e:  # noqa: BLE001 - lowering failures become one line naming the operator
        raise PGNError(lowering_error(e)) from e
    check_kernels(et, buffer)
    return buffer


def check_kernels(et: SimpleNamespace, pte: bytes, fix: str = "change the head or backbone") -> None:
    """Raise a one-line :class:`PGNError` naming the first operator of ``pte`` outside a delegate that this ExecuTorch
    runtime has no kernel for; ``fix`` says what to change."""
    registered = et.Runtime.get().operator_registry.operator_names
    missing = sorted(op for op in read_program(pte)["outside_delegate"] if op not in registered)
    if missing:
        raise PGNError(f"operator {missing[0]} cannot run in ExecuTorch: neither XNNPACK nor this runtime's kernels "
                       f"implement it{' (also: ' + ', '.join(missing[1:]) + ')' if missing[1:] else ''}; {fix}")


def backend_available(et: SimpleNamespace, backend: str) -> bool:
    """Whether this ExecuTorch build registers ``backend`` (e.g. :data:`DELEGATE`)."""
    with quiet_native_output():
        return et.Runtime.get().backend_registry.is_available(backend)


def method_plan(pte: bytes):
    """The execution plan of the :data:`METHOD` method of a serialized program; a :class:`PGNError` if it has none."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = next((p for p in deserialize_pte_binary(pte).program.execution_plan if p.name == METHOD), None)
    if plan is None:
        raise PGNError(f"the program has no {METHOD!r} method")
    return plan


def read_program(pte: bytes) -> dict[str, Any]:
    """Delegates and the operators left outside them, read from a serialized program.

    Returns:
        ``delegates`` (backend → number of delegated subgraphs), ``delegate_calls``, ``operators_outside_delegate``
        (how many operator calls run on ExecuTorch's own kernels), ``outside_delegate`` (operator → calls) and
        ``planned_memory_mb`` (the activation memory ExecuTorch allocates when it loads the method, sized for the
        largest input; the delegate's own scratch memory comes on top).
    """
    from executorch.exir.schema import DelegateCall, KernelCall

    plan = method_plan(pte)
    delegates: dict[str, int] = {}
    outside: dict[str, int] = {}
    calls = 0
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if isinstance(args, DelegateCall):
                backend = plan.delegates[args.delegate_index].id
                delegates[backend] = delegates.get(backend, 0) + 1
                calls += 1
            elif isinstance(args, KernelCall):
                op = plan.operators[args.op_index]
                name = f"{op.name}.{op.overload}" if op.overload else op.name
                outside[name] = outside.get(name, 0) + 1
    return {
        "delegates": delegates,
        "delegate_calls": calls,
        "operators_outside_delegate": sum(outside.values()),
        "outside_delegate": dict(sorted(outside.items())),
        "planned_memory_mb": round(sum(plan.non_const_buffer_sizes) / 1e6, 3),
    }


def capture_graph(graph: ExportGraph, example, dynamic_shapes) -> torch.export.ExportedProgram:
    """``torch.export`` of ``graph`` in eval mode, without gradients, for ``example`` (and ``dynamic_shapes``); a
    one-line :class:`PGNError` if it fails."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(graph.eval(), example, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # noqa: BLE001
        raise PGNError(f"torch.export failed for ExecuTorch: {type(e).__name__}: {first_line(e)}") from e


def lowering_error(e: Exception, fix: str = "change the head or backbone", what: str = "ExecuTorch lowering") -> str:
    """One line for a failure to lower ``what`` (a program) to ExecuTorch, naming the operator where the message
    does; ``fix`` says what to change."""
    text = str(e)
    match = re.search(r"Operator torch\._ops\.([\w.]+) is not in Core ATen opset", text)
    if match:
        return (f"operator {match.group(1)} cannot be lowered to ExecuTorch (it is not in the Core ATen opset, "
                f"so neither XNNPACK nor ExecuTorch's kernels take it); {fix}")
    match = re.search(r"\b(aten[.:]{1,2}\w+(?:\.\w+)?)", text)
    where = f" at operator {match.group(1)}" if match else ""
    return f"{what} failed{where}: {type(e).__name__}: {first_line(e)}"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def quiet_native_output():
    """Silence what ExecuTorch's C++ code and torch's import-time logging write to the process's stderr.

    ExecuTorch prints its CPU probing (``cpuinfo_utils.cpp``: "CPU info and manual query on # of cpus dont
    match" on virtual machines) and every thread-pool reset there, which would break a CLI's one-line output.
    The file descriptor is redirected, so output from native code is caught too.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor (embedded interpreters): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# --------------------------------------------------------------------------------------------------------
# Runtime


class SharedThreadPool:
    """ExecuTorch's thread pool: one per process, shared by XNNPACK and the portable kernels.

    XNNPACK keeps a pointer to the pool in every method it loads, and resizing the pool replaces it
    (``_unsafe_reset_threadpool``), so a method loaded before a resize would run on a freed pool and crash. This
    object is the one place that resizes it: only while no method loaded through it is alive, counting each
    resize (``generation``) so that a method can tell that its pool is gone. It mirrors state that the native
    library holds per process, which is why there is one instance, :data:`THREAD_POOL`.
    """

    def __init__(self):
        self.generation = 0
        self.users: "weakref.WeakSet[ExecuTorchRuntime]" = weakref.WeakSet()

    def size(self, portable_lib) -> int:
        """Threads in the pool now."""
        return int(portable_lib._threadpool_get_thread_count())

    def claim(self, runtime: "ExecuTorchRuntime", portable_lib, threads: int | None) -> int:
        """Size the pool to ``threads`` (``None``: as it is) for ``runtime``, before it loads its method; returns
        the pool's generation.

        Raises:
            PGNError: if the pool must change size while another loaded program uses it.
        """
        current = self.size(portable_lib)
        if threads is not None and threads != current:
            if len(self.users):
                raise PGNError(f"ExecuTorch's thread pool (one per process) has {current} threads and another loaded .pte "
                               f"uses it: pass threads={current}, or release the other runtime before asking for {threads}")
            with quiet_native_output():
                portable_lib._unsafe_reset_threadpool(threads)
            self.generation += 1
        return self.generation

    def check(self, runtime: "ExecuTorchRuntime") -> None:
        """Raise a :class:`PGNError` if the pool was resized after ``runtime`` loaded its method."""
        if runtime.pool_generation != self.generation:
            raise PGNError(f"ExecuTorch's thread pool was resized after {runtime.artifact.name} was loaded: load it again")


#: The process's ExecuTorch thread pool, as :class:`ExecuTorchRuntime` uses it.
THREAD_POOL = SharedThreadPool()


class ExecuTorchRuntime(Runtime):
    """A ``.pte`` run by ExecuTorch's runtime (``executorch.runtime``) with the XNNPACK delegate, on the CPU.

    The program's bytes are read once, checked against the manifest's sha256 and loaded from that buffer, so
    what runs is what was verified.

    Args:
        artifact: the ``.pte`` file.
        manifest: its manifest.
        threads: size of ExecuTorch's thread pool (``None``: leave it as it is; ExecuTorch starts with one thread
            per CPU it detects). The pool is shared by the whole process and can change size only while no other
            ``.pte`` is loaded (:class:`SharedThreadPool`), so load every runtime of a process with the same
            ``threads``.
    """

    name = "executorch-xnnpack"
    delegate = DELEGATE  #: the backend the program's subgraphs need
    missing_delegate_hint = INSTALL_HINT  #: what to do where this ExecuTorch build lacks it

    def __init__(self, artifact: Path, manifest: dict[str, Any], *, threads: int | None = None):
        super().__init__(artifact, manifest)
        et = import_executorch(compiler=False)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise PGNError(f"threads must be a positive integer, got {threads!r}")
        data = self.artifact.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.get("sha256"):
            raise PGNError(f"{self.artifact.name} does not match its manifest (sha256 {digest[:12]}…, manifest "
                           f"{str(manifest.get('sha256'))[:12]}…): re-export it, or put its own manifest beside it")
        self.pool_generation = THREAD_POOL.claim(self, et.portable_lib, threads)
        try:
            if not backend_available(et, self.delegate):
                raise RuntimeUnavailable(f"this ExecuTorch build has no {self.delegate}: {self.missing_delegate_hint}")
            with quiet_native_output():
                self.program = et.Runtime.get().load_program(data, verification=et.Verification.InternalConsistency)
                self.method = self.program.load_method(METHOD)
        except PGNError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a missing operator kernel or a corrupt program
            raise PGNError(f"ExecuTorch cannot load {self.artifact.name}: {type(e).__name__}: {first_line(e)}") from e
        THREAD_POOL.users.add(self)
        self.info.update(
            runtime="executorch",
            executorch=_version("executorch"),
            delegate=self.delegate,
            device="cpu",
            method=METHOD,
            threads=THREAD_POOL.size(et.portable_lib),
            threads_requested=threads if threads is not None else "default (ExecuTorch: one per CPU it detects)",
            threadpool="one per process, shared by XNNPACK and the portable kernels",
        )

    def artifact_input_shapes(self) -> list[list]:
        """The method's input shapes (for dynamic programs, their upper bounds)."""
        meta = self.method.metadata
        return [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]

    def run_graph(self, y_hat: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        THREAD_POOL.check(self)
        outs = self.method.execute([torch.from_numpy(y_hat), torch.from_numpy(y)])
        return {n: o.numpy() for n, o in zip(self.output_names, outs)}

    def prepare(self, y_hat: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
        """Inputs checked and wrapped as tensors once; the function runs the method on them (outputs are
        copied out of ExecuTorch's planned memory on every call, as ``run`` does)."""
        y_hat, y = self.check_inputs(y_hat, y)
        inputs = [torch.from_numpy(y_hat), torch.from_numpy(y)]
        THREAD_POOL.check(self)
        return lambda: self.method.execute(inputs)
