"""The fitting step as an export target: one ExecuTorch program that fits a generator on the device.

``export.export_training_step(generator, example_inputs, loss=…)`` writes a ``.pte`` whose ``forward`` method runs
one step of fitting a generator to a target image, and a manifest beside it; ``export.load_training(path)`` runs
it in ExecuTorch's training runtime (what an Android or iOS app links: ``executorch::extension::training``).

One step (:class:`FittingStep`):

1. ``ŷ = G(inputs)`` — the generator (captured by ``torch.export``, :mod:`export.captured_generator`); its
   parameters are the program's only trainable parameters;
2. the loss (:class:`FittingLoss`), everything in it frozen:

   * ``mse``: ``λ·MSE(ŷ, y)`` in ImageNet-normalized space (what the generator alone costs);
   * ``pgn``: ``α·MSE(ŷ, sg[P]) + λ·MSE(ŷ, y)`` with ``P`` from the frozen PGN (:func:`pgn.surrogate_loss`,
     the definition :class:`pgn.PGNLoss` uses), fp32 or int8;
   * ``vgg19`` / ``vgg11``: :class:`pgn.PerceptualLoss` (+ ``λ·MSE``); its input gradient ``g`` is computed in the
     program with forward operators (:class:`export.vgg_gradient.VGGInputGradient`) and handed to ``ŷ`` as the
     gradient of ``sum((ŷ − sg[ŷ])·sg[g])``, which is 0 in value;
3. the backward to the generator's parameters — ``torch.export.experimental._export_forward_backward`` of the
   step (only the generator and the MSE terms are differentiated: no autograd runs through a PGN or a VGG);
4. the update — ExecuTorch's SGD (:class:`SGDRecipe`), applied by the runtime with the gradients the method
   returns.

Where it runs: every operator that reads no trainable parameter goes to XNNPACK (:func:`training_partitioner`);
the generator's convolutions are matrix multiplies (:mod:`export.matmul_conv`) so that XNNPACK runs them although
their weights change; what reads a trainable parameter (reshapes of the weights) stays on ExecuTorch's portable
kernels.

Memory: ExecuTorch allocates its memory plan (the tensors between delegates and those kept for the backward) when
the program loads; XNNPACK's delegates share one workspace (ExecuTorch's default), sized by the live tensors of the
largest delegate. Those depend on the order the operators run in, so the lowering keeps the traced order (tile by
tile, tap by tap: :func:`export.executorch.operator_order_kept`).

Before anything is written, one step in ExecuTorch is compared with one eager PyTorch step of the user's own
generator and the reference loss (:class:`pgn.PGNLoss`, :class:`pgn.PerceptualLoss` with autograd, or the MSE),
with ``torch.optim.SGD``: every trainable parameter must agree to :data:`MAX_PARAMETER_ERROR` relative (an int8
PGN's step: its update to :data:`MAX_INT8_UPDATE_ERROR` relative, against the same quantized graph in eager PyTorch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import operator
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import pgn
from pgn.errors import PGNError, first_line
from pgn.heap import new_objects_collected_only
from pgn.surrogate import check_surrogate_applies, normalized_mse, surrogate_loss

from .captured_generator import CapturedGenerator, capture_generator, load_generator_program
from .manifest import MANIFEST_FORMAT, manifest_path, read_manifest, sha256_of, size_mb, versions, write_manifest

#: The target name of fitting-step programs (the manifest's ``target``, ``pgn-export --target``).
TARGET_NAME = "executorch-training"
SUFFIX = ".pte"
#: The method of the step program.
METHOD = "forward"
#: Losses a fitting step can minimize.
LOSS_KINDS = ("mse", "pgn", "vgg19", "vgg11")
#: Precisions of a frozen PGN inside the step.
PRECISIONS = ("fp32", "int8")
#: Kernels: ``xnnpack`` delegates what reads no trainable parameter to XNNPACK; ``portable`` runs everything on
#: ExecuTorch's portable kernels (about two orders of magnitude slower).
KERNELS = ("xnnpack", "portable")
#: One ExecuTorch step against one eager PyTorch step: largest ``max|Δ|/max|p|`` over the trainable parameters.
MAX_PARAMETER_ERROR = 1e-5
#: An int8 PGN's step against the eager step of the same quantized graph: largest ``|Δours − Δref| / |Δref|`` of
#: the update (all parameters as one vector). XNNPACK's integer kernels and the eager graph's fp32 simulation of
#: them round differently, so a few proxy values land one quantization step apart; parameters then agree to ~1e-3.
MAX_INT8_UPDATE_ERROR = 5e-3
#: A VGG step's update against autograd through :class:`pgn.PerceptualLoss`: the least cosine (its gradient is
#: piecewise, so float rounding flips a few units; a wrong backward gives cosines far below).
MIN_AUTOGRAD_UPDATE_COSINE = 0.999
#: What to change where the step does not export.
GENERATOR_FIX = "change the generator"


@dataclass(frozen=True)
class SGDRecipe:
    """The optimizer the runtime applies after each step (ExecuTorch's SGD, ``torch.optim.SGD``'s rule)."""

    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self):
        if not self.lr > 0 or self.momentum < 0 or self.weight_decay < 0:
            raise PGNError(f"SGD needs lr > 0, momentum ≥ 0 and weight_decay ≥ 0, got {self}")

    def torch_optimizer(self, params) -> torch.optim.SGD:
        """The same rule as ``torch.optim.SGD`` (the eager reference)."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        """For the manifest."""
        return {"name": "sgd", **asdict(self), "dampening": 0.0, "nesterov": False,
                "rule": "p ← p − lr·(g + weight_decay·p), with momentum buffers as torch.optim.SGD",
                "runtime": "executorch::extension::training::optimizer::SGD (Python: executorch.extension.training.get_sgd_optimizer)"}


@dataclass
class FittingLoss:
    """What the fitting step minimizes (build it with :meth:`mse`, :meth:`pgn` or :meth:`vgg`).

    Attributes:
        kind: one of :data:`LOSS_KINDS`.
        mse_weight: λ of the normalized-space MSE to the target (the whole loss for ``mse``).
        model: the PGN (``pgn``).
        precision: the PGN's precision inside the program, ``fp32`` or ``int8`` (``pgn``).
        teacher: the perceptual loss (``vgg19``/``vgg11``).
    """

    kind: str
    mse_weight: float = 0.0
    model: Any = None
    precision: str = "fp32"
    teacher: Any = None

    @classmethod
    def mse(cls, weight: float = 1.0) -> "FittingLoss":
        """``weight·MSE(ŷ, y)`` in ImageNet-normalized space: the generator's own cost, the baseline."""
        return cls("mse", mse_weight=float(weight))

    @classmethod
    def pgn(cls, model: "pgn.PGN", mse_weight: float = 0.0, precision: str = "fp32") -> "FittingLoss":
        """A frozen PGN's surrogate ``α·MSE(ŷ, sg[P])`` (+ ``λ·MSE(ŷ, y)``), its PGN in fp32 or int8."""
        if not isinstance(model, pgn.PGN):
            raise PGNError(f"the PGN loss needs a pgn.PGN, got {type(model).__name__}")
        if precision not in PRECISIONS:
            raise PGNError(f"the PGN's precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if model.value_space != "unit":
            raise PGNError("the fitting step takes RGB [0, 1] images: use a PGN with value_space='unit'")
        check_surrogate_applies(model)
        return cls("pgn", mse_weight=float(mse_weight), model=model, precision=precision)

    @classmethod
    def vgg(cls, net: "str | pgn.PerceptualLoss" = "vgg19", weights: str = "imagenet", mse_weight: float = 0.0) -> "FittingLoss":
        """The frozen VGG-19 or VGG-11 perceptual loss of :class:`pgn.PerceptualLoss` (+ ``λ·MSE(ŷ, y)``)."""
        teacher = net if isinstance(net, pgn.PerceptualLoss) else pgn.PerceptualLoss(net, weights)
        if teacher.value_space != "unit":
            raise PGNError("the fitting step takes RGB [0, 1] images: use a PerceptualLoss with value_space='unit'")
        return cls(teacher.net, mse_weight=float(mse_weight), teacher=teacher)

    @classmethod
    def of(cls, loss: "FittingLoss | str | pgn.PGN | pgn.PerceptualLoss", mse_weight: float = 0.0,
           precision: str = "fp32") -> "FittingLoss":
        """``loss`` as a :class:`FittingLoss`: itself, ``"mse"``/``"vgg19"``/``"vgg11"``, a PGN or a perceptual loss."""
        if isinstance(loss, FittingLoss):
            return loss
        if isinstance(loss, pgn.PGN):
            return cls.pgn(loss, mse_weight, precision)
        if isinstance(loss, pgn.PerceptualLoss) or loss in ("vgg19", "vgg11"):
            return cls.vgg(loss, mse_weight=mse_weight)
        if loss == "mse":
            return cls.mse(mse_weight or 1.0)
        raise PGNError(f"unknown fitting loss {loss!r}: pass 'mse', 'vgg19', 'vgg11', a pgn.PGN or a pgn.PerceptualLoss")

    def describe(self) -> dict[str, Any]:
        """The manifest's ``loss`` entry."""
        out: dict[str, Any] = {"kind": self.kind, "mse_weight": self.mse_weight,
                               "mse": "mean over c,h,w of ((ŷ − y)/σ_c)², ImageNet σ; summed over the batch"}
        if self.kind == "pgn":
            cfg = self.model.config
            out.update(definition="pgn.surrogate_loss: α·mean(((ŷ − sg[P])/σ_c)²) + λ·MSE, summed over the batch",
                       preset=cfg.preset, backbone=cfg.backbone, head=cfg.head.kind, alpha=float(self.model.alpha),
                       precision=self.precision, frozen=True)
        elif self.kind in ("vgg19", "vgg11"):
            out.update(definition="pgn.PerceptualLoss: Σ_l mean|φ_l(ŷ) − φ_l(y)| to relu5_1, AvgPool, + λ·MSE, summed over the batch",
                       weights=str(self.teacher.weights), input_gradient="written with forward operators (export.vgg_gradient)",
                       frozen=True)
        return out

    def reference(self) -> "callable":
        """The eager PyTorch loss ``(ŷ, y) → scalar`` whose autograd gradient the program must reproduce."""
        if self.kind == "mse":
            return lambda y_hat, y: self.mse_weight * normalized_mse(y_hat, y).sum()
        if self.kind == "pgn":
            criterion = pgn.PGNLoss(self.model, mse_weight=self.mse_weight)
            return lambda y_hat, y: criterion(y_hat, y)
        teacher = copy.deepcopy(self.teacher)
        return lambda y_hat, y: teacher(y_hat, y) + self.mse_weight * normalized_mse(y_hat, y).sum()


# --------------------------------------------------------------------------------------------------------
# The step program


def freeze_as_constants(module: nn.Module) -> nn.Module:
    """``module`` with every parameter turned into a buffer, so that a training program cannot train it."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            del sub._parameters[name]
            if param is not None:
                sub.register_buffer(name, param.detach().clone())
    return module


def drop_unused_constants(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``module`` without the buffers its graph does not read (a quantized graph keeps its fp32 weights as dead
    buffers, which the program would otherwise store beside their int8 copies), in place."""
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
    quantizes them (pt2e, XNNPACK's quantizer), calibrated on bundled photographs, for ``batch`` images of ``size``."""
    from .executorch import CALIBRATION_PAIRS, DEFAULT_INT8_OPS, capture_graph, quantize_int8
    from .verify import calibration_pairs

    example = (torch.zeros(batch, 3, *size), torch.zeros(batch, 3, *size))
    captured = capture_graph(graph, example, None)
    pairs = -(-CALIBRATION_PAIRS // batch) * batch  # whole batches: the captured graph takes only its own batch
    quantized = quantize_int8(captured, example, None, calibration_pairs(size, pairs), batch=batch, ops=DEFAULT_INT8_OPS)
    return drop_unused_constants(quantized.module())


class MSETerm(nn.Module):
    """``λ·Σ_n MSE(ŷ_n, y_n)`` in normalized space."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = float(weight)

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.weight * normalized_mse(image, target).sum()


class PGNTerm(nn.Module):
    """``Σ_n pgn.surrogate_loss(ŷ_n, sg[P_n], α, y_n, λ)`` with ``P`` from the frozen PGN's export graph."""

    def __init__(self, loss: FittingLoss, size: tuple[int, int], batch: int):
        super().__init__()
        from .executorch import TARGET
        from .graph import ExportGraph

        model = loss.model
        size_multiple = model.size_multiple
        if size[0] % size_multiple or size[1] % size_multiple:
            raise PGNError(f"the PGN ({model.config.backbone}) takes heights and widths that are multiples of {size_multiple}, "
                           f"the generator makes {size[0]}×{size[1]}")
        graph = freeze_as_constants(ExportGraph(copy.deepcopy(model), outputs="grad", size=size,
                                                graph_options=TARGET.default_graph_options))
        self.pgn = quantized_proxy(graph, batch, size) if loss.precision == "int8" else graph.eval()
        self.alpha, self.mse_weight = float(model.alpha), loss.mse_weight

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: D102
        proxy = self.pgn(image.detach(), target)[0].detach()
        return surrogate_loss(image, proxy, self.alpha, target, self.mse_weight).sum()


class VGGTerm(nn.Module):
    """The frozen VGG loss, its input gradient from :class:`~export.vgg_gradient.VGGInputGradient` (+ λ·MSE)."""

    def __init__(self, loss: FittingLoss):
        super().__init__()
        from .vgg_gradient import VGGInputGradient

        self.vgg = VGGInputGradient(loss.teacher)
        self.mse_weight = loss.mse_weight

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad, value = self.vgg(image.detach(), target)
        # value: the VGG loss; gradient: grad (ŷ − sg[ŷ] is 0 in value, the identity in the backward)
        total = value.sum() + ((image - image.detach()) * grad.detach()).sum()
        if self.mse_weight:
            total = total + self.mse_weight * normalized_mse(image, target).sum()
        return total


def loss_term(loss: FittingLoss, size: tuple[int, int], batch: int) -> nn.Module:
    """The module computing ``loss`` inside the step program."""
    if loss.kind == "mse":
        return MSETerm(loss.mse_weight)
    if loss.kind == "pgn":
        return PGNTerm(loss, size, batch)
    return VGGTerm(loss)


class FittingStep(nn.Module):
    """``(*inputs, target) → (loss, ŷ)``: the generator and the frozen loss as one module."""

    def __init__(self, generator: nn.Module, term: nn.Module):
        super().__init__()
        self.generator = generator
        self.loss = term

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        *generator_inputs, target = inputs
        image = self.generator(*generator_inputs)
        return self.loss(image, target), image.detach()


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
    """Replace every ``split_with_sizes_copy`` of the edge graph by one ``slice_copy`` per used piece (splits have
    no XNNPACK kernel and would cut the delegated path of :mod:`export.matmul_conv`'s taps; slices have one)."""
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


def lower_step(step: FittingStep, inputs: tuple[torch.Tensor, ...], kernels: str = "xnnpack") -> bytes:
    """The ``.pte`` bytes of ``step``'s forward-backward graph at the shapes of ``inputs`` (generator inputs, target).

    Raises:
        PGNError: one line, naming the operator where ExecuTorch names one.
    """
    from torch.export.experimental import _export_forward_backward

    from .executorch import check_kernels, import_executorch, lowering_error, quiet_native_output
    from .matmul_conv import decompose_matmul_convs

    et = import_executorch()
    trainable = {name for name, p in step.named_parameters() if p.requires_grad}
    try:
        with warnings.catch_warnings(), quiet_native_output():
            warnings.simplefilter("ignore")
            captured = torch.export.export(step, tuple(inputs), strict=False)
            joint = decompose_matmul_convs(_export_forward_backward(captured))
            partitioners = [training_partitioner(et)] if kernels == "xnnpack" else []
            edge = et.to_edge_transform_and_lower(joint, transform_passes=[splits_as_slices], partitioner=partitioners)
            kept = set(edge.exported_program().graph_signature.parameters)
            pte = edge.to_executorch().buffer
    except Exception as e:  # noqa: BLE001 - export failures become one line naming the operator
        raise PGNError(lowering_error(e, GENERATOR_FIX, "ExecuTorch training export")) from e
    if trainable - kept:
        raise PGNError(f"ExecuTorch's delegate took trainable parameters ({', '.join(sorted(trainable - kept)[:3])}); "
                       "they would never train: use kernels='portable'")
    check_kernels(et, pte, GENERATOR_FIX)
    return pte


# --------------------------------------------------------------------------------------------------------
# The runtime


def executorch_training_available() -> str | None:
    """``None`` when ExecuTorch's training runtime can be imported, else one line saying why and how to get it."""
    return _training_runtime()[1]


def _training_runtime() -> tuple[SimpleNamespace | None, str | None]:
    """ExecuTorch's training runtime (:func:`export.executorch_runtime.import_runtime`), imported quietly, and
    ``None``; or ``None`` and one line saying why it cannot be imported and how to get it."""
    from .executorch import INSTALL_HINT, quiet_native_output
    from .executorch_runtime import import_runtime

    try:
        with quiet_native_output():
            return import_runtime(training=True), None
    except ImportError as e:
        return None, f"ExecuTorch not installed ({first_line(e, 80)}): {INSTALL_HINT}"


class StepRunner:
    """A step program's bytes loaded in ExecuTorch's training runtime, with ExecuTorch's SGD on its parameters.

    Args:
        pte: the program (the runtime reads it in place; this object keeps it alive).
        inputs: example generator inputs and target (the runtime hands out its parameters only after one
            ``forward_backward``, run here on them; it changes nothing).
        optimizer: the SGD recipe.
        threads: ExecuTorch's thread pool size (``None``: ``torch.get_num_threads()``, or the pool as it is while
            another loaded program uses it).
    """

    def __init__(self, pte: bytes, inputs: tuple[torch.Tensor, ...], optimizer: SGDRecipe, threads: int | None = None):
        from .executorch import THREAD_POOL, import_executorch, quiet_native_output

        portable_lib = import_executorch(compiler=False).portable_lib
        et, reason = _training_runtime()
        if reason:
            raise PGNError(reason)
        self.pte = pte
        if threads is None and len(THREAD_POOL.users):
            requested = None  # another loaded program holds the process's one pool: run with it as it is
        else:
            requested = threads or torch.get_num_threads()
        self.pool_generation = THREAD_POOL.claim(self, portable_lib, requested)
        try:
            with quiet_native_output(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExecuTorch marks its training API experimental on every call
                self.module = et.load_for_training(pte)
                self.module.forward_backward(METHOD, tuple(t.float().contiguous() for t in inputs))
                self.optimizer = et.get_sgd_optimizer(self.module.named_parameters(), optimizer.lr, optimizer.momentum,
                                                      0.0, optimizer.weight_decay, False)
        except Exception as e:  # noqa: BLE001 - e.g. a missing operator kernel
            raise PGNError(f"ExecuTorch cannot load the training program: {type(e).__name__}: {first_line(e)}") from e
        THREAD_POOL.users.add(self)
        self.threads = THREAD_POOL.size(portable_lib)

    def step(self, inputs: tuple[torch.Tensor, ...]) -> tuple[float, torch.Tensor]:
        """Forward, backward and SGD update; the loss before the update and the image ``ŷ``."""
        from .executorch import THREAD_POOL

        if self.pool_generation != THREAD_POOL.generation:
            raise PGNError("ExecuTorch's thread pool was resized after the training program was loaded: load it again")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss, image = self.module.forward_backward(METHOD, inputs)[:2]
            self.optimizer.step(self.module.named_gradients())
        return float(loss), image

    def parameters(self) -> dict[str, torch.Tensor]:
        """The trainable parameters by their names in the generator, copied out of the runtime."""
        return {name.removeprefix("generator."): t.clone() for name, t in self.module.named_parameters().items()}


@dataclass(eq=False)
class TrainingProgram:
    """A fitting-step program loaded in ExecuTorch's training runtime (:func:`load_training`).

    Attributes:
        path: the ``.pte``. manifest: its manifest.
        loss: the loss of the latest step (before its update), ``None`` before the first.
    """

    path: Path
    manifest: dict[str, Any]
    runner: StepRunner
    loss: float | None = None
    image: torch.Tensor | None = field(default=None, repr=False)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """The shapes of the generator's inputs and of the target, as the program takes them."""
        return [tuple(i["shape"]) for i in self.manifest["inputs"]]

    def _check(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        specs = self.manifest["inputs"]
        if len(tensors) != len(specs):
            raise PGNError(f"the step takes {len(specs)} tensors ({', '.join(s['name'] for s in specs)}), got {len(tensors)}")
        out = []
        for spec, t in zip(specs, tensors):
            t = torch.as_tensor(t)
            if tuple(t.shape) != tuple(spec["shape"]):
                raise PGNError(f"{spec['name']} has shape {tuple(t.shape)}, the program takes {tuple(spec['shape'])} "
                               "(export it again for another shape)")
            if not t.is_floating_point():
                raise PGNError(f"{spec['name']} must be a float tensor, got {t.dtype}")
            out.append(t.detach().float().contiguous())
        return tuple(out)

    def step(self, *inputs: torch.Tensor) -> float:
        """One fitting step: ``step(*generator_inputs, target)``; returns the loss before the update."""
        self.loss, self.image = self.runner.step(self._check(inputs))
        return self.loss

    def parameters(self) -> dict[str, torch.Tensor]:
        """The trainable parameters (generator names), copied out of the runtime."""
        return self.runner.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted parameters as a state dict for the user's generator: ``generator.load_state_dict(sd,
        strict=False)`` (buffers such as BatchNorm statistics are not trained by the program and not included)."""
        return self.parameters()

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` with ``torch.save`` (atomically)."""
        from pgn.checkpoint import atomic_save

        return atomic_save(self.state_dict(), Path(path))


def check_training_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Raise a one-line :class:`PGNError` unless ``manifest`` has what :func:`load_training` relies on."""

    def bad(what: str) -> PGNError:
        return PGNError(f"{where} is not a usable fitting-step manifest: {what}; export the step again")

    for key, kind in (("target", str), ("sha256", str), ("inputs", list), ("optimizer", dict), ("trainable_parameters", list)):
        if not isinstance(manifest.get(key), kind):
            raise bad(f"{key!r} is missing or not a JSON {kind.__name__}")
    if not all(isinstance(i, dict) and isinstance(i.get("shape"), list) and all(isinstance(n, int) and n > 0 for n in i["shape"])
               for i in manifest["inputs"]):
        raise bad("an input has no shape of positive integers")
    if not all(isinstance(manifest["optimizer"].get(k), (int, float)) for k in ("lr", "momentum", "weight_decay")):
        raise bad("the optimizer recipe lacks lr, momentum or weight_decay")


def load_training(path: str | Path, *, threads: int | None = None) -> TrainingProgram:
    """Load a fitting-step program written by :func:`export_training_step` in ExecuTorch's training runtime.

    Args:
        path: the ``.pte`` (its manifest must be beside it; the bytes must match its sha256).
        threads: ExecuTorch's thread pool size (default ``torch.get_num_threads()``).
    """
    path = Path(path)
    if not path.is_file():
        raise PGNError(f"training program not found: {path}")
    manifest = read_manifest(path, check=check_training_manifest)
    if manifest.get("target") != TARGET_NAME:
        raise PGNError(f"{path.name} is a {manifest.get('target')} artifact according to its manifest, not {TARGET_NAME}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("sha256"):
        raise PGNError(f"{path.name} does not match its manifest (sha256 {digest[:12]}…): export it again")
    zeros = tuple(torch.zeros(i["shape"]) for i in manifest["inputs"])
    runner = StepRunner(data, zeros, SGDRecipe(**{k: manifest["optimizer"][k] for k in ("lr", "momentum", "weight_decay")}), threads)
    return TrainingProgram(path, manifest, runner)


# --------------------------------------------------------------------------------------------------------
# Export


def _check_image(image: torch.Tensor, target: torch.Tensor | None) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise PGNError(f"the generator's output must be a 3-channel image (N, 3, H, W), it returns {shape}")
    if target is not None and tuple(target.shape) != tuple(image.shape):
        raise PGNError(f"the target has shape {tuple(target.shape)}, the generator makes {tuple(image.shape)}: pass a target of its shape")


def eager_step(generator: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, loss: FittingLoss,
               optimizer: SGDRecipe) -> dict[str, torch.Tensor]:
    """One eager PyTorch step of a copy of ``generator`` with the reference loss and ``torch.optim.SGD``; its
    trainable parameters after the update."""
    generator = copy.deepcopy(generator)
    params = [p for p in generator.parameters() if p.requires_grad]
    sgd = optimizer.torch_optimizer(params)
    sgd.zero_grad()
    loss.reference()(generator(*inputs), target).backward()
    sgd.step()
    return {name: p.detach().clone() for name, p in generator.named_parameters() if p.requires_grad}


def compare_parameters(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``max|ours − reference| / max|reference|`` per parameter, the worst, and whether it passes."""
    if set(ours) != set(reference):
        raise PGNError(f"the runtime trained {sorted(set(ours) ^ set(reference))[:3]} instead of the generator's parameters")
    errors = {k: float((ours[k] - v).abs().max() / v.abs().max().clamp_min(1e-12)) for k, v in reference.items()}
    worst = max(errors, key=errors.get)
    return {"max_relative_parameter_error": errors[worst], "worst_parameter": worst, "tolerance": MAX_PARAMETER_ERROR,
            "passed": errors[worst] <= MAX_PARAMETER_ERROR, "parameters_compared": len(errors)}


def update_error(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """``|Δours − Δreference| / |Δreference|`` of the updates from ``start``, all parameters as one vector."""
    a = torch.cat([(ours[k] - start[k]).flatten() for k in sorted(start)]).double()
    b = torch.cat([(reference[k] - start[k]).flatten() for k in sorted(start)]).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def update_cosine(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """Cosine between the two updates ``ours − start`` and ``reference − start``, all parameters as one vector."""
    a = torch.cat([(ours[k] - start[k]).flatten() for k in sorted(start)]).double()
    b = torch.cat([(reference[k] - start[k]).flatten() for k in sorted(start)]).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _eager_program_reference(step_generator: nn.Module, term: nn.Module, inputs, target, optimizer: SGDRecipe):
    """One eager step of the generator with the program's own loss module (an int8 PGN's simulated quantization)."""
    step = FittingStep(copy.deepcopy(step_generator), copy.deepcopy(term))
    params = [p for p in step.generator.parameters() if p.requires_grad]
    sgd = optimizer.torch_optimizer(params)
    step(*inputs, target)[0].backward()
    sgd.step()
    return {name: p.detach().clone() for name, p in step.generator.named_parameters() if p.requires_grad}


@new_objects_collected_only(collect=False)  # lowering triggers many full collections: the heap from before is set aside
def export_training_step(
    generator: "nn.Module | str | Path",
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor | None = None,
    loss: "FittingLoss | str | pgn.PGN | pgn.PerceptualLoss" = "mse",
    *,
    output: str | Path = "exports/fitting-step.pte",
    target: torch.Tensor | None = None,
    mse_weight: float = 0.0,
    precision: str = "fp32",
    optimizer: SGDRecipe | None = None,
    kernels: str = "xnnpack",
    verify: bool = True,
    weights_source: str | None = None,
) -> Path:
    """Export one fitting step of ``generator`` with ``loss`` as an ExecuTorch training program, verified.

    Args:
        generator: an ``nn.Module`` (captured with ``torch.export`` for ``example_inputs``), or the path of a
            ``.pt2`` saved with ``torch.export.save`` (its captured input shapes are the step's).
        example_inputs: the generator's inputs (a tensor or a tuple); fixes the shapes of the program.
        loss: a :class:`FittingLoss`, ``"mse"``, ``"vgg19"``, ``"vgg11"``, a :class:`pgn.PGN` or a
            :class:`pgn.PerceptualLoss` (with ``mse_weight`` and, for a PGN, ``precision``).
        output: the ``.pte`` to write; its manifest goes beside it.
        target: an example target (N, 3, H, W) in [0, 1] for the verification step (default: random).
        optimizer: the SGD recipe the runtime applies (default lr 1e-3).
        kernels: ``xnnpack`` (default) or ``portable``.
        verify: run the ExecuTorch-vs-eager check (default; without it the manifest says ``converted-not-run``).
        weights_source: where the loss's weights came from, for the manifest.

    Returns:
        The path of the ``.pte``.

    Raises:
        PGNError: one line naming the cause (a generator torch.export cannot capture, an operator with no kernel,
            an output that is not a 3-channel image, a target of another shape, a step that does not match eager
            PyTorch); nothing is written then.
    """
    start = time.perf_counter()
    if kernels not in KERNELS:
        raise PGNError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    optimizer = optimizer or SGDRecipe()
    fitting_loss = FittingLoss.of(loss, mse_weight, precision)
    if fitting_loss.kind == "pgn" and fitting_loss.precision == "int8" and kernels != "xnnpack":
        raise PGNError("an int8 PGN runs in XNNPACK: use kernels='xnnpack'")
    output = Path(output)
    if output.suffix != SUFFIX:
        raise PGNError(f"the training program is a {SUFFIX} file, got {output.name}")
    reason = executorch_training_available()
    if reason:
        raise PGNError(reason)

    if isinstance(generator, (str, Path)):
        captured = load_generator_program(generator)
        reference_generator: nn.Module = captured
        if example_inputs is None:
            from .captured_generator import example_inputs_of

            example_inputs = example_inputs_of(captured)
    else:
        if example_inputs is None:
            raise PGNError("pass example_inputs: the generator's inputs fix the program's shapes")
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        captured = capture_generator(generator, example_inputs)
        reference_generator = generator
    example_inputs = tuple(t.detach().float().contiguous() for t in
                           ((example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs))
    shapes = [tuple(t.shape) for t in example_inputs]
    if shapes != [tuple(s) for s in captured.input_shapes]:
        raise PGNError(f"the example inputs have shapes {shapes}, the generator was captured for {captured.input_shapes}")
    with torch.no_grad():
        image = captured(*example_inputs)
    _check_image(image, target)
    if target is None:
        target = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    target = target.detach().float().contiguous()
    batch, size = image.shape[0], tuple(image.shape[-2:])
    if fitting_loss.kind in ("vgg19", "vgg11") and (size[0] % 16 or size[1] % 16):
        raise PGNError(f"the VGG loss takes heights and widths that are multiples of 16, the generator makes {size[0]}×{size[1]}")

    term = loss_term(fitting_loss, size, batch)
    program_generator = copy.deepcopy(captured)
    convs = program_generator.matmul_convs() if kernels == "xnnpack" else 0
    step = FittingStep(program_generator, term)
    inputs = (*example_inputs, target)
    pte = lower_step(step, inputs, kernels)

    verification: dict[str, Any] = {"executed": False, "reason": "verify=False"}
    runner = None
    if verify:
        runner = StepRunner(pte, inputs, optimizer)
        runner.step(inputs)
        ours = runner.parameters()
        if fitting_loss.kind == "pgn" and fitting_loss.precision == "int8":
            reference = _eager_program_reference(reference_generator, term, example_inputs, target, optimizer)
            against = "eager PyTorch step of the same generator and int8 PGN graph (quantization simulated in fp32), torch.optim.SGD"
        elif fitting_loss.kind in ("vgg19", "vgg11"):
            # The VGG loss's gradient is piecewise (each |a − t| and ReLU): two fp32 computations that add in another
            # order put a few units on the other side of 0. So the step is compared with the same definition in eager
            # PyTorch (its hand-written gradient), and that definition with autograd through pgn.PerceptualLoss
            # (update cosine, which catches a wrong backward: shared weights or tied maxima give errors of order 1).
            reference = _eager_program_reference(reference_generator, term, example_inputs, target, optimizer)
            against = ("eager PyTorch step with the same hand-written VGG gradient, torch.optim.SGD; "
                       "and autograd through pgn.PerceptualLoss (update cosine)")
            autograd = eager_step(reference_generator, example_inputs, target, fitting_loss, optimizer)
        else:
            reference = eager_step(reference_generator, example_inputs, target, fitting_loss, optimizer)
            against = {"mse": "eager PyTorch autograd step, normalized-space MSE",
                       "pgn": "eager PyTorch step with pgn.PGNLoss (the PGN's own gradient)"}[fitting_loss.kind] + ", torch.optim.SGD"
        verification = {"executed": True, "against": against, "steps": 1, **compare_parameters(ours, reference)}
        before = {name: p.detach() for name, p in reference_generator.named_parameters() if p.requires_grad}
        if fitting_loss.kind == "pgn" and fitting_loss.precision == "int8":
            error = update_error(ours, reference, before)
            verification.update(relative_update_error=error, update_tolerance=MAX_INT8_UPDATE_ERROR,
                                passed=error <= MAX_INT8_UPDATE_ERROR)
            if not verification["passed"]:
                raise PGNError(f"one ExecuTorch step with the int8 PGN differs from the eager step of the same quantized graph: "
                               f"update off by {error:.2e} relative (tolerance {MAX_INT8_UPDATE_ERROR:.0e}); nothing written")
        if fitting_loss.kind in ("vgg19", "vgg11"):
            cosine = update_cosine(ours, autograd, before)
            verification.update(autograd_update_cosine=cosine, min_autograd_update_cosine=MIN_AUTOGRAD_UPDATE_COSINE)
            if cosine < MIN_AUTOGRAD_UPDATE_COSINE:
                raise PGNError(f"the ExecuTorch VGG step's update has cosine {cosine:.6f} with autograd through pgn.PerceptualLoss "
                               f"(needs ≥ {MIN_AUTOGRAD_UPDATE_COSINE}): its hand-written gradient is wrong; nothing written")
        if not verification["passed"]:
            raise PGNError(f"one ExecuTorch step differs from one eager PyTorch step: parameter "
                           f"{verification['worst_parameter']} by {verification['max_relative_parameter_error']:.2e} "
                           f"relative (tolerance {MAX_PARAMETER_ERROR:.0e}); nothing written")
    from .executorch import _version, read_program

    trainable = [{"name": name.removeprefix("generator."), "shape": list(p.shape)}
                 for name, p in step.named_parameters() if p.requires_grad]
    generator_inputs = [{"name": f"input{i}" if len(example_inputs) > 1 else "inputs", "shape": list(t.shape),
                         "dtype": "float32", "value_space": "as the generator takes them"} for i, t in enumerate(example_inputs)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "manifest_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": TARGET_NAME,
        "artifact": output.name,
        "sha256": hashlib.sha256(pte).hexdigest(),
        "size_mb": round(len(pte) / 1e6, 3),
        "status": "verified" if verification["executed"] else "converted-not-run",
        "methods": [{"name": METHOD, "call": "forward_backward", "inputs": "generator inputs…, target",
                     "outputs": ["loss (scalar, before the update)", "image ŷ (N, 3, H, W)"],
                     "returns_gradients_of": "every trainable parameter (named_gradients)"}],
        "inputs": [*generator_inputs, {"name": "target", "shape": list(target.shape), "dtype": "float32",
                                       "value_space": "RGB [0, 1]", "range": [0.0, 1.0]}],
        "outputs": [{"name": "loss", "shape": [], "dtype": "float32"},
                    {"name": "image", "shape": list(image.shape), "dtype": "float32", "value_space": "RGB [0, 1]"}],
        "trainable_parameters": trainable,
        "optimizer": optimizer.to_dict(),
        "loss": fitting_loss.describe(),
        "weights_source": weights_source,
        "generator": {"source": str(generator) if isinstance(generator, (str, Path)) else type(generator).__name__,
                      "captured_by": "torch.export.export", "convolutions_as_matmul": convs,
                      "parameters": sum(p.numel() for p in step.generator.parameters())},
        "kernels": kernels,
        "exporter": {"name": "torch.export → _export_forward_backward → to_edge_transform_and_lower"
                             + (" (training XNNPACK partitioner)" if kernels == "xnnpack" else "") + " → to_executorch",
                     "executorch": _version("executorch"), "method": METHOD, **read_program(pte)},
        "verification": verification,
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions({"executorch": ("executorch",), "torchao": ("torchao",)}),
    }
    _write_atomically(output, pte, manifest)
    return output


def _write_atomically(output: Path, pte: bytes, manifest: dict[str, Any]) -> None:
    """Write the program and its manifest into a temporary folder beside ``output``, then move both into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pgn-export-", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        staged.write_bytes(pte)
        write_manifest(manifest_path(staged), manifest)
        os.replace(staged, output)
        os.replace(manifest_path(staged), manifest_path(output))


__all__ = ["FittingLoss", "SGDRecipe", "TrainingProgram", "export_training_step", "load_training"]
