"""A generator as ``torch.export`` captured it, as a module a fitting step can train (:class:`CapturedGenerator`).

Users hold a generator as an ``nn.Module`` (Python) or as a program saved with ``torch.export.save`` (``.pt2``); both
become one captured graph here (:func:`capture_generator`, :func:`load_generator_program`), so the fitting step
sees one kind of generator. The graph is run with its parameters and buffers registered under their original
names, so the trained parameters load into the user's generator with ``load_state_dict``. For ExecuTorch the
graph's trainable convolutions can become matrix multiplies (:func:`export.matmul_conv.matmul_conv2d`), which
XNNPACK runs with weights that change every step.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export.graph_signature import InputKind, OutputKind

from pgn.errors import PGNError, first_line

from .matmul_conv import matmul_conv2d


def _container(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding the attribute ``path`` (``a.b.weight``) under ``root``, created as empty modules."""
    *owners, leaf = path.split(".")
    module = root
    for name in owners:
        if not hasattr(module, name):
            module.add_module(name, nn.Module())
        module = getattr(module, name)
    return module, leaf


def _get(root: nn.Module, path: str) -> torch.Tensor:
    module, leaf = _container(root, path)
    return getattr(module, leaf)


class CapturedGenerator(nn.Module):
    """The graph of a captured generator with its parameters and buffers under their original names.

    Args:
        program: the generator's ``torch.export.ExportedProgram``.
    """

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        signature = program.graph_signature
        # not a submodule: the lifted graph holds no state, everything reaches it as an argument
        object.__setattr__(self, "graph_module", copy.deepcopy(program.graph_module))
        self.input_specs = list(signature.input_specs)
        self.output_specs = list(signature.output_specs)
        state = program.state_dict
        for spec in self.input_specs:
            if spec.kind == InputKind.PARAMETER:
                owner, leaf = _container(self, spec.target)
                owner.register_parameter(leaf, nn.Parameter(state[spec.target].detach().clone()))
            elif spec.kind == InputKind.BUFFER:
                owner, leaf = _container(self, spec.target)
                value = state[spec.target] if spec.target in state else program.constants[spec.target]
                owner.register_buffer(leaf, value.detach().clone(), persistent=spec.persistent is not False)
            elif spec.kind in (InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
                object.__setattr__(self, f"_constant_{spec.arg.name}", program.constants[spec.target])
        self.user_inputs = [s.arg.name for s in self.input_specs if s.kind == InputKind.USER_INPUT]
        self.input_shapes = [tuple(n.meta["val"].shape) for n in program.graph.nodes
                             if n.op == "placeholder" and n.name in self.user_inputs]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if len(inputs) != len(self.user_inputs):
            raise PGNError(f"the generator takes {len(self.user_inputs)} inputs, got {len(inputs)}")
        user = iter(inputs)
        args = []
        for spec in self.input_specs:
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                args.append(_get(self, spec.target))
            elif spec.kind == InputKind.USER_INPUT:
                args.append(next(user))
            else:
                args.append(getattr(self, f"_constant_{spec.arg.name}"))
        outputs = self.graph_module(*args)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        results = []
        for spec, value in zip(self.output_specs, outputs):
            if spec.kind == OutputKind.BUFFER_MUTATION:  # e.g. BatchNorm running statistics
                with torch.no_grad():
                    _get(self, spec.target).copy_(value.detach())
            elif spec.kind == OutputKind.USER_OUTPUT:
                results.append(value)
        if len(results) != 1:
            raise PGNError(f"the generator must return one image tensor, it returns {len(results)} outputs")
        return results[0]

    def matmul_convs(self) -> int:
        """Make every ``aten.conv2d`` of the graph that reads a parameter as its weight a :func:`matmul_conv2d` call
        (one group, no dilation), in place; returns how many."""
        placeholders = {n.name: n for n in self.graph_module.graph.nodes if n.op == "placeholder"}
        params = {placeholders[s.arg.name] for s in self.input_specs if s.kind == InputKind.PARAMETER}
        rewritten = 0
        for node in list(self.graph_module.graph.nodes):
            if node.op != "call_function" or node.target != torch.ops.aten.conv2d.default:
                continue
            x, weight, bias, stride, padding, dilation, groups = (list(node.args) + [None] * 7)[:7]
            if weight not in params or groups not in (None, 1) or tuple(dilation or (1, 1)) != (1, 1) or isinstance(padding, str):
                continue
            node.target = matmul_conv2d
            node.args, node.kwargs = (x, weight, bias, tuple(stride or (1, 1)), tuple(padding or (0, 0))), {}
            rewritten += 1
        self.graph_module.recompile()
        return rewritten


def capture_generator(generator: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> CapturedGenerator:
    """``generator`` captured by ``torch.export`` for ``example_inputs``; one line naming the cause if it cannot be."""
    if not isinstance(generator, nn.Module):
        raise PGNError(f"the generator must be a torch.nn.Module or a .pt2 file, got {type(generator).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(generator, tuple(example_inputs), strict=False)
    except Exception as e:  # noqa: BLE001 - capture failures become one line
        raise PGNError(f"torch.export cannot capture the generator: {type(e).__name__}: {first_line(e)}") from e
    return CapturedGenerator(program)


def load_generator_program(path: str | Path) -> CapturedGenerator:
    """A generator saved with ``torch.export.save`` (``.pt2``); its example inputs' shapes are the step's."""
    path = Path(path)
    if not path.is_file():
        raise PGNError(f"generator program not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(path)
    except Exception as e:  # noqa: BLE001
        raise PGNError(f"{path.name} is not a program saved with torch.export.save: {type(e).__name__}: {first_line(e)}") from None
    return CapturedGenerator(program)


def example_inputs_of(generator: CapturedGenerator, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random example inputs of the shapes ``generator`` was captured with (values in [0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(shape, generator=gen) for shape in generator.input_shapes)
