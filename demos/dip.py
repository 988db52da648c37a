"""``pgn-demo dip``: Deep Image Prior with a PGN (paper §4, Tables 2 and 5), as the authors ran it.

Two parts:

* **quality** (paper Table 2): per image, three students from one skip-net initialization are fitted to the image
  from a fixed noise input: the PGN gradient, the VGG-19 perceptual loss, and MSE (Adam, lr 0.01, λ_MSE = 0). The
  final images are scored by MSE, VGG-19 perceptual loss, SSIM and LPIPS (when available).
* **stability** (paper Table 5): the same fitting with the PGN only, for three heads — direct gradient,
  unconstrained proxy, constrained proxy (ResNet-8 presets, or checkpoints per head) — stopped early on
  divergence (perceptual loss ≥ 2× its initial value) or stagnation (no strict improvement for ``patience``
  iterations). Counts and mean iterations/losses per outcome.

The paper used 224×224 ImageNet validation images, T = 3000 (quality) / 10000 (stability) and patience 2000; the
defaults here are sized for a laptop CPU (64×64 bundled photographs, a few hundred iterations, patience scaled
down). Flags restore the paper's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from weakref import WeakKeyDictionary

import torch

from pgn.errors import PGNError
from pgn.images import sample_images, save_image_grid

from .common import CommonConfig, Scores, check_size, read_images, square, summary
from .generators.skip_net import SkipNet, SkipNetConfig
from .losses import MSELoss, PerceptualLossTerm, PGNLossTerm
from .plots import plot_curves
from .report import Column, DemoReport, Table
from .resources import Warnings, load_pgn
from .runner import RECONSTRUCTION_COLUMNS, TIMING_NOTE, DemoRun, timing_cells
from .stability import OUTCOMES, RunRecord, StabilityMonitor, StopRule, summarize_runs

#: The three heads of the stability experiment and their default presets (the paper used ResNet-8 for all three).
HEAD_PRESETS = {"direct": "resnet8-direct", "proxy": "resnet8-proxy", "constrained": "resnet8"}
HEAD_LABELS = {"direct": "Direct grad.", "proxy": "Unconstr. proxy", "constrained": "Constrained proxy"}
PARTS = ("quality", "stability")
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


class CachedPerceptual:
    """VGG-19 perceptual loss of images against one fixed target, with the target's features cached."""

    def __init__(self, term: PerceptualLossTerm):
        self.term = term

    @torch.no_grad()
    def __call__(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.term.own(y_hat, y)


# --------------------------------------------------------------------------------------------------------
# Quality (Table 2)


def run_quality(run: DemoRun, monitor_pl: CachedPerceptual) -> tuple[Table, list[dict]]:
    """Fit every target with the PGN, VGG-19 and MSE students; the table, and the image grid and curves."""
    config: DipConfig = run.config
    targets, names = load_targets(config, config.num_images)
    losses = [run.pgn_loss(config.pgn_mse_weight), PerceptualLossTerm(run.teacher(), config.vgg_mse_weight), MSELoss()]
    scores = {loss.key: Scores() for loss in losses}
    cosines: dict[str, list[float]] = {loss.key: [] for loss in losses}
    timings: dict[str, tuple[list, list]] = {loss.key: ([], []) for loss in losses}  # loss-part, whole-step summaries
    grid_rows, curves = [], {}
    bar = run.progress(config.num_images * config.iterations * len(losses), "DIP quality")
    for i in range(config.num_images):
        init, y = make_init(config, i), targets[i : i + 1]
        finals = []
        for loss in losses:
            curve = curves.setdefault(f"{loss.label} ({names[i]})", [])

            def observe(t, result):
                if t % config.eval_every == 0 or t == config.iterations - 1:
                    curve.append((t, float(monitor_pl(result.image, y))))

            student = run.fit(loss, init.net, init.forward, y, config.iterations, config.lr, bar=bar, observe=observe)
            with torch.no_grad():
                final = init.clean(student.generator)
            scores[loss.key].extend(run.evaluator.scores(final, y))
            cosines[loss.key] += run.evaluator.gradient_cosine(loss, final, y)
            timings[loss.key][0].append(student.meter.summary())
            timings[loss.key][1].append(student.step_meter.summary())
            finals.append(final)
        with torch.no_grad():
            proxy = run.pgn.model.proxy(finals[0], y)
        grid_rows.append(torch.cat([y, *finals, proxy]))
    bar.close()
    rows = [{"loss": loss.describe(), "key": loss.key, **scores[loss.key].cells(), "grad_cos": summary(cosines[loss.key]),
             **timing_cells(*timings[loss.key])} for loss in losses]
    notes = [
        f"{config.num_images} image(s) at {config.size}×{config.size}, T = {config.iterations}, Adam lr {config.lr:g}, "
        f"input noise probability {config.input_noise_prob:g}; paper: 400 ImageNet images at 224², T = 3000.",
        "MSE in [0, 1] RGB space ×10³; PL = VGG-19 perceptual loss; grad cos = the loss's own gradient vs the VGG-19 "
        "gradient at the final image (normalized space).",
        TIMING_NOTE,
    ]
    table = Table("quality", "Deep Image Prior reconstruction (paper Table 2)", RECONSTRUCTION_COLUMNS, rows, notes)
    path = save_image_grid(grid_rows, config.output_dir / "dip_quality.png")
    plot = plot_curves(curves, config.output_dir / "dip_quality_curves.png", "DIP: perceptual loss of each student")
    images = [
        {"path": str(path), "caption": "DIP reconstructions", "columns": ["ground truth", *(loss.label for loss in losses), "PGN proxy target"],
         "rows": ", ".join(names)},
        {"path": str(plot), "caption": "DIP perceptual loss per iteration"},
    ]
    return table, images


# --------------------------------------------------------------------------------------------------------
# Stability (Table 5)


def stability_pgns(config: DipConfig, warnings: Warnings) -> dict[str, tuple]:
    """The PGN of each head (a checkpoint when given, else the untrained ResNet-8 preset) and its description."""
    out = {}
    for head, preset in HEAD_PRESETS.items():
        source = load_pgn(config.head_checkpoints.get(head), preset, Warnings(), seed=config.seed)
        if not source.trained:
            warnings.add(f"stability head '{head}' ({preset}) is UNTRAINED: pass --head-checkpoint {head}=PATH; its counts only show the mechanics.")
        out[head] = (source.model, source.description)
    return out


def run_stability(run: DemoRun, pgns: dict, monitor_pl: CachedPerceptual) -> tuple[Table, list[dict], dict]:
    """Fit each target with each head's PGN, stopping on divergence or stagnation; the table, its curves, and every run."""
    config: DipConfig = run.config
    targets, names = load_targets(config, config.stability_images)
    rule = StopRule(config.divergence_threshold, config.patience)
    records: dict[str, list[RunRecord]] = {}
    curves: dict[str, list] = {}
    bar = run.progress(len(pgns) * config.stability_images * config.stability_iterations, "DIP stability")
    for head, (model, _) in pgns.items():
        loss = PGNLossTerm(model, config.pgn_mse_weight, label=HEAD_LABELS[head])
        records[head] = []
        for i in range(config.stability_images):
            init, y, monitor = make_init(config, i), targets[i : i + 1], StabilityMonitor(rule)
            curve = curves.setdefault(f"{HEAD_LABELS[head]} ({names[i]})", [])

            def observe(t, result):
                pl = monitor_pl(result.image, y)
                curve.append((t, float(pl)))
                return monitor.update(pl) is not None

            run.fit(loss, init.net, init.forward, y, config.stability_iterations, config.lr, bar=bar, observe=observe,
                    measure_memory=False)
            records[head].append(monitor.record)
    bar.close()
    rows = []
    for head, recs in records.items():
        s = summarize_runs(recs)
        row = {"head": HEAD_LABELS[head], "key": head, "runs": len(recs)}
        for outcome in OUTCOMES:
            for k, v in s[outcome].items():
                row[f"{outcome}_{k}"] = v
        rows.append(row)
    notes = [
        f"{config.stability_images} image(s) per head, up to {config.stability_iterations} iterations, divergence at PL ≥ "
        f"{config.divergence_threshold:g}× initial, stagnation after {config.patience} iterations without strict improvement; "
        "paper: 100 images, 10000 iterations, patience 2000. Iterations and PLs are means over the runs with that outcome.",
    ]
    table = Table("stability", "DIP stability by PGN head (paper Table 5)", STABILITY_COLUMNS, rows, notes)
    plot = plot_curves(curves, config.output_dir / "dip_stability_curves.png", "DIP stability: perceptual loss per head")
    images = [{"path": str(plot), "caption": "DIP stability runs: perceptual loss per iteration"}]
    return table, images, {h: [r.to_dict() for r in recs] for h, recs in records.items()}


# --------------------------------------------------------------------------------------------------------
# The demo


STABILITY_COLUMNS = [
    Column("head", "Head"),
    Column("diverged_count", "diverged #", "{:d}"),
    Column("diverged_last_iteration", "last it.", "{:.0f}"),
    Column("diverged_last_pl", "last PL", "{:.3f}"),
    Column("diverged_best_iteration", "best it.", "{:.0f}"),
    Column("diverged_best_pl", "best PL", "{:.3f}"),
    Column("stagnated_count", "stagnated #", "{:d}"),
    Column("stagnated_best_iteration", "best it.", "{:.0f}"),
    Column("stagnated_best_pl", "best PL", "{:.3f}"),
    Column("successful_count", "successful #", "{:d}"),
    Column("successful_best_iteration", "best it.", "{:.0f}"),
    Column("successful_best_pl", "best PL", "{:.3f}"),
]


def run_dip(config: DipConfig, console=None) -> DemoReport:
    """Run the DIP demo; writes results.json, results.md, image grids and loss curves; returns the report."""
    run = DemoRun.start("dip", config, console)
    monitor_pl = CachedPerceptual(PerceptualLossTerm(run.teacher()))
    tables, images, extra, setup = [], [], {}, {}
    if "quality" in config.parts:
        table, quality_images = run_quality(run, monitor_pl)
        tables.append(table)
        images += quality_images
    if "stability" in config.parts:
        pgns = stability_pgns(config, run.warnings)
        setup.update({f"stability_{h}": desc for h, (_, desc) in pgns.items()})
        table, stability_images, extra["stability_runs"] = run_stability(run, pgns, monitor_pl)
        tables.append(table)
        images += stability_images
    return run.finish(tables, images, extra, **setup)
