"""Time and peak memory of repeated calls: the one meter of ``pgn-bench`` (one gradient computation in a worker
process) and of ``pgn-demo`` (a fitting step's loss part and whole step, :class:`LossMeter`).

Peak memory on the CPU is one definition for both (:func:`reset_peak`, :func:`peak_above`): freed heap is returned
to the OS, the kernel's resident-set high-water mark (``VmHWM``) is reset, the code runs, and the peak is the high-
water mark minus the resident set at the reset, minus file-backed pages first touched meanwhile (shared-library
code loaded on first use, not working memory). It sees every allocation, PyTorch's and ONNX Runtime's alike, and
needs Linux (``/proc/self/clear_refs``); elsewhere the benchmark samples RSS and the demos report it as unavailable.

Benchmark protocol (one fresh process per model × runtime × size, see :mod:`benchmarks.worker`):

1. the runner loads its model or artifact (``prepare``); freed heap is returned to the OS (``malloc_trim``) and
   the process's memory now is the *baseline*;
2. **memory**: the peak is reset, ``memory_calls`` gradients are computed, and the peak above the baseline is
   read back. On CUDA the ``warmup`` calls run first, so that one-time work (cuDNN's algorithm search and its
   workspace, lazy allocations) is not counted by chance:

   * CPU (Linux): the peak above the baseline as defined above;
   * CPU elsewhere: RSS sampled every millisecond by a thread (may miss sub-millisecond peaks);
   * CUDA, PyTorch: after the warm-up, the peak counters are reset; ``torch.cuda.max_memory_allocated`` during
     the calls minus ``memory_allocated`` before them;
   * CUDA, other runtimes: device memory in use (``cudaMemGetInfo``, whole device) after the warm-up and the
     calls minus before the warm-up: the steady-state footprint of running (ONNX Runtime's arena keeps what it
     grew, so it cannot be reset); memory a runtime reserves while loading (a TensorRT context) is in the
     baseline, not here;

3. **time**: ``warmup`` untimed calls (on CUDA one, the device is warm by now), then ``repeats`` timed calls. CPU calls are timed with
   ``time.perf_counter`` (every runner returns only when its result exists); PyTorch on CUDA with CUDA events
   around each call and a synchronize; other CUDA runtimes return host arrays, so their wall time includes
   the host↔device copies.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

MB = 1024.0 * 1024.0
#: How many calls a :class:`LossMeter` measures the memory of by default (the first ones).
MEMORY_CALLS = 5

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class TimingStats:
    """Summary of per-call times in milliseconds (computed from the raw samples)."""

    n: int
    median: float
    mean: float
    std: float
    min: float
    max: float
    p10: float
    p25: float
    p75: float
    p90: float
    iqr: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "TimingStats":
        """Statistics of a non-empty list of per-call times in ms."""
        if not samples_ms:
            raise ValueError("no timing samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(a, [10, 25, 50, 75, 90]))
        return cls(
            n=int(a.size),
            median=p50,
            mean=float(a.mean()),
            std=float(a.std(ddof=1)) if a.size > 1 else 0.0,
            min=float(a.min()),
            max=float(a.max()),
            p10=p10,
            p25=p25,
            p75=p75,
            p90=p90,
            iqr=p75 - p25,
        )

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class MemoryReading:
    """Peak working memory of the measured calls, in MiB, and how it was obtained."""

    peak_mb: float  #: peak above the model-loaded baseline (see module docs)
    baseline_mb: float  #: process RSS (CPU) or allocated/used device memory (CUDA) after loading
    method: str  #: rss_hwm / rss_sampled / cuda_max_memory_allocated / cuda_device_used
    detail: dict  #: raw numbers behind ``peak_mb``

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# Timers


@dataclass(frozen=True)
class CallTimes:
    """Per-call times in ms: ``wall_ms`` (what is reported) and ``cpu_ms``, the process CPU time of each call
    summed over its threads (a diagnostic: on a busy machine wall time grows, CPU time much less)."""

    wall_ms: list[float]
    cpu_ms: list[float]


def time_calls(step: Callable[[], object], repeats: int, warmup: int, timer: str = "wall") -> CallTimes:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed.

    ``timer`` is ``wall`` (``time.perf_counter``; ``step`` must return only when its work is done) or
    ``cuda_events`` (a CUDA event pair around each call, then a synchronize).
    """
    for _ in range(warmup):
        step()
    if timer == "cuda_events":
        return _time_cuda_events(step, repeats)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        t1, c1 = time.perf_counter(), time.process_time()
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    return CallTimes(wall, cpu)


def _time_cuda_events(step: Callable[[], object], repeats: int) -> CallTimes:
    import torch

    torch.cuda.synchronize()
    wall, cpu = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        c0 = time.process_time()
        start.record()
        step()
        end.record()
        end.synchronize()
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append(float(start.elapsed_time(end)))
    return CallTimes(wall, cpu)


# --------------------------------------------------------------------------------------------------------
# Memory


def _proc_status() -> dict[str, int]:
    """``/proc/self/status`` memory fields in bytes (Linux); empty where there is none."""
    out = {}
    try:
        text = _STATUS.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def peak_memory_available() -> bool:
    """True where the high-water mark can be reset and read (Linux ``/proc``): :func:`reset_peak` works."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return "VmHWM" in _proc_status()


def reset_peak() -> dict[str, int]:
    """Collect garbage, return freed heap to the OS and reset the high-water mark; the memory status right after
    (the baseline of :func:`peak_above`). Needs :func:`peak_memory_available`."""
    gc.collect()
    release_free_heap()
    _CLEAR_REFS.write_text("5")
    return _proc_status()


def peak_above(baseline: dict[str, int], held_hwm: int = 0) -> tuple[int, dict[str, float]]:
    """Peak working memory in bytes since :func:`reset_peak` gave ``baseline``, and the numbers behind it (MiB).

    The high-water mark (or ``held_hwm``, one read before a nested meter reset it, if larger) minus the baseline
    resident set, minus file-backed pages first touched since (see the module docs).
    """
    now = _proc_status()
    hwm = max(held_hwm, now.get("VmHWM", 0))
    file_pages = max(0, now.get("RssFile", 0) - baseline.get("RssFile", 0))
    peak = max(0, hwm - baseline.get("VmRSS", 0) - file_pages)
    detail = {"baseline_rss_mb": baseline.get("VmRSS", 0) / MB, "hwm_mb": hwm / MB, "new_file_pages_mb": file_pages / MB,
              "rss_after_mb": now.get("VmRSS", 0) / MB}
    return peak, detail


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class _RssSampler:
    """Samples this process's RSS every ``interval`` seconds on a thread; keeps the maximum."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "_RssSampler":
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def release_free_heap() -> bool:
    """Hand memory that is freed but still held by the C allocator back to the OS (glibc ``malloc_trim``).

    Without this, heap left over from loading (a compiler, an exporter) would silently absorb the measured
    calls' allocations and the peak would read too low. Returns False where glibc is not the allocator.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def warm_up(step: Callable[[], object], calls: int) -> None:
    """Run ``step`` ``calls`` times, untimed and unmeasured."""
    for _ in range(calls):
        step()


def measure_cpu_memory(step: Callable[[], object], calls: int, warmup: int = 0) -> MemoryReading:
    """Peak RSS above the current (model-loaded) RSS while ``step`` runs ``calls`` times (see module docs)."""
    warm_up(step, warmup)
    if peak_memory_available():
        baseline = reset_peak()
        for _ in range(calls):
            step()
        peak, detail = peak_above(baseline)
        return MemoryReading(peak / MB, baseline["VmRSS"] / MB, "rss_hwm", detail)
    gc.collect()
    release_free_heap()
    baseline = _rss_bytes()
    with _RssSampler() as sampler:
        for _ in range(calls):
            step()
    peak = max(0, sampler.peak - baseline)
    detail = {"baseline_rss_mb": baseline / MB, "sampled_peak_rss_mb": sampler.peak / MB, "ru_maxrss_mb": _ru_maxrss_mb()}
    return MemoryReading(peak / MB, baseline / MB, "rss_sampled", detail)


def _ru_maxrss_mb() -> float:
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def measure_cuda_torch_memory(step: Callable[[], object], calls: int, warmup: int = 0) -> MemoryReading:
    """Peak of PyTorch's CUDA allocations above the baseline while ``step`` runs ``calls`` times, after ``warmup`` calls."""
    import torch

    warm_up(step, warmup)
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(calls):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    detail = {"allocated_before_mb": base / MB, "max_allocated_mb": peak / MB, "reserved_mb": torch.cuda.memory_reserved() / MB,
              "warmup_calls_before": warmup}
    return MemoryReading((peak - base) / MB, base / MB, "cuda_max_memory_allocated", detail)


def measure_cuda_device_memory(step: Callable[[], object], calls: int, warmup: int = 0) -> MemoryReading:
    """Growth of device memory in use (whole GPU, ``cudaMemGetInfo``) over ``warmup`` + ``calls`` runs of ``step``.

    For runtimes that allocate outside PyTorch (ONNX Runtime's CUDA arena, TensorRT). Other processes on the
    same GPU would disturb it; the arena keeps what it grew, so the reading after the calls is its peak.
    """
    import torch

    gc.collect()
    torch.cuda.synchronize()
    free0, total = torch.cuda.mem_get_info()
    for _ in range(warmup + calls):
        step()
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info()
    used0, used1 = total - free0, total - free1
    detail = {"device_used_before_mb": used0 / MB, "device_used_after_mb": used1 / MB, "device_total_mb": total / MB,
              "warmup_calls_included": warmup}
    return MemoryReading(max(0, used1 - used0) / MB, used0 / MB, "cuda_device_used", detail)


def thread_environment() -> dict:
    """Thread-count settings of this process (environment variables and library values)."""
    import torch

    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {"env": env, "torch_num_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}


# --------------------------------------------------------------------------------------------------------
# The demos' meter: per call, nestable


@dataclass
class LossMeter:
    """Accumulates wall time and peak memory (:func:`peak_above`) of repeated calls: a fitting step's loss part
    (everything between the generated image and its gradient), or a whole step.

    Meters nest: a whole-step meter encloses the step's loss-part meter, which names it as ``within``. The inner
    meter's reset of the high-water mark then neither hides the outer meter's peak so far nor counts in its time.

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
        self._memory_ok = self.memory and peak_memory_available()
        self._paused_s = 0.0  # of the measurement under way: time spent paused
        self._held_peak = 0  # and the largest high-water mark seen before an inner meter reset it

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
        baseline: dict[str, int] = {}
        if measure_memory:
            with within.paused() if within is not None else nullcontext():
                baseline = reset_peak()
        self._paused_s, self._held_peak = 0.0, 0
        t0 = time.perf_counter()
        yield
        if timed:
            self.times_s.append(time.perf_counter() - t0 - self._paused_s)
        if measure_memory:
            self.peaks_bytes.append(peak_above(baseline, self._held_peak)[0])

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the clock of the measurement under way, and keep its peak so far, while the enclosed code runs.

        For an inner meter's reset of the peak (garbage collection, ``malloc_trim``, clearing the high-water
        mark): what the reset frees would otherwise vanish from this meter's peak, and its time add to this one's.
        """
        t0 = time.perf_counter()
        if self._memory_ok:
            self._held_peak = max(self._held_peak, _proc_status().get("VmHWM", 0))
        try:
            yield
        finally:
            self._paused_s += time.perf_counter() - t0

    def summary(self) -> dict:
        """Median time per call (ms); the largest and the median peak-memory growth of the measured calls (MiB).

        The largest growth is the measured code's footprint: it includes first-call allocations that stay (ONNX
        Runtime's memory arena, a VGG target-feature cache, Adam's moments), which later calls reuse. ``None`` where
        not measured.
        """
        out: dict = {"calls": len(self.times_s), "time_ms": None, "peak_mem_mib": None, "peak_mem_median_mib": None}
        if self.times_s:
            out["time_ms"] = 1000.0 * statistics.median(self.times_s)
        if self.peaks_bytes:
            out["peak_mem_mib"] = max(self.peaks_bytes) / 2**20
            out["peak_mem_median_mib"] = statistics.median(self.peaks_bytes) / 2**20
        return out
