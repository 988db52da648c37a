"""``pgn-info``: sizes and costs of the paper's models (Table 6), presets, and what a checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cliutils import run_cli
from .files import write_json
from .errors import PGNError
from .profile import PAPER_TABLE6, profile

TABLE6_ROWS = ("vgg19", "vgg11", "resnet4", "resnet6", "resnet8", "unet")
DISPLAY = {"vgg19": "VGG-19", "vgg11": "VGG-11", "resnet4": "ResNet-4", "resnet6": "ResNet-6", "resnet8": "ResNet-8", "unet": "UNet"}


def table6(size: int, skipped: dict[str, str] | None = None) -> list[dict]:
    """Rows of the paper's Table 6 recomputed at ``size``×``size``, with the paper's printed values beside.

    Models that cannot take ``size`` (the UNet needs multiples of 32) are left out; with ``skipped`` given,
    it receives ``{name: reason}`` for each of them, otherwise the first one raises its :class:`PGNError`.
    """
    rows = []
    for name in TABLE6_ROWS:
        try:
            p = profile(name, size)
        except PGNError as e:
            if skipped is None:
                raise
            skipped[name] = str(e)
            continue
        paper_params, paper_macs = PAPER_TABLE6[name]
        rows.append(
            {
                "model": DISPLAY[name],
                "name": name,
                "params": p.params,
                "params_m": f"{p.params / 1e6:.2f}M",
                "paper_params": paper_params,
                "macs": p.macs,
                "macs_b": f"{p.macs / 1e9:.2f}B",
                "paper_macs": paper_macs,
                "conv_gmacs": round(p.conv_macs / 1e9, 4),
                "what": "3 fwd x 2 images" if name.startswith("vgg") else "one PGN forward",
            }
        )
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size", default=224, show_default=True, type=click.IntRange(32, 4096), help="Input height and width.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the rows as JSON here ('-' for stdout).")
@click.option("--presets", is_flag=True, help="List the registered PGN presets instead.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Describe a checkpoint (ours or the authors') instead.")
def main(size: int, json_path: Path | None, presets: bool, checkpoint: Path | None) -> None:
    """Print the paper's Table 6 (parameters and MACs of VGG-19/VGG-11 and the PGNs) with our numbers.

    MACs follow the paper's counting convention (thop, 2019); for the VGG teachers they are the cost of one
    gradient, 3 × a forward pass on both images. The paper's values are for 224×224.

    Bad input: one line on stderr, exit 1 (usage errors 2). --json is written whole or not at all (a device or
    FIFO such as /dev/null or /dev/stdout is written in place, never replaced).

    \b
    Examples:
      pgn-info --size 224
      pgn-info --size 256 --json table6.json
      pgn-info --presets
      pgn-info --checkpoint resnet4.pth
    """
    if presets and checkpoint is not None:
        raise click.UsageError("--presets lists the presets and --checkpoint describes a file: pass one of them")
    run_cli(lambda: _main(size, json_path, presets, checkpoint), files={"--json": json_path})


def _main(size: int, json_path: Path | None, presets: bool, checkpoint: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if presets:
        from .presets import list_presets, preset_config, preset_description

        table = Table(title="PGN presets")
        for col in ("preset", "backbone", "head", "grad_scale (1/α)", "description"):
            table.add_column(col)
        rows = []
        for name in list_presets():
            cfg, description = preset_config(name), preset_description(name)
            rows.append({"preset": name, "backbone": cfg.backbone, "head": cfg.head.kind, "grad_scale": cfg.head.grad_scale,
                         "description": description})
            table.add_row(name, cfg.backbone, cfg.head.kind, f"{cfg.head.grad_scale:g}", description)
        console.print(table)
        write_json(rows, json_path)
        return
    if checkpoint is not None:
        from .checkpoint import load

        model = load(checkpoint)
        info = {
            "path": str(checkpoint),
            "format": getattr(model, "checkpoint_format", "?"),
            "config": model.config.to_dict(),
            "params": sum(p.numel() for p in model.parameters()),
        }
        console.print_json(json.dumps(info))
        write_json(info, json_path)
        return
    skipped: dict[str, str] = {}
    rows = table6(size, skipped)
    table = Table(title=f"Table 6 at {size}x{size} (paper values are for 224x224)")
    for col in ("Model", "Params", "Paper", "MACs", "Paper", "conv GMAC", "counts"):
        table.add_column(col, justify="right" if col not in ("Model", "counts") else "left")
    for r in rows:
        table.add_row(r["model"], r["params_m"], r["paper_params"], r["macs_b"], r["paper_macs"], f"{r['conv_gmacs']:.2f}", r["what"])
    console.print(table)
    for reason in skipped.values():
        click.echo(f"skipped: {reason}", err=True)
    write_json({"size": size, "rows": rows, "skipped": skipped}, json_path)
