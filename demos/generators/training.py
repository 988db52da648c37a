"""How the demos train their own generators before the experiments (meta-training, autoencoding): Adam on an L1 loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

#: ``progress(step, loss)``, called after every step.
Progress = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Adam steps, images per step (what a "batch" is, each trainer says), learning rate, betas and seed."""

    steps: int
    batch: int
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0


def train_adam(params: Iterable[torch.nn.Parameter], config: TrainConfig, step_loss: Callable[[], torch.Tensor],
               progress: Progress | None = None) -> list[float]:
    """``config.steps`` Adam steps on the loss ``step_loss()`` computes for a fresh batch; returns every step's loss."""
    opt = torch.optim.Adam(list(params), lr=config.lr, betas=config.betas)
    losses: list[float] = []
    for step in range(config.steps):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    return losses
