"""Live progress of a ``pgn-bench`` run on a terminal: the step running, rows done, time left, each row as it ends.

It draws on stderr and only when stderr is a terminal, so ``pgn-bench > table.txt`` (or a CI log, where neither
stream is a terminal) gets the final table alone. The time left is rich's estimate over *estimated seconds* per
step (:func:`benchmarks.harness.estimated_seconds`: an export costs far more than a measurement), so it
calibrates itself to the machine after the first steps.
"""

from __future__ import annotations

from .results import Row


def row_line(row: Row) -> str:
    """One finished row in a line: ``VGG-19 · torch · 412.3 ms · 310.5 MB`` (PGNs: and ``×VGG-19`` faster), or why not."""
    where = f"{row.display} · {row.runtime}"
    if not row.ok:
        return f"  – {where}: {row.status}: {row.reason}"
    text = f"  ✓ {where} · {row.time_ms['median']:.1f} ms"
    if row.memory_mb is not None:
        text += f" · {row.memory_mb:.1f} MB"
    ratio = row.ratios.get("vgg19")
    if ratio and row.kind == "pgn":
        text += f" · {ratio['time']:.1f}× faster than VGG-19"
    return text


class LiveProgress:
    """A rich progress bar on stderr, or nothing (``enabled`` False, or stderr is not a terminal).

    Args:
        enabled: show it if stderr is a terminal.
        rows: rows the run will have.
        units: estimated seconds of all steps.
        console: where to draw (default: stderr).
    """

    def __init__(self, enabled: bool, rows: int, units: float, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.rows, self.units, self.done = rows, units, 0

    def __enter__(self) -> "LiveProgress":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rows]}"),
                                TimeElapsedColumn(), TextColumn("·"), TimeRemainingColumn(), TextColumn("left"),
                                console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("starting", total=max(self.units, 1e-9), rows=self._rows_text())
        return self

    def _rows_text(self) -> str:
        return f"{self.done}/{self.rows} rows"

    def step(self, description: str) -> None:
        """Name the step about to run."""
        if self.enabled:
            self.bar.update(self.task, description=description)

    def advance(self, units: float) -> None:
        """A step of ``units`` estimated seconds finished."""
        if self.enabled:
            self.bar.advance(self.task, units)

    def row(self, row: Row) -> None:
        """A row finished: print it above the bar and count it."""
        self.done += 1
        if self.enabled:
            self.bar.update(self.task, rows=self._rows_text())
            self.console.print(row_line(row), highlight=False, markup=False)

    def say(self, text: str) -> None:
        """A line above the bar (nothing without one)."""
        if self.enabled:
            self.console.print(text, highlight=False, markup=False)

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
