"""What a person reads: the rich table (the paper's Figure 2/8 with Table 6 columns) and the matplotlib plots.

Table columns, per size:

* ``ms``: median time of one gradient call (the whole batch); ``p10–p90`` its spread over the timed calls;
* ``cpu``: CPU time of the timed calls ÷ (wall time × threads). Near 100 % the threads had the cores to
  themselves (ONNX Runtime's spinning threads count as busy); far lower, another process took them and the
  times are inflated: re-run on an idle machine;
* ``MB``: peak working memory above the loaded model (see :mod:`benchmarks.measure`);
* ``×VGG-19``: how many times faster than the reference VGG-19 row (the fastest fp32 uncached VGG-19
  measured), with the ratio of executed MACs in brackets: what arithmetic alone predicts;
* ``mem ×``: how many times less memory than the leanest fp32 uncached VGG-19 row; ``×VGG-11``: faster than
  the VGG-11 reference;
* ``GFLOP/s``: 2 × executed MACs / median time;
* ``params``, ``MACs``: the paper's Table 6 (VGG: conv layers to relu5_1, MACs of 3 forward passes on 2 images);
* ``cos g``: gradient cosine similarity to fp32 PyTorch (worst sample; every runtime but fp32 eager PyTorch,
  which is the reference); ``cos P̃``: the same for the PGN's proxy after subtracting the reference proxy's
  per-channel mean. The gradient contains ŷ itself, which every runtime gets exactly, so ``cos g`` stays near
  1 even when the network's own output drifts; ``cos P̃`` shows that drift.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

from .results import BenchmarkResult, Row

NOT_APPLICABLE_NOTE = "VGG gradients need autograd: they run on the torch runtimes only."


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _ratio_cell(row: Row, ref: str, with_macs: bool = False) -> str:
    ratio = row.ratios.get(ref)
    if not ratio:
        return "—"
    text = f"{ratio['time']:.2f}×"
    if with_macs and ratio.get("macs"):
        text += f" ({ratio['macs']:.2f}×)"
    return text


def _memory_ratio_cell(row: Row) -> str:
    ratio = row.ratios.get("vgg19")
    return "—" if not ratio or ratio.get("memory") is None else f"{ratio['memory']:.2f}×"


def _cos_cells(row: Row) -> tuple[str, str]:
    if not row.accuracy:
        return "", ""
    proxy = row.accuracy.get("proxy_cosine_centered_min")
    return f"{row.accuracy['grad_cosine_min']:.5f}", ("" if proxy is None else f"{proxy:.3f}")


def _utilization_cell(row: Row) -> str:
    return "—" if row.cpu_utilization is None else f"{100 * row.cpu_utilization:.0f}%"


def _human(n: int | None, unit: str) -> str:
    if n is None:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B" if unit == "macs" else f"{n / 1e9:.2f}G"
    return f"{n / 1e6:.2f}M"


def sizes_in(result: BenchmarkResult) -> list[tuple[int, int]]:
    """The sizes of a result, in run order."""
    return list(OrderedDict.fromkeys(tuple(r.size) for r in result.rows))


def summarize_skips(rows: list[Row]) -> list[tuple[str, str, str]]:
    """(runtime, models, reason) for rows that did not run, one line per runtime and reason; not-applicable omitted."""
    grouped: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
    for r in rows:
        if r.status in ("unavailable", "skipped", "failed"):
            grouped.setdefault((r.runtime, f"{r.status}: {r.reason}"), []).append(r.display)
    all_models = list(OrderedDict.fromkeys(r.display for r in rows if r.kind == "pgn" or r.family == "torch"))
    out = []
    for (runtime, reason), models in grouped.items():
        names = "all models" if set(all_models) <= set(models) else ", ".join(OrderedDict.fromkeys(models))
        out.append((runtime, names, reason))
    return out


TABLE_COLUMNS = ("model", "runtime", "ms", "p10–p90", "cpu", "MB", "×VGG-19 (MACs)", "mem ×", "×VGG-11", "GFLOP/s",
                 "params", "MACs", "cos g", "cos P̃")


def table_cells(row: Row) -> list[str]:
    """The cells of one measured row, in :data:`TABLE_COLUMNS` order."""
    t = row.time_ms
    return [
        row.display, row.runtime, f"{t['median']:.1f}", f"{t['p10']:.0f}–{t['p90']:.0f}", _utilization_cell(row),
        _fmt(row.memory_mb, ".1f"), _ratio_cell(row, "vgg19", with_macs=True), _memory_ratio_cell(row), _ratio_cell(row, "vgg11"),
        _fmt(row.gflops, ".0f"), _human(row.params, "params"), _human(row.paper_macs, "macs"), *_cos_cells(row),
    ]


def table_title(result: BenchmarkResult, size: tuple[int, int]) -> str:
    """One line naming the device, threads, batch, size and the number of timed calls."""
    cfg, env = result.config, result.environment
    ok = [r for r in result.rows if r.ok and tuple(r.size) == size]
    n = ok[0].time_ms["n"] if ok else cfg.get("repeats")
    where = env.get("cpu") if cfg["device"] == "cpu" else (env.get("gpu") or {}).get("name")
    matrix = " · quick run (the paper's 224² and every precision: --full)" if cfg.get("matrix") == "quick" else ""
    return (f"pgn-bench: {cfg['device']} · {where} · {env.get('threads')} threads · batch {cfg['batch']} · {size[0]}×{size[1]} · "
            f"median of {n} calls after {cfg.get('effective_warmup')} warm-up{matrix}")


def footnotes(result: BenchmarkResult, size: tuple[int, int]) -> list[str]:
    """Lines under a table: runtimes that did not run and why, and what the weights were."""
    rows = [r for r in result.rows if tuple(r.size) == size]
    lines = [f"{runtime} ({models}) — {reason}" for runtime, models, reason in summarize_skips(rows)]
    if any(r.status == "not-applicable" for r in rows):
        lines.append(NOT_APPLICABLE_NOTE)
    cfg, env = result.config, result.environment
    weights = "seeded random PGN weights" if not cfg.get("weights") else f"PGN weights: {cfg['weights']}"
    lines.append(f"VGG: random weights (timing and memory do not depend on them); {weights}. "
                 f"Load average {env.get('load_average_start')} → {env.get('load_average_end')}.")
    if cfg.get("check_values", "auto") != "auto":
        lines.append(f"PyTorch rows checked input values: {cfg['check_values']} (default auto: not on the GPU).")
    return lines


def render_markdown(result: BenchmarkResult) -> str:
    """The same tables as :func:`render_table`, as Markdown (for RESULTS.md and reports)."""
    out = []
    for size in sizes_in(result):
        out.append(f"**{table_title(result, size)}**\n")
        out.append("| " + " | ".join(TABLE_COLUMNS) + " |")
        out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(TABLE_COLUMNS))) + "|")
        for r in result.rows:
            if r.ok and tuple(r.size) == size:
                out.append("| " + " | ".join(table_cells(r)) + " |")
        out.append("")
        out += [f"- {line}" for line in footnotes(result, size)]
        out.append("")
    return "\n".join(out)


def render_table(result: BenchmarkResult, console=None) -> None:
    """Print one table per size, then a line per runtime that did not run and why."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 180)
    for size in sizes_in(result):
        table = Table(title=table_title(result, size), title_justify="left")
        for i, col in enumerate(TABLE_COLUMNS):
            table.add_column(col, justify="left" if i < 2 else "right")
        for r in result.rows:
            if r.ok and tuple(r.size) == size:
                table.add_row(*table_cells(r))
        console.print(table)
        for line in footnotes(result, size):
            console.print(f"  {line}", highlight=False, markup=False)


# --------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main_size(result: BenchmarkResult) -> tuple[int, int]:
    """The size the time/memory plot shows: 224×224 if measured, else the first size."""
    sizes = sizes_in(result)
    return (224, 224) if (224, 224) in sizes else sizes[0]


def plot_time_memory(result: BenchmarkResult, path: str | Path, size: tuple[int, int] | None = None) -> Path:
    """Figure 2/8 of the paper: time and peak memory per model, one bar per runtime; returns the PNG path."""
    plt = _pyplot()
    size = size or main_size(result)
    rows = [r for r in result.rows if r.ok and tuple(r.size) == size]
    models = list(OrderedDict.fromkeys(r.display for r in rows))
    runtimes = list(OrderedDict.fromkeys(r.runtime for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(models) + 4), 4.5))
    width = 0.8 / max(1, len(runtimes))
    for k, runtime in enumerate(runtimes):
        by_model = {r.display: r for r in rows if r.runtime == runtime}
        xs = [i + (k - (len(runtimes) - 1) / 2) * width for i in range(len(models))]
        times = [by_model[m].time_ms["median"] if m in by_model else 0.0 for m in models]
        mems = [by_model[m].memory_mb or 0.0 if m in by_model else 0.0 for m in models]
        axes[0].bar(xs, times, width, label=runtime)
        axes[1].bar(xs, mems, width, label=runtime)
    cfg = result.config
    for ax, label in zip(axes, ("time per gradient, ms (median)", "peak working memory, MB")):
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    device = cfg["device"] if cfg["device"] == "cpu" else (result.environment.get("gpu") or {}).get("name", "cuda")
    where = result.environment.get("cpu") if cfg["device"] == "cpu" else device
    fig.suptitle(f"{where} · batch {cfg['batch']} · {size[0]}×{size[1]}", fontsize="medium")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_scaling(result: BenchmarkResult, path: str | Path) -> Path:
    """Time and peak memory against resolution (the ``--sweep-size`` run), one line per model and runtime."""
    plt = _pyplot()
    rows = [r for r in result.rows if r.ok]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    series = OrderedDict.fromkeys((r.display, r.runtime) for r in rows)
    for display, runtime in series:
        pts = sorted(((r.size[0] * r.size[1], r) for r in rows if r.display == display and r.runtime == runtime), key=lambda p: p[0])
        xs = [p[0] ** 0.5 for p in pts]
        style = "--" if any(p[1].kind == "teacher" for p in pts) else "-"
        axes[0].plot(xs, [p[1].time_ms["median"] for p in pts], style, marker="o", label=f"{display} · {runtime}")
        axes[1].plot(xs, [p[1].memory_mb or 0.0 for p in pts], style, marker="o", label=f"{display} · {runtime}")
    for ax, label in zip(axes, ("time per gradient, ms (median)", "peak working memory, MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image side (√(H·W)), pixels")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="x-small")
    cfg = result.config
    fig.suptitle(f"{result.environment.get('cpu') if cfg['device'] == 'cpu' else 'cuda'} · batch {cfg['batch']}", fontsize="medium")
    fig.tight_layout()
    return _save(fig, plt, path)


def scaling_plot_path(path: str | Path) -> Path:
    """Where the scaling plot goes when the time/memory plot goes to ``path``: ``<stem>-scaling<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-scaling{path.suffix or '.png'}")


def _save(fig, plt, path: str | Path) -> Path:
    from pgn.files import save_figure

    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
