"""What the three demos share: their common settings, a run's setup (the VGG-19 teacher that scores every result,
LPIPS, the PGN, the warnings), and a student: a copy of the shared initialization fitted with one loss by Adam.

Random VGG weights or an untrained PGN make every perceptual number meaningless (it then only shows that the
machinery works), so both cases add a warning that the demo prints in a banner and writes into its results.
``--vgg-weights auto`` (the default) uses torchvision's ImageNet weights when they are in the torch hub cache and
falls back to random weights, with the warning, when they are not; it never downloads.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import pgn
from pgn.errors import PGNError
from pgn.perceptual import imagenet_weights_path

from pgn.benchmarks.measure import MEMORY_CALLS, LossMeter as Meter  # the one peak-memory meter (pgn-bench's)
from .metrics import LPIPSMetric, Scores, gradient_cosine, mse, ssim
from .report import DemoReport, Table, print_warnings

#: ``--vgg-weights`` values besides a weights file.
VGG_WEIGHT_CHOICES = ("auto", "imagenet", "random")
DEFAULT_PGN_PRESET = "resnet4"
#: What the timing columns cover, for the notes under a table of students.
TIMING_NOTE = ("ms/step (loss) and peak MiB (loss) cover the loss part (loss forward + backward to the image); "
               "ms/step (whole) and peak MiB (whole) the whole training step (generator forward, loss part, "
               "backward into the generator, Adam update). Peak MiB is the largest growth of the process's peak "
               f"RSS during that part over the first {MEMORY_CALLS} steps (first-call allocations that stay included).")


@dataclass
class CommonConfig:
    """Settings shared by all demos.

    Args:
        output_dir: where results.json, results.md and the image grids go. size: image height and width (pixels).
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


def warn(warnings: list[str], message: str) -> None:
    """Record one warning (once)."""
    if message not in warnings:
        warnings.append(message)


def resolve_vgg_weights(weights: str | Path, net: str, warnings: list[str]) -> str | Path:
    """Turn ``auto`` into ``imagenet`` or ``random``; other values pass through. Warns for random weights."""
    weights = str(weights)
    if weights == "auto":
        if imagenet_weights_path(net).is_file():
            return "imagenet"
        warn(warnings, f"ImageNet {net.upper()} weights are not cached ({imagenet_weights_path(net)}): using RANDOM VGG weights. "
             "Perceptual-loss numbers and the VGG students then only show the mechanics; pass --vgg-weights PATH "
             "or put the torchvision file there for real numbers.")
        return "random"
    if weights == "random":
        warn(warnings, f"--vgg-weights random: the {net.upper()} teacher is UNTRAINED; its numbers only show the mechanics.")
    return weights


def load_teacher(net: str, weights: str | Path, warnings: list[str], seed: int = 0) -> pgn.PerceptualLoss:
    """A frozen VGG perceptual loss (RGB [0, 1] inputs, per-sample values) from ``auto|imagenet|random|PATH``."""
    resolved = resolve_vgg_weights(weights, net, warnings)
    return pgn.PerceptualLoss(net, weights=resolved, seed=seed, reduction="none", download=resolved == "imagenet")


def load_pgn(checkpoint: str | Path | None, preset: str | None, warnings: list[str], seed: int = 0) -> tuple[pgn.PGN, str, bool]:
    """The PGN a demo fits with (eval mode, RGB [0, 1] inputs), where its weights came from, and whether it is trained.

    ``checkpoint``: a file (``pgn-distill``'s, or the authors'), ``"paper"`` (the authors' released file in the local
    cache), or ``None`` for an untrained PGN seeded with ``seed`` (with a loud warning). ``preset`` (``resnet4`` by
    default) is checked against a checkpoint only if given.
    """
    name = preset or DEFAULT_PGN_PRESET
    if checkpoint is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = pgn.build(name)
        warn(warnings, f"No --pgn-checkpoint: the PGN ({name}) is UNTRAINED (random weights). Its gradients are not perceptual; "
             "the PGN rows only show the mechanics. Train one with pgn-distill, or pass a released checkpoint.")
        return model, f"{name}, untrained (random init, seed {seed})", False
    if str(checkpoint) == "paper":
        return pgn.build(name, weights="paper", value_space="unit"), f"{name}, authors' released weights", True
    path = Path(checkpoint)
    if not path.is_file():
        raise PGNError(f"PGN checkpoint not found: {path} (pass a file written by pgn-distill or pgn.save, or 'paper')")
    model = pgn.load(path, preset=preset, value_space="unit")
    return model, f"{model.config.preset or model.config.backbone} ({model.config.head.kind} head) from {path}", True


def check_size(size: int, multiple: int, what: str) -> None:
    """A clear error unless ``size`` is a positive multiple of ``multiple``."""
    if size <= 0 or size % multiple:
        low = max(multiple, size // multiple * multiple)
        raise PGNError(f"--size {size} does not suit {what}: use a multiple of {multiple} (e.g. {low} or {low + multiple})")


@dataclass
class Run:
    """One demo run under way: its settings, warnings, scorer (VGG-19 teacher, LPIPS), PGN and clock."""

    name: str
    config: CommonConfig
    warnings: list[str]
    teacher19: pgn.PerceptualLoss
    lpips: LPIPSMetric
    pgn: pgn.PGN
    pgn_description: str
    started: float = field(default_factory=time.perf_counter)
    memo: dict = field(default_factory=dict)  #: what a run builds once for several rows (the exported ONNX PGN)

    @classmethod
    def start(cls, name: str, config: CommonConfig, console=None, *, check_pgn_size: bool = True) -> "Run":
        """Make the output folder, load the teacher, LPIPS and the PGN, and say on ``console`` which weights are used."""
        started = time.perf_counter()
        config.output_dir.mkdir(parents=True, exist_ok=True)
        warnings: list[str] = []
        teacher = load_teacher("vgg19", config.vgg_weights, warnings, seed=config.seed)
        model, description, _ = load_pgn(config.pgn_checkpoint, config.pgn_preset, warnings, seed=config.seed)
        run = cls(name, config, warnings, teacher, LPIPSMetric.try_load(), model, description, started)
        if check_pgn_size:
            run.check_pgn_size(config.size)
        if console is not None:
            for key, value in run.weights().items():
                console.print(f"[bold]{key}[/bold]: {value}")
            print_warnings(console, warnings)
        return run

    @property
    def pgn_name(self) -> str:
        """The PGN's preset (or backbone), as row labels show it."""
        return self.pgn.config.preset or self.pgn.config.backbone

    def check_pgn_size(self, size: int) -> None:
        """A one-line error unless ``size`` suits the PGN."""
        check_size(size, self.pgn.size_multiple, f"the PGN ({self.pgn_name})")

    def weights(self) -> dict[str, str]:
        """Which VGG weights and which PGN this run uses, printable."""
        return {"vgg_weights": str(self.teacher19.weights), "pgn": self.pgn_description}

    def teacher(self, net: str = "vgg19") -> pgn.PerceptualLoss:
        """A VGG teacher of its own (its target cache is not shared) with this run's weights, for a student's loss."""
        return load_teacher(net, self.config.vgg_weights, self.warnings, seed=self.config.seed)

    def progress(self, total: int, desc: str):
        """A tqdm bar on stderr, shown unless the run was asked for none."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.config.progress, leave=False, dynamic_ncols=True, file=sys.stderr)

    def pretrain(self, desc: str, steps: int, train: Callable) -> float | None:
        """Train a demo's own generator (``train(progress)`` returns every step's loss) behind a progress bar; the
        mean loss of the last 20 steps (None without steps)."""
        bar = self.progress(steps, desc)
        losses = train(lambda step, loss: (bar.update(1), bar.set_postfix(l1=f"{loss:.3f}")))
        bar.close()
        return sum(losses[-20:]) / len(losses[-20:]) if losses else None

    def scores(self, y_hat: torch.Tensor, y: torch.Tensor) -> Scores:
        """Per-sample MSE ([0, 1] space), PL_VGG-19 (mean absolute feature difference per ReLU up to relu5_1, summed),
        SSIM and LPIPS (or the reason it is missing)."""
        lp = self.lpips(y_hat.clamp(0, 1), y)
        with torch.no_grad():
            pl = self.teacher19.per_sample(y_hat.detach(), y.detach())
        return Scores(mse(y_hat, y).tolist(), pl.tolist(), ssim(y_hat.clamp(0, 1), y).tolist(),
                      lp.tolist() if lp is not None else LPIPSMetric.UNAVAILABLE)

    def gradient_cosine(self, loss, y_hat: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Cosine similarity per sample between ``loss``'s own gradient and the VGG-19 gradient at ``y_hat``."""
        g_true = self.teacher19.gradient(y_hat.detach(), y.detach())
        return gradient_cosine(loss.own_gradient(y_hat.detach(), y.detach()), g_true).tolist()

    def finish(self, tables: list[Table], images: list[dict], extra: dict | None = None, **setup: str) -> DemoReport:
        """Write ``results.json`` and ``results.md``; ``setup`` adds what the demo ran with to the weights and LPIPS."""
        setup = {**self.weights(), **setup, "lpips": self.lpips.reason or "available"}
        report = DemoReport(self.name, asdict(self.config), setup, self.warnings, tables, images, extra or {})
        report.elapsed_s = time.perf_counter() - self.started
        report.write(self.config.output_dir)
        return report


class Student:
    """A copy of one initialization fitted with ``loss`` towards ``target`` by Adam (PyTorch defaults otherwise).

    A step is split at the generated image: ``ŷ = forward(generator)``; the loss part takes ``∂loss/∂ŷ`` on a
    detached copy; ``ŷ.backward(∂loss/∂ŷ)`` carries it into the generator, which by the chain rule is exactly
    ``loss(ŷ).backward()``. ``loss_meter`` times and memory-measures the loss part (the losses on equal terms),
    ``step_meter`` the whole step (what an on-device trainer runs as one call).
    """

    def __init__(self, loss, init: nn.Module, forward: Callable[[nn.Module], torch.Tensor], target: torch.Tensor,
                 lr: float, measure_memory: bool = True):
        self.loss, self.generator, self.forward, self.target = loss, copy.deepcopy(init), forward, target
        self.optimizer = torch.optim.Adam([p for p in self.generator.parameters() if p.requires_grad], lr=lr)
        self.loss_meter, self.step_meter = Meter(memory=measure_memory), Meter(memory=measure_memory)

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step; the image before it and its per-sample loss values."""
        with self.step_meter.measure():
            y_hat = self.forward(self.generator)
            x = y_hat.detach().requires_grad_(True)
            with self.loss_meter.measure(within=self.step_meter):
                values = self.loss.per_sample(x, self.target)
                (grad,) = torch.autograd.grad(values.sum(), x)
            self.optimizer.zero_grad(set_to_none=True)
            y_hat.backward(grad)
            self.optimizer.step()
        return x.detach(), values.detach()

    def timing_cells(self) -> dict:
        """:func:`timing_cells` of this student's two meters."""
        return timing_cells([self.loss_meter.summary()], [self.step_meter.summary()])


def timing_cells(loss_part: list[dict], whole_step: list[dict]) -> dict:
    """``loss_*`` cells from loss-part meter summaries, ``step_*`` cells from whole-step ones (``None`` for a part
    nobody measured: pass ``[]``): the mean of the median times per step, the largest peak memory, and the median
    of the median peaks."""
    cells = {}
    for prefix, meters in (("loss_", loss_part), ("step_", whole_step)):
        times, peaks, medians = ([s[k] for s in meters if s[k] is not None] for k in ("time_ms", "peak_mem_mib", "peak_mem_median_mib"))
        cells |= {f"{prefix}time_ms": statistics.fmean(times) if times else None,
                  f"{prefix}peak_mem_mib": max(peaks) if peaks else None,
                  f"{prefix}peak_mem_median_mib": statistics.median(medians) if medians else None}
    return cells
