"""What every demo writes: ``results.json``, ``results.md`` (tables, warnings, images), loss-curve plots, and a
table on the console. Tables are drawn from the same rows that go into the JSON, so the two cannot disagree."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

import pgn
from pgn.files import save_figure, write_json, write_text


@dataclass(frozen=True)
class Column:
    """A table column: the row key it shows, its header, and a format for numbers (``{:.3f}`` style)."""

    key: str
    header: str
    fmt: str = "{:.3f}"


@dataclass
class Table:
    """Rows (plain dicts, also written to JSON) shown under ``columns``; ``notes`` go under the table."""

    name: str
    title: str
    columns: list[Column]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    console_keys: tuple[str, ...] | None = None  #: the columns shown on the console (all when None)


_SCORES = {"mse_x1e3": ("MSE×10³", "{:.2f}"), "pl_vgg19": ("PL VGG-19", "{:.3f}"), "ssim": ("SSIM", "{:.3f}"), "lpips": ("LPIPS", "{:.3f}")}


def score_columns(prefix: str = "", keys: tuple[str, ...] = tuple(_SCORES)) -> list[Column]:
    """Columns of :meth:`~demos.metrics.Scores.cells` (with the same ``prefix``, e.g. ``holdout_``)."""
    return [Column(prefix + key, prefix.replace("_", " ") + _SCORES[key][0], _SCORES[key][1]) for key in keys]


LOSS_COLUMN = Column("loss", "Loss")
GRAD_COS_COLUMN = Column("grad_cos", "grad cos vs VGG-19", "{:.3f}")
#: Time per step and peak memory, of the loss part and of the whole step (:func:`demos.common.timing_cells`).
TIMING_COLUMNS = [Column("loss_time_ms", "ms/step (loss)", "{:.1f}"), Column("loss_peak_mem_mib", "peak MiB (loss)", "{:.1f}"),
                  Column("step_time_ms", "ms/step (whole)", "{:.1f}"), Column("step_peak_mem_mib", "peak MiB (whole)", "{:.1f}")]
#: One row per loss, scored against one set of targets (DIP quality, inversion).
RECONSTRUCTION_COLUMNS = [LOSS_COLUMN, *score_columns(), GRAD_COS_COLUMN, *TIMING_COLUMNS]


def format_cell(value: Any, fmt: str, with_std: bool = True) -> str:
    """Format one cell: numbers with ``fmt``, ``{"mean", "std"}`` as ``mean ± std``, ``None`` as ``—``."""
    if value is None or (isinstance(value, dict) and value.get("mean") is None):
        return "—"
    if isinstance(value, dict):
        if value.get("std") is None or not with_std:
            return format_cell(value["mean"], fmt)
        return f"{format_cell(value['mean'], fmt)} ± {format_cell(value['std'], fmt)}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def environment() -> dict:
    """Software and machine facts stored next to every result (timings depend on them)."""
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "pgn_toolkit": pgn.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cpu", "onnxruntime": ort}


@dataclass
class DemoReport:
    """Everything a demo reports. ``setup`` holds at least ``vgg_weights`` and ``pgn`` (printable descriptions)."""

    demo: str
    config: dict
    setup: dict
    warnings: list[str]
    tables: list[Table] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  #: {"path", "caption", "rows", "columns"}
    extra: dict = field(default_factory=dict)
    elapsed_s: float | None = None

    def to_dict(self) -> dict:
        """The content of ``results.json``."""
        tables = {t.name: {"title": t.title, "rows": t.rows, "notes": t.notes} for t in self.tables}
        return _jsonable({"demo": self.demo, "config": self.config, "setup": self.setup, "warnings": self.warnings,
                          "tables": tables, "images": self.images, "environment": environment(),
                          "elapsed_s": self.elapsed_s, **self.extra})

    def markdown(self) -> str:
        """The content of ``results.md``."""
        lines = [f"# pgn-demo {self.demo}", "", *(f"- **{k}**: {v}" for k, v in self.setup.items())]
        if self.elapsed_s is not None:
            lines.append(f"- **run time**: {self.elapsed_s:.1f} s")
        lines.append("")
        if self.warnings:
            lines += ["## Warnings", "", *(f"- ⚠ {w}" for w in self.warnings), ""]
        for t in self.tables:
            lines += [f"## {t.title}", "", "| " + " | ".join(c.header for c in t.columns) + " |",
                      "|" + "|".join("---" for _ in t.columns) + "|"]
            lines += ["| " + " | ".join(format_cell(row.get(c.key), c.fmt) for c in t.columns) + " |" for row in t.rows]
            lines += ["", *t.notes] + ([""] if t.notes else [])
        for img in self.images:
            lines += [f"## {img['caption']}", "", f"![{img['caption']}]({Path(img['path']).name})", ""]
            if img.get("columns"):
                lines.append("Columns, left to right: " + ", ".join(img["columns"]) + ".")
            if img.get("rows"):
                lines.append("Rows: " + img["rows"] + ".")
            lines.append("")
        return "\n".join(lines)

    def write(self, output_dir: Path) -> None:
        """Write ``results.json`` and ``results.md`` into ``output_dir``."""
        write_json(self.to_dict(), output_dir / "results.json")
        write_text(output_dir / "results.md", self.markdown())

    def print(self, console) -> None:
        """Print the setup and the tables with rich."""
        from rich.table import Table as RichTable

        for key, value in self.setup.items():
            console.print(f"[bold]{key}[/bold]: {value}")
        for t in self.tables:
            rich = RichTable(title=t.title)
            columns = [c for c in t.columns if t.console_keys is None or c.key in t.console_keys]
            for c in columns:
                rich.add_column(c.header, justify="left" if c.key in ("loss", "head", "student", "status") else "right")
            for row in t.rows:
                rich.add_row(*(format_cell(row.get(c.key), c.fmt, with_std=False) for c in columns))
            console.print(rich)
            for note in t.notes:
                console.print(note, style="dim")


def print_warnings(console, warnings: list[str]) -> None:
    """Print warnings in a red banner (stderr console recommended), so nobody mistakes mechanics for results."""
    if warnings:
        from rich.panel import Panel

        console.print(Panel("\n".join(f"• {w}" for w in warnings), title="WARNING: numbers below only show the mechanics",
                            border_style="bold red", style="red"))


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, ylabel: str = "VGG-19 perceptual loss") -> Path:
    """One line per name: ``curves[name] = [(iteration, value), ...]``; saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for name, points in curves.items():
            if points:
                ax.plot(*zip(*points), label=name)
        ax.set(xlabel="iteration", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path
