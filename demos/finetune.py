"""``pgn-demo finetune``: few-shot fine-tuning of a talking-head style generator (paper §4, Table 3/4, Figure 6).

Protocol: a pose-conditioned generator and its identity embedder are meta-trained on posed crops of the bundled
photographs (the portrait excluded), personalized to the portrait's person from 8 "train" frames, and that one
initialization is fine-tuned with each loss for T = 50 Adam steps at lr 5·10⁻⁵ (λ_MSE = 20 with a PGN), then
evaluated on the train frames and on 8 "holdout" frames in unseen poses. Losses:

* ``mse`` (normalized-space MSE), ``vgg19`` and ``vgg11`` (perceptual losses, no MSE term, as in the paper);
* ``pgn``: the PGN in PyTorch through :class:`pgn.PGNLoss`;
* ``pgn-onnx``: the on-device path: the PGN exported to ONNX and run in ONNX Runtime, the generator trained by
  a weighted MSE towards the runtime's proxy (:mod:`demos.ondevice`): no VGG and no autograd through the PGN.

Reported per loss: time per step and peak memory of the loss part, train/holdout MSE (×10³, [0, 1] space),
VGG-19 perceptual loss, SSIM, LPIPS (when available) and the cosine similarity of the loss's gradient to the
VGG-19 gradient after fine-tuning (paper Table 4, "Heads").

Example::

    from demos.finetune import FinetuneConfig, run_finetune
    report = run_finetune(FinetuneConfig(output_dir=Path("out/finetune")))
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pgn.constants import PAPER_MSE_WEIGHT
from pgn.errors import PGNError
from pgn.images import resize_min_side, sample_images, save_image_grid

from .common import CommonConfig, announce, Evaluator, check_size, progress_bar, scaled, setup_resources, summary
from .frames import edge_map, face_frames, photo_frames, read_frames
from .generators.talking_head import Embedder, MetaTrainConfig, PoseGenerator, TalkingHeadConfig, meta_train, personalize
from .losses import LOSS_KEYS, MSELoss, PerceptualLossTerm, PGNLossTerm

#: Losses of the fine-tuning demo: the common ones plus the whole step on ONNX Runtime training.
FINETUNE_LOSS_KEYS = LOSS_KEYS + ("pgn-ort-train",)
from .measure import LossMeter
from .ondevice import OnDevicePGNLoss, RuntimeStatus, check_recipe_applies, open_onnx_runtime
from .ondevice_training import finetune_on_device, training_available
from .report import Column, DemoReport, Table
from .resources import load_teacher
from .students import Student

CHECKPOINT_FORMAT = "pgn-demo-talking-head-v1"


@dataclass
class FinetuneConfig(CommonConfig):
    """Settings of the fine-tuning demo (paper settings for steps, lr and λ_MSE; reduced size for a CPU).

    Args:
        frames_dir: a folder with frames of one person (sorted by name: train first, then holdout); default:
            frames made from the bundled portrait by pose changes.
        train_frames, holdout_frames: how many frames fine-tune and evaluate (8 and 8 in the paper).
        steps: fine-tuning steps T (50). lr: Adam learning rate (5e-5).
        pgn_mse_weight: λ_MSE with the PGN (20). vgg_mse_weight: λ_MSE with VGG (0, as in the paper).
        losses: which losses to compare, from ``mse, vgg19, vgg11, pgn, pgn-onnx, pgn-ort-train`` (the last one
            runs the whole step on ONNX Runtime training, when ``onnxruntime-training`` is installed).
        meta_steps: meta-training episodes of the generator (ignored with ``generator_checkpoint``).
        generator_checkpoint: a meta-trained generator saved by an earlier run (``meta_trained_generator.pt``).
        grid_frames: frames shown in each image grid.
    """

    output_dir: Path = Path("pgn-runs/finetune")
    frames_dir: Path | None = None
    train_frames: int = 8
    holdout_frames: int = 8
    steps: int = 50
    lr: float = 5e-5
    pgn_mse_weight: float = PAPER_MSE_WEIGHT
    vgg_mse_weight: float = 0.0
    losses: tuple[str, ...] = FINETUNE_LOSS_KEYS
    meta_steps: int = 200
    generator_checkpoint: Path | None = None
    grid_frames: int = 4

    def __post_init__(self):
        unknown = [k for k in self.losses if k not in FINETUNE_LOSS_KEYS]
        if unknown or not self.losses:
            raise PGNError(f"unknown loss(es) {unknown or '(none)'}: choose from {', '.join(FINETUNE_LOSS_KEYS)}")
        if self.train_frames < 1 or self.holdout_frames < 1:
            raise PGNError("need at least 1 train and 1 holdout frame")
        if self.steps < 1 or self.meta_steps < 0:
            raise PGNError("steps must be >= 1 and meta steps >= 0")
        check_size(self.size, 4, "the talking-head generator (two stride-2 levels)")


# --------------------------------------------------------------------------------------------------------
# The generator: meta-train (or load), then personalize


def _episode_sampler(size: int):
    """Posed crops of one random bundled photograph (the portrait excluded) and their edge maps."""
    photos = [resize_min_side(img, int(2 * size / 0.6) + 1) for name, img in sorted(sample_images().items()) if "astronaut" not in name]

    def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        photo = photos[int(torch.randint(0, len(photos), (), generator=g))]
        frames = photo_frames(photo, n, size, g)
        return frames, edge_map(frames)

    return sample


def save_generator(path: Path, generator: PoseGenerator, embedder: Embedder, meta_steps: int, size: int) -> Path:
    """Write a meta-trained generator + embedder (atomically) for reuse with ``--generator-checkpoint``."""
    from pgn.checkpoint import atomic_save

    obj = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(generator.config),
        "size": size,
        "meta_steps": meta_steps,
        "generator": generator.state_dict(),
        "embedder": embedder.state_dict(),
    }
    return atomic_save(obj, path)


def load_generator(path: Path) -> tuple[PoseGenerator, Embedder, dict]:
    """Read a file written by :func:`save_generator`; a one-line error for anything else."""
    if not Path(path).is_file():
        raise PGNError(f"generator checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PGNError(f"cannot read generator checkpoint {path}: {e.__class__.__name__}") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise PGNError(f"{path} is not a talking-head generator saved by pgn-demo finetune (meta_trained_generator.pt)")
    config = TalkingHeadConfig(**obj["config"])
    generator, embedder = PoseGenerator(config), Embedder(config)
    generator.load_state_dict(obj["generator"])
    embedder.load_state_dict(obj["embedder"])
    return generator.eval(), embedder.eval(), {"meta_steps": obj.get("meta_steps"), "size": obj.get("size")}


def prepare_generator(config: FinetuneConfig) -> tuple[PoseGenerator, Embedder, dict]:
    """Load the meta-trained generator, or meta-train one (and save it into the output folder)."""
    if config.generator_checkpoint is not None:
        generator, embedder, info = load_generator(config.generator_checkpoint)
        return generator, embedder, {**info, "source": str(config.generator_checkpoint)}
    torch.manual_seed(config.seed)
    generator, embedder = PoseGenerator(), Embedder()
    bar = progress_bar(config.meta_steps, "meta-training generator", config.progress)
    losses = meta_train(
        generator,
        embedder,
        _episode_sampler(config.size),
        MetaTrainConfig(steps=config.meta_steps, seed=config.seed),
        progress=lambda step, loss: (bar.update(1), bar.set_postfix(l1=f"{loss:.3f}")),
    )
    bar.close()
    path = save_generator(config.output_dir / "meta_trained_generator.pt", generator, embedder, config.meta_steps, config.size)
    tail = losses[-20:]
    return generator, embedder, {
        "meta_steps": config.meta_steps,
        "source": f"meta-trained here ({config.meta_steps} episodes), saved to {path.name}",
        "final_l1": sum(tail) / len(tail) if tail else None,
    }


def load_frames(config: FinetuneConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Train and holdout frames and where they came from."""
    if config.frames_dir is not None:
        train, holdout = read_frames(config.frames_dir, config.size, config.train_frames, config.holdout_frames)
        return train, holdout, f"folder {config.frames_dir}"
    train, holdout = face_frames(config.size, config.train_frames, config.holdout_frames, seed=config.seed)
    return train, holdout, "bundled portrait (scikit-image astronaut), posed crops"


# --------------------------------------------------------------------------------------------------------
# Losses and the run


def build_losses(config: FinetuneConfig, warnings, source, batch: int) -> tuple[list, dict, RuntimeStatus | None]:
    """The losses to compare in table order, the reasons for those that cannot run (key → reason), and the runtime."""
    losses, skipped = [], {}
    status = None
    if {"pgn-onnx", "pgn-ort-train"} & set(config.losses):
        check_recipe_applies(source.model)
        status = open_onnx_runtime(source.model, (config.size, config.size), batch, config.output_dir / "onnx")
        if not status.ok:
            warnings.add(f"on-device rows skipped: {status.status}")
    for key in config.losses:
        if key == "mse":
            losses.append(MSELoss())
        elif key in ("vgg19", "vgg11"):
            teacher = load_teacher(key, config.vgg_weights, warnings, seed=config.seed)
            losses.append(PerceptualLossTerm(teacher, mse_weight=config.vgg_mse_weight))
        elif key == "pgn":
            losses.append(PGNLossTerm(source.model, config.pgn_mse_weight, label=f"PGN {_pgn_name(source)}"))
        elif key == "pgn-onnx":
            if status.ok:
                losses.append(OnDevicePGNLoss(status.runtime, source.model.alpha, config.pgn_mse_weight, label=f"PGN {_pgn_name(source)} ONNX Runtime"))
            else:
                skipped[key] = status.status
        elif key == "pgn-ort-train":
            reason = training_available() or (None if status.ok else f"needs the exported PGN: {status.status}")
            if reason:
                skipped[key] = reason
    return losses, skipped, status


def _pgn_name(source) -> str:
    return source.model.config.preset or source.model.config.backbone


def run_finetune(config: FinetuneConfig, console=None) -> DemoReport:
    """Run the fine-tuning demo; writes results.json, results.md and image grids; returns the report."""
    start = time.perf_counter()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    warnings, evaluator, teacher, source = setup_resources(config)
    check_size(config.size, source.model.size_multiple, f"the PGN ({_pgn_name(source)})")
    announce(console, {"vgg_weights": str(teacher.weights), "pgn": source.description}, warnings.items)
    train, holdout, frames_source = load_frames(config)
    poses_train, poses_holdout = edge_map(train), edge_map(holdout)
    generator, embedder, gen_info = prepare_generator(config)
    init = personalize(generator, embedder, train, poses_train)
    losses, skipped, runtime_status = build_losses(config, warnings, source, batch=train.shape[0])

    def fwd_train(g):
        return g(poses_train)

    with torch.no_grad():
        before_train, before_holdout = init(poses_train), init(poses_holdout)
    rows = [_row("before fine-tuning", evaluator, before_train, train, before_holdout, holdout)]
    outputs = {"before": before_holdout}
    train_outputs = {"before": before_train}
    extra: dict = {}
    for loss in losses:
        student = Student.from_init(loss.label, loss, init, config.lr, measure_memory=config.measure_memory)
        bar = progress_bar(config.steps, f"fine-tune {loss.label}", config.progress)
        for _ in range(config.steps):
            result = student.step(fwd_train, train)
            bar.update(1)
            bar.set_postfix(loss=f"{float(result.loss.mean()):.4g}")
        bar.close()
        final_train, final_holdout = student.render(fwd_train), student.render(lambda g: g(poses_holdout))
        row = _row(loss.describe(), evaluator, final_train, train, final_holdout, holdout)
        row["key"] = loss.key
        row.update(_timing(student))
        row["grad_cos_start"] = summary(evaluator.gradient_cosine(loss, before_train, train))
        row["grad_cos"] = summary(evaluator.gradient_cosine(loss, final_train, train))
        if isinstance(loss, OnDevicePGNLoss):
            extra["ondevice_recipe_max_relative_deviation"] = loss.max_recipe_deviation
        rows.append(row)
        outputs[loss.key] = final_holdout
        train_outputs[loss.key] = final_train
    columns = [(loss.key, loss.label) for loss in losses]
    if "pgn-ort-train" in config.losses and "pgn-ort-train" not in skipped:
        row, final_train, final_holdout = _ort_training_row(config, evaluator, source, runtime_status, init, poses_train, train, poses_holdout, holdout)
        rows.append(row)
        outputs["pgn-ort-train"], train_outputs["pgn-ort-train"] = final_holdout, final_train
        columns.append(("pgn-ort-train", ORT_TRAIN_LABEL))
    for key, reason in skipped.items():
        rows.append({"loss": SKIPPED_LABELS.get(key, key), "key": key, "status": reason})
    teachers = {loss.key: str(loss.teacher.weights) for loss in losses if isinstance(loss, PerceptualLossTerm)}
    report = _report(config, warnings, teacher, source, frames_source, gen_info, rows, extra, teachers, evaluator.lpips.reason)
    report.images += _grids(config, train, holdout, train_outputs, outputs, columns)
    report.elapsed_s = time.perf_counter() - start
    report.write(config.output_dir)
    return report


ORT_TRAIN_LABEL = "PGN ONNX Runtime, generator trained by ORT training"
SKIPPED_LABELS = {"pgn-onnx": "PGN ONNX Runtime", "pgn-ort-train": ORT_TRAIN_LABEL}


def _ort_training_row(config, evaluator, source, status, init, poses_train, train, poses_holdout, holdout):
    """The whole step on device: the generator trained by ONNX Runtime training, the PGN in ONNX Runtime."""
    meter = LossMeter(memory=config.measure_memory)
    bar = progress_bar(config.steps, "fine-tune on ORT training", config.progress)

    def tick(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss / train.shape[0]:.4g}")

    tuned = finetune_on_device(init, poses_train, train, status.runtime, source.model.alpha, config.pgn_mse_weight,
                               config.lr, config.steps, config.output_dir / "ort_training", meter, tick)
    bar.close()
    with torch.no_grad():
        final_train, final_holdout = tuned(poses_train), tuned(poses_holdout)
    loss = OnDevicePGNLoss(status.runtime, source.model.alpha, config.pgn_mse_weight)
    row = _row(f"{ORT_TRAIN_LABEL} + {config.pgn_mse_weight:g}·MSE", evaluator, final_train, train, final_holdout, holdout)
    s = meter.summary()
    row.update({"key": "pgn-ort-train", "loss_time_ms": s["time_ms"], "loss_peak_mem_mib": s["peak_mem_mib"],
                "loss_peak_mem_median_mib": s["peak_mem_median_mib"], "timing_covers": "whole step (generator + PGN + Adam)",
                "grad_cos": summary(evaluator.gradient_cosine(loss, final_train, train))})
    return row, final_train, final_holdout


def _row(name: str, evaluator: Evaluator, out_train, train, out_holdout, holdout) -> dict:
    tr, ho = evaluator.images(out_train, train), evaluator.images(out_holdout, holdout)
    return {
        "loss": name,
        "status": "ok",
        "train_mse_x1e3": scaled(tr["mse"], 1e3),
        "train_pl_vgg19": summary(tr["pl_vgg19"]),
        "train_ssim": summary(tr["ssim"]),
        "train_lpips": summary(tr["lpips"]),
        "holdout_mse_x1e3": scaled(ho["mse"], 1e3),
        "holdout_pl_vgg19": summary(ho["pl_vgg19"]),
        "holdout_ssim": summary(ho["ssim"]),
        "holdout_lpips": summary(ho["lpips"]),
    }


def _timing(student: Student) -> dict:
    s = student.meter.summary()
    return {"loss_time_ms": s["time_ms"], "loss_peak_mem_mib": s["peak_mem_mib"], "loss_peak_mem_median_mib": s["peak_mem_median_mib"]}


COLUMNS = [
    Column("loss", "Loss"),
    Column("loss_time_ms", "ms/step (loss)", "{:.1f}"),
    Column("loss_peak_mem_mib", "peak MiB (loss)", "{:.1f}"),
    Column("train_mse_x1e3", "train MSE×10³", "{:.2f}"),
    Column("train_pl_vgg19", "train PL VGG-19", "{:.3f}"),
    Column("train_lpips", "train LPIPS", "{:.3f}"),
    Column("holdout_mse_x1e3", "holdout MSE×10³", "{:.2f}"),
    Column("holdout_pl_vgg19", "holdout PL VGG-19", "{:.3f}"),
    Column("holdout_ssim", "holdout SSIM", "{:.3f}"),
    Column("holdout_lpips", "holdout LPIPS", "{:.3f}"),
    Column("grad_cos", "grad cos vs VGG-19", "{:.3f}"),
    Column("status", "status"),
]
CONSOLE_KEYS = ("loss", "loss_time_ms", "loss_peak_mem_mib", "train_mse_x1e3", "train_pl_vgg19", "holdout_mse_x1e3", "holdout_pl_vgg19", "grad_cos", "status")


def _report(config, warnings, teacher, source, frames_source, gen_info, rows, extra, teachers, lpips_reason) -> DemoReport:
    notes = [
        f"T = {config.steps} Adam steps, lr {config.lr:g}, λ_MSE = {config.pgn_mse_weight:g} with the PGN, "
        f"{config.vgg_mse_weight:g} with VGG; {config.train_frames} train / {config.holdout_frames} holdout frames at "
        f"{config.size}×{config.size}.",
        "ms/step and peak MiB cover the loss part only (loss forward + backward to the image; for ONNX Runtime the "
        "runtime call + MSE to its proxy); peak MiB is the largest growth of the process's peak RSS during it over the "
        "first 5 steps (first-call allocations that stay, such as ONNX Runtime's arena, included).",
        "MSE in [0, 1] RGB space ×10³; PL = VGG-19 perceptual loss (spec §2.3); grad cos = cosine similarity of the "
        "loss's own gradient (without the λ_MSE term) to the VGG-19 gradient after fine-tuning, in normalized space.",
    ]
    if any(r.get("key") == "pgn-ort-train" and r.get("status") == "ok" for r in rows):
        notes.append("For the ORT-training row, ms/step and peak MiB cover the whole device step: generator forward, PGN "
                     "runtime, generator backward and Adam, all in ONNX Runtime.")
    if "ondevice_recipe_max_relative_deviation" in extra:
        notes.append(
            "On-device recipe check: max |∇ weighted-MSE-to-P − runtime gradient| / max|runtime gradient| = "
            f"{extra['ondevice_recipe_max_relative_deviation']:.2e} over all steps."
        )
    table = Table("finetune", "Few-shot fine-tuning (talking-head style)", COLUMNS, rows, notes, CONSOLE_KEYS)
    setup = {
        "vgg_weights": str(teacher.weights),
        "pgn": source.description,
        "frames": frames_source,
        "generator": gen_info["source"],
        "lpips": lpips_reason or "available",
    }
    setup.update({f"{key}_weights": desc for key, desc in teachers.items() if key != "vgg19"})
    return DemoReport("finetune", _config_dict(config), setup, warnings.items, [table], extra={**extra, "generator_info": gen_info})


def _config_dict(config: FinetuneConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def _grids(config, train, holdout, train_outputs, holdout_outputs, columns) -> list[dict]:
    k = min(config.grid_frames, holdout.shape[0], train.shape[0])
    names = ["ground truth", "before fine-tuning"] + [label for _, label in columns]
    keys = ["before"] + [key for key, _ in columns]
    images = []
    for split, gt, outs in (("holdout", holdout, holdout_outputs), ("train", train, train_outputs)):
        rows = [torch.stack([gt[i]] + [outs[key][i] for key in keys]) for i in range(k)]
        path = save_image_grid(rows, config.output_dir / f"finetune_{split}.png")
        images.append({"path": str(path), "caption": f"{split.capitalize()} frames (paper Figure 6 layout)", "columns": names, "rows": f"the first {k} {split} frames"})
    return images
