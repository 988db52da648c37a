"""Time and peak memory of a fitting step: of its loss part, and of the whole step.

The loss part is everything between the generated image and its gradient: the loss network's forward, its
backward down to the image (or, for the on-device path, the runtime call and the MSE towards its proxy).
Generator forward/backward and the optimizer step are outside it, so every loss is timed on equal terms.
The whole step adds them: generator forward, loss part, backward into the generator, optimizer update. It is
what an on-device trainer runs as one call, so it is the part that compares eager PyTorch with such a trainer.

Peak memory is the growth of the process's resident set (peak RSS, ``VmHWM``) during the measured code, after
returning freed heap pages to the system and resetting the high-water mark. It sees every allocation, PyTorch's
and ONNX Runtime's alike. It needs Linux (``/proc/self/clear_refs``); elsewhere it is reported as unavailable.

Meters nest: a whole-step meter encloses the step's loss-part meter, which names it as ``within``. The inner
meter's reset of the high-water mark then neither hides the outer meter's peak so far nor counts in its time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

#: How many calls a meter measures the memory of by default (the first ones).
MEMORY_CALLS = 5

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
    """Accumulates wall time and peak-RSS growth of repeated calls (a step's loss part, or a whole step).

    Args:
        memory: measure peak memory (costs a garbage collection per measured call; timing excludes it).
        memory_calls: measure memory on the first this many calls only (a step's footprint repeats every step;
            garbage collections are not free).
    """

    memory: bool = True
    memory_calls: int = MEMORY_CALLS
    times_s: list[float] = field(default_factory=list)
    peaks_bytes: list[int] = field(default_factory=list)

    def __post_init__(self):
        self._libc = _libc()
        self._memory_ok = self.memory and self._can_measure_memory()
        self._paused_s = 0.0  # of the measurement under way: time spent paused
        self._held_peak = 0  # and the largest high-water mark seen before an inner meter reset it

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
    def measure(self, timed: bool = True, within: "LossMeter | None" = None) -> Iterator[None]:
        """Time (and measure the memory of) the enclosed code: one call.

        Args:
            timed: record its time; ``False`` measures only its memory (a runtime's one-time setup whose
                allocations stay for every later call, such as ExecuTorch's planned memory).
            within: the meter measuring code that encloses this call (the whole step around its loss part). It
                is paused while this meter resets the peak, so its own time and peak stay right.
        """
        measure_memory = self._memory_ok and len(self.peaks_bytes) < self.memory_calls
        base = 0
        if measure_memory:
            with within.paused() if within is not None else nullcontext():
                base = self._reset_peak()
        self._paused_s, self._held_peak = 0.0, 0
        t0 = time.perf_counter()
        yield
        if timed:
            self.times_s.append(time.perf_counter() - t0 - self._paused_s)
        if measure_memory:
            peak = max(self._held_peak, _status_bytes("VmHWM:") or 0)
            self.peaks_bytes.append(max(0, peak - base))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the clock of the measurement under way, and keep its peak so far, while the enclosed code runs.

        For an inner meter's reset of the peak (garbage collection, ``malloc_trim``, clearing the high-water
        mark): what the reset frees would otherwise vanish from this meter's peak, and its time add to this one's.
        """
        t0 = time.perf_counter()
        if self._memory_ok:
            self._held_peak = max(self._held_peak, _status_bytes("VmHWM:") or 0)
        try:
            yield
        finally:
            self._paused_s += time.perf_counter() - t0

    def summary(self) -> dict:
        """Median time per call (ms); the largest and the median peak-RSS growth of the measured calls (MiB).

        The largest growth is the measured code's footprint: it includes first-call allocations that stay (ONNX
        Runtime's memory arena, a VGG target-feature cache, Adam's moments), which later calls reuse. ``None`` where not measured.
        """
        out: dict = {"calls": len(self.times_s), "time_ms": None, "peak_mem_mib": None, "peak_mem_median_mib": None}
        if self.times_s:
            out["time_ms"] = 1000.0 * statistics.median(self.times_s)
        if self.peaks_bytes:
            out["peak_mem_mib"] = max(self.peaks_bytes) / 2**20
            out["peak_mem_median_mib"] = statistics.median(self.peaks_bytes) / 2**20
        return out
