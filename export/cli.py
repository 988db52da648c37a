"""``pgn-export``: write a PGN (backbone + head) as an artifact of any export target (:data:`export.FORMATS`), each verified."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pgn.cliutils import FiniteFloat, describe_os_error, run_cli
from pgn.files import write_json
from pgn.errors import PGNError
from pgn.heads import HEAD_KINDS

from .int8 import INT8_OPS
from .formats import FORMATS, precisions, resolve_targets
from .training import LOSS_KINDS
from .training import TARGET_NAME as TRAINING_TARGET
from .options import OPSET_RANGE

BACKBONES = ("resnet4", "resnet6", "resnet8", "unet")
TARGET_CHOICES = "|".join([*FORMATS, "all", TRAINING_TARGET])
DEFAULT_PRECISIONS = ", ".join(f"{t.default_precision} for {t.name}" for t in FORMATS.values())


def _check_target(ctx, param, value: str) -> str:
    if value.lower() == TRAINING_TARGET:
        return TRAINING_TARGET
    try:
        resolve_targets(value)
    except PGNError as e:
        raise click.BadParameter(str(e)) from None
    return value.lower()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--backbone", type=click.Choice(BACKBONES), help="Paper preset to export (optional with --checkpoint).")
@click.option("--target", default="onnx", show_default=True, callback=_check_target, metavar=TARGET_CHOICES,
              help=f"Artifact format; 'all' writes every one and prints a table; '{TRAINING_TARGET}' writes a generator's "
                   "fitting step (needs --generator and --loss).")
@click.option("--checkpoint", type=click.Path(path_type=Path), metavar="PATH",
              help="Weights to export (ours or the authors'). Without it: random weights, said loudly.")
@click.option("--head", type=click.Choice(HEAD_KINDS), help="Gradient head (default: the preset's, constrained).")
@click.option("--size", nargs=2, type=int, metavar="H W", help="Input height and width (default 224 224).")
@click.option("--batch", type=click.IntRange(1), help="Batch size (default 1).")
@click.option("--dynamic", is_flag=True, help="Dynamic batch/height/width (TensorRT/CoreML: bounded ranges).")
@click.option("--precision", type=click.Choice(precisions()), help=f"Default: {DEFAULT_PRECISIONS}.")
@click.option("--output", "output_dir", type=click.Path(path_type=Path), default=Path("exports"),
              show_default=True, metavar="DIR", help="Folder for artifacts and manifests.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the results as JSON here ('-' for stdout).")
@click.option("--opset", type=click.IntRange(*OPSET_RANGE), help="ONNX opset (ONNX, TensorRT); default: the exporter's.")
@click.option("--legacy-exporter", is_flag=True, help="Use the TorchScript ONNX exporter instead of dynamo.")
@click.option("--min-size", nargs=2, type=int, metavar="H W", help="Smallest input of a --dynamic TensorRT/CoreML artifact.")
@click.option("--max-size", nargs=2, type=int, metavar="H W", help="Largest input of a --dynamic TensorRT/CoreML artifact.")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch of a --dynamic TensorRT/CoreML artifact.")
@click.option("--workspace-gb", type=FiniteFloat(0, min_open=True), help="TensorRT builder workspace limit (default 4).")
@click.option("--timing-cache", type=click.Path(path_type=Path), metavar="PATH",
              help="TensorRT timing cache (default: DIR/tensorrt-timing.cache).")
@click.option("--tf32", is_flag=True, help="TensorRT: allow TF32 math in fp32 layers (faster; fails fp32 parity, so off by default).")
@click.option("--deployment-target", metavar="NAME", help="CoreML minimum deployment target (default iOS16).")
@click.option("--int8-ops", type=click.Choice(list(INT8_OPS)),
              help="int8: what is quantized: " + "; ".join(f"{k}: {v}" for k, v in INT8_OPS.items())
                   + ". Default: " + ", ".join(f"{t.default_int8_ops} for {t.name}" for t in FORMATS.values() if t.int8_ops) + ".")
@click.option("--graph-options", metavar="LIST",
              help="How the graph computes the backbone, e.g. 'band_rows=16,decoder_conv=split' or 'plain' "
                   "(names: band_rows, band_levels, decoder_conv, upsample_conv; see export/README.md).")
@click.option("--generator", "generator_path", type=click.Path(dir_okay=False, path_type=Path), metavar="PT2",
              help=f"{TRAINING_TARGET}: the generator, saved with torch.export.save (its example inputs fix the shapes).")
@click.option("--loss", type=click.Choice(LOSS_KINDS), help=f"{TRAINING_TARGET}: the frozen loss (pgn: the --backbone/--checkpoint PGN).")
@click.option("--mse-weight", type=FiniteFloat(0), help=f"{TRAINING_TARGET}: λ of the normalized-space MSE to the target (default 0; mse: 1).")
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=1e-3, show_default=True, help=f"{TRAINING_TARGET}: SGD learning rate.")
@click.option("--vgg-weights", default="imagenet", show_default=True, metavar="imagenet|random|PATH",
              help=f"{TRAINING_TARGET}: weights of the vgg19/vgg11 loss.")
@click.option("--verify-on", "verify_on", type=click.Choice(["arm"]),
              help="Also run ExecuTorch/ONNX artifacts on emulated aarch64 CPUs (QEMU; builds a cached environment "
                   "of ~2 GB on first use) against this machine, and record it in the manifest.")
def main(**kwargs) -> None:
    """Export a PGN with its gradient head to an export target (--target), verified against PyTorch.

    Each artifact takes y_hat and y ((N, 3, H, W) RGB in [0, 1]) and returns the proxy P and the gradient
    (fp16 artifacts: a residual the host scales in fp32; see the manifest). A manifest.json with the model,
    constants, versions, sha256 and parity numbers is written beside it. Exit status 0 only if every target
    was written and passed its checks.

    Bad input: one line, exit 1 (usage errors 2); a failed target leaves nothing behind. One export per --output
    folder at a time (a second is refused, naming the first's PID). A loaded artifact must match its sha256.

    \b
    Examples:
      pgn-export --backbone unet --target onnx
      pgn-export --backbone unet --target coreml --size 256 256
      pgn-export --backbone resnet4 --target onnx --dynamic --precision fp16
      pgn-export --backbone resnet4 --target onnx --precision int8 --int8-ops conv
      pgn-export --backbone resnet8 --checkpoint resnet8.pth --target all --json exports/report.json
      pgn-export --backbone unet --target tensorrt --precision fp16   # needs TensorRT and an NVIDIA GPU
      pgn-export --target executorch-training --generator gen.pt2 --loss pgn --backbone resnet4 --checkpoint r4.pth --mse-weight 20
      pgn-export --target executorch-training --generator gen.pt2 --loss vgg19 --vgg-weights imagenet
    """
    training = {k: kwargs.pop(k) for k in ("generator_path", "loss", "mse_weight", "lr", "vgg_weights")}
    if kwargs["target"] == TRAINING_TARGET:
        run_cli(lambda: _main_training(**training, **kwargs), folders={"--output": kwargs["output_dir"]})
        return
    given = [f"--{k.replace('_', '-')}" for k in ("generator_path", "loss", "mse_weight") if training[k] is not None]
    if given:
        run_cli(lambda: _refuse(f"{', '.join(given)} go with --target {TRAINING_TARGET}"))
        return
    files = {"--json": kwargs["json_path"], "--timing-cache": kwargs["timing_cache"]}
    run_cli(lambda: _main(**kwargs), files=files, folders={"--output": kwargs["output_dir"]})


def _main(backbone, target, checkpoint, head, json_path, verify_on=None, **options) -> None:
    from rich.console import Console
    from rich.panel import Panel

    from .api import RANDOM_WEIGHTS, export, load_model

    err = Console(stderr=True)
    if verify_on == "arm" and options.get("dynamic"):
        raise PGNError("--verify-on arm runs fixed-shape artifacts: drop --dynamic (or verify a fixed-shape export of the same model)")
    model, weights = load_model(backbone, head=head, checkpoint=checkpoint)
    if checkpoint is None:
        err.print(Panel(
            f"[bold]No --checkpoint: exporting {backbone} with RANDOM weights.[/bold]\n"
            "The artifact is right for graph, size and latency work, but its gradients are meaningless.\n"
            "Pass --checkpoint PATH (a pgn-distill checkpoint or the authors' released file) for a usable PGN.",
            title="RANDOM WEIGHTS", border_style="bold red",
        ))
    kwargs = {k: v for k, v in options.items() if v is not None and v is not False}
    for key in ("size", "min_size", "max_size"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    with err.status("exporting…") as status:
        results = export(model, target, weights_source=weights, progress=lambda m: status.update(m), **kwargs)
    _print_table(results, model, weights == RANDOM_WEIGHTS)
    if verify_on == "arm":
        from .arm_verify import verify_results_on_arm

        with err.status("running on emulated aarch64 CPUs…") as status:
            lines = verify_results_on_arm(results, model, say=lambda m: status.update(m))
        for line in lines:
            click.echo(line)
        if any("FAILED" in line for line in lines):
            sys.exit(1)
    if json_path is not None:
        payload = {
            "backbone": backbone or model.config.preset,
            "head": model.config.head.kind,
            "weights": weights,
            "target": target,
            "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()},
            "results": [r.to_dict() for r in results],
        }
        try:
            write_json(payload, json_path)
        except OSError as e:
            written = "the artifacts in the table above were written; " if any(r.ok for r in results) else ""
            raise PGNError(f"--json {describe_os_error(e)}: {written}only the JSON report is missing") from None
    if not all(r.ok for r in results):
        sys.exit(1)


def _refuse(message: str) -> None:
    raise PGNError(message)


def _main_training(generator_path, loss, mse_weight, lr, vgg_weights, backbone, checkpoint, head, output_dir, json_path,
                   precision, target, **options) -> None:
    """``--target executorch-training``: export the fitting step of a ``.pt2`` generator, verified."""
    if options.get("verify_on"):
        raise PGNError("--verify-on arm checks PGN artifacts; benchmarks/arm_check.sh runs the fitting-step program on "
                       "emulated aarch64 CPUs")
    from .api import load_model
    from .training import FittingLoss, SGDRecipe, export_training_step

    if generator_path is None or loss is None:
        raise PGNError(f"--target {TRAINING_TARGET} needs --generator GEN.pt2 (torch.export.save) and --loss {'|'.join(LOSS_KINDS)}")
    foreign = [f"--{k.replace('_', '-')}" for k, v in options.items() if v not in (None, False)]
    if foreign:
        raise PGNError(f"{', '.join(foreign)} do not apply to --target {TRAINING_TARGET}: the generator's saved inputs fix the shapes")
    weights = None
    if loss == "pgn":
        model, weights = load_model(backbone, head=head, checkpoint=checkpoint)
        fitting = FittingLoss.pgn(model, mse_weight or 0.0, precision or "fp32")
    else:
        if backbone or checkpoint or head or (precision not in (None, "fp32")):
            raise PGNError(f"--backbone, --checkpoint, --head and --precision choose the PGN of --loss pgn, not of --loss {loss}")
        fitting = FittingLoss.mse(mse_weight if mse_weight is not None else 1.0) if loss == "mse" else \
            FittingLoss.vgg(loss, vgg_weights, mse_weight or 0.0)
        weights = str(fitting.teacher.weights) if fitting.teacher is not None else None
    suffix = f"-{fitting.precision}" if loss == "pgn" and fitting.precision != "fp32" else ""
    output = output_dir / f"{generator_path.name.removesuffix('.pt2')}-{loss}{suffix}-fitting.pte"
    path = export_training_step(generator_path, loss=fitting, output=output, optimizer=SGDRecipe(lr=lr), weights_source=weights)
    from .manifest import read_manifest
    from .training import check_training_manifest

    manifest = read_manifest(path, check=check_training_manifest)
    check = manifest["verification"]
    print(f"{path}: {manifest['status']} (one ExecuTorch step = one eager step to {check['max_relative_parameter_error']:.1e} "
          f"relative), {manifest['size_mb']:.2f} MB, {len(manifest['trainable_parameters'])} trainable tensors, "
          f"planned memory {manifest['exporter']['planned_memory_mb']:.0f} MB")
    if json_path is not None:
        write_json(manifest, json_path)


def _print_table(results, model, random_weights: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .verify import summary

    name = model.config.preset or model.config.backbone
    title = f"pgn-export: {name} ({model.config.head.kind} head){' — RANDOM WEIGHTS' if random_weights else ''}"
    table = Table(title=title)
    for col, justify in (("target", "left"), ("status", "left"), ("size MB", "right"), ("parity", "left"),
                         ("time s", "right"), ("artifact / reason", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    colors = {"verified": "green", "converted-not-run": "yellow", "failed": "red"}
    for r in results:
        parity = summary(r.parity) if r.parity.get("executed") else ("structural checks passed" if r.parity.get("structural_checks") else "-")
        where = r.artifact.name if r.artifact else ""
        detail = f"{where} ({r.reason})" if where and r.reason else (where or r.reason)
        table.add_row(r.target, f"[{colors[r.status]}]{r.status}[/]", f"{r.size_mb:.2f}" if r.artifact else "-",
                      escape(parity), f"{r.seconds:.1f}", escape(detail))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    console.print(table)
    if results and results[0].artifact:
        console.print(f"artifacts and manifests in {results[0].artifact.parent}/")


if __name__ == "__main__":
    main()
