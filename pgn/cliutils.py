"""What every command-line tool shares: one-line errors, output locations checked up front, JSON output.

The five tools (``pgn-info``, ``pgn-export``, ``pgn-distill``, ``pgn-demo``, ``pgn-bench``) run their bodies through
:func:`run_cli`, which

* checks every file and folder the command will write *before* the work starts (a read-only folder, a file where a
  folder should be, a folder where a file should be: one line, nothing measured or trained in vain);
* turns a :class:`PGNError`, a failed write (read-only file system, permission denied, disk full, …) and running
  out of memory into one line on stderr and exit status 1, and an interrupt (Ctrl-C, ``SIGTERM``) into one line
  and status 130 / 143;
* removes the folders it created for a command that then failed or was interrupted, when they are still empty.

Click's own usage errors (an unknown option, a value of the wrong type) keep click's message and exit status 2.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from .errors import PGNError, describe_os_error, os_error_in  # noqa: F401 (re-exported for the CLIs)
from .files import write_json, write_text  # noqa: F401 (moved to pgn.files; re-exported for code written against cliutils)
from .files import atomic_write, check_writable_special, missing_top, remove_empty_folders, writes_through

#: Exit status of a command interrupted by SIGINT (Ctrl-C) or SIGTERM, as a shell reports it.
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}

OUT_OF_MEMORY = "out of memory: use smaller inputs (a smaller --size or batch) or close other programs"


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by ``SIGTERM`` while a command runs, so cleanup code runs as for Ctrl-C."""

    signum = signal.SIGTERM


# --------------------------------------------------------------------------------------------------------
# Errors as one line


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``MemoryError``, PyTorch's CUDA out-of-memory error and its CPU allocator failure."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def error_line(exc: BaseException) -> str | None:
    """The one-line message for an error a user can act on, or ``None`` for a bug (which keeps its traceback)."""
    if isinstance(exc, PGNError):
        return str(exc)
    if is_out_of_memory(exc):
        return OUT_OF_MEMORY
    os_error = os_error_in(exc) if isinstance(exc, (OSError, RuntimeError)) else None
    if os_error is not None:
        return describe_os_error(os_error)
    return None


def fail(message: str, status: int = 1) -> None:
    """Print ``error: <message>`` (one line) on stderr and exit with ``status``."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(status)


# --------------------------------------------------------------------------------------------------------
# Output locations


def _probe(folder: Path) -> None:
    """Create and remove an empty file in ``folder``: the only check that also holds for root and ACLs."""
    fd, name = tempfile.mkstemp(prefix=".pgn-write-check-", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(name)


def check_output(path: str | Path, option: str, *, folder: bool = False) -> Path | None:
    """Raise a one-line :class:`PGNError` unless ``path`` can be written, creating nothing.

    Args:
        path: a file (``folder=False``; ``-`` means stdout and is always fine) or a folder the command fills.
        option: the option that named it (``--json``), for the message.
        folder: whether ``path`` is a folder.

    Returns:
        The topmost folder the command will have to create for ``path`` (``None`` if all exist), so a failed
        command can remove it again.
    """
    path = Path(path)
    if not folder and str(path) == "-":
        return None
    try:
        return _check_output(path, option, folder)
    except OSError as e:  # e.g. a name longer than the OS allows
        raise PGNError(f"{option} {describe_os_error(e, path)}") from None


def _check_output(path: Path, option: str, folder: bool) -> Path | None:
    if path.exists():
        if folder and not path.is_dir():
            raise PGNError(f"{option} {path}: a file is in the way where a folder is needed (remove it or choose another path)")
        if not folder and path.is_dir():
            raise PGNError(f"{option} {path}: is a folder, not a file (give a file name)")
    if not folder:
        try:
            check_writable_special(path)
        except PGNError as e:
            raise PGNError(f"{option}: {e}") from None
        if writes_through(path):  # a device, FIFO or /dev/stdout: written in place, its folder need not be writable
            if not os.access(path, os.W_OK):
                raise PGNError(f"{option} {path}: permission denied (choose a writable location)")
            return None
    missing = missing_top(path if folder else path.parent)
    existing = missing.parent if missing is not None else Path(os.path.abspath(path if folder else path.parent))
    if not existing.is_dir():
        raise PGNError(f"{option} {path}: {existing} is a file, where a folder is needed (remove it or choose another path)")
    try:
        _probe(existing)
    except OSError as e:
        raise PGNError(f"{option} {describe_os_error(e, path)}") from None
    return missing


# --------------------------------------------------------------------------------------------------------
# Running a command


def run_cli(
    fn: Callable[[], Any],
    *,
    files: Mapping[str, str | Path | None] | None = None,
    folders: Mapping[str, str | Path | None] | None = None,
) -> Any:
    """Run a CLI body with the toolkit's promises (see the module docs).

    Args:
        fn: the command's body.
        files: option → file the command writes (``None`` entries and ``-`` are skipped), checked up front.
        folders: option → folder the command fills, checked up front.
    """
    created: list[Path] = []
    status = 1
    previous = _on_sigterm_raise()
    try:
        for option, path in (files or {}).items():
            if path is not None:
                created.append(check_output(path, option))
        for option, path in (folders or {}).items():
            if path is not None:
                created.append(check_output(path, option, folder=True))
        status = 0
        return fn()
    except SystemExit as e:
        status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        raise
    except KeyboardInterrupt as e:
        status = EXIT_INTERRUPTED[getattr(e, "signum", signal.SIGINT)]
        fail("interrupted" + (" (SIGTERM)" if isinstance(e, Interrupted) else ""), status)
    except Exception as e:  # noqa: BLE001 - only errors with a one-line meaning are caught, bugs re-raise
        status = 1
        line = error_line(e)
        if line is None:
            raise
        fail(line)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if status:
            for top in created:
                if top is not None:
                    remove_empty_folders(top)


def _on_sigterm_raise():
    """Make SIGTERM raise :class:`Interrupted` (main thread only); returns the handler to restore, or ``None``."""

    def handler(signum, frame):
        raise Interrupted()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


# --------------------------------------------------------------------------------------------------------
# Option types


class FiniteFloat(click.FloatRange):
    """A float option within an optional range that also refuses NaN (and infinity unless ``allow_inf``)."""

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False,
                 max_open: bool = False, allow_inf: bool = False):
        super().__init__(min, max, min_open=min_open, max_open=max_open)
        self.allow_inf = allow_inf

    def convert(self, value, param, ctx):  # noqa: D102
        value = super().convert(value, param, ctx)
        if math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            bounds = [f"{'>' if self.min_open else '≥'} {self.min:g}"] if self.min is not None else []
            bounds += [f"{'<' if self.max_open else '≤'} {self.max:g}"] if self.max is not None else []
            self.fail(f"{value} is not a usable number here: give a finite value {' and '.join(bounds)}".rstrip(), param, ctx)
        return value
