"""``pgn-export``: write a PGN (backbone + head) as ONNX, TensorRT or CoreML artifacts, each verified."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pgn.cliutils import FiniteFloat, describe_os_error, run_cli, write_json
from pgn.errors import PGNError
from pgn.heads import HEAD_KINDS

from .executorch import INT8_OPS
from .formats import FORMATS, precisions, resolve_targets

BACKBONES = ("resnet4", "resnet6", "resnet8", "unet")
TARGET_CHOICES = "|".join([*FORMATS, "all"])
DEFAULT_PRECISIONS = ", ".join(f"{t.default_precision} for {t.name}" for t in FORMATS.values())


def _check_target(ctx, param, value: str) -> str:
    try:
        resolve_targets(value)
    except PGNError as e:
        raise click.BadParameter(str(e)) from None
    return value.lower()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--backbone", type=click.Choice(BACKBONES), help="Paper preset to export (optional with --checkpoint).")
@click.option("--target", default="onnx", show_default=True, callback=_check_target, metavar=TARGET_CHOICES,
              help="Artifact format; 'all' writes every one and prints a table.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Weights to export (ours or the authors'). Without it: random weights, said loudly.")
@click.option("--head", type=click.Choice(HEAD_KINDS), help="Gradient head (default: the preset's, constrained).")
@click.option("--size", nargs=2, type=int, metavar="H W", help="Input height and width (default 224 224).")
@click.option("--batch", type=click.IntRange(1), help="Batch size (default 1).")
@click.option("--dynamic", is_flag=True, help="Dynamic batch/height/width (TensorRT/CoreML: bounded ranges).")
@click.option("--precision", type=click.Choice(precisions()), help=f"Default: {DEFAULT_PRECISIONS}.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exports"),
              show_default=True, metavar="DIR", help="Folder for artifacts and manifests.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the results as JSON here ('-' for stdout).")
@click.option("--opset", type=int, help="ONNX opset (ONNX, TensorRT); default: the exporter's.")
@click.option("--legacy-exporter", is_flag=True, help="Use the TorchScript ONNX exporter instead of dynamo.")
@click.option("--min-size", nargs=2, type=int, metavar="H W", help="Smallest input of a --dynamic TensorRT/CoreML artifact.")
@click.option("--max-size", nargs=2, type=int, metavar="H W", help="Largest input of a --dynamic TensorRT/CoreML artifact.")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch of a --dynamic TensorRT/CoreML artifact.")
@click.option("--workspace-gb", type=FiniteFloat(0, min_open=True), help="TensorRT builder workspace limit (default 4).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="TensorRT timing cache (default: DIR/tensorrt-timing.cache).")
@click.option("--tf32", is_flag=True, help="TensorRT: allow TF32 math in fp32 layers (faster; fails fp32 parity, so off by default).")
@click.option("--deployment-target", metavar="NAME", help="CoreML minimum deployment target (default iOS16).")
@click.option("--int8-ops", type=click.Choice(INT8_OPS),
              help="ExecuTorch int8: what is quantized (default conv; see export/README.md).")
@click.option("--graph-options", metavar="LIST",
              help="How the graph computes the backbone, e.g. 'band_rows=16,decoder_conv=split' or 'plain' "
                   "(names: band_rows, band_levels, decoder_conv, upsample_conv; see export/README.md).")
@click.option("--verify-on", "verify_on", type=click.Choice(["arm"]),
              help="Also run ExecuTorch/ONNX artifacts on emulated aarch64 CPUs (QEMU; builds a cached environment "
                   "of ~2 GB on first use) against this machine, and record it in the manifest.")
def main(**kwargs) -> None:
    """Export a PGN with its gradient head as ONNX, TensorRT or CoreML, verified against PyTorch.

    Each artifact takes y_hat and y ((N, 3, H, W) RGB in [0, 1]) and returns the proxy P and the gradient
    (fp16 artifacts: a residual the host scales in fp32; see the manifest). A manifest.json with the model,
    constants, versions, sha256 and parity numbers is written beside it. Exit status 0 only if every target
    was written and passed its checks.

    \b
    Examples:
      pgn-export --backbone unet --target onnx
      pgn-export --backbone unet --target coreml --size 256 256
      pgn-export --backbone resnet4 --target onnx --dynamic --precision fp16
      pgn-export --backbone resnet8 --checkpoint resnet8.pth --target all --json exports/report.json
      pgn-export --backbone unet --target tensorrt --precision fp16   # needs TensorRT and an NVIDIA GPU
    """
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
    kwargs = {k: v for k, v in options.items() if v not in (None, False)}
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
