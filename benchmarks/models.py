"""What ``pgn-bench`` measures: the VGG teachers (forward + input-only backward) and the PGNs (forward only).

Model names:

==================  =====================================================================================
``vgg19``           VGG-19 perceptual-loss gradient: forward on ŷ and on y, backward to ŷ only (VGG frozen)
``vgg19-cached``    the same with the target's features computed once beforehand (fixed target: DIP, inversion)
``vgg11``           VGG-11, as ``vgg19``
``vgg11-cached``    VGG-11, as ``vgg19-cached``
``resnet4`` …       any PGN preset of :func:`pgn.list_presets` (``resnet4``, ``resnet6``, ``resnet8``, ``unet``, …):
                    one forward under ``torch.inference_mode``
==================  =====================================================================================

"Work MACs" are the multiply-adds actually executed for one gradient of one image pair: 3 × one VGG forward
uncached (forward on ŷ and y, an input-only backward costs about one forward), 2 × cached, and the
convolution multiply-adds of one PGN forward. The paper's Table 6 MACs (``pgn.profile``) are reported beside
them; for the teachers the paper counted 6 × one forward.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

import torch

import pgn
from pgn.errors import PGNError

TEACHERS = ("vgg19", "vgg11")
#: A plain ``pgn-bench``: the paper's question, VGG-19 and VGG-11 against its four PGNs.
DEFAULT_MODELS = ("vgg19", "vgg11", "resnet4", "resnet6", "resnet8", "unet")
#: ``pgn-bench --full``: the paper's Figure 8 models plus VGG-19 with cached target features (vgg11-cached on request).
FULL_MODELS = ("vgg19", "vgg19-cached", "vgg11", "resnet4", "resnet6", "resnet8", "unet")
#: Display names of the paper's models.
DISPLAY = {"vgg19": "VGG-19", "vgg11": "VGG-11", "resnet4": "ResNet-4", "resnet6": "ResNet-6", "resnet8": "ResNet-8", "unet": "UNet"}
#: Degradation of the generated image ŷ relative to the target y (deterministic, see :func:`make_inputs`).
BLUR_SIGMA = 1.5
NOISE_STD = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model.

    Args:
        name: the name given on the command line (``vgg19-cached``, ``resnet4``, …).
        kind: ``teacher`` (VGG forward + backward) or ``pgn`` (PGN forward).
        net: the VGG (``vgg19``/``vgg11``) for a teacher, the PGN preset for a PGN.
        cached_target: teachers only: the target's VGG features are precomputed once and reused.
    """

    name: str
    kind: str
    net: str
    cached_target: bool = False

    @property
    def display(self) -> str:
        """Human name, e.g. ``VGG-19 (cached y)``."""
        base = DISPLAY.get(self.net, self.net)
        return f"{base} (cached y)" if self.cached_target else base

    @property
    def is_teacher(self) -> bool:
        """True for a VGG perceptual-loss gradient (needs autograd)."""
        return self.kind == "teacher"

    @property
    def target_features(self) -> str | None:
        """``cached`` / ``recomputed`` for a teacher (is y's forward part of every gradient?), None for a PGN."""
        if not self.is_teacher:
            return None
        return "cached" if self.cached_target else "recomputed"


def resolve_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for a model name; a one-line error with close matches for an unknown one."""
    for net in TEACHERS:
        if name == net:
            return ModelSpec(name, "teacher", net, False)
        if name == f"{net}-cached":
            return ModelSpec(name, "teacher", net, True)
    if name in pgn.list_presets():
        return ModelSpec(name, "pgn", name)
    known = [*TEACHERS, *(f"{t}-cached" for t in TEACHERS), *pgn.list_presets()]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise PGNError(
        f"unknown model {name!r}.{hint} Use vgg19, vgg19-cached, vgg11, vgg11-cached, or a PGN preset such as "
        f"resnet4, resnet6, resnet8, unet (all presets: pgn-info --presets)"
    )


def size_multiple(spec: ModelSpec) -> int:
    """Height and width of this model's inputs must be multiples of this."""
    if spec.is_teacher:
        return 16  # four 2×2 average pools before relu5_1
    return pgn.build(spec.net).size_multiple


@dataclass(frozen=True)
class Cost:
    """Size and arithmetic of one gradient for ``batch`` image pairs of ``size``."""

    params: int  #: parameters (paper Table 6 convention: VGG conv layers up to relu5_1)
    paper_macs: int  #: paper Table 6 MACs for one image pair (teachers: 6 × forward)
    work_macs: int  #: multiply-adds executed for the whole batch (see module docs)


@lru_cache(maxsize=64)
def model_cost(name: str, size: tuple[int, int], batch: int) -> Cost:
    """Parameters, paper-convention MACs and executed multiply-adds for ``batch`` gradients at ``size``."""
    spec = resolve_model(name)
    prof = pgn.profile(spec.net, size)
    if spec.is_teacher:
        forward = prof.conv_macs // 6  # profile counts 6 × one image's forward for a teacher
        work = (2 if spec.cached_target else 3) * forward
    else:
        work = prof.conv_macs
    return Cost(params=prof.params, paper_macs=prof.macs, work_macs=work * batch)


def build_pgn(name: str, seed: int, weights: str | None = None) -> pgn.PGN:
    """A PGN preset in eval mode: seeded random init (the same in every process), or loaded ``weights``."""
    if weights is not None:
        return pgn.build(name, weights=weights)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return pgn.build(name)
    finally:
        torch.random.set_rng_state(state)


def build_teacher(spec: ModelSpec, seed: int) -> pgn.PerceptualLoss:
    """The VGG teacher with seeded random weights: timing and memory do not depend on the weight values."""
    return pgn.PerceptualLoss(spec.net, weights="random", seed=seed)


def make_inputs(batch: int, size: tuple[int, int], seed: int = 0, photos: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A (ŷ, y) pair of (batch, 3, H, W) float images in [0, 1].

    ``y`` are the bundled photographs (``pgn.images``; ``photos`` names a subset of them, default all, sorted by
    name), center-cropped to ``size`` and repeated as needed; ``ŷ`` is ``y`` blurred and with seeded Gaussian
    noise, like a generator's imperfect output.
    """
    from pgn.images import center_crop, resize_min_side, sample_images

    h, w = size
    images = sample_images()
    keys = sorted(images) if photos is None else [k for k in photos if k in images]
    if not keys:
        raise PGNError(f"none of the bundled photographs {', '.join(photos or ())} is available: install scikit-image and scikit-learn")
    side = max(h, w)
    crops = [center_crop(resize_min_side(images[k], side), side)[:, :h, :w] for k in keys]
    y = torch.stack([crops[i % len(crops)] for i in range(batch)]).contiguous()
    y_hat = _blur(y, BLUR_SIGMA)
    gen = torch.Generator().manual_seed(seed)
    y_hat = (y_hat + NOISE_STD * torch.randn(y_hat.shape, generator=gen)).clamp(0.0, 1.0).contiguous()
    return y_hat, y


def make_input_file(path, batch: int, size: tuple[int, int], seed: int = 0):
    """Write every input a worker needs for ``batch`` × ``size`` into one ``torch.save`` file; return its path.

    Keys: ``y_hat``, ``y`` (the timed pair, all photos), ``eval_y_hat``, ``eval_y`` (accuracy checks, on the
    export package's parity photographs, :data:`export.verify.PARITY_PHOTOS`, which no int8 export calibrates on:
    the export targets calibrate on :func:`export.verify.calibration_pairs`). Made once per run so that every
    process sees identical inputs without decoding the photos again.
    """
    from pgn.export.verify import PARITY_PHOTOS

    y_hat, y = make_inputs(batch, size, seed)
    eval_y_hat, eval_y = make_inputs(batch, size, seed + 1, PARITY_PHOTOS)
    torch.save({"y_hat": y_hat, "y": y, "eval_y_hat": eval_y_hat, "eval_y": eval_y}, path)
    return path


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
