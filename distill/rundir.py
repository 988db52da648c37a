"""The run folder's history: what an earlier run left there, moving it aside, and files cut short by a crash.

A run folder holds the files of :data:`RUN_OUTPUTS` and nothing else of ours. A *used* folder is one whose
history would be lost by starting over: training-state checkpoints (readable or not), ``pgn.pt``, or
``metrics.jsonl`` with at least one logged step. ``pgn-distill`` never overwrites such a folder: ``--resume``
continues it and ``--fresh`` first moves its files into ``<run-dir>/previous-<time>/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .checkpoints import CHECKPOINT_DIR, PLAIN_PGN_NAME, list_checkpoints
from .runlog import CURVE_FILE, METRICS_FILE, read_metrics

#: Everything a run writes into its folder (files and folders).
RUN_OUTPUTS = ("config.json", METRICS_FILE, CURVE_FILE, PLAIN_PGN_NAME, CHECKPOINT_DIR, "images", "tb")
PREVIOUS_PREFIX = "previous-"


def run_history(run_dir: str | Path) -> list[str]:
    """Names of the files in ``run_dir`` that hold an earlier run's history (empty for a new or unused folder)."""
    run_dir = Path(run_dir)
    found = [f"{CHECKPOINT_DIR}/{p.name}" for _, p in list_checkpoints(run_dir)]
    if (run_dir / PLAIN_PGN_NAME).is_file():
        found.append(PLAIN_PGN_NAME)
    if _has_logged_steps(run_dir / METRICS_FILE):
        found.append(METRICS_FILE)
    return found


def _has_logged_steps(path: Path) -> bool:
    return path.is_file() and any("step" in r for r in read_metrics(path))


def move_aside(run_dir: str | Path) -> Path | None:
    """Move the run's files (:data:`RUN_OUTPUTS`) into a new ``run_dir/previous-<time>/``; returns it (``None``: nothing there)."""
    run_dir = Path(run_dir)
    present = [name for name in RUN_OUTPUTS if os.path.lexists(run_dir / name)]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = run_dir / f"{PREVIOUS_PREFIX}{stamp}", 1
    while target.exists():
        n += 1
        target = run_dir / f"{PREVIOUS_PREFIX}{stamp}-{n}"
    target.mkdir()
    for name in present:
        os.replace(run_dir / name, target / name)
    return target


def remove_partial_files(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of writes a crash cut short (``.<name>.<random>.tmp``); returns them.

    Every file the run writes goes to such a temporary file first and is renamed into place when complete, so
    these are never needed.
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            partial = p.name.endswith(".tmp") and (p.name.startswith(".") or p.name == "config.json.tmp")
            if partial and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
