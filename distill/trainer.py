"""Distilling a PGN from the VGG teacher with surrogate autoencoders (paper §3, Fig. 1).

One iteration, per process, in the order of the authors' code::

    y (normalized batch) ─ split ─► AE_k ─► ŷ_k ─ detach, concat ─► ŷ
    PGN(ŷ, y) ─► P, g_PGN                       (train-mode BatchNorm, DDP across processes)
    VGG(ŷ, y) ─► g_true                         (frozen teacher, true per-sample gradient)
    AE_k ◄─ Adam step on g_PGN[k] (g_true in some epochs of the direct/hybrid heads), clipped at 5× its average
    PGN  ◄─ Adam step on Σ_i meta-loss_i (DDP averages over processes), clipped at 5× its average
    moving averages; autoencoders that stopped improving are re-initialized

Run it with ``pgn-distill`` (see :mod:`distill.cli`) or :func:`train`. Single process::

    pgn-distill --backbone resnet4 --data samples --size 64 --batch-size 12 --steps 200 --vgg-weights random

Several processes (GPUs, or CPU with gloo)::

    torchrun --standalone --nproc_per_node 8 -m distill.cli --backbone resnet4 --data /data/ImageNet
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import pgn
from pgn.cliutils import check_output, error_line
from pgn.errors import PGNError, describe_os_error, os_error_in
from pgn.files import hold_folder
from pgn.perceptual import PerceptualLoss

from . import checkpoints as ckpt
from . import distributed
from .autoencoders import build_autoencoders, split_sizes
from .config import DistillConfig, save_config
from .data import default_workers, find_images, make_train_loader, validation_images
from .metalosses import MetaLossWeights, gradient_metrics, meta_loss, teacher_pass
from .resume import starting_point
from .rundir import move_aside, remove_partial_files
from .runlog import RunLog
from .running_stats import MovingAverage, PlateauTracker
from .validation import ValidationSet, evaluate

DIRECT_HEADS = ("direct", "hybrid")  # the authors' "direct" backbone-to-gradient mode: autoencoders may learn from true gradients


class _PGNOutputs(nn.Module):
    """Forward = (grad, proxy, raw) of a PGN, so DistributedDataParallel sees every output the loss uses."""

    def __init__(self, model: pgn.PGN):
        super().__init__()
        self.pgn = model

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor):
        return tuple(self.pgn.outputs(y_hat, y))


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    run_dir: Path
    steps: int
    teacher: str
    first_validation: dict = field(default_factory=dict)
    last_validation: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    pgn_path: Path | None = None
    stopped: str | None = None  # None (finished), "time limit" or "signal"
    is_main: bool = True  # False on the other ranks of a torchrun job (they write nothing)


def initial_pgn(config: DistillConfig) -> pgn.PGN:
    """The PGN exactly as a fresh run initializes it (same seed), in ImageNet-normalized space."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return pgn.build(config.backbone, value_space="imagenet", **config.pgn_overrides())


class Distiller:
    """The models, optimizers and running statistics of one process, and one training iteration.

    Args:
        config: a resolved :class:`DistillConfig`.
        ctx: this process's :class:`distill.distributed.DistContext`.
    """

    def __init__(self, config: DistillConfig, ctx: distributed.DistContext):
        self.config, self.ctx = config, ctx
        dev = ctx.device
        torch.backends.cudnn.benchmark = dev.type == "cuda"  # as the authors (fast, not bit-deterministic on GPUs)
        distributed.seed_everything(config.seed)  # the same on every rank: identical initial autoencoders, as in the authors' runs
        self.model = pgn.build(config.backbone, value_space="imagenet", **config.pgn_overrides()).to(dev).train()
        self.teacher = PerceptualLoss(config.teacher, weights=config.vgg_weights, seed=config.teacher_seed, value_space="imagenet").to(dev)
        self.autoencoders = build_autoencoders(config.ae_depths, config.ae_block_type, config.ae_conv_type).to(dev).train()
        if config.pgn_optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.pgn_sgd_lr)
        self.ae_optimizers = [torch.optim.Adam(ae.parameters(), lr=config.ae_lr) for ae in self.autoencoders]
        self.grad_norm_ma = MovingAverage(config.pgn_grad_norm_avg)
        if config.ae_shared_grad_norm_ma:  # the authors' code aliases one average for all autoencoders (a bug), on request
            shared = MovingAverage(config.ae_grad_norm_avg)
            self.ae_grad_norm_ma = [shared] * len(self.autoencoders)
        else:
            self.ae_grad_norm_ma = [MovingAverage(config.ae_grad_norm_avg) for _ in self.autoencoders]
        self.plateaus = [PlateauTracker() for _ in self.autoencoders]
        self.reset_rng = np.random.default_rng(config.seed)  # same stream on every rank, like the reference
        self.ae_resets = [0] * len(self.autoencoders)
        self.skipped_images = 0
        self.weights = MetaLossWeights(config.grad_weight, config.vgg_weight, config.l1_weight, config.mse_gt_weight, config.mse_gen_weight, config.grad_loss_scale)
        self.pgn_outputs = _PGNOutputs(self.model)  # DistributedDataParallel-wrapped when several processes train
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.pgn_outputs = DistributedDataParallel(self.pgn_outputs, device_ids=[dev.index] if dev.type == "cuda" else None)

    # ----------------------------------------------------------------------------------------------------
    def autoencoders_use_true_gradient(self, step: int) -> bool:
        """Direct/hybrid heads: true gradients in warm-up epochs, then on even epochs, as the authors' code does."""
        if self.model.config.head.kind not in DIRECT_HEADS:
            return False
        epoch = step // self.config.batches_per_epoch
        if epoch < self.config.warmup_epochs:
            return True
        return self.config.alternate_gt and epoch % 2 == 0

    def train_step(self, y: torch.Tensor, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """One iteration on the normalized batch ``y`` (0-based ``step``); returns local scalars and tensors.

        The order is the authors' code's; see the module docs.
        """
        cfg = self.config
        sizes = split_sizes(y.shape[0], len(self.autoencoders))
        # 1–2. surrogate generators produce ŷ; each keeps its own graph for its update
        ae_outputs = [ae(chunk) for ae, chunk in zip(self.autoencoders, y.split(sizes))]
        y_hat = torch.cat([o.detach() for o in ae_outputs])
        # 3. PGN forward: proxy P and synthetic gradient g_PGN, graph to the PGN kept
        g_pgn, proxy, _ = self.pgn_outputs(y_hat, y)
        # 4. the teacher's true per-sample gradient
        teacher_out = teacher_pass(self.teacher, y_hat, y)
        # 5. autoencoder updates with the synthetic (or, in direct mode, true) gradient
        use_true = self.autoencoders_use_true_gradient(step)
        ae_grad = (teacher_out.grad if use_true else g_pgn.detach()).split(sizes)
        ae_norms = [self._update_autoencoder(k, out, g) for k, (out, g) in enumerate(zip(ae_outputs, ae_grad))]
        # 6. PGN update on the per-sample meta-loss, summed over the batch
        per_sample, terms = meta_loss(g_pgn, proxy, y_hat, y, teacher_out, self.teacher, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        per_sample.sum().backward()  # DDP averages the gradients over processes here
        pgn_norm = self._clipped_step(self.model.parameters(), self.optimizer, self.grad_norm_ma)
        # 7. moving averages (the PGN's; the autoencoders' per autoencoder or, as in the reference, shared)
        ma_before = self.grad_norm_ma.value
        if math.isfinite(pgn_norm):
            self.grad_norm_ma.update(pgn_norm)
        if cfg.ae_shared_grad_norm_ma:
            for _ in self.autoencoders:
                if math.isfinite(ae_norms[-1]):
                    self.ae_grad_norm_ma[0].update(ae_norms[-1])
        else:
            for ma, norm in zip(self.ae_grad_norm_ma, ae_norms):
                if math.isfinite(norm):
                    ma.update(norm)
        # 8. reset autoencoders whose reconstruction stopped improving
        l1 = (y_hat - y).abs().flatten(1).mean(dim=1).detach()
        l1_per_ae = [float(c.mean()) for c in l1.split(sizes)]
        samples = step * y.shape[0] * self.ctx.world_size
        for k, value in enumerate(l1_per_ae):
            self._maybe_reset(k, value, samples)
        scalars = self._scalars(per_sample, terms, g_pgn, teacher_out, l1, l1_per_ae, sizes, ae_norms, pgn_norm, ma_before, use_true)
        return scalars, {"y": y, "y_hat": y_hat, "proxy": proxy.detach()}

    def _update_autoencoder(self, k: int, output: torch.Tensor, grad: torch.Tensor) -> float:
        opt = self.ae_optimizers[k]
        opt.zero_grad(set_to_none=True)
        output.backward(grad.detach())
        return self._clipped_step(self.autoencoders[k].parameters(), opt, self.ae_grad_norm_ma[k], clip_coef=self.config.ae_grad_norm_clip_coef)

    def _clipped_step(self, params, optimizer: torch.optim.Optimizer, ma: MovingAverage, clip_coef: float | None = None) -> float:
        """Clip the total grad norm at coef × moving average and step; a non-finite norm skips the step."""
        coef = self.config.pgn_grad_norm_clip_coef if clip_coef is None else clip_coef
        params = [p for p in params if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=coef * ma.value))
        if math.isfinite(norm):
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
        return norm

    def _maybe_reset(self, k: int, l1: float, samples: int) -> None:
        cfg = self.config
        tracker = self.plateaus[k]
        tracker.observe(l1, samples)
        p = tracker.reset_probability(l1, samples, cfg.ae_min_samples_before_reset, cfg.ae_reset_prob, cfg.ae_l1_hi_reset_threshold)
        draw = self.reset_rng.random()  # drawn every time, so the stream stays aligned across ranks
        if draw < p:
            self.autoencoders[k].reset_parameters()  # Adam moments are kept, as in the reference
            tracker.clear()
            self.ae_resets[k] += 1

    def _scalars(self, per_sample, terms, g_pgn, teacher_out, l1, l1_per_ae, sizes, ae_norms, pgn_norm, pgn_ma, use_true) -> dict[str, float]:
        m = gradient_metrics(g_pgn, teacher_out.grad)
        out = {"train/loss": float(per_sample.detach().mean()), "train/l1": float(l1.mean()), "train/perceptual": float(teacher_out.loss.mean())}
        out.update({f"train/term_{k}": float(v.detach().mean()) for k, v in terms.items()})
        out.update({f"train/{k}": float(v.mean()) for k, v in m.items()})
        out.update({"pgn/grad_norm": pgn_norm, "pgn/grad_norm_ma": pgn_ma, "ae/true_gradient": float(use_true)})
        start = 0
        for k, n in enumerate(sizes):
            sl = slice(start, start + n)
            start += n
            out.update(
                {
                    f"ae{k}/l1": l1_per_ae[k],
                    f"ae{k}/cos": float(m["cos"][sl].mean()),
                    f"ae{k}/loss": float(per_sample[sl].detach().mean()),
                    f"ae{k}/perceptual": float(teacher_out.loss[sl].mean()),
                    f"ae{k}/grad_norm": ae_norms[k],
                    f"ae{k}/grad_norm_ma": self.ae_grad_norm_ma[k].value,
                    f"ae{k}/resets": float(self.ae_resets[k]),
                }
            )
        return out

    # ----------------------------------------------------------------------------------------------------
    def local_state(self) -> dict:
        """This rank's part of a checkpoint: autoencoders, their optimizers and averages, trackers, RNGs."""
        to_cpu = lambda sd: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}  # noqa: E731
        return {
            "autoencoders": [to_cpu(ae.state_dict()) for ae in self.autoencoders],
            "ae_optimizers": [_optimizer_to_cpu(o.state_dict()) for o in self.ae_optimizers],
            "ae_grad_norm_ma": [ma.value for ma in self.ae_grad_norm_ma],
            "plateau": [t.state_dict() for t in self.plateaus],
            "ae_resets": list(self.ae_resets),
            "skipped_images": self.skipped_images,
            "rng": ckpt.capture_rng(self.reset_rng),
            "pgn_digest": parameter_digest(self.model),
        }

    def load_local_state(self, state: dict) -> None:
        """Inverse of :meth:`local_state`."""
        for ae, sd in zip(self.autoencoders, state["autoencoders"]):
            ae.load_state_dict(sd)
        for opt, sd in zip(self.ae_optimizers, state["ae_optimizers"]):
            ckpt.load_optimizer_state(opt, sd, "autoencoder")
        for ma, value in zip(self.ae_grad_norm_ma, state["ae_grad_norm_ma"]):
            ma.value = float(value)
        for tracker, sd in zip(self.plateaus, state["plateau"]):
            tracker.load_state_dict(sd)
        self.ae_resets = [int(r) for r in state["ae_resets"]]
        self.skipped_images = int(state.get("skipped_images", 0))
        ckpt.restore_rng(state["rng"], self.reset_rng)

    def global_state(self, step: int, ranks: list[dict]) -> dict:
        """The whole checkpoint (on rank 0): shared PGN state plus every rank's local state."""
        return {
            "step": step,
            "config": self.config.to_dict(),
            "pgn_config": self.model.config.to_dict(),
            "pgn": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "pgn_optimizer": _optimizer_to_cpu(self.optimizer.state_dict()),
            "pgn_grad_norm_ma": self.grad_norm_ma.value,
            "world_size": self.ctx.world_size,
            "ranks": ranks,
            "teacher": str(self.teacher.weights),
        }

    def load_global_state(self, state: dict) -> None:
        """Restore from a checkpoint written by :meth:`global_state` (this rank takes its own part)."""
        saved, ours = dict(state["pgn_config"]), self.model.config.to_dict()
        saved.pop("preset", None), ours.pop("preset", None)
        if saved != ours:
            diff = sorted(k for k in ours if saved.get(k) != ours.get(k))
            raise PGNError(f"the checkpoint's PGN differs from this run's config in {', '.join(diff)}: use the run's config.json")
        self.model.load_state_dict(state["pgn"])
        ckpt.load_optimizer_state(self.optimizer, state["pgn_optimizer"], "PGN")
        self.grad_norm_ma.value = float(state["pgn_grad_norm_ma"])
        ranks = state["ranks"]
        self.load_local_state(ranks[self.ctx.rank % len(ranks)])

    def load_initial_files(self, files: ckpt.InitialFiles) -> None:
        """Initialize from single files (ours or the authors' formats); parts without a file keep their init."""
        if files.pgn:
            ckpt.load_pgn_weights(self.model, files.pgn)
        if files.pgn_optimizer:
            ckpt.load_optimizer_state(self.optimizer, files.pgn_optimizer, "PGN")
        for k, path in enumerate(files.autoencoders):
            if path:
                ckpt.load_module_weights(self.autoencoders[k], path, f"autoencoder {k}")
        for k, path in enumerate(files.ae_optimizers):
            if path:
                ckpt.load_optimizer_state(self.ae_optimizers[k], path, f"autoencoder {k}")

    def start(self, run_dir: Path, resume: bool) -> tuple[int, str | None]:
        """Load what the run starts from (:func:`distill.resume.starting_point`); returns (first step, its source or None)."""
        point = starting_point(self.config, run_dir, resume, self.ctx)
        if point.state is not None:
            self.load_global_state(point.state)
        if point.files is not None:
            self.load_initial_files(point.files)
        return point.step, point.source


def _optimizer_to_cpu(sd: dict) -> dict:
    state = {k: {n: t.detach().cpu() if isinstance(t, torch.Tensor) else t for n, t in v.items()} for k, v in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks when DDP keeps the PGN in sync."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# The loop


def train(config: DistillConfig, *, resume: bool = False, fresh: bool = False,
          on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Run (or continue) a distillation; every process of a torchrun job calls this with the same config.

    Args:
        config: the run's configuration (resolved here).
        resume: continue from the newest readable checkpoint in ``config.run_dir`` (a new run if the folder is
            new); never starts over in a used folder (see :mod:`distill.rundir`).
        fresh: start a new run even in a used ``run_dir``, after moving its files to ``run_dir/previous-<time>/``.
        on_step: called after every step with (completed steps, scalars); for tests and notebooks.
    """
    if resume and fresh:
        raise PGNError("--resume continues the run in --run-dir and --fresh starts it over: pass one of them")
    config = config.resolved()
    ctx = distributed.init_distributed(config.device, config.dist_backend, config.dist_init_method)
    try:
        run_dir = Path(config.run_dir)
        _on_main(lambda: check_output(run_dir, "--run-dir", folder=True), ctx)
        with contextlib.ExitStack() as held:  # one run per folder: a second one is refused, naming this PID
            _on_main(lambda: held.enter_context(hold_folder(run_dir, "pgn-distill", "--run-dir")), ctx)
            return _train(config, ctx, resume, fresh, on_step)
    finally:
        distributed.shutdown()


def _on_main(fn: Callable[[], None], ctx: distributed.DistContext) -> None:
    """Run ``fn`` on rank 0 only; a user-facing error there (see :func:`pgn.cliutils.error_line`) is raised on
    every rank as a :class:`PGNError`, so no rank waits forever."""
    problem = None
    if ctx.is_main:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - bugs re-raise below
            problem = error_line(e)
            if problem is None:
                raise
    problem = distributed.broadcast_from_main(problem)
    if problem:
        raise PGNError(problem)


def _prepare_run_dir(run_dir: Path, fresh: bool) -> None:
    """Delete files a crash cut short and, with ``fresh``, move an earlier run aside (rank 0)."""
    for path in remove_partial_files(run_dir):
        print(f"pgn-distill: removed {path.name}, a file an interrupted write left behind")
    moved = move_aside(run_dir) if fresh else None
    if moved is not None:
        print(f"pgn-distill: --fresh: the earlier run's files were moved to {moved}")


def _train(config: DistillConfig, ctx: distributed.DistContext, resume: bool, fresh: bool, on_step) -> TrainResult:
    run_dir = Path(config.run_dir)
    split = find_images(config.data, config.dataset, config.val_fraction)
    distiller = Distiller(config, ctx)
    val_images, val_skipped = validation_images(split, config.size, config.val_images, config.min_image_side, seed=config.seed)
    val = ValidationSet.from_images(val_images, seed=config.seed)
    _on_main(lambda: _prepare_run_dir(run_dir, fresh), ctx)
    start, resumed_from = distiller.start(run_dir, resume)
    total = config.total_steps
    say = print if ctx.is_main else (lambda *a, **k: None)
    say(f"pgn-distill: teacher {distiller.teacher.weights}")
    say(f"pgn-distill: data {split.describe()}; {ctx.world_size} process(es) on {ctx.device.type}, batch {config.batch_size} per process")
    if val_skipped:
        say(f"pgn-distill: warning: skipped {val_skipped} unusable held-out image(s); they are counted in val/skipped_images")
    if resumed_from:
        say(f"pgn-distill: resuming from {resumed_from} at step {start}")
    log = RunLog(run_dir, ctx.is_main, config.tensorboard, resume_step=start if resumed_from else None)
    if ctx.is_main:
        save_config(config, run_dir / "config.json")
    log.event("resume" if resumed_from else "start", step=start, teacher=str(distiller.teacher.weights), teacher_pretrained=distiller.teacher.weights.pretrained,
              world_size=ctx.world_size, device=ctx.device.type, backend=ctx.backend, data=split.describe(), checkpoint=str(resumed_from or ""))
    result = TrainResult(run_dir, start, str(distiller.teacher.weights), is_main=ctx.is_main)

    untrained = initial_pgn(config).to(ctx.device) if ctx.is_main else None

    def validate(step: int) -> None:
        if ctx.is_main:
            scores = evaluate(distiller.model, distiller.teacher, val, distiller.autoencoders, ctx.device, baseline=untrained)
            scores["val/skipped_images"] = float(val_skipped)
            log.scalars(step, scores)
            result.first_validation = result.first_validation or dict(scores, step=step)
            result.last_validation = dict(scores, step=step)

    if start < total and not resumed_from:
        validate(start)  # the "before" numbers (a resumed run has them in its metrics already)
    workers = default_workers(split.kind, ctx.world_size) if config.workers is None else config.workers
    loader = make_train_loader(split, size=config.size, batch_size=config.batch_size, min_side=config.min_image_side, start_step=start,
                               end_step=total, seed=config.seed, rank=ctx.rank, workers=workers, pin_memory=ctx.device.type == "cuda")
    stop = _StopFlag(config.time_limit_minutes)
    bar = _progress(config, ctx, start, total)
    step = start
    try:
        for images, skipped, first_bad in loader:
            t0 = time.perf_counter()
            if skipped:
                distiller.skipped_images += skipped
                if distiller.skipped_images == skipped:
                    print(f"pgn-distill: warning: skipping unusable images ({first_bad}); they are counted in data/skipped")
            scalars, tensors = distiller.train_step(images.to(ctx.device, non_blocking=True), step)
            step += 1
            scalars["time/step"] = time.perf_counter() - t0
            scalars["data/skipped"] = float(distiller.skipped_images)
            keys = sorted(scalars)
            reduced = distributed.all_reduce_mean(torch.tensor([scalars[k] for k in keys], dtype=torch.float64, device=ctx.device)).tolist()
            scalars = dict(zip(keys, reduced))
            scalars["data/skipped"] *= ctx.world_size  # a total over processes
            scalars["samples"] = step * config.batch_size * ctx.world_size
            result.last_train, result.steps = scalars, step
            if step % config.log_every == 0 or step == total:
                log.scalars(step, scalars)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{scalars['train/loss']:.3g}", cos=f"{scalars['train/cos']:.3f}",
                                val_cos=f"{result.last_validation.get('val/cos', float('nan')):.3f}")
            stopping = distributed.any_process(stop.requested(), ctx.device)
            if step == start + 1 or step % config.image_every == 0 or step == total or stopping:
                log.image_grid(step, tensors["y"], tensors["y_hat"], tensors["proxy"])
            if step % config.val_every == 0 or step == total or stopping:
                validate(step)
            if step % config.save_every == 0 or step == total or stopping:
                result.checkpoint, result.pgn_path = _save(distiller, step, split, run_dir, log)
            if on_step is not None:
                on_step(step, scalars)
            if stopping:
                result.stopped = stop.reason
                say(f"pgn-distill: stopped ({stop.reason}) after step {step}; continue with --resume")
                break
    except BaseException:
        with contextlib.suppress(Exception):  # never hide the error that ended the loop behind a closing one
            _finish(stop, bar, log)
        raise
    _finish(stop, bar, log)
    if step == start and start >= total:
        say(f"pgn-distill: nothing to do: the run is already at step {start} of {total} (raise --steps/--epochs)")
    return result


def _finish(stop: "_StopFlag", bar, log: RunLog) -> None:
    stop.restore()
    if bar is not None:
        bar.close()
    with contextlib.suppress(Exception):  # a plot is never worth failing a run for
        log.plot()
    log.close()


def _save(distiller: Distiller, step: int, split, run_dir: Path, log: RunLog) -> tuple[Path | None, Path | None]:
    ranks = distributed.gather_to_main(distiller.local_state())
    in_sync = distributed.broadcast_from_main(ranks is None or len({r["pgn_digest"] for r in ranks}) == 1)
    if not in_sync:
        raise PGNError(f"PGN weights differ between processes at step {step}: the distributed setup is broken")
    if ranks is None:
        return None, None
    meta = {"step": step, "teacher": str(distiller.teacher.weights), "data": split.describe(), "trained_with": "pgn-distill"}
    try:
        path = ckpt.write_training_state(distiller.global_state(step, ranks), run_dir, distiller.config.keep_checkpoints)
        plain = ckpt.save_plain_pgn(distiller.model, run_dir / ckpt.PLAIN_PGN_NAME, meta=meta)
    except (OSError, RuntimeError, PGNError) as e:  # pgn's atomic save raises PGNError from the OSError
        cause = os_error_in(e)
        if cause is None:
            raise
        kept = ckpt.list_checkpoints(run_dir)
        kept = f"the older checkpoints are intact (newest: {kept[-1][1].name})" if kept else "no earlier checkpoint exists"
        raise PGNError(f"could not save the step-{step} checkpoint: {describe_os_error(cause, run_dir)}; {kept}; "
                       f"continue with --resume once it is fixed") from None
    log.plot()
    return path, plain


class _StopFlag:
    """Set by SIGINT/SIGTERM or when the time limit passes; the loop stops at the next step boundary."""

    def __init__(self, minutes: float | None):
        self.deadline = time.monotonic() + 60.0 * minutes if minutes else None
        self.reason: str | None = None
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        if self.reason == "signal":  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.reason = "signal"

    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "time limit"
        return self.reason is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(config: DistillConfig, ctx: distributed.DistContext, start: int, total: int):
    if not (config.progress and ctx.is_main):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress bar is optional (pip install tqdm); metrics.jsonl has every step
        return None

    return tqdm(total=total, initial=start, desc="distill", unit="step", dynamic_ncols=True)
