"""Reading and writing torch files safely: atomic writes, weights-only reads, one-line errors naming the cause.

Used for every checkpoint the toolkit writes or reads (PGNs, training states, the authors' files). A file that
is not a torch checkpoint at all (empty, JSON, text, foreign bytes), a truncated one, a pickle that would run code,
a device this machine lacks, a read-only folder or a full disk each gets its own :class:`~pgn.errors.PGNError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any, Iterator

import click
import torch

from .errors import PGNError, describe_os_error, first_line


# --------------------------------------------------------------------------------------------------------
# Paths and devices


def as_path(path: Any, what: str = "checkpoint") -> Path:
    """``path`` as a :class:`~pathlib.Path`; a :class:`PGNError` for ``None`` or anything that is not a path."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise PGNError(f"the {what} path must be a file name (str or pathlib.Path), got {path!r}")
    return Path(path)


def check_map_location(map_location: Any) -> None:
    """Refuse a device that this machine does not have (e.g. ``"cuda"`` without CUDA) with a one-line error."""
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or function: torch.load's own business
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise PGNError(f"unknown map_location {map_location!r}: use 'cpu' or 'cuda'") from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise PGNError(f"map_location={str(map_location)!r} but CUDA is not available on this machine: use map_location='cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise PGNError(f"map_location={str(map_location)!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")


# --------------------------------------------------------------------------------------------------------
# Writing

#: Types ``torch.load(weights_only=True)`` reads back; anything else in ``meta`` would make the file unloadable.
_PLAIN_SCALARS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)
_PLAIN_CONTAINERS = (list, tuple, set, dict, OrderedDict)


def check_plain(value: Any, where: str) -> None:
    """Raise a :class:`PGNError` naming the first entry of ``value`` that a weights-only load cannot read back.

    Allowed: tensors, str/bytes/int/float/complex/bool/None, torch dtypes, devices and sizes, and lists, tuples,
    sets and dicts of those (exact types: a numpy float or a ``pathlib.Path`` is not plain).
    """
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_SCALARS:
        return
    if type(value) in _PLAIN_CONTAINERS:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict):
                check_plain(key, f"a key of {where}")
            check_plain(item, f"{where}[{key!r}]" if not isinstance(value, set) else f"an element of {where}")
        return
    raise PGNError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a weights-only load cannot read "
        f"back: store plain values (numbers, strings, lists, dicts) or tensors, e.g. float(x) or str(path)"
    )


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write (torch.save reports it as 'unexpected pos')."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _write_error(path: Path, e: OSError) -> str:
    return f"cannot write {describe_os_error(e, path)}"


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends, flush it to disk and rename it to
    ``path``, so readers never see a partial file.

    Parent folders are created. The temporary file gets the permissions ``open()`` would give (``mkstemp`` makes
    it 0600). If anything fails, the temporary file is removed, ``path`` is left as it was, and the error is raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.chmod(tmp, 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through :func:`atomic_write`: readers never see a partial file.

    A failed write (read-only folder, full disk, a file where a folder should be) is a one-line
    :class:`PGNError`; the temporary file is removed and an existing file at ``path`` is left as it was.
    """
    path = as_path(path)
    if path.is_dir():
        raise PGNError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.pt'}")
    writer = None
    try:
        with atomic_write(path, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
    except BaseException as e:
        failure = writer.error if writer is not None and writer.error is not None else e
        if isinstance(failure, OSError):
            raise PGNError(_write_error(path, failure)) from failure
        raise
    return path


# --------------------------------------------------------------------------------------------------------
# Reading


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint at all (empty, JSON, text, foreign bytes), or None if it may be one."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "the file is empty"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format (maybe truncated), or legacy pickle
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is neither a zip archive nor a pickle (foreign or random bytes)"
    if text.lstrip()[:1] in ("{", "["):
        try:
            if path.stat().st_size < 2**24:
                json.loads(path.read_text(encoding="utf-8"))
                return "it is JSON text"
        except (ValueError, UnicodeDecodeError):
            pass
        return "it looks like JSON text"
    return "it is a text file"


def _unreadable(path: Path, e: BaseException) -> str:
    """The one-line reason why ``torch.load`` failed on ``path``."""
    try:
        not_torch = _not_a_torch_file(path)
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    if not_torch:
        return f"{path} is not a torch checkpoint: {not_torch}"
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in text:
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        named = f" ({culprit.group(1)})" if culprit else ""
        return (
            f"refusing to load {path}: it contains Python objects beyond tensors and plain data{named}, which could "
            f"run code; re-save it as a state dict or a pgn-toolkit checkpoint"
        )
    if "CUDA" in text and "is_available() is False" in text:
        return f"{path} holds GPU tensors but CUDA is not available on this machine: load it with map_location='cpu'"
    if isinstance(e, PermissionError):
        return f"cannot read {path}: permission denied"
    return f"{path} is not a readable checkpoint (truncated or corrupted? {first_line(e, limit=160)})"


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors that name the real cause.

    Missing files, folders, empty/JSON/text/foreign files, truncated archives, pickles with code, GPU devices that
    this machine lacks: each is a :class:`PGNError` that says which.
    """
    path = as_path(path)
    check_map_location(map_location)
    if path.is_dir():
        raise PGNError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise PGNError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError,
            TypeError, io.UnsupportedOperation) as e:
        raise PGNError(_unreadable(path, e)) from None


# --------------------------------------------------------------------------------------------------------
# Writing text and JSON results


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`); parents are created.

    A failure leaves ``path`` as it was and raises the :class:`OSError` with ``path`` as its file name.
    """
    path = Path(path)
    try:
        with atomic_write(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    return path


def write_json(obj: Any, path: str | Path | None, *, indent: int = 2) -> Path | None:
    """Write ``obj`` as JSON to ``path`` (atomically), to stdout for ``-``, or nowhere for ``None``."""
    if path is None:
        return None
    text = json.dumps(obj, indent=indent, default=str)
    if str(path) == "-":
        click.echo(text)
        return None
    return write_text(path, text + "\n")
