"""``pgn-demo dip``: Deep Image Prior with a PGN (paper §4, Tables 2 and 5; spec §10.1).

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

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pgn.errors import PGNError
from pgn.images import center_crop, list_images, read_image, resize_min_side, sample_images, save_image_grid

from .common import CommonConfig, announce, Evaluator, check_size, progress_bar, scaled, setup_resources, summary
from .generators.skip_net import SkipNet, SkipNetConfig
from .losses import MSELoss, PerceptualLossTerm, PGNLossTerm
from .plots import plot_curves
from .report import Column, DemoReport, Table
from .resources import Warnings, load_pgn, load_teacher
from .stability import OUTCOMES, RunRecord, StabilityMonitor, StopRule, summarize_runs
from .students import Student

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
        files = list_images(config.images_dir)
        if len(files) < n:
            raise PGNError(f"{config.images_dir} has {len(files)} image(s), need {n}: add images or lower --num-images/--stability-images")
        return torch.stack([center_crop(resize_min_side(read_image(f), config.size), config.size) for f in files[:n]]), [f.name for f in files[:n]]
    photos = sample_images()
    names = [k for k in IMAGE_ORDER if k in photos] + sorted(k for k in photos if k not in IMAGE_ORDER)
    if len(names) < n:
        raise PGNError(f"only {len(names)} bundled photographs; lower the image count or pass --images DIR")
    return torch.stack([center_crop(resize_min_side(photos[k], config.size), config.size) for k in names[:n]]), names[:n]


@dataclass
class DipRun:
    """One image's fixed input, initialization and input-noise decision (shared by all its students)."""

    net: SkipNet
    z: torch.Tensor
    noisy: bool
    seed: int

    def forward(self, std: float):
        """A ``forward(generator)`` with its own seeded noise stream, so every student sees the same inputs."""
        g = torch.Generator().manual_seed(self.seed)

        def fwd(net: torch.nn.Module) -> torch.Tensor:
            z = self.z + std * torch.randn(self.z.shape, generator=g) if self.noisy else self.z
            return net(z)

        return fwd

    def clean(self, net: torch.nn.Module) -> torch.Tensor:
        """The output for the fixed input without noise."""
        return net(self.z)


def make_run(config: DipConfig, index: int) -> DipRun:
    """The initialization of image ``index``: seeded skip net, fixed uniform input, and the input-noise coin flip."""
    seed = config.seed * 1000 + index
    torch.manual_seed(seed)
    net = SkipNet(SkipNetConfig(need_sigmoid=config.need_sigmoid)).train()
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(1, 3, config.size, config.size, generator=g) * config.input_scale
    noisy = bool(torch.rand((), generator=g) < config.input_noise_prob)
    return DipRun(net, z, noisy, seed)


class CachedPerceptual:
    """VGG-19 perceptual loss of images against one fixed target, with the target's features cached."""

    def __init__(self, term: PerceptualLossTerm):
        self.term = term

    @torch.no_grad()
    def __call__(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.term.own(y_hat, y)


# --------------------------------------------------------------------------------------------------------
# Quality (Table 2)


def run_quality(config: DipConfig, evaluator: Evaluator, pgn_loss: PGNLossTerm, vgg_teacher, monitor_pl: CachedPerceptual) -> tuple:
    """Fit every target with the three students; returns table rows, grid rows, curves, image names, student labels."""
    targets, names = load_targets(config, config.num_images)
    losses = [pgn_loss, PerceptualLossTerm(vgg_teacher, config.vgg_mse_weight), MSELoss()]
    per_loss: dict[str, dict[str, list]] = {loss.label: {} for loss in losses}
    timings: dict[str, list[dict]] = {loss.label: [] for loss in losses}
    grid_rows, curves = [], {}
    bar = progress_bar(config.num_images * config.iterations, "DIP quality", config.progress)
    for i in range(config.num_images):
        run, y = make_run(config, i), targets[i : i + 1]
        students = [Student.from_init(loss.label, loss, run.net, config.lr, measure_memory=config.measure_memory) for loss in losses]
        forwards = [run.forward(config.input_noise_std) for _ in students]
        for t in range(config.iterations):
            for student, fwd in zip(students, forwards):
                result = student.step(fwd, y)
                if t % config.eval_every == 0 or t == config.iterations - 1:
                    curves.setdefault(f"{student.name} ({names[i]})", []).append((t, float(monitor_pl(result.image, y))))
            bar.update(1)
        finals = {}
        for student in students:
            with torch.no_grad():
                final = run.clean(student.generator)
            finals[student.name] = final
            metrics = evaluator.images(final, y)
            metrics["grad_cos"] = evaluator.gradient_cosine(student.loss, final, y)
            for key, values in metrics.items():
                if isinstance(values, str):  # "n/a (...)" for an unavailable metric
                    per_loss[student.name][key] = values
                else:
                    per_loss[student.name].setdefault(key, []).extend(values)
            timings[student.name].append(student.meter.summary())
        with torch.no_grad():
            proxy = pgn_loss.model.proxy(finals[pgn_loss.label], y)
        grid_rows.append(torch.cat([y] + [finals[loss.label] for loss in losses] + [proxy]))
    bar.close()
    rows = []
    for loss in losses:
        m = per_loss[loss.label]
        times = [s["time_ms"] for s in timings[loss.label] if s["time_ms"] is not None]
        mems = [s["peak_mem_mib"] for s in timings[loss.label] if s["peak_mem_mib"] is not None]
        rows.append(
            {
                "loss": loss.describe(),
                "key": loss.key,
                "mse_x1e3": scaled(m["mse"], 1e3),
                "pl_vgg19": summary(m["pl_vgg19"]),
                "ssim": summary(m["ssim"]),
                "lpips": summary(m["lpips"]),
                "grad_cos": summary(m["grad_cos"]),
                "loss_time_ms": sum(times) / len(times) if times else None,
                "loss_peak_mem_mib": max(mems) if mems else None,
            }
        )
    return rows, grid_rows, curves, names, [loss.label for loss in losses]


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


def run_stability(config: DipConfig, pgns: dict, monitor_pl: CachedPerceptual) -> tuple[list[dict], dict, dict]:
    """Fit each target with each head's PGN, stopping on divergence or stagnation; Table 5 rows and per-run records."""
    targets, names = load_targets(config, config.stability_images)
    rule = StopRule(config.divergence_threshold, config.patience)
    records: dict[str, list[RunRecord]] = {}
    curves: dict[str, list] = {}
    bar = progress_bar(len(pgns) * config.stability_images * config.stability_iterations, "DIP stability", config.progress)
    for head, (model, _) in pgns.items():
        loss = PGNLossTerm(model, config.pgn_mse_weight, label=HEAD_LABELS[head])
        records[head] = []
        for i in range(config.stability_images):
            run, y = make_run(config, i), targets[i : i + 1]
            student = Student.from_init(head, loss, run.net, config.lr, measure_memory=False)
            fwd, monitor = run.forward(config.input_noise_std), StabilityMonitor(rule)
            for t in range(config.stability_iterations):
                result = student.step(fwd, y)
                pl = monitor_pl(result.image, y)
                curves.setdefault(f"{HEAD_LABELS[head]} ({names[i]})", []).append((t, float(pl)))
                bar.update(1)
                if monitor.update(pl) is not None:
                    bar.update(config.stability_iterations - t - 1)
                    break
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
    return rows, {h: [r.to_dict() for r in recs] for h, recs in records.items()}, curves


# --------------------------------------------------------------------------------------------------------
# The demo


QUALITY_COLUMNS = [
    Column("loss", "Loss"),
    Column("mse_x1e3", "MSE×10³", "{:.2f}"),
    Column("pl_vgg19", "PL VGG-19", "{:.3f}"),
    Column("ssim", "SSIM", "{:.3f}"),
    Column("lpips", "LPIPS", "{:.3f}"),
    Column("grad_cos", "grad cos vs VGG-19", "{:.3f}"),
    Column("loss_time_ms", "ms/step (loss)", "{:.1f}"),
    Column("loss_peak_mem_mib", "peak MiB (loss)", "{:.1f}"),
]
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
    start = time.perf_counter()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    warnings, evaluator, teacher, source = setup_resources(config)
    check_size(config.size, source.model.size_multiple, "the PGN")
    announce(console, {"vgg_weights": str(teacher.weights), "pgn": source.description}, warnings.items)
    monitor_pl = CachedPerceptual(PerceptualLossTerm(load_teacher("vgg19", config.vgg_weights, warnings, seed=config.seed)))
    setup = {"vgg_weights": str(teacher.weights), "pgn": source.description, "lpips": evaluator.lpips.reason or "available"}
    tables, images, extra = [], [], {}
    if "quality" in config.parts:
        vgg_student = load_teacher("vgg19", config.vgg_weights, warnings, seed=config.seed)
        pgn_loss = PGNLossTerm(source.model, config.pgn_mse_weight, label=f"PGN {source.model.config.preset or 'checkpoint'}")
        rows, grid_rows, curves, names, labels = run_quality(config, evaluator, pgn_loss, vgg_student, monitor_pl)
        notes = [
            f"{config.num_images} image(s) at {config.size}×{config.size}, T = {config.iterations}, Adam lr {config.lr:g}, "
            f"input noise probability {config.input_noise_prob:g}; paper: 400 ImageNet images at 224², T = 3000.",
            "MSE in [0, 1] RGB space ×10³; PL = VGG-19 perceptual loss; grad cos = the loss's own gradient vs the VGG-19 "
            "gradient at the final image (normalized space); ms/step and peak MiB cover the loss part only.",
        ]
        tables.append(Table("quality", "Deep Image Prior reconstruction (paper Table 2)", QUALITY_COLUMNS, rows, notes))
        path = save_image_grid(grid_rows, config.output_dir / "dip_quality.png")
        images.append({"path": str(path), "caption": "DIP reconstructions", "columns": ["ground truth"] + labels + ["PGN proxy target"], "rows": ", ".join(names)})
        plot = plot_curves(curves, config.output_dir / "dip_quality_curves.png", "DIP: perceptual loss of each student")
        images.append({"path": str(plot), "caption": "DIP perceptual loss per iteration"})
    if "stability" in config.parts:
        pgns = stability_pgns(config, warnings)
        setup.update({f"stability_{h}": desc for h, (_, desc) in pgns.items()})
        rows, runs, curves = run_stability(config, pgns, monitor_pl)
        extra["stability_runs"] = runs
        notes = [
            f"{config.stability_images} image(s) per head, up to {config.stability_iterations} iterations, divergence at PL ≥ "
            f"{config.divergence_threshold:g}× initial, stagnation after {config.patience} iterations without strict improvement; "
            "paper: 100 images, 10000 iterations, patience 2000. Iterations and PLs are means over the runs with that outcome.",
        ]
        tables.append(Table("stability", "DIP stability by PGN head (paper Table 5)", STABILITY_COLUMNS, rows, notes))
        plot = plot_curves(curves, config.output_dir / "dip_stability_curves.png", "DIP stability: perceptual loss per head")
        images.append({"path": str(plot), "caption": "DIP stability runs: perceptual loss per iteration"})
    report = DemoReport("dip", _config_dict(config), setup, warnings.items, tables, images, extra)
    report.elapsed_s = time.perf_counter() - start
    report.write(config.output_dir)
    return report


def _config_dict(config: DipConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
