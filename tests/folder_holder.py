"""A second process holding a folder with :func:`pgn.files.hold_folder`, for the one-writer-per-folder tests.

Forked from the test process (POSIX): a fresh interpreter would spend two seconds importing torch to take a file lock.
The holder only takes the lock, says so through a pipe and sleeps until it is killed; it leaves with ``os._exit``, so
nothing of the test process (fixtures, buffered output) runs in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from pgn.files import hold_folder


class FolderHolder:
    """Another process that holds ``folder`` as ``owner`` (the ``Popen`` methods the tests use: ``pid``,
    ``send_signal``, ``kill``, ``wait``, ``poll``)."""

    def __init__(self, folder: str | Path, owner: str, option: str):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the holder
            try:
                os.close(read)
                with hold_folder(folder, owner, option):
                    os.write(write, b"held")
                    time.sleep(600)
            finally:
                os._exit(0)
        os.close(write)
        self.pid, self.returncode = pid, None
        with os.fdopen(read, "rb") as pipe:
            said = pipe.read(4)
        if said != b"held":
            self.kill()
            raise RuntimeError(f"the holder process did not take {folder}")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the holder (if it still runs)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self) -> int:
        """Reap the holder; its exit status as ``Popen.returncode`` gives it (``-signal`` when killed)."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        """The exit status if the holder has ended, else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode
