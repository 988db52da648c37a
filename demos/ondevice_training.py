"""The whole fine-tuning step on an on-device trainer: ONNX Runtime training (``onnxruntime-training``).

:mod:`demos.ondevice` shows that fitting with a PGN needs only an MSE towards the PGN's proxy. Here the
generator's training step itself leaves PyTorch as well: the generator and that loss are exported as ONNX
training artifacts (training graph with gradients, eval graph, AdamW optimizer graph, checkpoint), and ONNX
Runtime's training API runs every step. One step on the device is:

1. ``ŷ = G(poses)`` — the eval graph (it also outputs the image);
2. ``P = PGN(ŷ, y)`` — the exported PGN in an inference session (no VGG);
3. ``loss = Σ_n pgn.surrogate_loss(ŷ, P, α, y, λ)`` (``α·MSE(ŷ, sg[P]) + λ·MSE(ŷ, y)``), its gradient and an AdamW step (weight decay 0,
   i.e. Adam) — the training and optimizer graphs.

``onnxruntime-training`` replaces the ``onnxruntime`` package (both install the ``onnxruntime`` module), so it is
not a dependency of the toolkit; without it the row says so. Its last release (1.19) reads ONNX IR ≤ 10, while
recent ``onnx`` releases write newer IR versions into the optimizer graph; the artifacts are therefore stamped
with IR 10, which these graphs need no newer feature of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pgn.errors import PGNError
from pgn.surrogate import surrogate_loss

#: The highest ONNX IR version onnxruntime-training 1.19 loads.
MAX_IR_VERSION = 10


def training_available() -> str | None:
    """``None`` when ONNX Runtime's training API can be imported, else the reason it cannot."""
    try:
        from onnxruntime.training import api, artifacts  # noqa: F401
    except ImportError as e:
        return f"onnxruntime-training not installed ({e.__class__.__name__}); install it in place of onnxruntime to run this row"
    return None


class FinetuneLossGraph(nn.Module):
    """``(poses, proxy, target) → (loss, image)``: the generator and the on-device loss as one exportable graph.

    Args:
        generator: maps poses to (N, 3, H, W) images in [0, 1].
        alpha: the PGN's α. mse_weight: λ_MSE (normalized space).
    """

    def __init__(self, generator: nn.Module, alpha: float, mse_weight: float):
        super().__init__()
        self.generator = generator
        self.alpha, self.mse_weight = float(alpha), float(mse_weight)

    def forward(self, poses: torch.Tensor, proxy: torch.Tensor, target: torch.Tensor):  # noqa: D102
        image = self.generator(poses)
        loss = surrogate_loss(image, proxy, self.alpha, target, self.mse_weight).sum()  # pgn's one definition
        return loss, image


def export_training_artifacts(generator: nn.Module, poses: torch.Tensor, alpha: float, mse_weight: float, out_dir: Path) -> Path:
    """Write ONNX training artifacts of ``generator`` + the on-device loss into ``out_dir``; returns it.

    Every trainable parameter of ``generator`` is trained; shapes are fixed to ``poses`` and (N, 3, H, W).
    """
    import warnings

    import onnx
    import onnxruntime
    import onnxruntime.training.onnxblock as onnxblock
    from onnxruntime.training import artifacts

    onnxruntime.set_default_logger_severity(3)  # artifact generation logs every graph pass at info level

    out_dir.mkdir(parents=True, exist_ok=True)
    graph = FinetuneLossGraph(generator, alpha, mse_weight).train()
    n, _, h, w = poses.shape
    example = (poses, torch.zeros(n, 3, h, w), torch.zeros(n, 3, h, w))
    path = out_dir / "finetune_step.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, example, str(path), input_names=["poses", "proxy", "target"], output_names=["loss", "image"],
            dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING, export_params=True,
        )
    model = onnx.load(str(path))
    trainable = {name for name, p in graph.named_parameters() if p.requires_grad}
    names = [init.name for init in model.graph.initializer if init.name in trainable]
    if len(names) != len(trainable):
        raise PGNError(f"ONNX export renamed generator parameters ({len(names)} of {len(trainable)} found); cannot train them")
    artifacts.generate_artifacts(
        model,
        requires_grad=names,
        frozen_params=[],
        loss=None,  # the graph already outputs (loss, image); gradients are taken of its first output
        optimizer=onnxblock.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        artifact_directory=str(out_dir),
    )
    for f in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        m = onnx.load(str(out_dir / f))
        if m.ir_version > MAX_IR_VERSION:
            m.ir_version = MAX_IR_VERSION
            onnx.save(m, str(out_dir / f))
    return out_dir


@dataclass
class OrtGeneratorTrainer:
    """Runs the exported generator training step with ONNX Runtime's training API (CPU)."""

    state: object
    module: object
    optimizer: object

    @classmethod
    def load(cls, artifact_dir: Path, lr: float) -> "OrtGeneratorTrainer":
        """Open the artifacts written by :func:`export_training_artifacts`."""
        from onnxruntime.training import api

        state = api.CheckpointState.load_checkpoint(str(artifact_dir / "checkpoint"))
        module = api.Module(str(artifact_dir / "training_model.onnx"), state, str(artifact_dir / "eval_model.onnx"), device="cpu")
        optimizer = api.Optimizer(str(artifact_dir / "optimizer_model.onnx"), module)
        optimizer.set_learning_rate(lr)
        return cls(state, module, optimizer)

    def render(self, poses: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The generator's current images (eval graph; the proxy input does not affect the image)."""
        self.module.eval()
        return self.module(poses, np.zeros_like(target), target)[1]

    def step(self, poses: np.ndarray, proxy: np.ndarray, target: np.ndarray) -> float:
        """One training step towards ``proxy`` (+ λ·MSE to ``target``); returns the loss before the step."""
        self.module.train()
        loss = self.module(poses, proxy, target)[0]
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def parameters(self) -> dict[str, np.ndarray]:
        """The trained parameters by their (PyTorch) names, e.g. ``generator.code``."""
        return {name: np.array(param.data) for name, param in self.state.parameters}


def finetune_on_device(
    init: nn.Module,
    poses: torch.Tensor,
    target: torch.Tensor,
    runtime,
    alpha: float,
    mse_weight: float,
    lr: float,
    steps: int,
    work_dir: Path,
    meter=None,
    progress=None,
) -> nn.Module:
    """Fine-tune a copy of ``init`` entirely outside PyTorch: ORT training for the generator, ``runtime`` for the PGN.

    Args:
        init: the generator (``poses → images``) to start from; it is not modified.
        poses, target: the training batch (fixed shapes, as exported).
        runtime: the exported PGN (``run(y_hat, y) -> {"proxy", "grad"}``).
        meter: optional :class:`~benchmarks.measure.LossMeter` timing each whole device step.
        progress: optional callable run after every step with the loss.

    Returns:
        A PyTorch copy of ``init`` holding the parameters trained by ONNX Runtime.
    """
    import copy
    from contextlib import nullcontext

    graph = FinetuneLossGraph(copy.deepcopy(init), alpha, mse_weight)
    artifact_dir = export_training_artifacts(graph.generator, poses, alpha, mse_weight, work_dir)
    trainer = OrtGeneratorTrainer.load(artifact_dir, lr)
    p, y = poses.numpy().astype(np.float32), target.numpy().astype(np.float32)
    for _ in range(steps):
        with meter.measure() if meter is not None else nullcontext():
            image = trainer.render(p, y)
            proxy = np.asarray(runtime.run(image, y)["proxy"], dtype=np.float32)
            loss = trainer.step(p, proxy, y)
        if progress is not None:
            progress(loss)
    trained = {k: torch.from_numpy(v) for k, v in trainer.parameters().items()}
    missing = set(dict(graph.named_parameters())) - set(trained)
    if missing:
        raise PGNError(f"ONNX Runtime checkpoint lacks parameters {sorted(missing)[:3]}...")
    graph.load_state_dict(trained, strict=False)
    return graph.generator.eval()
