"""Time and peak memory of the loss part of a fitting step.

The loss part is everything between the generated image and its gradient: the loss network's forward, its
backward down to the image (or, for the on-device path, the runtime call and the MSE towards its proxy).
Generator forward/backward and the optimizer step are outside it, so every loss is timed on equal terms.

Peak memory is the growth of the process's resident set (peak RSS, ``VmHWM``) during the loss part, after
returning freed heap pages to the system and resetting the high-water mark. It sees every allocation, PyTorch's
and ONNX Runtime's alike. It needs Linux (``/proc/self/clear_refs``); elsewhere it is reported as unavailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        lib = None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def _status_bytes(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class LossMeter:
    """Accumulates wall time and peak-RSS growth of repeated loss-part calls.

    Args:
        memory: measure peak memory (costs a garbage collection per measured call; timing excludes it).
        memory_calls: measure memory on the first this many calls only (the loss part's footprint repeats
            every step; garbage collections are not free).
    """

    memory: bool = True
    memory_calls: int = 5
    times_s: list[float] = field(default_factory=list)
    peaks_bytes: list[int] = field(default_factory=list)

    def __post_init__(self):
        self._libc = _libc()
        self._memory_ok = self.memory and self._can_measure_memory()

    @staticmethod
    def _can_measure_memory() -> bool:
        if _status_bytes("VmHWM:") is None:
            return False
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return False
        return True

    def _reset_peak(self) -> int:
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        _CLEAR_REFS.write_text("5")
        return _status_bytes("VmRSS:") or 0

    @contextmanager
    def measure(self, timed: bool = True) -> Iterator[None]:
        """Time (and measure the memory of) the enclosed loss part.

        Args:
            timed: record its time; ``False`` measures only its memory (a runtime's one-time setup whose
                allocations stay for every later call, such as ExecuTorch's planned memory).
        """
        measure_memory = self._memory_ok and len(self.peaks_bytes) < self.memory_calls
        base = self._reset_peak() if measure_memory else 0
        t0 = time.perf_counter()
        yield
        if timed:
            self.times_s.append(time.perf_counter() - t0)
        if measure_memory:
            self.peaks_bytes.append(max(0, (_status_bytes("VmHWM:") or 0) - base))

    def summary(self) -> dict:
        """Median time per call (ms); the largest and the median peak-RSS growth of the measured calls (MiB).

        The largest growth is the loss part's footprint: it includes first-call allocations that stay (ONNX
        Runtime's memory arena, a VGG target-feature cache), which later calls reuse. ``None`` where not measured.
        """
        out: dict = {"calls": len(self.times_s), "time_ms": None, "peak_mem_mib": None, "peak_mem_median_mib": None}
        if self.times_s:
            out["time_ms"] = 1000.0 * statistics.median(self.times_s)
        if self.peaks_bytes:
            out["peak_mem_mib"] = max(self.peaks_bytes) / 2**20
            out["peak_mem_median_mib"] = statistics.median(self.peaks_bytes) / 2**20
        return out
