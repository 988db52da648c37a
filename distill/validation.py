"""Held-out evaluation: how well the PGN's gradient matches the true VGG gradient on images never trained on.

Two measurements, both on the held-out images of :func:`distill.data.validation_images`:

* ``val/cos`` (the headline number): fixed (ŷ, y) pairs where ŷ is a deterministic degradation of y —
  blur, noise, pixelation, a colour shift — standing in for a generator's output near its target. The pairs
  never change, so the number before and after training compares like with like.
* ``val/ae_cos``: ŷ = the current training autoencoders' reconstructions of the held-out images (a copy of each
  autoencoder is used, so their BatchNorm statistics are not touched): the training distribution, unseen images.

The PGN runs in eval mode, as in the authors' validation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import pgn
from pgn.model import PGN
from pgn.perceptual import PerceptualLoss
from pgn.value_spaces import normalize

from . import checkpoints as ckpt
from .autoencoders import split_sizes
from .config import DistillConfig
from .data import find_images, validation_images
from .distributed import pick_device
from .metalosses import gradient_metrics, teacher_pass

DEGRADATIONS = ("blur", "noise", "pixelate", "color")


def degrade(y: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A deterministic stand-in for a generator output near ``y``: (N, 3, H, W) [0, 1] in, same out."""
    n, _, h, w = y.shape
    if kind == "blur":
        small = F.interpolate(y, scale_factor=0.25, mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    if kind == "noise":
        return (y + 0.15 * torch.randn(y.shape, generator=generator)).clamp(0, 1)
    if kind == "pixelate":
        small = F.interpolate(y, scale_factor=0.125, mode="area")
        return F.interpolate(small, size=(h, w), mode="nearest")
    if kind == "color":
        gain = 1.0 + 0.3 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
        shift = 0.15 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
        soft = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
        return (soft * gain + shift).clamp(0, 1)
    raise ValueError(f"unknown degradation {kind!r}")


@dataclass
class ValidationSet:
    """Fixed held-out pairs in normalized space: targets ``y``, degraded ``y_hat`` and each pair's degradation."""

    y: torch.Tensor
    y_hat: torch.Tensor
    kinds: list[str]

    @classmethod
    def from_images(cls, images: torch.Tensor, seed: int = 0) -> "ValidationSet":
        """Build the pairs from (N, 3, H, W) [0, 1] held-out images; degradations cycle through DEGRADATIONS."""
        gen = torch.Generator().manual_seed(seed)
        kinds = [DEGRADATIONS[i % len(DEGRADATIONS)] for i in range(images.shape[0])]
        y_hat = torch.stack([degrade(img[None], k, gen)[0] for img, k in zip(images, kinds)])
        return cls(normalize(images), normalize(y_hat), kinds)


@torch.no_grad()
def _pgn_grad(model: PGN, y_hat: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model.outputs(a, b).grad for a, b in zip(y_hat.split(batch), y.split(batch))])


def _teacher_grad(teacher: PerceptualLoss, y_hat: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [teacher_pass(teacher, a, b) for a, b in zip(y_hat.split(batch), y.split(batch))]
    return torch.cat([o.grad for o in outs]), torch.cat([o.loss for o in outs])


def _pair_metrics(model: PGN, baseline: PGN | None, teacher: PerceptualLoss, y_hat, y, batch: int, prefix: str) -> dict:
    g_true, _ = _teacher_grad(teacher, y_hat, y, batch)
    m = gradient_metrics(_pgn_grad(model, y_hat, y, batch), g_true)
    out = {f"{prefix}cos": m["cos"], f"{prefix}rel_err": m["rel_err"], f"{prefix}norm_ratio": m["norm_ratio"]}
    out[f"{prefix}cos_mse"] = gradient_metrics(y_hat - y, g_true)["cos"]  # the plain MSE gradient, for reference
    if baseline is not None:
        out[f"{prefix}cos_untrained"] = gradient_metrics(_pgn_grad(baseline, y_hat, y, batch), g_true)["cos"]
    return out


def evaluate(
    model: PGN,
    teacher: PerceptualLoss,
    val: ValidationSet,
    autoencoders=None,
    device: torch.device | str = "cpu",
    batch: int = 16,
    baseline: PGN | None = None,
) -> dict[str, float]:
    """Held-out metrics of ``model`` (all means over the held-out pairs).

    On the fixed degraded pairs: ``val/cos``, ``val/rel_err``, ``val/norm_ratio``, ``val/cos_<degradation>``,
    and ``val/cos_mse`` (cosine of the plain MSE gradient ŷ − y with the true one: a reference line).
    With ``autoencoders``: the same on their reconstructions, as ``val/ae_cos``, ``val/ae_rel_err``, ….
    With ``baseline`` (e.g. the untrained PGN): its cosine on the same pairs, ``val/cos_untrained`` and
    ``val/ae_cos_untrained``. The models' train/eval modes are restored.
    """
    models = [m for m in (model, baseline) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        y, y_hat = val.y.to(device), val.y_hat.to(device)
        per = _pair_metrics(model, baseline, teacher, y_hat, y, batch, "val/")
        out = {k: float(v.mean()) for k, v in per.items()}
        for kind in DEGRADATIONS:
            sel = torch.tensor([k == kind for k in val.kinds], device=per["val/cos"].device)
            if bool(sel.any()):
                out[f"val/cos_{kind}"] = float(per["val/cos"][sel].mean())
        if autoencoders is not None:
            per = _pair_metrics(model, baseline, teacher, _reconstruct(autoencoders, y), y, batch, "val/ae_")
            out.update({k: float(v.mean()) for k, v in per.items()})
        return out
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
@torch.no_grad()
def _reconstruct(autoencoders, y: torch.Tensor) -> torch.Tensor:
    # Copies in train mode (as in training): BatchNorm uses the batch, and the originals' running stats stay put.
    parts = []
    for ae, chunk in zip(autoencoders, y.split(split_sizes(y.shape[0], len(autoencoders)))):
        twin = copy.deepcopy(ae).train()
        parts.append(twin(chunk))
    return torch.cat(parts)


def evaluate_pgn(config: DistillConfig, checkpoint: str | Path | None = None) -> dict[str, float]:
    """Held-out metrics (:func:`evaluate`, without autoencoders) of the PGN in ``checkpoint``, or of the PGN a fresh
    run with ``config`` would start from; no training. Our ``--eval-only`` (the authors' ``--valid-only``).
    """
    config = config.resolved()
    device = pick_device(config.device, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initialization of a fresh run
        model = pgn.build(config.backbone, value_space="imagenet", **config.pgn_overrides()).to(device)
    if checkpoint is not None:
        ckpt.load_pgn_weights(model, checkpoint)
    teacher = PerceptualLoss(config.teacher, weights=config.vgg_weights, seed=config.teacher_seed, value_space="imagenet").to(device)
    split = find_images(config.data, config.dataset, config.val_fraction)
    images, _ = validation_images(split, config.size, config.val_images, config.min_image_side, seed=config.seed)
    scores = evaluate(model, teacher, ValidationSet.from_images(images, seed=config.seed), None, device)
    scores["teacher"] = str(teacher.weights)
    return scores
