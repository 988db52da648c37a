"""Simulated write failures for the tests: a read-only folder, a full disk.

chmod does not stop root (CI containers often run as root), so :func:`deny_writes` patches the file functions to
fail under a folder the way a read-only file system or a full disk would.
"""

import builtins
import errno
import io
import os
from pathlib import Path


def is_root() -> bool:
    """True when chmod cannot make a folder read-only for this process."""
    return getattr(os, "geteuid", lambda: -1)() == 0


def deny_writes(folder, monkeypatch, errno_code: int = errno.EACCES) -> None:
    """Make creating, opening for writing, renaming into or removing from anything under ``folder`` raise
    ``OSError(errno_code)``, whoever calls it (``open``, ``Path.write_text``, ``tempfile``, ``os.replace``)."""
    folder = Path(folder).resolve()
    message = os.strerror(errno_code)

    def inside(path) -> bool:
        try:
            return Path(os.path.abspath(os.fsdecode(path))).resolve().is_relative_to(folder)
        except (TypeError, ValueError):
            return False  # a file descriptor or something else that is not a path

    def guard(real, *, path_args=(0,), writing=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            if writing(*args, **kwargs) and any(len(args) > i and inside(args[i]) for i in path_args):
                raise OSError(errno_code, message, os.fsdecode(args[path_args[0]]))
            return real(*args, **kwargs)

        return wrapper

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def opens_for_writing(file, mode="r", *args, **kwargs):
        return any(c in mode for c in "wax+")

    real_open = builtins.open
    monkeypatch.setattr(os, "open", guard(os.open, writing=lambda path, flags, *a, **k: bool(flags & write_flags)))
    monkeypatch.setattr(builtins, "open", guard(real_open, writing=opens_for_writing))
    monkeypatch.setattr(io, "open", guard(real_open, writing=opens_for_writing))
    for name in ("mkdir", "rmdir", "unlink", "remove"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), path_args=(0, 1)))


def make_read_only(folder, monkeypatch) -> None:
    """Make an existing ``folder`` read-only: chmod 555, and as root patched file functions (EACCES)."""
    Path(folder).chmod(0o555)
    if is_root():
        deny_writes(folder, monkeypatch, errno.EACCES)


class FullDiskFile:
    """A binary file object whose writes fail with ENOSPC once ``limit`` bytes are written (a disk that fills)."""

    def __init__(self, f, limit: int = 0):
        self._f, self.limit, self.written = f, limit, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
