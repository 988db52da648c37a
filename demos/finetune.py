"""``pgn-demo finetune``: few-shot fine-tuning of a talking-head style generator (paper §4, Tables 3-4, Figure 6).

A pose-conditioned generator and its identity embedder are meta-trained on posed crops of the bundled photographs
(the portrait excluded), personalized to the portrait's person from 8 "train" frames, and that one initialization
is fine-tuned with each loss of :data:`demos.losses.LOSSES` for T = 50 Adam steps at lr 5·10⁻⁵ (λ_MSE = 20 with a
PGN), then scored on the train frames and on 8 "holdout" frames in unseen poses: time and peak memory of the loss
part and of the whole step, MSE (×10³, [0, 1] space), VGG-19 perceptual loss, SSIM, LPIPS (when available) and the
cosine of the loss's gradient to the VGG-19 gradient (paper Table 4, "Heads").

Example::

    from pgn.demos.finetune import FinetuneConfig, run_finetune
    report = run_finetune(FinetuneConfig(output_dir=Path("out/finetune")))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pgn.constants import PAPER_MSE_WEIGHT
from pgn.errors import PGNError, first_line
from pgn.heap import new_objects_collected_only
from pgn.images import save_image_grid

from .common import TIMING_NOTE, CommonConfig, Meter, Run, Student, check_size, timing_cells
from .frames import edge_map, face_frames, photo_frames, pretraining_photos, read_frames
from .generators.talking_head import META_TRAINING, Embedder, PoseGenerator, TalkingHeadConfig, meta_train, personalize
from .losses import DEFAULT_LOSSES, EXECUTORCH_KERNELS, EXECUTORCH_PRECISIONS, LOSSES, PGNLossTerm, PerceptualLoss
from .metrics import summary
from .ondevice import Unavailable
from .report import GRAD_COS_COLUMN, LOSS_COLUMN, TIMING_COLUMNS, Column, DemoReport, Table, score_columns

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
        losses: keys of :data:`demos.losses.LOSSES` to compare (default: the rows marked default).
        executorch_lr: SGD learning rate of the ``pgn-executorch-train`` row (ExecuTorch's training runtime offers
            SGD only; 5e-5 moves the generator's parameters about as far per step as Adam at lr 5e-5 does).
        executorch_kernels: that row's kernels: ``xnnpack`` (the frozen PGN and the generator's convolutions, as
            matrix multiplies, in XNNPACK) or ``portable`` (ExecuTorch's portable kernels only: ~100× slower).
        executorch_precision: the frozen PGN's precision in that program: ``fp32`` or ``int8`` (XNNPACK only).
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
        unknown = [k for k in self.losses if k not in LOSSES]
        if unknown or not self.losses:
            raise PGNError(f"unknown loss(es) {unknown or '(none)'}: choose from {', '.join(LOSSES)}")
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


def prepare_generator(run: Run, config: "FinetuneConfig") -> tuple[PoseGenerator, Embedder, dict]:
    """Load the meta-trained generator, or meta-train one (and save it into the output folder)."""
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

    def row(self, run: Run, name: str, outputs: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """A table row: the train and holdout scores of ``outputs`` (from :meth:`render`)."""
        return {"loss": name, "status": "ok", **run.scores(outputs[0], self.train).cells("train_"),
                **run.scores(outputs[1], self.holdout).cells("holdout_")}


def load_frames(config: FinetuneConfig) -> Frames:
    """Train and holdout frames and where they came from."""
    if config.frames_dir is not None:
        train, holdout = read_frames(config.frames_dir, config.size, config.train_frames, config.holdout_frames)
        return Frames(train, holdout, f"folder {config.frames_dir}")
    train, holdout = face_frames(config.size, config.train_frames, config.holdout_frames, seed=config.seed)
    return Frames(train, holdout, "bundled portrait (scikit-image astronaut), posed crops")


COLUMNS = [LOSS_COLUMN, *TIMING_COLUMNS, *score_columns("train_", ("mse_x1e3", "pl_vgg19", "lpips")), *score_columns("holdout_"),
           GRAD_COS_COLUMN, Column("status", "status")]
CONSOLE_KEYS = ("loss", "loss_time_ms", "loss_peak_mem_mib", "step_time_ms", "step_peak_mem_mib", "train_mse_x1e3",
                "train_pl_vgg19", "holdout_mse_x1e3", "holdout_pl_vgg19", "grad_cos", "status")


def run_finetune(config: FinetuneConfig, console=None) -> DemoReport:
    """Run the fine-tuning demo; writes results.json, results.md and image grids; returns the report."""
    run = Run.start("finetune", config, console)
    frames = load_frames(config)
    generator, embedder, gen_info = prepare_generator(run, config)
    init = personalize(generator, embedder, frames.train, frames.poses_train)
    outputs, labels = {"before": frames.render(init)}, {}  # key -> (train images, holdout images), grid label
    rows = [frames.row(run, "before fine-tuning", outputs["before"])]
    extra, setup = {"generator_info": gen_info}, {"frames": frames.source, "generator": gen_info["source"]}
    for key in config.losses:
        spec = LOSSES[key]
        label = spec.label.format(pgn=run.pgn_name)
        bar = run.progress(config.steps, f"finetune {label}")

        def tick(loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")

        try:
            if spec.fit is None:  # the step runs in PyTorch: Adam on the row's loss
                loss = spec.build(run, config, label)
                student = Student(loss, init, frames.forward_train, frames.train, config.lr, config.measure_memory)
                with new_objects_collected_only():
                    for _ in range(config.steps):
                        _, values = student.step()
                        tick(float(values.mean()))
                tuned, name = student.generator, loss.describe()
                cells = {**student.timing_cells(), "grad_cos_start": summary(run.gradient_cosine(loss, outputs["before"][0], frames.train))}
                extra |= loss.results()
                if isinstance(loss, PerceptualLoss) and key != "vgg19":
                    setup[f"{key}_weights"] = str(loss.teacher.weights)
            else:  # the whole step runs on an on-device trainer, which loops itself and times each step with meter
                meter = Meter(memory=config.measure_memory)
                with new_objects_collected_only():
                    tuned, cells = spec.fit(run, config, init, frames.poses_train, frames.train, meter, lambda v: tick(v / len(frames.train)))
                cells = {**timing_cells([], [meter.summary()]), **cells}  # the trainer's step is the whole step
                loss = PGNLossTerm(run.pgn, config.pgn_mse_weight)  # the same PGN: grad cos compares its gradient
                name = f"{label} + {config.pgn_mse_weight:g}·MSE"
        except (Unavailable if spec.fit is None else PGNError) as e:  # the row says why (a missing package, a failed
            # export or on-device program) and the demo goes on
            rows.append({"loss": label, "key": key, "status": first_line(e)})
            continue
        finally:
            bar.close()
        outputs[key], labels[key] = frames.render(tuned), label
        rows.append({**frames.row(run, name, outputs[key]), "key": key, **cells,
                     "grad_cos": summary(run.gradient_cosine(loss, outputs[key][0], frames.train))})
    table = Table("finetune", "Few-shot fine-tuning (talking-head style)", COLUMNS, rows, _notes(config, rows, extra), CONSOLE_KEYS)
    return run.finish([table], _grids(config, frames, outputs, labels), extra, **setup)


def _notes(config: FinetuneConfig, rows: list[dict], extra: dict) -> list[str]:
    """The notes under the table: the settings, what the columns mean, and each row's own note where it ran."""
    notes = [
        f"T = {config.steps} Adam steps, lr {config.lr:g}, λ_MSE = {config.pgn_mse_weight:g} with the PGN, "
        f"{config.vgg_mse_weight:g} with VGG; {config.train_frames} train / {config.holdout_frames} holdout frames at "
        f"{config.size}×{config.size}.",
        TIMING_NOTE + " For the ONNX Runtime row the loss part is the runtime call + MSE to its proxy.",
        "MSE in [0, 1] RGB space ×10³; PL = VGG-19 perceptual loss (mean absolute feature difference per ReLU up to "
        "relu5_1, summed); grad cos = cosine similarity of the loss's own gradient (without the λ_MSE term) to the "
        "VGG-19 gradient after fine-tuning, in normalized space.",
    ]
    ran = {r["key"]: r for r in rows if r.get("status") == "ok" and "key" in r}
    if any(LOSSES[key].fit for key in ran):
        notes.append("The on-device trainer rows run generator forward, loss and backward as one call, so they have no "
                     "loss part of their own (—): compare them with the other rows on the whole-step columns, which "
                     "measure the same work for every row.")
    for key, row in ran.items():
        note = LOSSES[key].note
        if note:
            notes.append(note(row) if callable(note) else note.format(**row, **extra))
    return notes


def _grids(config: FinetuneConfig, frames: Frames, outputs: dict, labels: dict[str, str]) -> list[dict]:
    """The holdout and train grids (Figure 6 layout): ground truth, before fine-tuning, then one column per loss."""
    k = min(config.grid_frames, frames.holdout.shape[0], frames.train.shape[0])
    images = []
    for index, split, gt in ((1, "holdout", frames.holdout), (0, "train", frames.train)):
        rows = [torch.stack([gt[i]] + [outputs[key][index][i] for key in ["before", *labels]]) for i in range(k)]
        path = save_image_grid(rows, config.output_dir / f"finetune_{split}.png")
        images.append({"path": str(path), "caption": f"{split.capitalize()} frames (paper Figure 6 layout)",
                       "columns": ["ground truth", "before fine-tuning", *labels.values()], "rows": f"the first {k} {split} frames"})
    return images
