"""A warm parent that forks one fresh worker process per task, so no task pays for importing torch again.

Starting ``python -m pgn.benchmarks.worker`` costs 3–4 s on a 2-core CPU (importing torch), 8–10 s with
ExecuTorch's exporter (``executorch.exir`` pulls in ``torch._dynamo``); a default run has about twenty tasks. The
fork server imports those modules once, computes nothing, and forks a child per task. Each child is still its own
process: its own thread pools (created after the fork), its own heap, and its own peak memory (the measurement
resets the resident-set high-water mark of the child, :mod:`benchmarks.measure`), exactly as a fresh worker. The
server's own objects are set aside from garbage collection before the first fork (:func:`preload_modules`).

Protocol: the client (:class:`ForkServer`) writes one JSON line per task to the server's stdin, ``{"id", "task",
"result", "log", "timeout"}``; the server forks, the child runs :func:`benchmarks.worker.main` with its stdout and
stderr in ``log``, and the server answers ``{"id", "exit"}`` (the exit status; ``-9`` after a timeout, when it kills
the child) and ``timed_out`` on its stdout when the child is gone. Several tasks may run at once (parallel exports). Linux only
(``os.fork`` after importing torch is not safe on macOS; ``os.pidfd_open``): elsewhere :func:`available` is False and
the harness starts a fresh interpreter per task.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

#: Imported by every fork server: what a measurement worker needs.
BASE_PRELOAD = ("torch", "numpy", "pgn", "pgn.benchmarks.worker", "pgn.benchmarks.runners", "pgn.benchmarks.measure", "pgn.export")


def available() -> bool:
    """True where the fork server runs (Linux with ``os.pidfd_open``)."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


class ForkServer:
    """Client side: start the server with ``env`` and ``preload``, run tasks in it (thread-safe), :meth:`close`.

    Args:
        env: the server's environment (thread counts are read by torch when it is imported, before any fork).
        preload: modules to import in the server besides :data:`BASE_PRELOAD`; one that cannot be imported is
            skipped (the child then imports it itself, or fails with the reason in its row).
        log: file for the server's own stderr.
    """

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = (), log: Path | None = None):
        self._log = open(log, "wb") if log is not None else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "pgn.benchmarks.forkserver", *dict.fromkeys((*BASE_PRELOAD, *preload))]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._next = 0
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def run(self, task: Path, result: Path, log: Path, timeout: float) -> dict | None:
        """Run the worker on ``task`` in a forked child; ``{"exit": status, "timed_out": bool}`` (killed after
        ``timeout`` s), or None if the server itself died."""
        future: Future = Future()
        with self._lock:
            self._next += 1
            request_id = self._next
            self._pending[request_id] = future
            line = json.dumps({"id": request_id, "task": str(task), "result": str(result), "log": str(log), "timeout": timeout})
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._pending.pop(request_id, None)
                return None
        return future.result()

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            reply = json.loads(line)
            with self._lock:
                future = self._pending.pop(reply["id"], None)
            if future is not None:
                future.set_result(reply)
        with self._lock:  # the server is gone: nobody will answer
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_result(None)

    def close(self) -> None:
        """Let the running children finish, then stop the server."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------
# Server side


def _child(request: dict) -> None:
    """In the forked child: run the worker on the request's task with stdout and stderr in its log; never returns."""
    code = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from pgn.benchmarks.worker import main

        code = main([request["task"], request["result"]])
    except BaseException:  # noqa: BLE001 - the parent reads the last line of the log
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def preload_modules(names: list[str]) -> None:
    """Import ``names`` (one that cannot be imported is said on stderr; the child will say why, in its own row), then
    set what the server holds aside from garbage collection (``gc.freeze``): none of it can become garbage, so the
    children's collections look only at their own objects and do not write to the pages they share with the server
    (copy-on-write, which measured memory would count)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            print(f"fork server: not preloaded {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()


def serve(preload: list[str]) -> int:
    """The server loop: import ``preload`` (:func:`preload_modules`), then fork a child per request line on stdin
    until stdin closes and every child has exited."""
    preload_modules(preload)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the client decides
    running: dict[int, tuple[int, int, float]] = {}  # pidfd -> (pid, request id, deadline)
    buffer, stdin_open = b"", True

    def reply(request_id: int, status: int, timed_out: bool) -> None:
        os.write(1, json.dumps({"id": request_id, "exit": status, "timed_out": timed_out}).encode() + b"\n")

    while stdin_open or running:
        now = time.monotonic()
        wait = min((deadline - now for _, _, deadline in running.values()), default=None)
        ready, _, _ = select.select(([0] if stdin_open else []) + list(running), [], [], None if wait is None else max(0.0, wait))
        if 0 in ready:
            chunk = os.read(0, 65536)
            if not chunk:
                stdin_open = False
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    for pidfd in running:
                        os.close(pidfd)
                    _child(request)
                running[os.pidfd_open(pid)] = (pid, request["id"], time.monotonic() + float(request["timeout"]))
        for pidfd, (pid, request_id, deadline) in list(running.items()):
            finished, status = os.waitpid(pid, os.WNOHANG)
            if not finished and time.monotonic() < deadline:
                continue
            if not finished:  # past its time: kill it
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            os.close(pidfd)
            del running[pidfd]
            reply(request_id, os.waitstatus_to_exitcode(status), not finished)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
