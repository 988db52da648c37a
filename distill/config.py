"""The one configuration of a distillation run (a dataclass), its presets, and its JSON round trip.

Defaults reproduce the authors' published recipe (their training command and code defaults): ResNet-4, 224×224, 48 images per process,
3 autoencoders of depths 0/1/2, Adam 1e-3 for everything, grad-norm clipping at 5× a moving average started at
200, meta-loss ``2^26·mean(g_PGN − g_true)² + 0.2·VGG(P, y) + 0.5·L1(P, y)``. Every run writes the resolved
config to ``<run-dir>/config.json``; ``pgn-distill --config that.json`` runs it again.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pgn.constants import (
    META_GRAD_LOSS_SCALE,
    META_L1_WEIGHT_PAPER,
    META_L1_WEIGHT_REFERENCE,
    META_VGG_WEIGHT_PAPER,
    META_VGG_WEIGHT_REFERENCE,
)
from pgn.files import write_json
from pgn.errors import PGNError
from pgn.files import check_input_file

#: Meta-loss weight presets (λ_VGG, λ_L1). ``reference`` = the authors' CLI defaults, used by the published
#: training command; ``paper`` = Eq. 10 of the paper. The two are swapped; the released checkpoints were
#: trained with the reference values.
LOSS_PRESETS: dict[str, tuple[float, float]] = {
    "reference": (META_VGG_WEIGHT_REFERENCE, META_L1_WEIGHT_REFERENCE),
    "paper": (META_VGG_WEIGHT_PAPER, META_L1_WEIGHT_PAPER),
}
DATASETS = ("auto", "samples", "folder", "imagenet", "ffhq")
TEACHERS = ("vgg19", "vgg11")
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
#: Settings a resumed run may change: when and how long it runs, what it logs, where it runs. Every other
#: setting shapes the model, the data or the optimization, and must match the checkpoint.
RESUMABLE_CHANGES = (
    "epochs", "steps", "time_limit_minutes", "workers", "device", "dist_backend", "dist_init_method", "run_dir",
    "log_every", "val_every", "image_every", "save_every", "keep_checkpoints", "tensorboard", "progress",
    "start_epoch", "resume_dir", "resume_epoch", "pgn_checkpoint", "pgn_checkpoint_opt", "ae_checkpoints",
    "ae_checkpoints_opt",
)
#: Numeric settings by the values they may take (NaN never passes; infinity only for the reset threshold).
POSITIVE = (
    "lr", "pgn_sgd_lr", "ae_lr", "pgn_grad_norm_avg", "pgn_grad_norm_clip_coef", "ae_grad_norm_avg",
    "ae_grad_norm_clip_coef", "grad_loss_scale", "grad_scale", "beta", "out_scale", "time_limit_minutes",
)
NON_NEGATIVE = (
    "grad_weight", "vgg_weight", "l1_weight", "mse_gt_weight", "mse_gen_weight", "ae_min_samples_before_reset",
    "ae_l1_hi_reset_threshold", "warmup_epochs", "workers", "start_epoch", "resume_epoch", "seed", "teacher_seed",
)
AT_LEAST_ONE = ("num_blocks", "val_every", "image_every", "save_every")


@dataclass
class DistillConfig:
    """Everything a distillation run needs; saved as ``config.json`` in the run directory.

    Model (the student PGN):
        backbone: a :func:`pgn.list_presets` name (``resnet4``, ``resnet8``, ``unet``, ``resnet4-hybrid``, …).
        num_blocks, down_channels, up_channels: ResNet overrides (``None`` keeps the preset's).
        head, grad_scale, beta, out_scale, grad_type: head overrides (``None`` keeps the preset's).

    Teacher:
        teacher: ``vgg19`` (paper) or ``vgg11``.
        vgg_weights: ``imagenet`` (torchvision IMAGENET1K_V1, as in the paper), ``random`` (mechanics only), or a
            state-dict path.
        teacher_seed: seed of ``random`` teacher weights.

    Data:
        data: ``samples`` (photographs bundled with scikit-image/scikit-learn) or a path.
        dataset: ``auto`` (detect the layout), ``samples``, ``folder``, ``imagenet`` or ``ffhq``.
        size: training crop size (224 in the paper).
        batch_size: images per process and step (48; the authors' ``--worker-batch-size``).
        workers: data-loading processes per training process (``None``: 0 for samples, else up to 4).
        min_image_side: images whose shorter side is smaller are skipped (counted, never a crash).
        val_images: held-out (ŷ, y) pairs for the validation metrics.
        val_fraction: share of a plain image folder held out for validation (never trained on).

    Schedule:
        epochs: end epoch (the published ResNet-4 run: 330); one epoch = ``batches_per_epoch`` steps.
        batches_per_epoch: 512 as in the paper.
        steps: total steps; overrides ``epochs`` when set.
        time_limit_minutes: stop cleanly (with a checkpoint) after this much wall-clock time.

    PGN optimization:
        lr, pgn_optimizer (``adam``/``sgd``), pgn_sgd_lr, pgn_grad_norm_avg (initial moving average of the
        grad norm), pgn_grad_norm_clip_coef (clip at coef × average).

    Meta-loss (paper Eq. 10): loss_preset (``reference`` 0.2/0.5 or ``paper`` 0.5/0.2), grad_weight, vgg_weight,
        l1_weight, mse_gt_weight, mse_gen_weight, grad_loss_scale (2^26). ``None`` weights come from the preset.

    Autoencoders: ae_depths (one autoencoder per entry), ae_block_type, ae_conv_type, ae_lr,
        ae_grad_norm_avg, ae_grad_norm_clip_coef, ae_shared_grad_norm_ma (the authors' shared-average bug),
        ae_min_samples_before_reset, ae_reset_prob, ae_l1_hi_reset_threshold, warmup_epochs, alternate_gt
        (direct/hybrid heads only: whether the autoencoders learn from true gradients on even epochs).

    Initialization (the authors' flags): start_epoch; resume_dir + resume_epoch (their per-epoch
        files); pgn_checkpoint, pgn_checkpoint_opt, ae_checkpoints, ae_checkpoints_opt (single files; ``None``
        entries in the autoencoder lists mean fresh initialization).

    Run: run_dir, seed, device (``auto``/``cpu``/``cuda``), dist_backend (``None``: NCCL on GPUs, gloo on CPU),
        dist_init_method, log_every, val_every / image_every / save_every (steps; ``None``: once per epoch),
        keep_checkpoints, tensorboard, progress.
    """

    # model
    backbone: str = "resnet4"
    num_blocks: int | None = None
    down_channels: list[int] | None = None
    up_channels: list[int] | None = None
    head: str | None = None
    grad_scale: float | None = None
    beta: float | None = None
    out_scale: float | None = None
    grad_type: str | None = None
    # teacher
    teacher: str = "vgg19"
    vgg_weights: str = "imagenet"
    teacher_seed: int = 0
    # data
    data: str = "samples"
    dataset: str = "auto"
    size: int = 224
    batch_size: int = 48
    workers: int | None = None
    min_image_side: int = 32
    val_images: int = 16
    val_fraction: float = 0.02
    # schedule
    epochs: int = 330
    batches_per_epoch: int = 512
    steps: int | None = None
    time_limit_minutes: float | None = None
    # PGN optimization
    lr: float = 1e-3
    pgn_optimizer: str = "adam"
    pgn_sgd_lr: float = 1.0
    pgn_grad_norm_avg: float = 200.0
    pgn_grad_norm_clip_coef: float = 5.0
    # meta-loss
    loss_preset: str = "reference"
    grad_weight: float = 1.0
    vgg_weight: float | None = None
    l1_weight: float | None = None
    mse_gt_weight: float = 0.0
    mse_gen_weight: float = 0.0
    grad_loss_scale: float = META_GRAD_LOSS_SCALE
    # autoencoders
    ae_depths: list[int] = field(default_factory=lambda: [0, 1, 2])
    ae_block_type: str = "doubleblaze"
    ae_conv_type: str = "sep"
    ae_lr: float = 1e-3
    ae_grad_norm_avg: float = 200.0
    ae_grad_norm_clip_coef: float = 5.0
    ae_shared_grad_norm_ma: bool = False
    ae_min_samples_before_reset: int = 300_000
    ae_reset_prob: float = 0.01
    ae_l1_hi_reset_threshold: float = 1000.0
    warmup_epochs: int = 0
    alternate_gt: bool = True
    # where the run starts from (besides --resume, which is an action, not configuration)
    start_epoch: int | None = None
    resume_dir: str | None = None
    resume_epoch: int | None = None
    pgn_checkpoint: str | None = None
    pgn_checkpoint_opt: str | None = None
    ae_checkpoints: list[str] | None = None
    ae_checkpoints_opt: list[str] | None = None
    # run
    run_dir: str | None = None
    seed: int = 42
    device: str = "auto"
    dist_backend: str | None = None
    dist_init_method: str = "env://"
    log_every: int = 1
    val_every: int | None = None
    image_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 3
    tensorboard: bool = False
    progress: bool = True

    # ----------------------------------------------------------------------------------------------------
    def resolved(self) -> "DistillConfig":
        """A copy with every ``None`` that has a derived value filled in, validated."""
        check_types(self.to_dict())
        for name in ("batches_per_epoch", "val_every", "image_every", "save_every", "log_every"):  # before 0 becomes a default
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PGNError(f"{name} must be ≥ 1 (--{name.replace('_', '-')}), got {value}")
        vgg_default, l1_default = LOSS_PRESETS.get(self.loss_preset, (None, None))
        if vgg_default is None:
            raise PGNError(f"unknown loss_preset {self.loss_preset!r}: use one of {', '.join(LOSS_PRESETS)}")
        cfg = replace(
            self,
            vgg_weight=vgg_default if self.vgg_weight is None else float(self.vgg_weight),
            l1_weight=l1_default if self.l1_weight is None else float(self.l1_weight),
            run_dir=self.run_dir or str(Path("runs") / self.backbone),
            val_every=self.val_every or self.batches_per_epoch,
            image_every=self.image_every or self.batches_per_epoch,
            save_every=self.save_every or self.batches_per_epoch,
            ae_depths=[int(d) for d in self.ae_depths],
            down_channels=None if self.down_channels is None else [int(c) for c in self.down_channels],
            up_channels=None if self.up_channels is None else [int(c) for c in self.up_channels],
        )
        cfg.validate()
        return cfg

    @property
    def total_steps(self) -> int:
        """Number of training steps of the whole run."""
        return int(self.steps) if self.steps is not None else int(self.epochs) * int(self.batches_per_epoch)

    def pgn_overrides(self) -> dict[str, Any]:
        """Keyword overrides for :func:`pgn.build` (``None`` entries dropped)."""
        keys = ("num_blocks", "down_channels", "up_channels", "head", "grad_scale", "beta", "out_scale", "grad_type")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def validate(self) -> None:
        """Raise a one-line :class:`PGNError` for values that cannot work."""
        check_types(self.to_dict())
        for name in POSITIVE + NON_NEGATIVE + AT_LEAST_ONE:
            value = getattr(self, name)
            if value is None:
                continue
            ok = value > 0 if name in POSITIVE else value >= 0 if name in NON_NEGATIVE else value >= 1
            finite = math.isfinite(value) or (name == "ae_l1_hi_reset_threshold" and value == math.inf)
            if not (ok and finite):
                need = "a positive number" if name in POSITIVE else "≥ 0" if name in NON_NEGATIVE else "≥ 1"
                raise PGNError(f"{name} must be {need}, got {value}")
        for name in ("down_channels", "up_channels"):
            if getattr(self, name) is not None and any(c < 1 for c in getattr(self, name)):
                raise PGNError(f"{name} must be positive widths, got {getattr(self, name)}")
        choices = {"dataset": DATASETS, "teacher": TEACHERS, "pgn_optimizer": OPTIMIZERS, "device": DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise PGNError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        positive = ("size", "batch_size", "batches_per_epoch", "val_images", "log_every", "keep_checkpoints")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise PGNError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 0 or self.epochs < 0:
            raise PGNError("steps and epochs must be ≥ 0")
        if not self.ae_depths:
            raise PGNError("ae_depths needs at least one autoencoder depth (default 0 1 2)")
        if any(d < 0 or d > 4 for d in self.ae_depths):
            raise PGNError(f"autoencoder depths must be between 0 and 4, got {self.ae_depths}")
        if self.batch_size < len(self.ae_depths):
            raise PGNError(
                f"batch_size {self.batch_size} is smaller than the number of autoencoders ({len(self.ae_depths)}): "
                f"every autoencoder needs at least one image per step"
            )
        multiple = 2 ** (max(self.ae_depths) + 1)
        if self.size % multiple:
            low = (self.size // multiple) * multiple
            raise PGNError(
                f"size {self.size} must be a multiple of {multiple} for autoencoder depth {max(self.ae_depths)}; "
                f"use {low or multiple} or {low + multiple}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise PGNError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.ae_reset_prob <= 1.0:
            raise PGNError(f"ae_reset_prob must be in [0, 1], got {self.ae_reset_prob}")
        if self.val_images < len(self.ae_depths):
            raise PGNError(f"val_images must be at least the number of autoencoders ({len(self.ae_depths)})")
        if (self.resume_dir is None) != (self.resume_epoch is None):
            raise PGNError("--resume-dir and --resume-epoch go together (the authors' files <dir>/<epoch>.pth ...)")
        if self.min_image_side < 1:
            raise PGNError(f"min_image_side must be ≥ 1, got {self.min_image_side}")
        self._check_size_fits_backbone()

    def _check_size_fits_backbone(self) -> None:
        """Raise a one-line :class:`PGNError` unless ``size`` is a size the PGN takes (UNet: multiples of 32);
        checked on a meta-device model, before a run writes anything."""
        import torch

        import pgn
        from pgn.inputs import check_size

        with torch.device("meta"):  # shapes only: no memory, no initialization
            model = pgn.build(self.backbone, **self.pgn_overrides())
        check_size(self.size, self.size, multiple_of=model.size_multiple, what=f"the {self.backbone} PGN's --size")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error that lists the known ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PGNError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(names))}")
        check_types(d)
        return cls(**d)


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    args = typing.get_args(hint)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _has_type(value: Any, hint: Any) -> bool:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if args:  # X | None
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_types(values: dict[str, Any]) -> None:
    """Raise a one-line :class:`PGNError` for the first known key whose value has the wrong JSON type."""
    hints = typing.get_type_hints(DistillConfig)
    for name, value in values.items():
        if name in hints and not _has_type(value, hints[name]):
            raise PGNError(f"config key {name!r} must be {_type_name(hints[name])}, got {value!r}")


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """``"size 32 → 64, lr 0.001 → 0.01"`` for the settings outside :data:`RESUMABLE_CHANGES` that differ ('' if none)."""
    changed = [f"{k} {saved[k]!r} → {now[k]!r}" for k in now if k in saved and k not in RESUMABLE_CHANGES and saved[k] != now[k]]
    return ", ".join(changed)


def save_config(config: DistillConfig, path: str | Path) -> Path:
    """Write ``config`` as indented JSON (the file ``pgn-distill --config`` reads), atomically."""
    return write_json(config.to_dict(), path)


def load_config(path: str | Path) -> DistillConfig:
    """Read a config written by :func:`save_config` (or by hand: any subset of the keys)."""
    path = check_input_file(path, "config")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise PGNError(f"{path} is not a JSON config file (it is not text): pass a config.json written by pgn-distill") from None
    except json.JSONDecodeError as e:
        raise PGNError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise PGNError(f"{path} must hold a JSON object of config keys")
    return DistillConfig.from_dict(data)
