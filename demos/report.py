"""What every demo writes: ``results.json``, ``results.md`` (tables, warnings, images) and a table on the console.

A demo builds a :class:`DemoReport` (its configuration, which VGG weights and which PGN it used, warnings,
tables and image grids) and calls :meth:`DemoReport.write`. Tables are drawn from the same rows that go into the
JSON, so the two cannot disagree.
"""

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
from pgn.files import write_json, write_text


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


def format_cell(value: Any, fmt: str, with_std: bool = True) -> str:
    """Format one cell: numbers with ``fmt``, ``{"mean", "std"}`` as ``mean ± std``, ``None`` as ``—``."""
    if value is None:
        return "—"
    if isinstance(value, dict) and "mean" in value:
        if value["mean"] is None:
            return "—"
        if value.get("std") is None or not with_std:
            return format_cell(value["mean"], fmt)
        return f"{format_cell(value['mean'], fmt)} ± {format_cell(value['std'], fmt)}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return fmt.format(value)
    return str(value)


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
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    return obj


def environment() -> dict:
    """Software and machine facts stored next to every result (timings depend on them)."""
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "pgn_toolkit": pgn.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    return env


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
        return _jsonable(
            {
                "demo": self.demo,
                "config": self.config,
                "setup": self.setup,
                "warnings": self.warnings,
                "tables": {t.name: {"title": t.title, "rows": t.rows, "notes": t.notes} for t in self.tables},
                "images": self.images,
                "environment": environment(),
                "elapsed_s": self.elapsed_s,
                **self.extra,
            }
        )

    def markdown(self) -> str:
        """The content of ``results.md``."""
        lines = [f"# pgn-demo {self.demo}", ""]
        for key, value in self.setup.items():
            lines.append(f"- **{key}**: {value}")
        if self.elapsed_s is not None:
            lines.append(f"- **run time**: {self.elapsed_s:.1f} s")
        lines.append("")
        if self.warnings:
            lines += ["## Warnings", ""] + [f"- ⚠ {w}" for w in self.warnings] + [""]
        for t in self.tables:
            lines += [f"## {t.title}", ""]
            lines.append("| " + " | ".join(c.header for c in t.columns) + " |")
            lines.append("|" + "|".join("---" for _ in t.columns) + "|")
            for row in t.rows:
                lines.append("| " + " | ".join(format_cell(row.get(c.key), c.fmt) for c in t.columns) + " |")
            lines.append("")
            lines += [f"{n}" for n in t.notes] + ([""] if t.notes else [])
        for img in self.images:
            lines += [f"## {img['caption']}", "", f"![{img['caption']}]({Path(img['path']).name})", ""]
            if img.get("columns"):
                lines.append("Columns, left to right: " + ", ".join(img["columns"]) + ".")
            if img.get("rows"):
                lines.append("Rows: " + img["rows"] + ".")
            lines.append("")
        return "\n".join(lines)

    def write(self, output_dir: Path) -> dict[str, Path]:
        """Write ``results.json`` and ``results.md`` into ``output_dir``; returns their paths."""
        paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
        write_json(self.to_dict(), paths["json"])
        write_text(paths["markdown"], self.markdown())
        return paths

    def print(self, console) -> None:
        """Print the setup and the tables with rich."""
        from rich.table import Table as RichTable

        for key, value in self.setup.items():
            console.print(f"[bold]{key}[/bold]: {value}")
        for t in self.tables:
            rt = RichTable(title=t.title)
            columns = [c for c in t.columns if t.console_keys is None or c.key in t.console_keys]
            for c in columns:
                rt.add_column(c.header, justify="left" if c.key in ("loss", "head", "student", "status") else "right")
            for row in t.rows:
                rt.add_row(*(format_cell(row.get(c.key), c.fmt, with_std=False) for c in columns))
            console.print(rt)
            for n in t.notes:
                console.print(n, style="dim")


def print_warnings(console, warnings: list[str]) -> None:
    """Print warnings in a red banner (stderr console recommended), so nobody mistakes mechanics for results."""
    if not warnings:
        return
    from rich.panel import Panel

    body = "\n".join(f"• {w}" for w in warnings)
    console.print(Panel(body, title="WARNING: numbers below only show the mechanics", border_style="bold red", style="red"))
