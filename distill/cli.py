"""``pgn-distill``: train a Perceptual Gradient Network as in the paper (one process, or many under torchrun).

The command is a thin layer over :func:`distill.trainer.train`: options fill a :class:`DistillConfig` (on top of
``--config FILE`` or, with ``--resume``, the run's own ``config.json``) and the library does the rest. Options
left out keep the library defaults. The authors' flag names are accepted where they make sense (see
``distill/README.md`` for the table); their space-separated lists (``--ae-max-layer 0 1 2``) work too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pgn.authors import AUTHORS_HEADS
from pgn.backbones.blocks import BLOCK_TYPES, CONV_TYPES
from pgn.cliutils import run_cli
from pgn.files import write_json
from pgn.extras import require_all
from pgn.heads import GRAD_TYPES, HEAD_KINDS

from .config import DATASETS, DEVICES, LOSS_PRESETS, OPTIMIZERS, TEACHERS, DistillConfig, load_config

#: Options whose values are lists; the authors wrote them space-separated (argparse nargs='+').
LIST_OPTIONS = (
    "--ae-depths", "--ae-max-layer", "--down-channels", "--resnet-down-channels", "--up-channels",
    "--resnet-up-channels", "--ae-checkpoints", "--ae-checkpoints-opt",
)


class ListParam(click.ParamType):
    """A comma-separated list (``64,128``) of ints or strings."""

    name = "list"

    def __init__(self, cast=int):
        self.cast = cast

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [self.cast(v) for v in str(value).replace(" ", ",").split(",") if v != ""]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.cast.__name__}s", param, ctx)


def join_list_arguments(argv: list[str]) -> list[str]:
    """Rewrite ``--ae-max-layer 0 1 2`` (the authors' style) as ``--ae-max-layer 0,1,2``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg in LIST_OPTIONS:
            values = []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            out.append(",".join(values))
    return out


def _opt(*names: str, **kw):
    kw.setdefault("default", None)
    kw.setdefault("show_default", False)
    return click.option(*names, **kw)


OPTIONS = [
    # model
    _opt("--backbone", metavar="PRESET", help="PGN preset: resnet4 (default), resnet6, resnet8, unet, or a head variant like resnet4-hybrid."),
    _opt("--pgn-arch", type=click.Choice(["resnet", "unet"], case_sensitive=False), help="Authors' flag: resnet (8 blocks unless --num-blocks) or unet."),
    _opt("--num-blocks", "--resnet-num-blocks", type=int, help="Residual blocks of a ResNet backbone."),
    _opt("--down-channels", "--resnet-down-channels", type=ListParam(), help="ResNet stem + stride-2 widths, e.g. 64,128."),
    _opt("--up-channels", "--resnet-up-channels", type=ListParam(), help="ResNet upsampling widths, e.g. 64."),
    _opt("--head", type=click.Choice(HEAD_KINDS), help="Gradient head (default: the preset's, constrained)."),
    _opt("--pgn-backbone-to-grad", type=click.Choice(sorted({to_grad for to_grad, _ in AUTHORS_HEADS})), help="Authors' flag; with --pgn-proxy-type picks the head."),
    _opt("--pgn-proxy-type", type=click.Choice(sorted({proxy for _, proxy in AUTHORS_HEADS})), help="Authors' flag; with --pgn-backbone-to-grad picks the head."),
    _opt("--grad-scale", "--pgn-proxy-grad-scale", type=float, help="1/α of the head (0.025 for ResNets, 0.048 for the UNet)."),
    _opt("--beta", "--pgn-proxy-sigmoid-scale", type=float, help="β of the constrained proxy (1.1)."),
    _opt("--out-scale", "--pgn-out-scale", type=float, help="1/γ of the direct/hybrid heads (512)."),
    _opt("--grad-type", "--pgn-proxy-grad-type", type=click.Choice(GRAD_TYPES), help="Per-sample loss towards the proxy (mse)."),
    # teacher
    _opt("--teacher", "--ploss-model", type=click.Choice(TEACHERS), help="Perceptual network to imitate (vgg19)."),
    _opt("--vgg-weights", metavar="imagenet|random|PATH", help="Teacher weights: imagenet (default, torchvision), random (mechanics only) or a state-dict file."),
    _opt("--teacher-seed", type=int, help="Seed of random teacher weights (0)."),
    # data
    _opt("--data", "--data-dir", metavar="PATH|samples", help="Training images: 'samples' (bundled photos, default), a folder, an ImageNet or FFHQ root."),
    _opt("--dataset", "--dataset-name", type=click.Choice(DATASETS, case_sensitive=False), help="Layout of --data (auto-detected)."),
    _opt("--size", type=int, help="Training crop size (224)."),
    _opt("--batch-size", "--worker-batch-size", type=int, help="Images per process and step (48)."),
    _opt("--workers", "-j", type=int, help="Data-loading processes per training process (0 for samples, else up to 4)."),
    _opt("--min-image-side", type=int, help="Skip (and count) images whose shorter side is smaller (32)."),
    _opt("--val-images", type=int, help="Held-out pairs for the validation metrics (16)."),
    _opt("--val-fraction", type=float, help="Share of a plain image folder held out (0.02)."),
    # schedule
    _opt("--epochs", type=int, help="End epoch (330, the published ResNet-4 run)."),
    _opt("--batches-per-epoch", "--batches-per-train-epoch", type=int, help="Steps per epoch (512)."),
    _opt("--steps", type=int, help="Total steps (overrides --epochs)."),
    _opt("--time-limit", "time_limit_minutes", type=float, metavar="MINUTES", help="Stop cleanly with a checkpoint after this long."),
    _opt("--debug", is_flag=True, default=False, help="Authors' flag: 8 steps per epoch, a checkpoint every epoch."),
    # PGN optimization
    _opt("--lr", type=float, help="PGN Adam learning rate (1e-3)."),
    _opt("--pgn-optimizer", type=click.Choice(OPTIMIZERS), help="PGN optimizer (adam)."),
    _opt("--pgn-sgd-lr", type=float, help="SGD learning rate (1.0)."),
    _opt("--pgn-grad-norm-avg", type=float, help="Initial moving average of the PGN grad norm (200)."),
    _opt("--pgn-grad-norm-clip-coef", type=float, help="Clip the PGN grad norm at this × its average (5)."),
    # meta-loss
    _opt("--loss-preset", type=click.Choice(sorted(LOSS_PRESETS)), help="reference (VGG 0.2, L1 0.5: the published run, default) or paper (0.5, 0.2)."),
    _opt("--grad-weight", "--pgn-loss-grad-coef", type=float, help="λ_grad (1)."),
    _opt("--vgg-weight", "--pgn-loss-proxy-prc-gt-coef", type=float, help="λ_VGG of VGG(P, y) (preset)."),
    _opt("--l1-weight", "--pgn-loss-proxy-l1-gt-coef", type=float, help="λ_L1 of L1(P, y) (preset)."),
    _opt("--mse-gt-weight", "--pgn-loss-proxy-mse-gt-coef", type=float, help="λ of MSE(P, y) (0)."),
    _opt("--mse-gen-weight", "--pgn-loss-proxy-mse-gen-coef", type=float, help="λ of MSE(P, ŷ) (0)."),
    _opt("--grad-loss-scale", "--loss-scale", type=float, help="S in S·mean(g_PGN − g_true)² (2^26)."),
    _opt("--pgn-loss-proxy-prc-gt", is_flag=True, default=False, help="Authors' flag: VGG(P, y) term on (it is on by default)."),
    _opt("--pgn-loss-proxy-l1-gt", is_flag=True, default=False, help="Authors' flag: L1(P, y) term on (it is on by default)."),
    _opt("--pgn-loss-proxy-mse-gt", is_flag=True, default=False, help="Authors' flag: MSE(P, y) term on with weight 1 unless given."),
    _opt("--pgn-loss-proxy-mse-gen", is_flag=True, default=False, help="Authors' flag: MSE(P, ŷ) term on with weight 1000 unless given."),
    # autoencoders
    _opt("--ae-depths", "--ae-max-layer", type=ListParam(), help="One autoencoder per depth (0,1,2)."),
    _opt("--ae-block-type", type=click.Choice(BLOCK_TYPES), help="Autoencoder block (doubleblaze)."),
    _opt("--ae-conv-type", type=click.Choice(CONV_TYPES), help="Autoencoder conv (sep)."),
    _opt("--ae-lr", type=float, help="Autoencoder Adam learning rate (1e-3)."),
    _opt("--ae-grad-norm-avg", type=float, help="Initial moving average of each autoencoder's grad norm (200)."),
    _opt("--ae-grad-norm-clip-coef", type=float, help="Clip at this × the average (5)."),
    _opt("--ae-shared-grad-norm-ma", is_flag=True, default=None, help="Reproduce the authors' bug: one average shared by all autoencoders."),
    _opt("--ae-min-samples-before-reset", type=int, help="Plateau length in global samples before resets may fire (300000)."),
    _opt("--ae-reset-prob", type=float, help="Per-step reset probability after the plateau (0.01)."),
    _opt("--ae-l1-hi-reset-threshold", type=float, help="Reset at once when the reconstruction L1 exceeds this (1000)."),
    _opt("--warmup-epochs", type=int, help="Direct/hybrid heads: epochs of true-gradient autoencoder training (0)."),
    _opt("--no-alternate-gt-curr", "alternate_gt", flag_value=False, default=None, help="Direct/hybrid heads: never use true gradients after warm-up."),
    # initialization
    _opt("--start-epoch", type=int, help="First epoch (with --pgn-checkpoint and friends)."),
    _opt("--resume-dir", metavar="DIR", help="Authors' resume: directory with <epoch>.pth, <epoch>_opt.pth, <epoch>_ae_<k>[_opt].pth."),
    _opt("--resume-epoch", type=int, help="Authors' resume: the epoch to load (training continues at the next one)."),
    _opt("--pgn-checkpoint", metavar="FILE", help="Initial PGN weights (ours or the authors' formats)."),
    _opt("--pgn-checkpoint-opt", metavar="FILE", help="Initial PGN optimizer state."),
    _opt("--ae-checkpoints", type=ListParam(str), metavar="F0,F1,F2", help="Initial autoencoder weights, one per autoencoder ('None' = fresh)."),
    _opt("--ae-checkpoints-opt", type=ListParam(str), metavar="F0,F1,F2", help="Initial autoencoder optimizer states."),
    # run
    _opt("--run-dir", metavar="DIR", help="Output directory (runs/<backbone>)."),
    _opt("--resume", is_flag=True, default=False, help="Continue from the newest readable checkpoint in --run-dir (a new run in a new folder); never starts over in a used one."),
    _opt("--fresh", is_flag=True, default=False, help="Start over in a used --run-dir: its files are first moved to <run-dir>/previous-<time>/."),
    _opt("--config", "config_file", type=click.Path(path_type=Path), help="Start from this config.json (CLI options win)."),
    _opt("--seed", type=int, help="Seed, the same on every process (42)."),
    _opt("--device", type=click.Choice(DEVICES), help="auto: cuda:LOCAL_RANK when available, else CPU."),
    _opt("--dist-backend", type=click.Choice(["nccl", "gloo"]), help="Process-group backend (NCCL on GPUs, gloo on CPU)."),
    _opt("--dist-init-method", help="Process-group init URL (env://, set by torchrun)."),
    _opt("--no-distributed", is_flag=True, default=False, help="Authors' flag: insist on a single process."),
    _opt("--world-size", type=int, help="Authors' flag: expected number of processes (torchrun sets it)."),
    _opt("--log-every", type=int, help="Write training scalars every N steps (1)."),
    _opt("--val-every", type=int, help="Held-out validation every N steps (one epoch)."),
    _opt("--image-every", type=int, help="Image grid every N steps (one epoch)."),
    _opt("--save-every", type=int, help="Checkpoint every N steps (one epoch)."),
    _opt("--save-each", type=int, help="Authors' flag: checkpoint every N epochs."),
    _opt("--keep-checkpoints", type=int, help="Training-state files to keep (3)."),
    _opt("--tensorboard", is_flag=True, default=None, help="Also write TensorBoard logs to <run-dir>/tb."),
    _opt("--no-progress", "progress", flag_value=False, default=None, help="No progress bar."),
    _opt("--tqdm", is_flag=True, default=False, help="Authors' flag (progress bars are on by default)."),
    _opt("--eval-only", "--valid-only", is_flag=True, default=False, help="Only measure the held-out metrics of --pgn-checkpoint (or of a fresh PGN) and exit."),
    _opt("--json", "json_path", type=click.Path(path_type=Path), help="Write a summary as JSON here ('-' for stdout)."),
]

#: CLI-only options: handled here, never passed to the config as they are.
_CLI_ONLY = {"pgn_arch", "pgn_backbone_to_grad", "pgn_proxy_type", "debug", "pgn_loss_proxy_prc_gt", "pgn_loss_proxy_l1_gt",
             "pgn_loss_proxy_mse_gt", "pgn_loss_proxy_mse_gen", "resume", "fresh", "config_file", "no_distributed", "world_size",
             "save_each", "tqdm", "eval_only", "json_path"}


def _decorate(fn):
    for option in reversed(OPTIONS):
        fn = option(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@_decorate
def command(**kw: Any) -> None:
    """Distill a PGN from the VGG perceptual loss with surrogate autoencoders (paper §3, authors' recipe).

    Runs on one CPU or GPU as it is, and on many GPUs (or CPU processes) under torchrun, one process per
    device. Writes <run-dir>/config.json, metrics.jsonl, curves.png, images/, checkpoints/ and pgn.pt
    (load it with pgn.load). The teacher's weights are printed at the start of every run.

    Bad input: one line, exit 1 (usage errors 2), before the run folder is touched. One run per --run-dir at a
    time (a second is refused, naming the first's PID); every file is written whole; --resume stays exact.

    \b
    Examples:
      pgn-distill --backbone resnet4 --vgg-weights random --size 64 --batch-size 12 --steps 300
      pgn-distill --backbone resnet4 --data /data/ImageNet --run-dir runs/r4
      pgn-distill --run-dir runs/r4 --resume
      pgn-distill --run-dir runs/r4 --fresh --steps 1000    # start over; the old run goes to runs/r4/previous-<time>/
      torchrun --standalone --nproc_per_node 8 -m distill.cli --backbone resnet8 --batch-size 44 --data /data/ImageNet
      pgn-distill --eval-only --pgn-checkpoint runs/r4/pgn.pt --vgg-weights random --size 64
    """
    run_cli(lambda: _run(kw), files={"--json": kw["json_path"]})


def build_config(kw: dict[str, Any]) -> DistillConfig:
    """Merge ``--config`` (or the run's config.json when resuming) with the options that were given."""
    given = {k: v for k, v in kw.items() if v is not None and k not in _CLI_ONLY}
    base = DistillConfig()
    run_dir = given.get("run_dir")
    if kw.get("config_file") is not None:
        base = load_config(kw["config_file"])
    elif kw.get("resume") and run_dir and (Path(run_dir) / "config.json").is_file():
        base = load_config(Path(run_dir) / "config.json")
    if kw.get("pgn_arch"):
        arch = kw["pgn_arch"].lower()
        given.setdefault("backbone", "unet" if arch == "unet" else "resnet8")
        if arch == "resnet" and "num_blocks" not in given:
            given["num_blocks"] = 8
    if kw.get("pgn_backbone_to_grad") or kw.get("pgn_proxy_type"):
        pair = (kw.get("pgn_backbone_to_grad") or "proxy", kw.get("pgn_proxy_type") or "sigmoid")
        if pair not in AUTHORS_HEADS:
            raise click.BadParameter(f"--pgn-backbone-to-grad {pair[0]} with --pgn-proxy-type {pair[1]} is not a supported head")
        given.setdefault("head", AUTHORS_HEADS[pair])
    if kw.get("pgn_loss_proxy_mse_gt"):
        given.setdefault("mse_gt_weight", 1.0)
    if kw.get("pgn_loss_proxy_mse_gen"):
        given.setdefault("mse_gen_weight", 1000.0)
    if kw.get("debug"):
        given.setdefault("batches_per_epoch", 8)
        given.setdefault("save_every", given["batches_per_epoch"])
    if kw.get("save_each"):
        bpe = given.get("batches_per_epoch", base.batches_per_epoch)
        given.setdefault("save_every", kw["save_each"] * bpe)
    if "dataset" in given:
        given["dataset"] = given["dataset"].lower()
    if kw.get("no_distributed") or kw.get("world_size") is not None:
        _check_world_size(kw)
    values = dict(base.to_dict(), **given)
    return DistillConfig.from_dict(values)


def _check_world_size(kw: dict[str, Any]) -> None:
    import os

    running = int(os.environ.get("WORLD_SIZE", "1"))
    if kw.get("no_distributed") and running > 1:
        raise click.UsageError(f"--no-distributed, but launched as {running} processes: drop one or the other")
    wanted = kw.get("world_size")
    if wanted is not None and wanted != running:
        raise click.UsageError(
            f"--world-size {wanted} but {running} process(es) are running: start the processes with "
            f"torchrun --nproc_per_node {wanted} -m distill.cli ... (the world size comes from torchrun)"
        )


def _run(kw: dict[str, Any]) -> None:
    require_all(("matplotlib", "skimage"), "pgn-distill", "distill")
    from .trainer import train
    from .validation import evaluate_pgn

    config = build_config(kw)
    if kw["eval_only"]:
        scores = evaluate_pgn(config, config.pgn_checkpoint)
        click.echo(f"teacher: {scores['teacher']}")
        _print_table("held-out metrics", {k: v for k, v in scores.items() if k != "teacher"})
        write_json({"config": config.resolved().to_dict(), "validation": scores}, kw["json_path"])
        return
    result = train(config, resume=kw["resume"], fresh=kw["fresh"])
    summary = {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "teacher": result.teacher,
        "stopped": result.stopped,
        "first_validation": result.first_validation,
        "last_validation": result.last_validation,
        "last_train": result.last_train,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "pgn": str(result.pgn_path) if result.pgn_path else None,
    }
    if result.is_main:
        rows = {"steps": result.steps}
        for key in ("val/cos", "val/ae_cos", "val/rel_err"):
            if key in result.first_validation:
                rows[f"{key} at step {result.first_validation['step']}"] = result.first_validation[key]
            if key in result.last_validation:
                rows[f"{key} at step {result.last_validation['step']}"] = result.last_validation[key]
        rows["pgn checkpoint"] = str(result.pgn_path or "(none written)")
        _print_table(f"pgn-distill: {result.run_dir}", rows)
        write_json(summary, kw["json_path"])
    if result.stopped == "signal":
        sys.exit(130)


def _print_table(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``pgn-distill``)."""
    argv = join_list_arguments(list(sys.argv[1:] if argv is None else argv))
    command.main(args=argv, prog_name="pgn-distill")


if __name__ == "__main__":
    main()
