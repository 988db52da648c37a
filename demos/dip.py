"""``pgn-demo dip``: Deep Image Prior with a PGN (paper §4, Tables 2 and 5), as the authors ran it.

Two parts:

* **quality** (paper Table 2): per image, three students from one skip-net initialization are fitted to the image
  from a fixed noise input: the PGN gradient, the VGG-19 perceptual loss, and MSE (Adam, lr 0.01, λ_MSE = 0). The
  final images are scored by MSE, VGG-19 perceptual loss, SSIM and LPIPS (when available).
* **stability** (paper Table 5): the same fitting with the PGN only, for three heads — direct gradient,
  unconstrained proxy, constrained proxy (ResNet-8 presets, or checkpoints per head) — stopped early on
  divergence or stagnation (:class:`StabilityMonitor`). Counts and mean iterations/losses per outcome.

The paper used 224×224 ImageNet validation images, T = 3000 (quality) / 10000 (stability) and patience 2000; the
defaults here are sized for a laptop CPU (64×64 bundled photographs, a few hundred iterations, patience scaled
down). Flags restore the paper's settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from weakref import WeakKeyDictionary

import torch

from pgn.errors import PGNError
from pgn.heap import new_objects_collected_only
from pgn.images import sample_images, save_image_grid

from .common import TIMING_NOTE, CommonConfig, Run, Student, check_size, load_pgn, timing_cells
from .frames import read_images, square
from .generators.skip_net import SkipNet, SkipNetConfig
from .losses import LOSSES, PerceptualLoss, PGNLossTerm
from .metrics import Scores, summary
from .report import RECONSTRUCTION_COLUMNS, Column, DemoReport, Table, plot_curves

#: The three heads of the stability experiment and their default presets (the paper used ResNet-8 for all three).
HEAD_PRESETS = {"direct": "resnet8-direct", "proxy": "resnet8-proxy", "constrained": "resnet8"}
HEAD_LABELS = {"direct": "Direct grad.", "proxy": "Unconstr. proxy", "constrained": "Constrained proxy"}
PARTS = ("quality", "stability")
#: The quality part's students, rows of :data:`demos.losses.LOSSES`.
QUALITY_LOSSES = ("pgn", "vgg19", "mse")
OUTCOMES = ("diverged", "stagnated", "successful")
#: Order in which bundled photographs are used as DIP targets.
IMAGE_ORDER = ("skimage/chelsea", "sklearn/china", "skimage/coffee", "sklearn/flower", "skimage/rocket", "skimage/astronaut", "skimage/immunohistochemistry")


@dataclass
class DipConfig(CommonConfig):
    """Settings of the DIP demo (paper values in brackets).

    Args:
        images_dir: a folder of target images (default: the bundled photographs).
        num_images: targets of the quality part [400]. iterations: T of the quality part [3000].
        lr: Adam learning rate [0.01]. pgn_mse_weight, vgg_mse_weight: λ_MSE [0, 0].
        input_scale: the fixed input is uniform in [0, input_scale) [0.1]. input_noise_std: per-step input noise
            [1/30], used in a run with probability ``input_noise_prob`` [0 in the published evaluation].
        need_sigmoid: sigmoid at the skip net's output [off]. eval_every: iterations between recorded curve points.
        parts: ``quality`` and/or ``stability``.
        stability_images [100], stability_iterations [10000], divergence_threshold [2], patience [2000].
        head_checkpoints: ``{"direct"|"proxy"|"constrained": path}``; heads without one are untrained presets.
    """

    output_dir: Path = Path("pgn-runs/dip")
    images_dir: Path | None = None
    num_images: int = 2
    iterations: int = 150
    lr: float = 0.01
    pgn_mse_weight: float = 0.0
    vgg_mse_weight: float = 0.0
    input_scale: float = 0.1
    input_noise_std: float = 1.0 / 30.0
    input_noise_prob: float = 0.0
    need_sigmoid: bool = False
    eval_every: int = 10
    parts: tuple[str, ...] = PARTS
    stability_images: int = 2
    stability_iterations: int = 150
    divergence_threshold: float = 2.0
    patience: int = 50
    head_checkpoints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        bad = [p for p in self.parts if p not in PARTS]
        if bad or not self.parts:
            raise PGNError(f"unknown part(s) {bad or '(none)'}: choose from {', '.join(PARTS)}")
        bad_heads = [h for h in self.head_checkpoints if h not in HEAD_PRESETS]
        if bad_heads:
            raise PGNError(f"unknown head(s) {bad_heads} in head checkpoints: use {', '.join(HEAD_PRESETS)}")
        if self.iterations < 1 or self.stability_iterations < 1 or self.num_images < 1 or self.stability_images < 1:
            raise PGNError("iterations and image counts must be at least 1")
        if not 0.0 <= self.input_noise_prob <= 1.0:
            raise PGNError(f"input noise probability must be in [0, 1], got {self.input_noise_prob}")
        StopRule(self.divergence_threshold, self.patience)  # validates
        check_size(self.size, SkipNetConfig().size_multiple, "the DIP skip net (5 stride-2 scales)")
        if self.size < 2 * SkipNetConfig().size_multiple:
            raise PGNError(f"--size {self.size} is too small for the DIP skip net: its deepest scale would be 1×1, where "
                           "BatchNorm over one image is undefined; use 64 or more")


def load_targets(config: DipConfig, n: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` target images (n, 3, size, size) in [0, 1] and their names."""
    if config.images_dir is not None:
        return read_images(config.images_dir, n, config.size, "--num-images/--stability-images")
    photos = sample_images()
    names = [k for k in IMAGE_ORDER if k in photos] + sorted(k for k in photos if k not in IMAGE_ORDER)
    if len(names) < n:
        raise PGNError(f"only {len(names)} bundled photographs; lower the image count or pass --images DIR")
    return torch.stack([square(photos[k], config.size) for k in names[:n]]), names[:n]


@dataclass
class DipInit:
    """One image's seeded skip net and fixed input, shared by all its students.

    In a run with input noise (``noise_std`` > 0) every student draws its own noise stream, seeded alike, so
    all students see the same inputs.
    """

    net: SkipNet
    z: torch.Tensor
    noise_std: float
    seed: int
    _streams: WeakKeyDictionary = field(default_factory=WeakKeyDictionary, repr=False)

    def forward(self, net: torch.nn.Module) -> torch.Tensor:
        """``net``'s output for the fixed input, plus the next draw of ``net``'s noise stream in a noisy run."""
        if not self.noise_std:
            return net(self.z)
        if net not in self._streams:
            self._streams[net] = torch.Generator().manual_seed(self.seed)
        return net(self.z + self.noise_std * torch.randn(self.z.shape, generator=self._streams[net]))

    def clean(self, net: torch.nn.Module) -> torch.Tensor:
        """The output for the fixed input without noise."""
        return net(self.z)


def make_init(config: DipConfig, index: int) -> DipInit:
    """The initialization of image ``index``: seeded skip net, fixed uniform input, and the input-noise coin flip."""
    seed = config.seed * 1000 + index
    torch.manual_seed(seed)
    net = SkipNet(SkipNetConfig(need_sigmoid=config.need_sigmoid)).train()
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(1, 3, config.size, config.size, generator=g) * config.input_scale
    noisy = bool(torch.rand((), generator=g) < config.input_noise_prob)
    return DipInit(net, z, config.input_noise_std if noisy else 0.0, seed)


# --------------------------------------------------------------------------------------------------------
# Stability: when a run stops (paper Table 5)


@dataclass(frozen=True)
class StopRule:
    """Divergence threshold (a factor of the initial loss; ``math.inf`` disables) and stagnation patience."""

    divergence_threshold: float = 2.0
    patience: int = 2000

    def __post_init__(self):
        if not self.divergence_threshold > 1.0:
            raise PGNError(f"divergence threshold must be > 1 (or inf), got {self.divergence_threshold}")
        if self.patience < 1:
            raise PGNError(f"stagnation patience must be at least 1 iteration, got {self.patience}")


@dataclass
class RunRecord:
    """The Table 5 columns of one run, filled by :class:`StabilityMonitor`."""

    outcome: str = "successful"
    iterations: int = 0  #: iterations observed (the last one is ``iterations - 1``)
    last_iteration: int | None = None
    last_pl: float | None = None
    best_iteration: int | None = None
    best_pl: float | None = None


@dataclass
class StabilityMonitor:
    """Fed ``PL_j`` (per sample, the VGG-19 loss of the image before step ``j``) every iteration, it says when to stop.

    ``update`` returns ``"diverged"`` when some sample has ``PL_j ≥ threshold · PL_0``, ``"stagnated"`` when every
    sample's best (strictly lowest) loss is ``patience`` iterations old, else ``None``; a run that reaches its last
    iteration is "successful". The record's best iteration and loss are those of the batch mean.
    """

    rule: StopRule = field(default_factory=StopRule)
    record: RunRecord = field(default_factory=RunRecord)
    initial: torch.Tensor | None = None
    best: torch.Tensor | None = None
    best_at: torch.Tensor | None = None

    def update(self, pl: torch.Tensor) -> str | None:
        """Register ``PL_j`` for the next iteration ``j``; return the stop reason, if any."""
        pl = torch.as_tensor(pl, dtype=torch.float64).detach().flatten().cpu()
        r, j, mean = self.record, self.record.iterations, float(pl.mean())
        r.iterations, r.last_iteration, r.last_pl = j + 1, j, mean
        if self.initial is None:
            self.initial, self.best, self.best_at = pl.clone(), pl.clone(), torch.zeros_like(pl, dtype=torch.long)
        else:
            improved = pl < self.best
            self.best, self.best_at = torch.where(improved, pl, self.best), torch.where(improved, j, self.best_at)
        if mean < (r.best_pl if r.best_pl is not None else math.inf):
            r.best_iteration, r.best_pl = j, mean
        if bool((pl >= self.rule.divergence_threshold * self.initial).any()):
            r.outcome = "diverged"
        elif bool((self.best_at <= j - self.rule.patience).all()):
            r.outcome = "stagnated"
        return r.outcome if r.outcome != "successful" else None


def summarize_runs(records: list[RunRecord]) -> dict:
    """Table 5 for one PGN: per outcome, the count and the mean last (diverged only) and best iteration and loss."""
    out = {}
    for outcome in OUTCOMES:
        runs = [r for r in records if r.outcome == outcome]
        keys = ("last_iteration", "last_pl", "best_iteration", "best_pl")[0 if outcome == "diverged" else 2:]
        out[outcome] = {"count": len(runs)}
        for key in keys:
            values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
            out[outcome][key] = sum(values) / len(values) if values else None
    return out


# --------------------------------------------------------------------------------------------------------
# The demo


STABILITY_COLUMNS = [Column("head", "Head"), Column("diverged_count", "diverged #", "{:d}"),
                     Column("diverged_last_iteration", "last it.", "{:.0f}"), Column("diverged_last_pl", "last PL", "{:.3f}"),
                     Column("diverged_best_iteration", "best it.", "{:.0f}"), Column("diverged_best_pl", "best PL", "{:.3f}"),
                     Column("stagnated_count", "stagnated #", "{:d}"), Column("stagnated_best_iteration", "best it.", "{:.0f}"),
                     Column("stagnated_best_pl", "best PL", "{:.3f}"), Column("successful_count", "successful #", "{:d}"),
                     Column("successful_best_iteration", "best it.", "{:.0f}"), Column("successful_best_pl", "best PL", "{:.3f}")]


def run_quality(run: Run, config: DipConfig, monitor: PerceptualLoss) -> tuple[Table, list[dict]]:
    """Fit every target with the PGN, VGG-19 and MSE students; the table, and the image grid and curves."""
    targets, names = load_targets(config, config.num_images)
    losses = {key: LOSSES[key].build(run, config, LOSSES[key].label.format(pgn=run.pgn_name)) for key in QUALITY_LOSSES}
    scores, cosines = {key: Scores() for key in losses}, {key: [] for key in losses}
    timings = {key: ([], []) for key in losses}  # loss-part and whole-step meter summaries, one per image
    grid_rows, curves = [], {}
    bar = run.progress(config.num_images * config.iterations * len(losses), "DIP quality")
    for i in range(config.num_images):
        init, y, finals = make_init(config, i), targets[i : i + 1], []
        for key, loss in losses.items():
            student = Student(loss, init.net, init.forward, y, config.lr, config.measure_memory)
            curve = curves.setdefault(f"{loss.label} ({names[i]})", [])
            with new_objects_collected_only():
                for t in range(config.iterations):
                    image, values = student.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(values.mean()):.4g}")
                    if t % config.eval_every == 0 or t == config.iterations - 1:
                        with torch.no_grad():
                            curve.append((t, float(monitor.per_sample(image, y))))
            with torch.no_grad():
                final = init.clean(student.generator)
            scores[key].extend(run.scores(final, y))
            cosines[key] += run.gradient_cosine(loss, final, y)
            timings[key][0].append(student.loss_meter.summary())
            timings[key][1].append(student.step_meter.summary())
            finals.append(final)
        with torch.no_grad():
            grid_rows.append(torch.cat([y, *finals, run.pgn.proxy(finals[0], y)]))
    bar.close()
    rows = [{"loss": loss.describe(), "key": key, **scores[key].cells(), "grad_cos": summary(cosines[key]), **timing_cells(*timings[key])}
            for key, loss in losses.items()]
    notes = [f"{config.num_images} image(s) at {config.size}×{config.size}, T = {config.iterations}, Adam lr {config.lr:g}, "
             f"input noise probability {config.input_noise_prob:g}; paper: 400 ImageNet images at 224², T = 3000.",
             "MSE in [0, 1] RGB space ×10³; PL = VGG-19 perceptual loss; grad cos = the loss's own gradient vs the VGG-19 "
             "gradient at the final image (normalized space).", TIMING_NOTE]
    grid = save_image_grid(grid_rows, config.output_dir / "dip_quality.png")
    plot = plot_curves(curves, config.output_dir / "dip_quality_curves.png", "DIP: perceptual loss of each student")
    return Table("quality", "Deep Image Prior reconstruction (paper Table 2)", RECONSTRUCTION_COLUMNS, rows, notes), [
        {"path": str(grid), "caption": "DIP reconstructions", "rows": ", ".join(names),
         "columns": ["ground truth", *(loss.label for loss in losses.values()), "PGN proxy target"]},
        {"path": str(plot), "caption": "DIP perceptual loss per iteration"}]


def run_stability(run: Run, config: DipConfig, monitor: PerceptualLoss) -> tuple[Table, list[dict], dict, dict]:
    """Fit each target with each head's PGN until it diverges or stagnates; the table, its curves, every run, and
    which PGN each head used."""
    targets, names = load_targets(config, config.stability_images)
    rule, records, curves, setup = StopRule(config.divergence_threshold, config.patience), {}, {}, {}
    bar = run.progress(len(HEAD_PRESETS) * config.stability_images * config.stability_iterations, "DIP stability")
    for head, preset in HEAD_PRESETS.items():
        model, setup[f"stability_{head}"], trained = load_pgn(config.head_checkpoints.get(head), preset, [], seed=config.seed)
        if not trained:
            run.warnings.append(f"stability head '{head}' ({preset}) is UNTRAINED: pass --head-checkpoint {head}=PATH; its counts only show the mechanics.")
        loss, records[head] = PGNLossTerm(model, config.pgn_mse_weight, label=HEAD_LABELS[head]), []
        for i in range(config.stability_images):
            init, y, watch = make_init(config, i), targets[i : i + 1], StabilityMonitor(rule)
            student = Student(loss, init.net, init.forward, y, config.lr, measure_memory=False)
            curve = curves.setdefault(f"{HEAD_LABELS[head]} ({names[i]})", [])
            for t in range(config.stability_iterations):
                image, _ = student.step()
                bar.update(1)
                with torch.no_grad():
                    pl = monitor.per_sample(image, y)
                curve.append((t, float(pl)))
                if watch.update(pl) is not None:
                    bar.update(config.stability_iterations - t - 1)
                    break
            records[head].append(watch.record)
    bar.close()
    rows = [{"head": HEAD_LABELS[head], "key": head, "runs": len(recs),
             **{f"{outcome}_{k}": v for outcome, cells in summarize_runs(recs).items() for k, v in cells.items()}}
            for head, recs in records.items()]
    notes = [f"{config.stability_images} image(s) per head, up to {config.stability_iterations} iterations, divergence at PL ≥ "
             f"{config.divergence_threshold:g}× initial, stagnation after {config.patience} iterations without strict improvement; "
             "paper: 100 images, 10000 iterations, patience 2000. Iterations and PLs are means over the runs with that outcome."]
    plot = plot_curves(curves, config.output_dir / "dip_stability_curves.png", "DIP stability: perceptual loss per head")
    table = Table("stability", "DIP stability by PGN head (paper Table 5)", STABILITY_COLUMNS, rows, notes)
    runs = {head: [asdict(r) for r in recs] for head, recs in records.items()}
    return table, [{"path": str(plot), "caption": "DIP stability runs: perceptual loss per iteration"}], runs, setup


def run_dip(config: DipConfig, console=None) -> DemoReport:
    """Run the DIP demo; writes results.json, results.md, image grids and loss curves; returns the report."""
    run = Run.start("dip", config, console)
    monitor = PerceptualLoss(run.teacher())  # the true perceptual loss of every step's image, for curves and stop rules
    tables, images, extra, setup = [], [], {}, {}
    if "quality" in config.parts:
        table, quality_images = run_quality(run, config, monitor)
        tables.append(table)
        images += quality_images
    if "stability" in config.parts:
        table, stability_images, extra["stability_runs"], setup = run_stability(run, config, monitor)
        tables.append(table)
        images += stability_images
    return run.finish(tables, images, extra, **setup)
