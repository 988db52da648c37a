"""The ExecuTorch Core ML target (:class:`ExecuTorchCoreMLTarget`): a ``.pte`` program whose operators run in
ExecuTorch's Core ML delegate, for iOS and macOS apps that use ExecuTorch (Apple's Neural Engine, GPU and CPU).

Steps: :class:`export.graph.ExportGraph` (outputs ``proxy`` and, as for the CoreML target, ``grad`` in fp32 or
``residual`` in fp16, where the host applies the gradient scale) → ``torch.export.export`` (fixed shapes) →
``to_edge_transform_and_lower`` with the ``CoreMLPartitioner`` (coremltools converts the delegated graph to an ML
program with the requested compute precision and deployment target) → ``to_executorch`` → the ``.pte`` bytes.

Lowering runs on any OS. Running needs an ExecuTorch build with the Core ML backend, which exists only on Apple
platforms (ExecuTorch's iOS/macOS libraries; the Linux ``executorch`` package has no Core ML backend). Where the
backend is missing, the program is checked structurally (:meth:`ExecuTorchCoreMLTarget.structural_checks`): the
Core ML delegate is present, every operator outside it has a kernel in ExecuTorch, and the method's inputs and
outputs have the names' shapes and float32 type. The artifact is then ``converted-not-run``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pgn
from pgn.errors import PGNError

from .coreml import deployment_target, import_coremltools
from .executorch import (METHOD, ExecuTorchRuntime, _version, backend_available, capture_graph, check_kernels,
                         import_executorch, lowering_error, method_plan, quiet_native_output, read_program, trace_inputs)
from .graph import ExportGraph
from .options import ExportOptions
from .target import ExportTarget, RuntimeSettings

#: The delegate of every program of this target (ExecuTorch's backend id).
DELEGATE = "CoreMLBackend"
#: numpy-style names of ExecuTorch's scalar types (the rest are lower-cased).
DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "DOUBLE": "float64"}
#: Why a program is not run where the backend is missing (its parity record's reason).
NOT_RUN_WITHOUT_COREML = ("not executed: this ExecuTorch build has no CoreMLBackend (it runs in ExecuTorch's iOS and macOS "
                          "builds; the Linux package has none)")


class ExecuTorchCoreMLTarget(ExportTarget):
    """An ExecuTorch program (``.coreml.pte``) with the Core ML delegate, fp16 by default; lowered anywhere, run
    where ExecuTorch has its Core ML backend (Apple platforms)."""

    name = "executorch-coreml"
    suffix = ".coreml.pte"
    precisions = ("fp16", "fp32")
    options = ("deployment_target",)
    packages = {"executorch": ("executorch",), "coremltools": ("coremltools",)}
    runs_on = "iOS 16+/macOS 13+ apps through ExecuTorch's Core ML backend (Neural Engine, GPU, CPU); lowers on any OS"
    verified_by = "ExecuTorch's runtime where it has the Core ML backend (Apple platforms); structural checks elsewhere"

    def check_available(self) -> None:
        """Raise :class:`RuntimeUnavailable` if ExecuTorch or coremltools cannot be imported."""
        import_executorch()
        import_coremltools()

    def validate(self, model: "pgn.PGN", options: ExportOptions) -> None:
        """Fixed shapes only, an ML-program deployment target, and no warped head (its ``grid_sample``)."""
        if options.dynamic:
            raise PGNError("executorch-coreml programs have fixed shapes: drop --dynamic, or use --target coreml or "
                           "executorch for ranged shapes")
        if model.config.head.kind == "warped":
            raise PGNError("the warped head does not convert for Core ML (its grid_sample): use --target executorch")
        deployment_target(import_coremltools(), options.deployment_target)

    def export(self, model: "pgn.PGN", path: Path, options: ExportOptions) -> None:
        """Write ``model`` (backbone + head) as a ``.pte`` program with the Core ML delegate at ``path``."""
        et, ct = import_executorch(), import_coremltools()
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        graph = ExportGraph(model, outputs=self.output_names(options)[1], size=options.size, graph_options=options.graph_options)
        example, _ = trace_inputs(options, model.size_multiple)  # fixed shapes (validate refuses dynamic ones)
        program = capture_graph(graph, example, None)
        specs = CoreMLBackend.generate_compile_specs(
            compute_precision=ct.precision.FLOAT16 if options.precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=deployment_target(ct, options.deployment_target),
        )
        try:
            with warnings.catch_warnings(), quiet_native_output():
                warnings.simplefilter("ignore")
                edge = et.to_edge_transform_and_lower(program, partitioner=[CoreMLPartitioner(compile_specs=specs)])
                buffer = edge.to_executorch().buffer
        except Exception as e:  # noqa: BLE001 - lowering failures become one line naming the operator
            raise PGNError(lowering_error(e, what="ExecuTorch Core ML lowering")) from e
        check_kernels(et, buffer)
        Path(path).write_bytes(buffer)

    def structural_checks(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """The Core ML delegate holds the graph and the method takes and returns what the names say; raises
        :class:`PGNError` listing what is wrong."""
        pte = Path(artifact).read_bytes()
        facts = read_program(pte)
        inputs, outputs = method_io(pte)
        problems = []
        if not facts["delegates"].get(DELEGATE):
            problems.append(f"no {DELEGATE} subgraph (delegates: {facts['delegates'] or 'none'})")
        shape = list(options.shape)
        for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
            if [t["shape"] for t in tensors] != [shape, shape] or any(t["dtype"] != "float32" for t in tensors):
                problems.append(f"{kind} are {tensors}, expected two float32 {shape}")
        if problems:
            raise PGNError(f"{Path(artifact).name} failed its structural checks: " + "; ".join(problems))
        return {"passed": True, "delegates": facts["delegates"], "outside_delegate": facts["outside_delegate"],
                "inputs": inputs, "outputs": outputs, "minimum_deployment_target": options.deployment_target}

    def runtime_missing_here(self) -> str | None:
        """Why the program cannot run here: no ExecuTorch build with the Core ML backend (every non-Apple one)."""
        return None if backend_available(import_executorch(compiler=False), DELEGATE) else NOT_RUN_WITHOUT_COREML

    def describe(self, artifact: Path, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Lowering facts: versions, compute precision, deployment target, delegates and operators outside them."""
        return {
            "name": "torch.export → executorch.exir.to_edge_transform_and_lower (CoreMLPartitioner) → to_executorch",
            "executorch": _version("executorch"),
            "coremltools": _version("coremltools"),
            "compute_precision": "FLOAT16" if options.precision == "fp16" else "FLOAT32",
            "minimum_deployment_target": options.deployment_target,
            "method": METHOD,
            **read_program(Path(artifact).read_bytes()),
        }

    def target_info(self, options: ExportOptions, model: "pgn.PGN") -> dict[str, Any]:
        """Where the program runs and its delegate."""
        return {**super().target_info(options, model), "delegate": DELEGATE}

    def load_runtime(self, artifact: Path, manifest: dict[str, Any], settings: RuntimeSettings) -> "ExecuTorchCoreMLRuntime":
        """ExecuTorch's runtime with its Core ML backend; :class:`RuntimeUnavailable` where the build lacks it."""
        if settings.device != "cpu":
            raise PGNError("Core ML picks its own compute units inside ExecuTorch: leave device='cpu'")
        return ExecuTorchCoreMLRuntime(artifact, manifest, threads=settings.threads)


class ExecuTorchCoreMLRuntime(ExecuTorchRuntime):
    """A ``.coreml.pte`` program in ExecuTorch's runtime (needs a build with the Core ML backend)."""

    name = "executorch-coreml"
    delegate = DELEGATE
    missing_delegate_hint = "run it with ExecuTorch's iOS or macOS build (the Linux package has no Core ML backend)"


def method_io(pte: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The shapes and dtypes of the ``forward`` method's inputs and outputs, read from a serialized program."""
    from executorch.exir.schema import Tensor

    plan = method_plan(pte)

    def tensor(index: int) -> dict[str, Any]:
        value = plan.values[index].val
        if not isinstance(value, Tensor):
            return {"shape": None, "dtype": type(value).__name__}
        name = value.scalar_type.name
        return {"shape": list(value.sizes), "dtype": DTYPE_NAMES.get(name, name.lower())}

    return [tensor(i) for i in plan.inputs], [tensor(i) for i in plan.outputs]


#: The row of :data:`export.formats.FORMATS`.
TARGET = ExecuTorchCoreMLTarget()
