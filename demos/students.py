"""Students: copies of one generator initialization, each fitted side by side with its own loss.

A step is split at the generated image: ``ŷ = forward(generator)``; the loss part computes ``∂loss/∂ŷ`` on a
detached copy; then ``ŷ.backward(∂loss/∂ŷ)`` carries it into the generator and Adam steps. By the chain rule this
is exactly ``loss(ŷ).backward()``. Two meters (:class:`~benchmarks.measure.LossMeter`) time and memory-measure every
step: ``meter`` its loss part (the losses on equal terms), ``step_meter`` the whole step (what an on-device trainer
runs as one call).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .losses import Loss
from pgn.benchmarks.measure import LossMeter

#: ``forward(generator) -> ŷ``: how a demo turns its generator into images, (N, 3, H, W) RGB [0, 1].
Forward = Callable[[nn.Module], torch.Tensor]


@dataclass
class StepResult:
    """What one fitting step saw: the image *before* the step and its per-sample loss values."""

    image: torch.Tensor
    loss: torch.Tensor


@dataclass
class Student:
    """A generator copy, its optimizer and its loss.

    Args:
        name: row name.
        loss: the :class:`~demos.losses.Loss` to minimize.
        generator: this student's own module (``parameters()`` with ``requires_grad`` are optimized).
        lr: Adam learning rate (PyTorch defaults otherwise, as in the authors' code).
        measure_memory: measure the peak memory of the loss part and of the whole step (see :mod:`benchmarks.measure`).

    Attributes:
        meter: times the loss part of each step (loss forward + backward to the image).
        step_meter: times each whole step (generator forward, loss part, backward into the generator, Adam).
    """

    name: str
    loss: Loss
    generator: nn.Module
    lr: float
    measure_memory: bool = True
    meter: LossMeter = field(init=False)
    step_meter: LossMeter = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self):
        self.meter = LossMeter(memory=self.measure_memory)
        self.step_meter = LossMeter(memory=self.measure_memory)
        params = [p for p in self.generator.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.lr)

    @classmethod
    def from_init(cls, name: str, loss: Loss, init: nn.Module, lr: float, **kwargs) -> "Student":
        """A student starting from a deep copy of ``init`` (every student of a demo shares one initialization)."""
        return cls(name, loss, copy.deepcopy(init), lr, **kwargs)

    def step(self, forward: Forward, target: torch.Tensor) -> StepResult:
        """One Adam step on ``loss(forward(generator), target)``."""
        with self.step_meter.measure():
            y_hat = forward(self.generator)
            x = y_hat.detach().requires_grad_(True)
            with self.meter.measure(within=self.step_meter):
                values = self.loss.per_sample(x, target)
                (grad,) = torch.autograd.grad(values.sum(), x)
            self.optimizer.zero_grad(set_to_none=True)
            y_hat.backward(grad)
            self.optimizer.step()
        return StepResult(x.detach(), values.detach())

    @torch.no_grad()
    def render(self, forward: Forward) -> torch.Tensor:
        """The generator's current output (no step)."""
        return forward(self.generator).detach()
