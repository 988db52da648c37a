"""``pgn-demo invert``: generator inversion in the style of Image2StyleGAN (paper §4, Table 2), the authors' protocol.

Protocol: the latent of each target starts at the generator's mean latent (or zeros) and is pre-fitted with MSE
only for T0 steps (MSE in the generator's output space, Adam lr 0.01, gradient-norm clipping at 10); from that
common starting point three students optimize the latent for T more steps (Adam lr 0.01): MSE, VGG-19 + 1·MSE,
and PGN + 20·MSE (all MSE terms in normalized space, as in the authors' code). The paper used StyleGAN at 256² on 100
FFHQ images with T0 = 5000, T = 1000.

The generator is the small built-in :class:`~demos.generators.LatentGenerator` (trained here in a few hundred
steps on the bundled photographs, the targets excluded), or any PyTorch module given as ``module:attr`` or
``file.py:attr`` with its latent shape, e.g. a StyleGAN generator wrapped to take W+ latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pgn.constants import PAPER_MSE_WEIGHT
from pgn.errors import PGNError, first_line
from pgn.heap import new_objects_collected_only
from pgn.images import sample_images, save_image_grid

from .common import TIMING_NOTE, CommonConfig, Run, Student, check_size
from .frames import FACE_CENTER, FACE_CROP, PORTRAIT, Pose, photo_frames, pretraining_photos, read_images, render_frame, square
from .generators.latent import AUTOENCODER_TRAINING, LatentGenerator, LatentGeneratorConfig, train_autoencoder
from .generators.user import load_module
from .losses import LOSSES
from .metrics import summary
from .report import RECONSTRUCTION_COLUMNS, DemoReport, Table, plot_curves

#: The students after the pre-fit, rows of :data:`demos.losses.LOSSES`.
INVERT_LOSSES = ("mse", "vgg19", "pgn")
#: Bundled targets, in order: the portrait's face, then photographs. They are excluded from generator training.
DEFAULT_TARGETS = ("face", "sklearn/china", "skimage/chelsea", "skimage/coffee")


@dataclass
class InvertConfig(CommonConfig):
    """Settings of the inversion demo (paper values in brackets).

    Args:
        images_dir: a folder of target images (default: the bundled portrait's face, then bundled photos).
        num_images: how many targets are inverted jointly as one batch [100 in batches of 10].
        generator: ``module:attr`` or ``file.py:attr`` naming an ``nn.Module`` (or a function building one) that maps
            a (N, *latent_shape) latent to (N, 3, H, W) images; ``None`` = the built-in generator.
        latent_shape: the latent shape per image, required with ``generator``.
        output_range: the generator's output range (``(-1, 1)`` for StyleGAN, ``(0, 1)``).
        latent_init: ``mean`` (the module's ``mean_latent()``), ``zeros`` or ``randn``.
        train_steps: training steps of the built-in generator.
        prefit_steps: T0, the MSE-only pre-fit [5000]. steps: T [1000]. lr: Adam [0.01]. prefit_clip: [10].
        pgn_mse_weight [20], vgg_mse_weight [1].
    """

    output_dir: Path = Path("pgn-runs/invert")
    images_dir: Path | None = None
    num_images: int = 2
    generator: str | None = None
    latent_shape: tuple[int, ...] | None = None
    output_range: tuple[float, float] = (-1.0, 1.0)
    latent_init: str = "mean"
    train_steps: int = 200
    prefit_steps: int = 100
    steps: int = 100
    lr: float = 0.01
    prefit_clip: float = 10.0
    pgn_mse_weight: float = PAPER_MSE_WEIGHT
    vgg_mse_weight: float = 1.0

    def __post_init__(self):
        if self.generator is not None and not self.latent_shape:
            raise PGNError("--generator needs --latent-shape (the latent of one image, e.g. 14,512 for StyleGAN-256 W+)")
        if self.latent_init not in ("mean", "zeros", "randn"):
            raise PGNError(f"unknown latent init {self.latent_init!r}: use mean, zeros or randn")
        if self.latent_shape is not None and any(d < 1 for d in self.latent_shape):
            raise PGNError(f"--latent-shape needs positive sizes, got {','.join(map(str, self.latent_shape))}")
        lo, hi = self.output_range
        if not (hi > lo and math.isfinite(lo) and math.isfinite(hi)):
            raise PGNError(f"output range must be finite (low, high) with high > low, got {self.output_range}")
        if self.num_images < 1 or self.steps < 1 or self.prefit_steps < 0 or self.train_steps < 0:
            raise PGNError("num_images and steps must be >= 1, prefit and train steps >= 0")


class LatentImage(nn.Module):
    """A trainable latent batch in front of a frozen generator; ``forward(None)`` gives images in [0, 1].

    The generator is held outside the module tree, so copying a student copies only its latent.
    """

    def __init__(self, generator: nn.Module, latent: torch.Tensor, output_range: tuple[float, float]):
        super().__init__()
        self.latent = nn.Parameter(latent.detach().clone())
        self._generator = (generator,)
        self.output_range = output_range

    def forward(self) -> torch.Tensor:  # noqa: D102
        lo, hi = self.output_range
        return (self._generator[0](self.latent) - lo) / (hi - lo)

    def __deepcopy__(self, memo):
        return LatentImage(self._generator[0], self.latent, self.output_range)


def _generate(g: nn.Module) -> torch.Tensor:
    return g()


def load_targets(config: InvertConfig, size: int) -> tuple[torch.Tensor, list[str]]:
    """``num_images`` targets (N, 3, size, size) in [0, 1] and their names."""
    n = config.num_images
    if config.images_dir is not None:
        return read_images(config.images_dir, n, size, "--num-images")
    if n > len(DEFAULT_TARGETS):
        raise PGNError(f"at most {len(DEFAULT_TARGETS)} bundled targets; lower --num-images or pass --images DIR")
    photos = sample_images()
    out = []
    for name in DEFAULT_TARGETS[:n]:
        if name == "face":
            out.append(render_frame(photos[PORTRAIT], FACE_CENTER, FACE_CROP, Pose(), size))
        else:
            out.append(square(photos[name], size))
    return torch.stack(out), list(DEFAULT_TARGETS[:n])


def builtin_generator(run: Run, config: InvertConfig) -> tuple[LatentGenerator, dict]:
    """Train the built-in generator on posed crops of the bundled photographs that are not targets."""
    torch.manual_seed(config.seed)
    gen = LatentGenerator(LatentGeneratorConfig(size=config.size, seed=config.seed))
    photos = pretraining_photos(config.size, exclude={PORTRAIT, *DEFAULT_TARGETS})

    def sample(n: int, g: torch.Generator) -> torch.Tensor:
        picks = torch.randint(0, len(photos), (n,), generator=g).tolist()
        return torch.cat([photo_frames(photos[i], 1, config.size, g) for i in picks]) * 2 - 1

    training = replace(AUTOENCODER_TRAINING, steps=config.train_steps, seed=config.seed)
    final_l1 = run.pretrain("training built-in generator", config.train_steps,
                            lambda progress: train_autoencoder(gen, sample, training, progress))
    gen.requires_grad_(False)
    return gen, {"source": f"built-in LatentGenerator trained here ({config.train_steps} steps)", "final_l1": final_l1}


def user_generator(config: InvertConfig) -> tuple[nn.Module, dict]:
    """Load the user's generator and check it maps a latent batch to an image batch."""
    gen = load_module(config.generator)
    gen.requires_grad_(False)
    with torch.no_grad():
        try:
            out = gen(torch.zeros(1, *config.latent_shape))
        except Exception as e:
            raise PGNError(f"--generator {config.generator} failed on a (1, {', '.join(map(str, config.latent_shape))}) latent: "
                           f"{e.__class__.__name__}: {first_line(e)}; check --latent-shape") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != 3:
        raise PGNError(f"--generator must return (N, 3, H, W) images, got {getattr(out, 'shape', type(out).__name__)}")
    return gen, {"source": f"user module {config.generator}", "output_size": list(out.shape[-2:])}


def initial_latent(gen: nn.Module, config: InvertConfig, shape: tuple[int, ...], n: int) -> tuple[torch.Tensor, str]:
    """The starting latent batch and how it was made: ``mean_latent()`` of the generator, zeros, or seeded noise.

    ``mean`` falls back to zeros when the module has no ``mean_latent()`` method (the description says so).
    """
    if config.latent_init == "mean" and hasattr(gen, "mean_latent"):
        mean = torch.as_tensor(gen.mean_latent()).detach().float()
        if mean.numel() != int(torch.tensor(shape).prod()):
            raise PGNError(f"mean_latent() of the generator has shape {tuple(mean.shape)}, not the latent shape {shape}")
        return mean.reshape(1, *shape).expand(n, *shape).clone(), "generator's mean_latent()"
    if config.latent_init in ("mean", "zeros"):
        how = "zeros" if config.latent_init == "zeros" else "zeros (the generator has no mean_latent())"
        return torch.zeros(n, *shape), how
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(config.seed)), "standard normal"


def prefit(run: Run, config: InvertConfig, image: LatentImage, targets: torch.Tensor) -> list[tuple[int, float]]:
    """T0 steps of MSE in the generator's output space with gradient-norm clipping, as the authors pre-fit their
    latents; returns the loss curve."""
    lo, hi = config.output_range
    y_gen = targets * (hi - lo) + lo
    opt = torch.optim.Adam([image.latent], lr=config.lr)
    curve = []
    bar = run.progress(config.prefit_steps, "MSE pre-fit")
    for t in range(config.prefit_steps):
        out = image() * (hi - lo) + lo
        loss = (out - y_gen).pow(2).flatten(1).mean(dim=1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([image.latent], config.prefit_clip)
        opt.step()
        curve.append((t, float(loss.detach()) / targets.shape[0]))
        bar.update(1)
    bar.close()
    return curve


def run_invert(config: InvertConfig, console=None) -> DemoReport:
    """Run the inversion demo; writes results.json, results.md, an image grid and curves; returns the report."""
    run = Run.start("invert", config, console, check_pgn_size=False)
    if config.generator is None:
        check_size(config.size, 8, "the built-in generator (a power of two >= 8)")
        LatentGeneratorConfig(size=config.size)  # validates the power of two
        gen, gen_info = builtin_generator(run, config)
        shape = gen.latent_shape
    else:
        gen, gen_info = user_generator(config)
        shape = tuple(config.latent_shape)
    with torch.no_grad():
        size = tuple(gen(torch.zeros(1, *shape)).shape[-2:])
    if size[0] != size[1]:
        raise PGNError(f"the generator makes {size[0]}x{size[1]} images; the demo needs square images")
    run.check_pgn_size(size[0])
    targets, names = load_targets(config, size[0])
    latent, latent_init = initial_latent(gen, config, shape, targets.shape[0])
    start_image = LatentImage(gen, latent, config.output_range)
    with torch.no_grad():
        initial = start_image()
    prefit_curve = prefit(run, config, start_image, targets)
    with torch.no_grad():
        prefitted = start_image()
    losses = {key: LOSSES[key].build(run, config, LOSSES[key].label.format(pgn=run.pgn_name)) for key in INVERT_LOSSES}
    rows = [{"loss": "after MSE pre-fit (start)", **run.scores(prefitted, targets).cells()}]
    finals, curves = {}, {"MSE pre-fit": prefit_curve}
    for key, loss in losses.items():
        student, curve = Student(loss, start_image, _generate, targets, config.lr, config.measure_memory), curves.setdefault(loss.label, [])
        bar = run.progress(config.steps, f"invert {loss.label}")
        with new_objects_collected_only():
            for t in range(config.steps):
                image, values = student.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(values.mean()):.4g}")
                curve.append((config.prefit_steps + t, float(F.mse_loss(image, targets))))
        bar.close()
        with torch.no_grad():
            finals[key] = final = student.generator()
        rows.append({"loss": loss.describe(), **run.scores(final, targets).cells(), "key": key,
                     "grad_cos": summary(run.gradient_cosine(loss, final, targets)), **student.timing_cells()})
    with torch.no_grad():
        proxy = run.pgn.proxy(finals["pgn"], targets)
    grid_rows = [torch.stack([targets[i], initial[i], prefitted[i]] + [finals[key][i] for key in losses] + [proxy[i]]) for i in range(targets.shape[0])]
    grid = save_image_grid(grid_rows, config.output_dir / "invert.png")
    plot = plot_curves(curves, config.output_dir / "invert_curves.png", "Inversion: MSE to the target ([0, 1] space)", ylabel="MSE")
    notes = [
        f"{targets.shape[0]} target(s) at {size[0]}×{size[1]}, T0 = {config.prefit_steps} MSE pre-fit steps, then T = {config.steps} "
        f"steps per loss, Adam lr {config.lr:g}; λ_MSE = {config.vgg_mse_weight:g} with VGG-19, {config.pgn_mse_weight:g} with the PGN. "
        "Paper: 100 FFHQ images at 256², T0 = 5000, T = 1000.",
        "MSE in [0, 1] RGB space ×10³; grad cos = the loss's own gradient vs the VGG-19 gradient at the final image.",
        TIMING_NOTE,
    ]
    table = Table("invert", "Generator inversion (Image2StyleGAN protocol, paper Table 2)", RECONSTRUCTION_COLUMNS, rows, notes)
    images = [
        {"path": str(grid), "caption": "Inversions", "columns": ["target", "initial latent", "after MSE pre-fit"] + [loss.label for loss in losses.values()] + ["PGN proxy target"], "rows": ", ".join(names)},
        {"path": str(plot), "caption": "MSE to the target per step"},
    ]
    return run.finish([table], images, {"generator_info": gen_info}, generator=gen_info["source"], latent_init=latent_init,
                      targets=", ".join(names))
