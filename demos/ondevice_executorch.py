"""The whole fine-tuning step inside ExecuTorch's training runtime: generator, frozen PGN, loss, backward and SGD.

:mod:`demos.ondevice` shows that fitting with a PGN needs only an MSE towards the PGN's proxy ``P``. Here one
ExecuTorch program holds the whole step (:class:`FinetuneStepProgram`):

1. ``ŷ = G(poses)`` — the generator, whose parameters are the program's only trainable parameters;
2. ``P = PGN(sg[ŷ], y)`` — the PGN, BatchNorm folded, its weights stored as constants of the program (frozen);
3. ``loss = Σ_n α·mean(((ŷ − sg[P])/σ_c)²) + λ·mean(((ŷ − y)/σ_c)²)`` — the surrogate of :class:`pgn.PGNLoss`
   (its gradient w.r.t. ŷ is the PGN's gradient) plus the demo's λ·MSE term, both in ImageNet-normalized space;
4. the backward to the generator's parameters — ``torch.export.experimental._export_forward_backward`` writes
   the joint forward-backward graph, which ``executorch.exir.to_edge(...).to_executorch()`` serializes;
5. the update — ExecuTorch's SGD optimizer (``executorch.extension.training.get_sgd_optimizer``), which updates
   the program's parameters in place.

The program is exported once (:func:`export_step_program`); every step is then one ``forward_backward`` call
and one optimizer step of ExecuTorch's runtime (:class:`ExecuTorchTrainer`), with no PyTorch autograd.

Where it runs: the frozen PGN (computed with the ExecuTorch export target's graph options) and every operator
that reads no trainable parameter go to the XNNPACK delegate, the CPU kernels phones use; the generator's
convolutions are written as batched matrix multiplies (:mod:`demos.matmul_conv`) so that XNNPACK runs them with
weights that change every step. :func:`training_partitioner` keeps every operator that reads a trainable
parameter on ExecuTorch's own kernels: XNNPACK would pack such a weight once, and it would never train. The
rest (reshapes of the weights, reductions, the loss) runs on ExecuTorch's portable kernels. ExecuTorch's Python
training bindings offer SGD only, so this path uses SGD. With ``precision="int8"`` the frozen PGN's convolutions
run in int8 (:func:`quantized_proxy`); everything that trains stays fp32.
"""

from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import pgn
from pgn.constants import IMAGENET_STD
from pgn.errors import PGNError, first_line

from .matmul_conv import as_matmul_convs
from .ondevice import check_recipe_applies

#: The method of the exported step program.
METHOD = "forward"
#: Which kernels run the step program: ``xnnpack`` delegates what reads no trainable parameter to XNNPACK (the
#: default); ``portable`` runs every operator on ExecuTorch's portable kernels (much slower, less memory).
KERNELS = ("xnnpack", "portable")
#: What to change when the step program does not export (the PGN exports as the ``executorch`` target does).
GENERATOR_FIX = "change the generator"
#: Precisions of the frozen PGN inside the step program: ``fp32``, or ``int8`` (its convolutions quantized as the
#: ``executorch`` export target's int8 programs are; the generator, its gradients and the loss stay fp32).
PRECISIONS = ("fp32", "int8")


def executorch_training_available() -> str | None:
    """``None`` when ExecuTorch's training runtime can be imported, else one line saying why and how to get it."""
    try:
        from pgn.export.executorch import INSTALL_HINT, quiet_native_output
    except ImportError as e:
        return f"export package not available ({e})"
    try:
        with quiet_native_output():
            from executorch.exir import to_edge  # noqa: F401
            from executorch.extension.training import _load_for_executorch_for_training_from_buffer  # noqa: F401
    except ImportError as e:
        return f"ExecuTorch not installed ({first_line(e, 80)}): {INSTALL_HINT}"
    return None


def drop_unused_constants(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``module`` without the buffers its graph does not read (a quantized graph keeps its fp32 weights as dead
    buffers, which an exported program would otherwise store beside their int8 copies), in place."""
    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    read = {node.target for node in graph.nodes if node.op == "get_attr"}
    for name, _ in list(module.named_buffers()):
        if name not in read:
            owner, _, attr = name.rpartition(".")
            delattr(module.get_submodule(owner) if owner else module, attr)
    module.recompile()
    return module


def quantized_proxy(graph: nn.Module, batch: int, size: tuple[int, int]) -> torch.fx.GraphModule:
    """The frozen PGN's export graph with its convolutions in static int8, as the ``executorch`` export target
    quantizes them (pt2e, XNNPACK's quantizer, per-channel symmetric weights), calibrated on bundled photographs
    that its parity check does not use, for inputs of ``batch`` images of ``size``.

    Raises:
        PGNError: one line, if the capture or the quantizer fails.
    """
    from pgn.export.executorch import CALIBRATION_PAIRS, DEFAULT_INT8_OPS, capture_graph, quantize_int8
    from pgn.export.verify import calibration_pairs

    example = (torch.zeros(batch, 3, *size), torch.zeros(batch, 3, *size))
    captured = capture_graph(graph, example, None)  # as the export target captures it: one line if it fails
    pairs = -(-CALIBRATION_PAIRS // batch) * batch  # whole batches: the captured graph takes only its own batch
    quantized = quantize_int8(captured, example, None, calibration_pairs(size, pairs), batch=batch, ops=DEFAULT_INT8_OPS)
    return drop_unused_constants(quantized.module())


def freeze_as_constants(module: nn.Module) -> nn.Module:
    """``module`` with every parameter turned into a buffer, so that an exported training program cannot train it."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            del sub._parameters[name]
            if param is not None:
                sub.register_buffer(name, param.detach().clone())
    return module


class FinetuneStepProgram(nn.Module):
    """(poses, y) → (loss, ŷ): the generator, the frozen PGN's proxy and the surrogate loss, as one module.

    Args:
        generator: ``poses → ŷ`` (N, 3, H, W) in [0, 1]; its parameters are what the program trains. Its
            convolutions are made :class:`~demos.matmul_conv.MatmulConv2d` in place (same parameters and results).
        model: the PGN (RGB [0, 1] value space, a gradient that is an MSE gradient towards its proxy); a folded,
            frozen copy is taken.
        mse_weight: λ of the normalized-space MSE to ``y``.
        size: (H, W) of the images.
        precision: the frozen PGN's precision, one of :data:`PRECISIONS` (``int8``: :func:`quantized_proxy`; in
            eager PyTorch its quantization is simulated in fp32, in ExecuTorch XNNPACK runs it in int8).
        batch: the batch the program runs with (an ``int8`` PGN is captured for it).
    """

    def __init__(self, generator: nn.Module, model: "pgn.PGN", mse_weight: float, size: tuple[int, int], *,
                 precision: str = "fp32", batch: int = 1):
        super().__init__()
        from pgn.export.executorch import TARGET
        from pgn.export.graph import ExportGraph

        if precision not in PRECISIONS:
            raise PGNError(f"the step program's PGN precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        check_recipe_applies(model)
        self.generator = generator
        as_matmul_convs(generator)
        graph = freeze_as_constants(ExportGraph(model, outputs="grad", size=size, graph_options=TARGET.default_graph_options))
        self.pgn = quantized_proxy(graph, batch, size) if precision == "int8" else graph
        self.precision, self.batch = precision, batch
        self.alpha = float(model.alpha)
        self.mse_weight = float(mse_weight)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, poses: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        image = self.generator(poses)
        proxy = self.pgn(image.detach(), target)[0].detach()
        to_proxy, to_target = (image - proxy) / self.std, (image - target) / self.std
        to_proxy, to_target = (to_proxy * to_proxy).mean(dim=(1, 2, 3)), (to_target * to_target).mean(dim=(1, 2, 3))
        return (self.alpha * to_proxy + self.mse_weight * to_target).sum(), image.detach()


def training_partitioner(et) -> object:
    """An XNNPACK partitioner for training programs: it delegates what XNNPACK matches except any operator that
    reads a trainable parameter directly (XNNPACK would pack that weight once, so it would stop training)."""

    class TrainingPartitioner(et.XnnpackPartitioner):
        def get_matched_nodes_from_configs(self, ep):  # noqa: D102
            trainable = set(ep.graph_signature.inputs_to_parameters)

            def reads_trainable(node: torch.fx.Node) -> bool:
                return any(n.op == "placeholder" and n.name in trainable for n in (node, *node.all_input_nodes))

            matches = super().get_matched_nodes_from_configs(ep)
            return [match for match in matches if not any(reads_trainable(node) for node in match)]

    return TrainingPartitioner()


def splits_as_slices(graph_module: torch.fx.GraphModule):
    """Replace every ``split_with_sizes_copy`` of the edge graph by one ``slice_copy`` per used piece.

    Forward splits (the taps of :class:`~demos.matmul_conv.MatmulConv2d`) have no XNNPACK kernel, so each would
    cut the delegated activation path in two; slices with step 1 have one. The backward, already in the graph,
    keeps the split's own gradient (a concatenation).
    """
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    split, slice_copy = exir_ops.edge.aten.split_with_sizes_copy.default, exir_ops.edge.aten.slice_copy.Tensor
    graph, changed = graph_module.graph, False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != split or not all(u.target is operator.getitem for u in node.users):
            continue
        source, sizes = node.args[0], node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for piece in list(node.users):
            index = piece.args[1]
            with graph.inserting_before(piece):
                sliced = graph.call_function(slice_copy, (source, dim, starts[index], starts[index] + sizes[index], 1))
            sliced.meta = dict(piece.meta)
            piece.replace_all_uses_with(sliced)
            graph.erase_node(piece)
        graph.erase_node(node)
        changed = True
    graph_module.recompile()
    return PassResult(graph_module, changed)


def export_step_program(program: FinetuneStepProgram, poses: torch.Tensor, target: torch.Tensor, *,
                        xnnpack: bool = True) -> bytes:
    """The ``.pte`` bytes of ``program``'s forward-backward graph at the shapes of ``poses`` and ``target``.

    Args:
        xnnpack: delegate what reads no trainable parameter to XNNPACK (``False``: every operator on ExecuTorch's
            portable kernels, which is about two orders of magnitude slower).

    Raises:
        PGNError: one line, naming the operator where ExecuTorch names one, if the program does not export, or if
            a trainable parameter ended up inside a delegate.
    """
    from torch.export.experimental import _export_forward_backward

    from pgn.export.executorch import check_kernels, import_executorch, lowering_error, quiet_native_output

    if program.precision == "int8" and not xnnpack:
        raise PGNError("an int8 PGN runs in XNNPACK: export its step program with xnnpack=True (--executorch-kernels xnnpack)")
    if program.precision == "int8" and len(target) != program.batch:
        raise PGNError(f"the int8 PGN was captured for batch {program.batch}, the step gets {len(target)} images: "
                       f"build the FinetuneStepProgram with batch={len(target)}")
    et = import_executorch()
    trainable = {name for name, p in program.named_parameters() if p.requires_grad}
    try:
        with warnings.catch_warnings(), quiet_native_output():
            warnings.simplefilter("ignore")
            captured = torch.export.export(program, (poses, target), strict=False)
            joint = _export_forward_backward(captured)
            partitioners = [training_partitioner(et)] if xnnpack else []
            edge = et.to_edge_transform_and_lower(joint, transform_passes=[splits_as_slices], partitioner=partitioners)
            kept = set(edge.exported_program().graph_signature.parameters)
            pte = edge.to_executorch().buffer
    except Exception as e:  # noqa: BLE001 - export failures become one line naming the operator
        raise PGNError(lowering_error(e, GENERATOR_FIX, "ExecuTorch training export")) from e
    if trainable - kept:
        raise PGNError(f"ExecuTorch's delegate took trainable parameters ({', '.join(sorted(trainable - kept)[:3])}); "
                       "XNNPACK would pack them once and they would never train; export_step_program(..., xnnpack=False) avoids it")
    check_kernels(et, pte, GENERATOR_FIX)
    return pte


@dataclass(eq=False)
class ExecuTorchTrainer:
    """A step program loaded in ExecuTorch's training runtime, with ExecuTorch's SGD on its parameters."""

    pte: bytes  #: the program; the runtime reads it in place, so it must outlive :attr:`module`
    module: object = None
    optimizer: object = None
    threads: int | None = None  #: the size of ExecuTorch's thread pool it runs with

    @classmethod
    def load(cls, pte: bytes, poses: torch.Tensor, target: torch.Tensor, lr: float) -> "ExecuTorchTrainer":
        """Load ``pte`` and create the optimizer; runs one ``forward_backward`` (the runtime hands out its
        parameters only after one), which does not change them.

        ExecuTorch's thread pool (one per process) is sized to ``torch.get_num_threads()``, the thread count the
        demo's other rows run with.
        """
        from pgn.export.executorch import THREAD_POOL, import_executorch, quiet_native_output

        portable_lib = import_executorch().portable_lib
        with quiet_native_output():
            from executorch.extension.training import _load_for_executorch_for_training_from_buffer, get_sgd_optimizer

        trainer = cls(pte)
        THREAD_POOL.claim(trainer, portable_lib, torch.get_num_threads())
        try:
            with quiet_native_output(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExecuTorch marks its training API experimental on every call
                trainer.module = _load_for_executorch_for_training_from_buffer(pte)
                trainer.module.forward_backward(METHOD, (poses, target))
                trainer.optimizer = get_sgd_optimizer(trainer.module.named_parameters(), lr)
        except Exception as e:  # noqa: BLE001 - e.g. a missing operator kernel
            raise PGNError(f"ExecuTorch cannot load the training program: {type(e).__name__}: {first_line(e)}") from e
        THREAD_POOL.users.add(trainer)
        trainer.threads = THREAD_POOL.size(portable_lib)
        return trainer

    def step(self, poses: torch.Tensor, target: torch.Tensor) -> float:
        """One training step in the runtime: forward, backward, SGD update; returns the loss before the update."""
        loss = self.module.forward_backward(METHOD, (poses, target))[0]
        self.optimizer.step(self.module.named_gradients())
        return float(loss)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The trained parameters by their PyTorch names (``generator.…``), copied out of the runtime."""
        return {name: t.clone() for name, t in self.module.named_parameters().items()}


def finetune_on_executorch(
    init: nn.Module,
    model: "pgn.PGN",
    poses: torch.Tensor,
    target: torch.Tensor,
    mse_weight: float,
    lr: float,
    steps: int,
    meter=None,
    progress: Callable[[float], None] | None = None,
    pte: bytes | None = None,
    kernels: str = "xnnpack",
    precision: str = "fp32",
) -> tuple[nn.Module, ExecuTorchTrainer]:
    """Fine-tune a copy of ``init`` with every step inside ExecuTorch's training runtime.

    Args:
        init: the generator (``poses → images``) to start from; it is not modified.
        model: the PGN (frozen inside the program).
        poses, target: the training batch (the program's fixed shapes).
        lr: ExecuTorch SGD learning rate.
        meter: optional :class:`~benchmarks.measure.LossMeter` timing each whole device step; the memory of loading
            the program (ExecuTorch allocates the memory it planned for a step then) is measured with it.
        progress: optional callable run after every step with the loss.
        pte: the step program of ``init`` and ``model`` for these shapes, exported earlier by
            :func:`export_step_program` (default: export it now).
        kernels: one of :data:`KERNELS`, for the program exported now.
        precision: the frozen PGN's precision, one of :data:`PRECISIONS`, for the program exported now.

    Returns:
        A PyTorch copy of ``init`` holding the parameters trained by ExecuTorch, and the trainer.
    """
    from contextlib import nullcontext

    poses, target = poses.float().contiguous(), target.float().contiguous()
    if pte is None:
        program = FinetuneStepProgram(copy.deepcopy(init).train(), model, mse_weight, tuple(target.shape[-2:]),
                                      precision=precision, batch=target.shape[0])
        pte = export_step_program(program, poses, target, xnnpack=kernels == "xnnpack")
    # Loading allocates the memory ExecuTorch planned for every step; it counts towards the steps' peak memory.
    with meter.measure(timed=False) if meter is not None else nullcontext():
        trainer = ExecuTorchTrainer.load(pte, poses, target, lr)
    for _ in range(steps):
        with meter.measure() if meter is not None else nullcontext():
            loss = trainer.step(poses, target)
        if progress is not None:
            progress(loss)
    trained = trainer.parameters()
    expected = {f"generator.{name}" for name, p in init.named_parameters() if p.requires_grad}  # the program's names
    if set(trained) != expected:
        raise PGNError(f"ExecuTorch trained {sorted(set(trained) ^ expected)[:3]}… instead of the generator's parameters")
    tuned = copy.deepcopy(init)  # the program's copy computes its convolutions as matrix multiplies
    tuned.load_state_dict({name.removeprefix("generator."): value for name, value in trained.items()}, strict=False)
    return tuned.eval(), trainer
