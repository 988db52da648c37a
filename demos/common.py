"""Pieces every demo shares: common settings, the evaluation of a set of images, progress bars, students' rows."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import pgn

from .losses import Loss
from .metrics import LPIPSMetric, gradient_cosine, mean_std, mse, ssim
from .resources import PGNSource, Warnings, load_pgn, load_teacher


@dataclass
class CommonConfig:
    """Settings shared by all demos.

    Args:
        output_dir: where results.json, results.md and the image grids go.
        size: image height and width (pixels).
        seed: seeds generator initializations, frames and noise.
        vgg_weights: ``auto`` (ImageNet if cached, else random with a warning), ``imagenet``, ``random`` or a path.
        pgn_checkpoint: PGN weights (``pgn-distill`` output, the authors' file, or ``paper``); ``None`` = untrained.
        pgn_preset: the PGN preset (default ``resnet4``); checked against the checkpoint when both are given.
        measure_memory: measure the loss part's peak memory (Linux only).
        progress: show progress bars (on stderr).
    """

    output_dir: Path = Path("pgn-runs/demo")
    size: int = 64
    seed: int = 0
    vgg_weights: str = "auto"
    pgn_checkpoint: str | None = None
    pgn_preset: str | None = None
    measure_memory: bool = True
    progress: bool = True


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (disabled when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


class Evaluator:
    """Reconstruction metrics of images against their targets, with the VGG-19 teacher and LPIPS of one run."""

    def __init__(self, teacher19: pgn.PerceptualLoss, lpips: LPIPSMetric):
        self.teacher19 = teacher19
        self.lpips = lpips

    @torch.no_grad()
    def perceptual(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """VGG-19 perceptual loss per sample (spec §2.3)."""
        return self.teacher19.per_sample(y_hat.detach(), y.detach())

    def images(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict:
        """Per-sample MSE ([0, 1] space), PL_VGG-19, SSIM and LPIPS (or the reason it is missing)."""
        out = {
            "mse": mse(y_hat, y).tolist(),
            "pl_vgg19": self.perceptual(y_hat, y).tolist(),
            "ssim": ssim(y_hat.clamp(0, 1), y).tolist(),
        }
        lp = self.lpips(y_hat.clamp(0, 1), y)
        out["lpips"] = lp.tolist() if lp is not None else LPIPSMetric.UNAVAILABLE
        return out

    def gradient_cosine(self, loss: Loss, y_hat: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Cosine similarity per sample between ``loss``'s own gradient and the VGG-19 gradient at ``y_hat``."""
        g_true = self.teacher19.gradient(y_hat.detach(), y.detach())
        return gradient_cosine(loss.own_gradient(y_hat.detach(), y.detach()), g_true).tolist()


def summary(values) -> dict | str:
    """``{"mean", "std"}`` of per-sample values (passes a string such as "n/a (...)" through)."""
    if isinstance(values, str):
        return values
    m, s = mean_std(values)
    return {"mean": m, "std": s}


def scaled(values, factor: float) -> dict | str:
    """:func:`summary` of ``values × factor`` (e.g. MSE ×10³ as the paper prints it)."""
    if isinstance(values, str):
        return values
    return summary([v * factor for v in values])


def setup_resources(config: CommonConfig) -> tuple[Warnings, Evaluator, pgn.PerceptualLoss, PGNSource]:
    """Load the VGG-19 teacher (for metrics), LPIPS and the PGN, collecting warnings."""
    warnings = Warnings()
    teacher = load_teacher("vgg19", config.vgg_weights, warnings, seed=config.seed)
    lpips = LPIPSMetric.try_load()
    source = load_pgn(config.pgn_checkpoint, config.pgn_preset, warnings, seed=config.seed)
    return warnings, Evaluator(teacher, lpips), teacher, source


def announce(console, setup: dict, warnings: list[str]) -> None:
    """Print which weights a demo runs with, and the warnings so far, before the long part starts."""
    if console is None:
        return
    from .report import print_warnings

    for key, value in setup.items():
        console.print(f"[bold]{key}[/bold]: {value}")
    print_warnings(console, warnings)


def check_size(size: int, multiple: int, what: str) -> None:
    """A clear error unless ``size`` is a positive multiple of ``multiple``."""
    if size <= 0 or size % multiple:
        low = max(multiple, size // multiple * multiple)
        raise pgn.PGNError(f"--size {size} does not suit {what}: use a multiple of {multiple} (e.g. {low} or {low + multiple})")


def teacher_description(teacher: pgn.PerceptualLoss) -> str:
    """How the VGG weights are printed in every report."""
    return str(teacher.weights)
