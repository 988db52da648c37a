"""Reading and writing torch files safely: atomic writes, weights-only reads, one-line errors naming the cause.

Used for every checkpoint the toolkit writes or reads (PGNs, training states, the authors' files). A file that
is not a torch checkpoint at all (empty, JSON, text, foreign bytes), a truncated one, a pickle that would run code,
a device this machine lacks, a read-only folder or a full disk each gets its own :class:`~pgn.errors.PGNError`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import re
import stat
import tempfile
import time
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


def check_input_file(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is an existing regular file (symlinks followed); otherwise a
    one-line :class:`PGNError` that says what it is instead: missing (or a dangling symlink), a folder, a device,
    FIFO or socket ("not a regular file"), a name too long for the OS, unreadable."""
    path = as_path(path, what)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(path):
                raise PGNError(f"{what} not found: {path} is a symlink to {os.readlink(path)}, which does not exist") from None
            raise PGNError(f"{what} not found: {path}") from None
        if e.errno == errno.ELOOP:
            raise PGNError(f"cannot read {path}: a loop of symlinks") from None
        raise PGNError(f"cannot read {describe_os_error(e, path)}") from None
    except ValueError as e:  # an embedded NUL byte
        raise PGNError(f"the {what} path is not a usable file name ({e}): {path!r}") from None
    if stat.S_ISDIR(mode):
        raise PGNError(f"{path} is a folder, not a {what} file")
    kind = special_kind(path)
    if kind is not None:
        via = " (through a symlink)" if os.path.islink(path) else ""
        raise PGNError(f"{path} is not a regular file: it is a {kind}{via}; give a {what} file")
    return path


def check_map_location(map_location: Any) -> None:
    """Refuse a device that this machine does not have (e.g. ``"cuda"`` without CUDA) with a one-line error."""
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or function: torch.load's own business
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise PGNError(f"unknown map_location {map_location!r}: use 'cpu' or 'cuda'") from None
    if device.type == "meta":
        raise PGNError("map_location='meta' is not supported: meta tensors hold no weights; load on 'cpu' (or 'cuda')")
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


#: Paths that name one of this process's open file descriptors: written through that descriptor, never reopened
#: (reopening ``/dev/stdout`` when it is redirected to a file would truncate what was already printed).
_FD_PATH = re.compile(r"^/(?:dev/fd|proc/(?:self|thread-self|%d)/fd)/(\d+)$" % os.getpid())
_STD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def descriptor_of(path: str | Path) -> int | None:
    """The file descriptor that ``path`` names (``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/1``), or ``None``."""
    text = os.path.normpath(str(path))
    if text in _STD_STREAMS:
        return _STD_STREAMS[text]
    match = _FD_PATH.match(text)
    return int(match.group(1)) if match else None


def special_kind(path: str | Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (symlinks followed):
    ``"character device"``, ``"block device"``, ``"FIFO"`` or ``"socket"``; ``None`` otherwise."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None


def writes_through(path: str | Path) -> bool:
    """True where :func:`atomic_write` writes into ``path`` in place instead of replacing it: a file descriptor
    path (``/dev/stdout``) or an existing device or FIFO (``/dev/null``, a named pipe)."""
    return descriptor_of(path) is not None or special_kind(path) in ("character device", "FIFO")


def check_writable_special(path: str | Path) -> None:
    """Raise a one-line :class:`PGNError` for an existing target that is not a regular file and cannot be
    written in place: a socket or a block device (a disk). Devices and FIFOs pass; regular files are not checked."""
    kind = special_kind(path)
    if kind == "socket":
        raise PGNError(f"cannot write {path}: it is a socket, not a file (give a file name)")
    if kind == "block device":
        raise PGNError(f"refusing to write {path}: it is a block device (a disk), not a file (give a file name)")


@contextlib.contextmanager
def _write_in_place(path: Path, mode: str) -> Iterator[IO]:
    """Open an existing device, FIFO or file descriptor path for writing without replacing it."""
    fd = descriptor_of(path)
    if fd is not None:
        try:
            f = os.fdopen(os.dup(fd), mode)  # our own copy: closing it leaves the descriptor open
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
    else:
        check_writable_special(path)
        try:
            # O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of hanging; writes then block as usual.
            raw = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            if e.errno == errno.ENXIO and special_kind(path) == "FIFO":
                raise PGNError(f"cannot write {path}: it is a FIFO (named pipe) that nobody reads; start its reader first") from None
            raise OSError(e.errno, e.strerror, str(path)) from None
        os.set_blocking(raw, True)
        f = os.fdopen(raw, mode)
    with f:
        yield f
        f.flush()


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends, flush it to disk and rename it to
    ``path``, so readers never see a partial file.

    Parent folders are created. The temporary file gets the permissions ``open()`` would give (``mkstemp`` makes
    it 0600). If anything fails, the temporary file is removed, ``path`` is left as it was, and the error is raised.

    A target that exists and is not a regular file is never replaced: a device or FIFO (``/dev/null``, a named
    pipe) and a file descriptor path (``/dev/stdout``) are written in place, and a socket or block device is a
    one-line :class:`PGNError`. A symlink to a regular file keeps pointing at it (the file it names is replaced).
    """
    path = Path(path)
    if writes_through(path):
        with _write_in_place(path, mode) as f:
            yield f
        return
    check_writable_special(path)
    if path.is_symlink() and os.path.isfile(path):
        path = Path(os.path.realpath(path))
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
    writer = None
    try:
        if path.is_dir():
            raise PGNError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.pt'}")
        with atomic_write(path, "wb") as f:
            writer = _RecordingWriter(f)
            if writes_through(path):  # a pipe or device cannot seek: serialize first, then write the bytes
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                writer.write(buffer.getvalue())
            else:
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
    text = str(e)
    # First: a pickle naming a Python callable, whatever it looks like (a protocol-0 pickle is ASCII text).
    if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in text:
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        named = f" ({culprit.group(1)})" if culprit else ""
        return (
            f"refusing to load {path}: it is a pickle with Python objects beyond tensors and plain data{named}, "
            f"which could run code; re-save it as a state dict or a pgn-toolkit checkpoint"
        )
    try:
        not_torch = _not_a_torch_file(path)
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    if not_torch:
        return f"{path} is not a torch checkpoint: {not_torch}"
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
    check_map_location(map_location)
    path = check_input_file(path, "checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError,
            TypeError, io.UnsupportedOperation) as e:
        raise PGNError(_unreadable(path, e)) from None


# --------------------------------------------------------------------------------------------------------
# Writing text and JSON results


def save_figure(figure: Any, path: str | Path, **savefig_kwargs) -> Path:
    """Save a matplotlib ``figure`` to ``path`` atomically (:func:`atomic_write`), in the format its suffix names
    (PNG without one); parents are created. A failure leaves ``path`` as it was."""
    path = Path(path)
    with atomic_write(path) as f:
        figure.savefig(f, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    return path


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


# --------------------------------------------------------------------------------------------------------
# One writer per folder

#: The lock file a command holds in the folder it writes (a run folder, an export folder).
LOCK_NAME = ".pgn.lock"


@contextlib.contextmanager
def hold_folder(folder: str | Path, who: str, option: str) -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs: an exclusive OS lock (``flock``) on
    ``folder/.pgn.lock``, so that a second writer is refused instead of interleaving with this one.

    The kernel drops the lock when the process ends, however it ends (``kill -9`` included), so a lock is never
    stale; the file records the holder's PID for the message and is removed on the way out. The folder (and
    missing parents) is created; if the block fails, the folders created here are removed again where empty.

    Args:
        folder: the folder to hold.
        who: what holds it, for the message (``pgn-distill``, ``pgn-export``).
        option: the option that named it (``--run-dir``, ``--output``), for the message.

    Raises:
        PGNError: another live process holds the folder (named by PID); nothing in the folder was touched.
    """
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock, as before
        yield folder
        return
    created = missing_top(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise PGNError(f"{option} {folder} is in use by another {who} (PID {holder}): wait for it to end, or "
                           f"choose another folder") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        ok = False
        try:
            yield folder
            ok = True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            if not ok and created is not None:
                remove_empty_folders(created)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """The PID written in a lock file (``?`` while its holder has not written it yet)."""
    for _ in range(20):
        with contextlib.suppress(OSError):
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if text.isdigit():
                return text
        time.sleep(0.01)
    return "?"


def missing_top(folder: Path) -> Path | None:
    """The topmost folder of ``folder``'s path that does not exist yet (``None`` if it exists)."""
    folder = Path(os.path.abspath(folder))
    missing = None
    while not os.path.lexists(folder) and folder.parent != folder:
        missing, folder = folder, folder.parent
    return missing


def remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it, bottom-up, where they are empty (files are never touched)."""
    if not Path(top).is_dir():
        return
    for sub, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(sub)
