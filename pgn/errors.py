"""The one exception type the toolkit raises for problems a user can fix, and one-line descriptions of failed file operations."""

from __future__ import annotations

import errno
from pathlib import Path


class PGNError(ValueError):
    """A user-facing error: one line that says what was wrong and what to do.

    Command-line tools print it as a single line and exit with status 1; library callers can catch it.
    It subclasses :class:`ValueError` because nearly every case is a bad value (a shape, a file, an option).
    """


#: What a failed file operation means for the user, by errno: (what happened, what to do).
_OS_ERRORS = {
    # first, so that the ENOSPC entry wins where EDQUOT is missing (Windows)
    getattr(errno, "EDQUOT", errno.ENOSPC): ("disk quota exceeded", "free some space or write somewhere else"),
    errno.ENOSPC: ("disk full", "free some space or write somewhere else"),
    errno.EROFS: ("read-only file system", "choose a writable location"),
    errno.EACCES: ("permission denied", "choose a writable location"),
    errno.EPERM: ("permission denied", "choose a writable location"),
    errno.ENOTDIR: ("a file is in the way where a folder is needed", "remove it or choose another path"),
    # mkdir(exist_ok=True) raises it only when something other than a folder has the name
    errno.EEXIST: ("a file is in the way where a folder is needed", "remove it or choose another path"),
    errno.EISDIR: ("is a folder, not a file", "give a file name"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.ENOMEM: ("out of memory", "use smaller inputs (--size, --batch) or free memory"),
}


def os_error_in(exc: BaseException) -> OSError | None:
    """The :class:`OSError` behind ``exc``: itself, or one it was raised from or while handling.

    ``torch.save`` reports a failed write (e.g. a full disk) as ``RuntimeError: unexpected pos …`` raised while
    handling the real ``OSError``; this finds that one.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_os_error(e: OSError, path: str | Path | None = None) -> str:
    """One line for a failed file operation: the path (``path`` if given, else the error's), what happened and what to do."""
    what, todo = _OS_ERRORS.get(e.errno, (e.strerror or type(e).__name__, ""))
    where = str(path) if path is not None else (e.filename if e.filename is not None else "")
    if path is None and e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    if len(where) > 200:  # a path longer than the OS allows can run to thousands of characters: keep one line
        where = f"{where[:80]}…{where[-80:]} ({len(where)} characters)"
    line = f"{where}: {what}" if where else what
    return f"{line} ({todo})" if todo else line


def first_line(message: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (or of a text), cut to ``limit`` characters.

    For quoting a third-party error (a converter, a runtime, a loader) inside a one-line :class:`PGNError`.
    An exception with an empty message gives its class name.
    """
    text = str(message).strip()
    if not text:
        return type(message).__name__ if isinstance(message, BaseException) else ""
    return text.splitlines()[0].strip()[:limit]
