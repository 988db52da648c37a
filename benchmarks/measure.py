"""Time and peak memory of one gradient computation, measured inside a worker process.

Protocol (one fresh process per model × runtime × size, see :mod:`benchmarks.worker`):

1. the runner loads its model or artifact (``prepare``); freed heap is returned to the OS (``malloc_trim``) and
   the process's memory now is the *baseline*;
2. **memory**: the peak is reset, ``memory_calls`` gradients are computed, and the peak above the baseline is
   read back. On CUDA the ``warmup`` calls run first, so that one-time work (cuDNN's algorithm search and its
   workspace, lazy allocations) is not counted by chance:

   * CPU (Linux): the kernel's resident-set high-water mark (``VmHWM``), reset by writing 5 to
     ``/proc/self/clear_refs``, minus the baseline RSS, minus file-backed pages first touched during the calls
     (shared-library code loaded on first use, not working memory);
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
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

MB = 1024.0 * 1024.0


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
    """``/proc/self/status`` memory fields in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def _can_reset_hwm() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in _proc_status()
    except OSError:
        return False


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


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
    gc.collect()
    release_free_heap()
    if _can_reset_hwm():
        before = _proc_status()
        _reset_hwm()
        for _ in range(calls):
            step()
        after = _proc_status()
        file_pages = max(0, after.get("RssFile", 0) - before.get("RssFile", 0))
        raw = after["VmHWM"] - before["VmRSS"]
        peak = max(0, raw - file_pages)
        detail = {
            "baseline_rss_mb": before["VmRSS"] / MB,
            "hwm_mb": after["VmHWM"] / MB,
            "new_file_pages_mb": file_pages / MB,
            "rss_after_mb": after["VmRSS"] / MB,
        }
        return MemoryReading(peak / MB, before["VmRSS"] / MB, "rss_hwm", detail)
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
