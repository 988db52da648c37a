"""``pgn-demo finetune``: few-shot fine-tuning of a talking-head style generator (paper §4, Table 3/4, Figure 6).

Protocol: a pose-conditioned generator and its identity embedder are meta-trained on posed crops of the bundled
photographs (the portrait excluded), personalized to the portrait's person from 8 "train" frames, and that one
initialization is fine-tuned with each loss for T = 50 Adam steps at lr 5·10⁻⁵ (λ_MSE = 20 with a PGN), then
evaluated on the train frames and on 8 "holdout" frames in unseen poses. Losses:

* ``mse`` (normalized-space MSE), ``vgg19`` and ``vgg11`` (perceptual losses, no MSE term, as in the paper);
* ``pgn``: the PGN in PyTorch through :class:`pgn.PGNLoss`;
* ``pgn-onnx``: the on-device path: the PGN exported to ONNX and run in ONNX Runtime, the generator trained by
  a weighted MSE towards the runtime's proxy (:mod:`demos.ondevice`): no VGG and no autograd through the PGN;
* ``pgn-ort-train`` and ``pgn-executorch-train``: the whole step on an on-device trainer, ONNX Runtime training
  (:mod:`demos.ondevice_training`) or ExecuTorch's training runtime (``export.export_training_step``).

Reported per loss: time per step and peak memory of the whole training step, and for the eager rows also of the
loss part alone (the on-device trainers run loss and backward as one call), train/holdout MSE (×10³, [0, 1] space),
VGG-19 perceptual loss, SSIM, LPIPS (when available) and the cosine similarity of the loss's gradient to the
VGG-19 gradient after fine-tuning (paper Table 4, "Heads").

Example::

    from pgn.demos.finetune import FinetuneConfig, run_finetune
    report = run_finetune(FinetuneConfig(output_dir=Path("out/finetune")))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from pgn.constants import PAPER_MSE_WEIGHT
from pgn.errors import PGNError, first_line
from pgn.images import save_image_grid

from .common import CommonConfig, Evaluator, check_size, summary
from .frames import edge_map, face_frames, photo_frames, pretraining_photos, read_frames
from .generators.talking_head import META_TRAINING, Embedder, PoseGenerator, TalkingHeadConfig, meta_train, personalize
from .losses import DEFAULT_LOSSES, LOSS_KEYS, MSELoss, PerceptualLossTerm
from pgn.benchmarks.measure import LossMeter
from .ondevice import OnDevicePGNLoss, RuntimeStatus, check_recipe_applies, open_onnx_runtime
from .ondevice import finetune_in_training_program
from pgn.export.training import KERNELS as EXECUTORCH_KERNELS  # noqa: I001 - the lead rewrites this to a relative import
from pgn.export.training import PRECISIONS as EXECUTORCH_PRECISIONS
from pgn.export.training import executorch_training_available
from .ondevice_training import finetune_on_device, training_available
from .report import Column, DemoReport, Table
from .runner import (GRAD_COS_COLUMN, LOSS_COLUMN, TIMING_COLUMNS, TIMING_NOTE, DemoRun, score_columns, student_timing_cells,
                     timing_cells)

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
        losses: which losses to compare, from ``mse, vgg19, vgg11, pgn, pgn-onnx, pgn-ort-train,
            pgn-executorch-train`` (the last two run the whole step on an on-device trainer: ONNX Runtime training
            when ``onnxruntime-training`` is installed, ExecuTorch's training runtime when ``executorch`` is).
            Default: all but ``pgn-executorch-train`` (:data:`~demos.losses.DEFAULT_LOSSES`).
        executorch_lr: SGD learning rate of the ``pgn-executorch-train`` row (ExecuTorch's training runtime offers
            SGD only; 5e-5 moves the generator's parameters about as far per step as Adam at lr 5e-5 does).
        executorch_kernels: the kernels of the ``pgn-executorch-train`` row's program: ``xnnpack`` (default: the
            frozen PGN and the generator's convolutions, as matrix multiplies, in XNNPACK) or ``portable`` (every
            operator on ExecuTorch's portable kernels: about two orders of magnitude slower, less memory).
        executorch_precision: the precision of the frozen PGN inside that program: ``fp32`` (default) or ``int8``
            (its convolutions quantized as ``pgn-export --target executorch --precision int8`` does; XNNPACK only).
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
    losses: tuple[str, ...] = DEFAULT_LOSSES
    meta_steps: int = 200
    executorch_lr: float = 5e-5
    executorch_kernels: str = "xnnpack"
    executorch_precision: str = "fp32"
    generator_checkpoint: Path | None = None
    grid_frames: int = 4

    def __post_init__(self):
        unknown = [k for k in self.losses if k not in LOSS_KEYS]
        if unknown or not self.losses:
            raise PGNError(f"unknown loss(es) {unknown or '(none)'}: choose from {', '.join(LOSS_KEYS)}")
        if self.train_frames < 1 or self.holdout_frames < 1:
            raise PGNError("need at least 1 train and 1 holdout frame")
        if not self.executorch_lr > 0:
            raise PGNError(f"executorch_lr must be > 0, got {self.executorch_lr}")
        if self.executorch_kernels not in EXECUTORCH_KERNELS:
            raise PGNError(f"executorch_kernels must be one of {', '.join(EXECUTORCH_KERNELS)}, got {self.executorch_kernels!r}")
        if self.executorch_precision not in EXECUTORCH_PRECISIONS:
            raise PGNError(f"executorch_precision must be one of {', '.join(EXECUTORCH_PRECISIONS)}, got {self.executorch_precision!r}")
        if self.executorch_precision == "int8" and self.executorch_kernels != "xnnpack":
            raise PGNError("an int8 PGN runs in XNNPACK: use executorch_kernels='xnnpack' (--executorch-kernels xnnpack) with it")
        if self.steps < 1 or self.meta_steps < 0:
            raise PGNError("steps must be >= 1 and meta steps >= 0")
        check_size(self.size, 4, "the talking-head generator (two stride-2 levels)")


# --------------------------------------------------------------------------------------------------------
# The generator: meta-train (or load), then personalize


def _episode_sampler(size: int):
    """Posed crops of one random bundled photograph (the portrait excluded) and their edge maps."""
    photos = pretraining_photos(size)

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


def prepare_generator(run: DemoRun) -> tuple[PoseGenerator, Embedder, dict]:
    """Load the meta-trained generator, or meta-train one (and save it into the output folder)."""
    config: FinetuneConfig = run.config
    if config.generator_checkpoint is not None:
        generator, embedder, info = load_generator(config.generator_checkpoint)
        return generator, embedder, {**info, "source": str(config.generator_checkpoint)}
    torch.manual_seed(config.seed)
    generator, embedder = PoseGenerator(), Embedder()
    sampler, meta = _episode_sampler(config.size), replace(META_TRAINING, steps=config.meta_steps, seed=config.seed)
    final_l1 = run.pretrain("meta-training generator", config.meta_steps,
                            lambda progress: meta_train(generator, embedder, sampler, meta, progress))
    path = save_generator(config.output_dir / "meta_trained_generator.pt", generator, embedder, config.meta_steps, config.size)
    return generator, embedder, {
        "meta_steps": config.meta_steps,
        "source": f"meta-trained here ({config.meta_steps} episodes), saved to {path.name}",
        "final_l1": final_l1,
    }


@dataclass
class Frames:
    """The person's train and holdout frames, their pose inputs (edge maps), and where the frames came from."""

    train: torch.Tensor
    holdout: torch.Tensor
    source: str
    poses_train: torch.Tensor = field(init=False)
    poses_holdout: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.poses_train, self.poses_holdout = edge_map(self.train), edge_map(self.holdout)

    def forward_train(self, generator: torch.nn.Module) -> torch.Tensor:
        """The generator's images of the train poses (what fine-tuning fits)."""
        return generator(self.poses_train)

    @torch.no_grad()
    def render(self, generator: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The generator's images of the train and of the holdout poses."""
        return generator(self.poses_train), generator(self.poses_holdout)

    def row(self, evaluator: Evaluator, name: str, outputs: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """A table row: the train and holdout scores of ``outputs`` (from :meth:`render`)."""
        return {"loss": name, "status": "ok", **evaluator.scores(outputs[0], self.train).cells("train_"),
                **evaluator.scores(outputs[1], self.holdout).cells("holdout_")}


def load_frames(config: FinetuneConfig) -> Frames:
    """Train and holdout frames and where they came from."""
    if config.frames_dir is not None:
        train, holdout = read_frames(config.frames_dir, config.size, config.train_frames, config.holdout_frames)
        return Frames(train, holdout, f"folder {config.frames_dir}")
    train, holdout = face_frames(config.size, config.train_frames, config.holdout_frames, seed=config.seed)
    return Frames(train, holdout, "bundled portrait (scikit-image astronaut), posed crops")


# --------------------------------------------------------------------------------------------------------
# Losses and the run


def build_losses(run: DemoRun, batch: int) -> tuple[list, dict, RuntimeStatus | None]:
    """The losses to compare in table order, the reasons for those that cannot run (key → reason), and the runtime."""
    config: FinetuneConfig = run.config
    losses, skipped = [], {}
    status = None
    if {"pgn-onnx", "pgn-ort-train"} & set(config.losses):
        check_recipe_applies(run.pgn.model)
        status = open_onnx_runtime(run.pgn.model, (config.size, config.size), batch, config.output_dir / "onnx")
        if not status.ok:
            run.warnings.add(f"on-device rows skipped: {status.status}")
    for key in config.losses:
        if key == "mse":
            losses.append(MSELoss())
        elif key in ("vgg19", "vgg11"):
            losses.append(PerceptualLossTerm(run.teacher(key), mse_weight=config.vgg_mse_weight))
        elif key == "pgn":
            losses.append(run.pgn_loss(config.pgn_mse_weight))
        elif key == "pgn-onnx":
            if status.ok:
                losses.append(OnDevicePGNLoss(status.runtime, run.pgn.model.alpha, config.pgn_mse_weight, label=f"PGN {run.pgn_name} ONNX Runtime"))
            else:
                skipped[key] = status.status
        elif key == "pgn-ort-train":
            reason = training_available() or (None if status.ok else f"needs the exported PGN: {status.status}")
            if reason:
                skipped[key] = reason
        elif key == "pgn-executorch-train":
            reason = executorch_training_available()
            if reason:
                skipped[key] = reason
    return losses, skipped, status


def run_finetune(config: FinetuneConfig, console=None) -> DemoReport:
    """Run the fine-tuning demo; writes results.json, results.md and image grids; returns the report."""
    run = DemoRun.start("finetune", config, console)
    frames = load_frames(config)
    generator, embedder, gen_info = prepare_generator(run)
    init = personalize(generator, embedder, frames.train, frames.poses_train)
    losses, skipped, runtime_status = build_losses(run, batch=frames.train.shape[0])
    outputs = {"before": frames.render(init)}  # key -> (train images, holdout images)
    rows = [frames.row(run.evaluator, "before fine-tuning", outputs["before"])]
    extra: dict = {"generator_info": gen_info}
    for loss in losses:
        student = run.fit(loss, init, frames.forward_train, frames.train, config.steps, config.lr)
        outputs[loss.key] = frames.render(student.generator)
        rows.append({**frames.row(run.evaluator, loss.describe(), outputs[loss.key]), "key": loss.key,
                     **student_timing_cells(student),
                     "grad_cos_start": summary(run.evaluator.gradient_cosine(loss, outputs["before"][0], frames.train)),
                     "grad_cos": summary(run.evaluator.gradient_cosine(loss, outputs[loss.key][0], frames.train))})
        if isinstance(loss, OnDevicePGNLoss):
            extra["ondevice_recipe_max_relative_deviation"] = loss.max_recipe_deviation
    labels = {loss.key: loss.label for loss in losses}
    for key, train in _device_trainers(run, frames, runtime_status, init).items():
        if key in config.losses and key not in skipped:
            row, device_outputs = _device_training_row(run, frames, key, train)
            rows.append(row)
            if device_outputs is not None:
                outputs[key], labels[key] = device_outputs, DEVICE_LABELS[key]
    for key, reason in skipped.items():
        rows.append({"loss": SKIPPED_LABELS.get(key, key), "key": key, "status": reason})
    teachers = {f"{loss.key}_weights": str(loss.teacher.weights) for loss in losses if isinstance(loss, PerceptualLossTerm) and loss.key != "vgg19"}
    table = Table("finetune", "Few-shot fine-tuning (talking-head style)", COLUMNS, rows, _notes(config, rows, extra), CONSOLE_KEYS)
    return run.finish([table], _grids(config, frames, outputs, labels), extra, frames=frames.source, generator=gen_info["source"], **teachers)


#: How the ExecuTorch row's note says where its program ran, by ``executorch_kernels``.
EXECUTORCH_KERNEL_NOTES = {
    "xnnpack": "the frozen PGN and the generator's convolutions (as matrix multiplies) in XNNPACK, the rest on ExecuTorch's portable kernels",
    "portable": "every operator on ExecuTorch's portable CPU kernels",
}
#: What the ExecuTorch row's note adds with an int8 PGN (``executorch_precision="int8"``).
EXECUTORCH_INT8_NOTE = (" The frozen PGN's convolutions ran in int8 (static quantization, int8 weights per output channel, "
                        "calibrated on bundled photographs); the generator, its gradients and the update stayed fp32.")
ORT_TRAIN_LABEL = "PGN ONNX Runtime, generator trained by ORT training"
EXECUTORCH_TRAIN_LABEL = "PGN + generator trained in ExecuTorch (SGD)"
#: Rows whose whole step runs on an on-device trainer, by key.
DEVICE_LABELS = {"pgn-ort-train": ORT_TRAIN_LABEL, "pgn-executorch-train": EXECUTORCH_TRAIN_LABEL}
SKIPPED_LABELS = {"pgn-onnx": "PGN ONNX Runtime", **DEVICE_LABELS}

#: ``train(meter, tick) -> (trained generator, extra row cells)``: a whole fine-tuning run on an on-device trainer
#: that times each step with ``meter`` and calls ``tick(loss)`` after it.
DeviceTrain = Callable[[LossMeter, Callable[[float], None]], tuple[torch.nn.Module, dict]]


def _device_trainers(run: DemoRun, frames: Frames, status: RuntimeStatus | None, init) -> dict[str, DeviceTrain]:
    """The on-device trainers by row key: ONNX Runtime training (PGN in ONNX Runtime) and ExecuTorch (PGN inside)."""
    config: FinetuneConfig = run.config
    alpha, weight = run.pgn.model.alpha, config.pgn_mse_weight

    def ort(meter, tick):
        tuned = finetune_on_device(init, frames.poses_train, frames.train, status.runtime, alpha, weight, config.lr,
                                   config.steps, config.output_dir / "ort_training", meter, tick)
        return tuned, {"timing_covers": "whole step (generator + PGN + Adam)"}

    def executorch(meter, tick):
        path = config.output_dir / "executorch_training" / "finetune_step.pte"
        tuned = finetune_in_training_program(init, run.pgn.model, frames.poses_train, frames.train, weight, config.executorch_lr,
                                             config.steps, path, meter, tick, kernels=config.executorch_kernels,
                                             precision=config.executorch_precision)
        return tuned, {"timing_covers": "whole step (generator + PGN + loss + backward + SGD)", "pte_mib": path.stat().st_size / 2**20,
                       "pte_path": str(path), "sgd_lr": config.executorch_lr, "executorch_kernels": config.executorch_kernels,
                       "pgn_precision": config.executorch_precision}

    return {"pgn-ort-train": ort, "pgn-executorch-train": executorch}


def _device_training_row(run: DemoRun, frames: Frames, key: str, train: DeviceTrain) -> tuple[dict, tuple | None]:
    """The row of a whole fine-tuning run on an on-device trainer, and its outputs (None when it failed: the row
    says why in one line)."""
    config: FinetuneConfig = run.config
    meter = LossMeter(memory=config.measure_memory)
    bar = run.progress(config.steps, f"fine-tune: {DEVICE_LABELS[key]}")

    def tick(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss / frames.train.shape[0]:.4g}")

    try:
        tuned, cells = train(meter, tick)
    except PGNError as e:
        return {"loss": DEVICE_LABELS[key], "key": key, "status": first_line(e)}, None
    finally:
        bar.close()
    outputs = frames.render(tuned)
    reference = run.pgn_loss(config.pgn_mse_weight)  # the same PGN: the gradient-cosine column compares its gradient
    row = {**frames.row(run.evaluator, f"{DEVICE_LABELS[key]} + {config.pgn_mse_weight:g}·MSE", outputs), "key": key,
           **timing_cells([], [meter.summary()]), **cells,  # the trainer's step is the whole step; no loss part apart
           "grad_cos": summary(run.evaluator.gradient_cosine(reference, outputs[0], frames.train))}
    return row, outputs


COLUMNS = [
    LOSS_COLUMN,
    *TIMING_COLUMNS,
    *score_columns("train_", ("mse_x1e3", "pl_vgg19", "lpips")),
    *score_columns("holdout_"),
    GRAD_COS_COLUMN,
    Column("status", "status"),
]
CONSOLE_KEYS = ("loss", "loss_time_ms", "loss_peak_mem_mib", "step_time_ms", "step_peak_mem_mib", "train_mse_x1e3",
                "train_pl_vgg19", "holdout_mse_x1e3", "holdout_pl_vgg19", "grad_cos", "status")


def _notes(config: FinetuneConfig, rows: list[dict], extra: dict) -> list[str]:
    notes = [
        f"T = {config.steps} Adam steps, lr {config.lr:g}, λ_MSE = {config.pgn_mse_weight:g} with the PGN, "
        f"{config.vgg_mse_weight:g} with VGG; {config.train_frames} train / {config.holdout_frames} holdout frames at "
        f"{config.size}×{config.size}.",
        TIMING_NOTE + " For the ONNX Runtime row the loss part is the runtime call + MSE to its proxy.",
        "MSE in [0, 1] RGB space ×10³; PL = VGG-19 perceptual loss (mean absolute feature difference per ReLU up to "
        "relu5_1, summed); grad cos = cosine similarity of the loss's own gradient (without the λ_MSE term) to the "
        "VGG-19 gradient after fine-tuning, in normalized space.",
    ]
    ok = {r.get("key"): r for r in rows if r.get("status") == "ok"}
    if set(DEVICE_LABELS) & set(ok):
        notes.append("The on-device trainer rows run generator forward, loss and backward as one call, so they have no "
                     "loss part of their own (—): compare them with the other rows on the whole-step columns, which "
                     "measure the same work for every row.")
    if "pgn-ort-train" in ok:
        notes.append("For the ORT-training row, the whole step runs in ONNX Runtime: generator forward, PGN runtime, "
                     "generator backward and Adam.")
    if "pgn-executorch-train" in ok:
        row = ok["pgn-executorch-train"]
        notes.append("For the ExecuTorch row, the whole step is one ExecuTorch program "
                     "(generator forward, frozen PGN, loss, backward) plus ExecuTorch's SGD update "
                     f"(lr {row['sgd_lr']:g}), {EXECUTORCH_KERNEL_NOTES[row['executorch_kernels']]}; the program "
                     f"({Path(row['pte_path']).name}) is {row['pte_mib']:.2f} MiB."
                     + (EXECUTORCH_INT8_NOTE if row["pgn_precision"] == "int8" else ""))
    if "ondevice_recipe_max_relative_deviation" in extra:
        notes.append(
            "On-device recipe check: max |∇ weighted-MSE-to-P − runtime gradient| / max|runtime gradient| = "
            f"{extra['ondevice_recipe_max_relative_deviation']:.2e} over all steps."
        )
    return notes


def _grids(config: FinetuneConfig, frames: Frames, outputs: dict, labels: dict[str, str]) -> list[dict]:
    """The holdout and train grids (Figure 6 layout): ground truth, before fine-tuning, then one column per loss."""
    k = min(config.grid_frames, frames.holdout.shape[0], frames.train.shape[0])
    names = ["ground truth", "before fine-tuning", *labels.values()]
    keys = ["before", *labels]
    images = []
    for index, split, gt in ((1, "holdout", frames.holdout), (0, "train", frames.train)):
        rows = [torch.stack([gt[i]] + [outputs[key][index][i] for key in keys]) for i in range(k)]
        path = save_image_grid(rows, config.output_dir / f"finetune_{split}.png")
        images.append({"path": str(path), "caption": f"{split.capitalize()} frames (paper Figure 6 layout)", "columns": names, "rows": f"the first {k} {split} frames"})
    return images
