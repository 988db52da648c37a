"""Pieces every demo shares: common settings, the scores of a set of images, progress bars, reading target images."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import pgn
from pgn.images import center_crop, list_images, read_image, resize_min_side

from .losses import Loss
from .metrics import LPIPSMetric, gradient_cosine, mean_std, mse, ssim


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
        measure_memory: measure the peak memory of the loss part and of the whole step (Linux only).
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


@dataclass
class Scores:
    """Per-sample reconstruction scores of a set of images: MSE ([0, 1] space), VGG-19 perceptual loss, SSIM, LPIPS.

    ``lpips`` is a string saying why when LPIPS is unavailable. :meth:`extend` adds the scores of more images
    (DIP scores one image at a time); :meth:`cells` gives the table cells.
    """

    mse: list[float] = field(default_factory=list)
    pl_vgg19: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lpips: list[float] | str = field(default_factory=list)

    def extend(self, other: "Scores") -> None:
        """Append ``other``'s samples (an unavailable LPIPS stays unavailable)."""
        self.mse += other.mse
        self.pl_vgg19 += other.pl_vgg19
        self.ssim += other.ssim
        self.lpips = other.lpips if isinstance(other.lpips, str) else self.lpips + other.lpips

    def cells(self, prefix: str = "") -> dict:
        """Table cells ``{prefix}mse_x1e3``, ``pl_vgg19``, ``ssim``, ``lpips``: mean ± std, MSE ×10³ as the paper prints it."""
        return {
            f"{prefix}mse_x1e3": summary([v * 1e3 for v in self.mse]),
            f"{prefix}pl_vgg19": summary(self.pl_vgg19),
            f"{prefix}ssim": summary(self.ssim),
            f"{prefix}lpips": summary(self.lpips),
        }


class Evaluator:
    """Reconstruction metrics of images against their targets, with the VGG-19 teacher and LPIPS of one run."""

    def __init__(self, teacher19: pgn.PerceptualLoss, lpips: LPIPSMetric):
        self.teacher19 = teacher19
        self.lpips = lpips

    @torch.no_grad()
    def perceptual(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """VGG-19 perceptual loss per sample: the mean absolute feature difference at each ReLU up to relu5_1, summed."""
        return self.teacher19.per_sample(y_hat.detach(), y.detach())

    def scores(self, y_hat: torch.Tensor, y: torch.Tensor) -> Scores:
        """Per-sample MSE ([0, 1] space), PL_VGG-19, SSIM and LPIPS (or the reason it is missing)."""
        lp = self.lpips(y_hat.clamp(0, 1), y)
        return Scores(
            mse=mse(y_hat, y).tolist(),
            pl_vgg19=self.perceptual(y_hat, y).tolist(),
            ssim=ssim(y_hat.clamp(0, 1), y).tolist(),
            lpips=lp.tolist() if lp is not None else LPIPSMetric.UNAVAILABLE,
        )

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


def check_size(size: int, multiple: int, what: str) -> None:
    """A clear error unless ``size`` is a positive multiple of ``multiple``."""
    if size <= 0 or size % multiple:
        low = max(multiple, size // multiple * multiple)
        raise pgn.PGNError(f"--size {size} does not suit {what}: use a multiple of {multiple} (e.g. {low} or {low + multiple})")


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, H, W) image resized (shorter side to ``size``) and centre-cropped to ``size``×``size``."""
    return center_crop(resize_min_side(image, size), size)


def read_images(folder: Path, n: int, size: int, lower: str, noun: str = "image") -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` images of ``folder`` (sorted by name) as (n, 3, size, size) in [0, 1], and their file names.

    A one-line error if the folder has fewer; it names the options that ask for them (``lower``).
    """
    files = list_images(folder)
    if len(files) < n:
        raise pgn.PGNError(f"{folder} has {len(files)} {noun}(s), need {n}: add {noun}s or lower {lower}")
    return torch.stack([square(read_image(f), size) for f in files[:n]]), [f.name for f in files[:n]]
