"""``pgn-demo``: fit generators with a PGN instead of VGG — few-shot fine-tuning, Deep Image Prior, inversion.

Every subcommand is a thin wrapper around ``demos.<name>.run_<name>`` with the same argument names; options left
out keep the library's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from pgn.cliutils import FiniteFloat, run_cli
from pgn.files import write_json
from pgn.extras import require_all

from .common import VGG_WEIGHT_CHOICES
from .dip import HEAD_PRESETS, PARTS
from .losses import DEFAULT_LOSSES, LOSS_KEYS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


# --------------------------------------------------------------------------------------------------------
# Parameter types and shared options (defined once, stacked on every subcommand)


class CommaList(click.ParamType):
    """``a,b,c`` → tuple of items converted by ``convert_item`` (and checked against ``choices`` if given)."""

    def __init__(self, item_type: Callable[[str], Any] = str, choices: tuple[str, ...] | None = None, length: int | None = None, name: str = "LIST"):
        self.item_type, self.choices, self.length, self.name = item_type, choices, length, name

    def convert(self, value, param, ctx):  # noqa: D102
        if isinstance(value, tuple):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        try:
            out = tuple(self.item_type(v) for v in items)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.item_type.__name__} values", param, ctx)
        if self.choices is not None:
            bad = [v for v in out if v not in self.choices]
            if bad:
                self.fail(f"unknown value(s) {', '.join(bad)}: choose from {', '.join(self.choices)}", param, ctx)
        if self.length is not None and len(out) != self.length:
            self.fail(f"{value!r} needs exactly {self.length} comma-separated values", param, ctx)
        if not out:
            self.fail("an empty list is not allowed", param, ctx)
        return out


class HeadCheckpoint(click.ParamType):
    """``HEAD=PATH`` for the DIP stability heads."""

    name = "HEAD=PATH"

    def convert(self, value, param, ctx):  # noqa: D102
        if isinstance(value, tuple):
            return value
        head, sep, path = str(value).partition("=")
        if not sep or head not in HEAD_PRESETS:
            self.fail(f"{value!r}: use HEAD=PATH with HEAD one of {', '.join(HEAD_PRESETS)}", param, ctx)
        if path != "paper" and not Path(path).is_file():
            self.fail(f"checkpoint file not found: {path}", param, ctx)
        return head, path


def _check_vgg_weights(ctx, param, value):
    if value is None or value in VGG_WEIGHT_CHOICES or Path(value).is_file():
        return value
    raise click.BadParameter(f"{value!r} is neither {', '.join(VGG_WEIGHT_CHOICES)} nor an existing weights file")


def _check_pgn_checkpoint(ctx, param, value):
    if value is None or value == "paper" or Path(value).is_file():
        return value
    raise click.BadParameter(f"checkpoint file not found: {value} (pass a pgn-distill checkpoint, the authors' file, or 'paper')")


def _preset_choice() -> click.Choice:
    import pgn

    return click.Choice(pgn.list_presets())


COMMON_OPTIONS = [
    click.option("--output", "-o", "output_dir", type=click.Path(path_type=Path), help="Output folder for results.json, results.md and images (default: pgn-runs/<demo>)."),
    click.option("--size", type=click.IntRange(8, 4096), help="Image height and width in pixels (default: 64)."),
    click.option("--seed", type=int, help="Seed of initializations, frames and noise (default: 0)."),
    click.option("--vgg-weights", metavar="|".join(VGG_WEIGHT_CHOICES) + "|PATH", callback=_check_vgg_weights,
                 help="VGG teacher weights. auto (default): ImageNet if cached in the torch hub folder, else random with a loud warning."),
    click.option("--pgn-checkpoint", metavar="PATH|paper", callback=_check_pgn_checkpoint,
                 help="Trained PGN (pgn-distill output or the authors' file; 'paper' = released file in the cache). Default: untrained, with a loud warning."),
    click.option("--pgn-preset", type=_preset_choice(), help="PGN preset (default: resnet4). Sizes must be multiples of 2 (ResNet) or 32 (UNet)."),
    click.option("--threads", type=click.IntRange(1, 256), help="torch CPU threads (default: torch's choice)."),
    click.option("--measure-memory/--no-measure-memory", default=None, help="Measure peak memory of the loss part and of the whole step (Linux; default: on)."),
    click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: on)."),
    click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write results.json's content here ('-' for stdout)."),
]


def stacked(options: list):
    """One decorator applying ``options`` in the order listed (as they appear in ``--help``)."""

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


#: The options every demo shares.
common_options = stacked(COMMON_OPTIONS)


def fitting_options(lr: str, pgn_mse_weight: str, vgg_mse_weight: str):
    """``--lr``, ``--pgn-mse-weight`` and ``--vgg-mse-weight``, with the demo's defaults (as the help states them)."""
    return stacked([
        click.option("--lr", type=FiniteFloat(0, min_open=True), help=f"Adam learning rate (default: {lr})."),
        click.option("--pgn-mse-weight", type=FiniteFloat(0), help=f"λ_MSE with the PGN (default: {pgn_mse_weight})."),
        click.option("--vgg-mse-weight", type=FiniteFloat(0), help=f"λ_MSE with VGG (default: {vgg_mse_weight})."),
    ])


def image_options(default: str, count: str):
    """``--images DIR`` and ``--num-images``: the targets of a demo that fits images."""
    return stacked([
        click.option("--images", "images_dir", type=click.Path(path_type=Path), help=f"Folder of target images (default: {default})."),
        click.option("--num-images", type=click.IntRange(1), help=count),
    ])


def run_demo(config_cls, run_fn, *, threads: int | None, json_path: Path | None, **kwargs) -> None:
    """Build the config from the given options (``None`` = library default), run the demo, print and save results."""

    def body() -> None:
        require_all(("matplotlib", "psutil", "tqdm", "skimage"), "pgn-demo", "demos")
        import torch
        from rich.console import Console

        from .report import print_warnings

        if threads:
            torch.set_num_threads(threads)
        config = config_cls(**{k: v for k, v in kwargs.items() if v is not None})
        out, err = Console(), Console(stderr=True)
        report = run_fn(config, console=err)
        report.print(out)
        print_warnings(err, report.warnings)
        out.print(f"results: {config.output_dir / 'results.json'}, {config.output_dir / 'results.md'}; run time {report.elapsed_s:.1f} s")
        write_json(report.to_dict(), json_path)

    output_dir = kwargs.get("output_dir") or config_cls.output_dir
    run_cli(body, files={"--json": json_path}, folders={"--output": output_dir})


# --------------------------------------------------------------------------------------------------------
# Commands


@click.group(context_settings=CONTEXT)
def main() -> None:
    """Fit generators with a Perceptual Gradient Network instead of a VGG perceptual loss (paper §4).

    Each demo compares losses from one generator initialization and writes results.json, results.md, image grids
    and plots into --output. Without --pgn-checkpoint the PGN is untrained, and without cached ImageNet VGG weights
    the teacher is random: the demo then warns loudly, because its numbers only show the mechanics.

    Bad input: one line, exit 1 (usage errors 2). Results are written whole (devices such as /dev/null in place).

    \b
    Examples:
      pgn-demo finetune --output out/finetune
      pgn-demo dip --pgn-checkpoint runs/resnet4/pgn.pt --vgg-weights imagenet
      pgn-demo invert --generator my_stylegan.py:load_generator --latent-shape 14,512
    """


@main.command(context_settings=CONTEXT)
@common_options
@click.option("--frames", "frames_dir", type=click.Path(path_type=Path), help="Folder of one person's frames (sorted: train, then holdout). Default: posed crops of the bundled portrait.")
@click.option("--train-frames", type=click.IntRange(1), help="Frames to fine-tune on (default: 8, as the paper).")
@click.option("--holdout-frames", type=click.IntRange(1), help="Frames to evaluate on (default: 8).")
@click.option("--steps", type=click.IntRange(1), help="Fine-tuning steps T (default: 50, as the paper).")
@fitting_options(lr="5e-5, as the paper", pgn_mse_weight="20", vgg_mse_weight="0")
@click.option("--losses", type=CommaList(choices=LOSS_KEYS),
              help=f"Losses to compare, from {','.join(LOSS_KEYS)} (default: {','.join(DEFAULT_LOSSES)}; pgn-ort-train "
                   "needs onnxruntime-training; pgn-executorch-train needs executorch).")
@click.option("--executorch-lr", type=FiniteFloat(0, min_open=True), help="SGD learning rate of the pgn-executorch-train row (default: 5e-5).")
@click.option("--executorch-kernels", type=click.Choice(["xnnpack", "portable"]),
              help="Kernels of the pgn-executorch-train program: xnnpack (default; PGN and generator matmuls in XNNPACK) "
                   "or portable (ExecuTorch's portable kernels only: ~100x slower, less memory).")
@click.option("--executorch-precision", type=click.Choice(["fp32", "int8"]),
              help="Precision of the frozen PGN inside the pgn-executorch-train program: fp32 (default) or int8 (its "
                   "convolutions quantized as pgn-export --target executorch --precision int8 does; xnnpack kernels only).")
@click.option("--meta-steps", type=click.IntRange(0), help="Meta-training episodes of the generator (default: 200).")
@click.option("--generator-checkpoint", type=click.Path(path_type=Path), help="Reuse a meta_trained_generator.pt from an earlier run.")
def finetune(**kwargs) -> None:
    """Few-shot fine-tuning of a talking-head style generator, including the on-device path.

    A pose-conditioned generator is meta-trained on the bundled photographs, personalized to a person from the
    train frames, and fine-tuned with MSE, VGG-19, VGG-11, the PGN in PyTorch and the PGN exported to ONNX and run
    in ONNX Runtime (trained through a weighted MSE towards the runtime's proxy: no VGG, no autograd through the
    PGN). Two more rows run the whole training step on an on-device trainer: ONNX Runtime training
    (pgn-ort-train) and ExecuTorch's training runtime (pgn-executorch-train: generator, frozen PGN, loss,
    backward and SGD in one .pte program). Reports time and peak memory of the whole training step for every row
    and of the loss part for the eager rows, train/holdout metrics and gradient cosine to VGG-19.

    \b
    Examples:
      pgn-demo finetune
      pgn-demo finetune --frames my_face_frames/ --pgn-checkpoint resnet4.pt --vgg-weights imagenet
      pgn-demo finetune --losses mse,pgn,pgn-onnx --steps 100 --lr 1e-4 --json finetune.json
      pgn-demo finetune --losses vgg19,vgg11,pgn,pgn-executorch-train
    """
    from .finetune import FinetuneConfig, run_finetune

    run_demo(FinetuneConfig, run_finetune, **kwargs)


@main.command(context_settings=CONTEXT)
@common_options
@image_options("the bundled photographs", "Images in the quality part (default: 2; paper: 400).")
@click.option("--iterations", type=click.IntRange(1), help="Iterations T of the quality part (default: 150; paper: 3000).")
@fitting_options(lr="0.01", pgn_mse_weight="0", vgg_mse_weight="0")
@click.option("--input-noise-prob", type=FiniteFloat(0, 1), help="Probability that a run adds per-step input noise (default: 0, as the published evaluation).")
@click.option("--need-sigmoid/--no-sigmoid", default=None, help="Sigmoid at the skip net's output (default: off, as the authors' code).")
@click.option("--eval-every", type=click.IntRange(1), help="Iterations between points of the quality curves (default: 10).")
@click.option("--parts", type=CommaList(choices=PARTS), help=f"Which parts to run (default: {','.join(PARTS)}).")
@click.option("--stability-images", type=click.IntRange(1), help="Images per head in the stability part (default: 2; paper: 100).")
@click.option("--stability-iterations", type=click.IntRange(1), help="Maximum iterations per stability run (default: 150; paper: 10000).")
@click.option("--divergence-threshold", type=FiniteFloat(1, min_open=True, allow_inf=True), help="Divergence when PL >= this × the initial PL (default: 2; 'inf' disables).")
@click.option("--patience", type=click.IntRange(1), help="Stagnation patience in iterations (default: 50; paper: 2000).")
@click.option("--head-checkpoint", "head_checkpoints", type=HeadCheckpoint(), multiple=True, help="Trained PGN for a stability head, e.g. direct=ckpt.pt (repeat for proxy, constrained).")
def dip(**kwargs) -> None:
    """Deep Image Prior: reconstruction quality (PGN vs VGG-19 vs MSE) and the stability of PGN heads.

    Quality (paper Table 2): three students from one skip-net initialization. Stability (paper Table 5): fitting
    with direct-gradient, unconstrained-proxy and constrained-proxy PGNs, stopped on divergence (PL >= 2× initial)
    or stagnation; counts per outcome. Defaults are sized for a laptop CPU; flags give the paper's settings.

    \b
    Examples:
      pgn-demo dip
      pgn-demo dip --parts quality --size 224 --iterations 3000 --num-images 10 --pgn-checkpoint resnet4.pt
      pgn-demo dip --parts stability --stability-iterations 10000 --patience 2000 \\
          --head-checkpoint direct=r8_direct.pt --head-checkpoint proxy=r8_proxy.pt --head-checkpoint constrained=r8.pt
    """
    from .dip import DipConfig, run_dip

    kwargs["head_checkpoints"] = dict(kwargs["head_checkpoints"]) or None
    run_demo(DipConfig, run_dip, **kwargs)


@main.command(context_settings=CONTEXT)
@common_options
@image_options("the bundled portrait's face and photographs", "Targets inverted jointly (default: 2).")
@click.option("--generator", metavar="MODULE:ATTR|FILE.py:ATTR", help="Your generator: an nn.Module (or a function building one) mapping latents to images. Default: the built-in one.")
@click.option("--latent-shape", type=CommaList(int, name="SHAPE"), help="Latent shape per image for --generator, e.g. 14,512.")
@click.option("--output-range", type=CommaList(float, length=2, name="LOW,HIGH"), help="Generator output range (default: -1,1 as StyleGAN).")
@click.option("--latent-init", type=click.Choice(["mean", "zeros", "randn"]), help="Start latent: mean (the module's mean_latent(), else zeros), zeros, randn (default: mean).")
@click.option("--train-steps", type=click.IntRange(0), help="Training steps of the built-in generator (default: 200).")
@click.option("--prefit-steps", type=click.IntRange(0), help="MSE-only pre-fit steps T0 (default: 100; paper: 5000).")
@click.option("--steps", type=click.IntRange(1), help="Steps T per loss after the pre-fit (default: 100; paper: 1000).")
@fitting_options(lr="0.01", pgn_mse_weight="20", vgg_mse_weight="1")
def invert(**kwargs) -> None:
    """Generator inversion (Image2StyleGAN protocol): MSE pre-fit, then MSE vs VGG-19 + MSE vs PGN + 20·MSE.

    \b
    Examples:
      pgn-demo invert
      pgn-demo invert --images faces/ --num-images 4 --pgn-checkpoint resnet4.pt
      pgn-demo invert --generator stylegan_wrapper.py:build --latent-shape 14,512 --output-range -1,1 --size 256
    """
    from .invert import InvertConfig, run_invert

    run_demo(InvertConfig, run_invert, **kwargs)


if __name__ == "__main__":  # pragma: no cover
    main()
