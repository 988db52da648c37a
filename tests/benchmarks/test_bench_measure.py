"""The measuring machinery: statistics from raw samples, the call protocol, and the memory readings."""

import types

import numpy as np
import pytest

from pgn.benchmarks.measure import MemoryReading, TimingStats, measure_cpu_memory, time_calls


def test_stats_from_samples_match_numpy():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0]
    s = TimingStats.from_samples(samples)
    assert s.n == 6
    assert s.median == pytest.approx(np.median(samples))
    assert s.p10 == pytest.approx(np.percentile(samples, 10))
    assert s.p90 == pytest.approx(np.percentile(samples, 90))
    assert s.iqr == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))
    assert s.min == 1.0 and s.max == 100.0
    assert set(s.to_dict()) == {"n", "median", "mean", "std", "min", "max", "p10", "p25", "p75", "p90", "iqr"}


def test_stats_need_samples():
    with pytest.raises(ValueError):
        TimingStats.from_samples([])


def test_time_calls_runs_warmup_then_repeats():
    calls = []
    times = time_calls(lambda: calls.append(1), repeats=4, warmup=3)
    assert len(calls) == 7
    assert len(times.wall_ms) == len(times.cpu_ms) == 4 and all(s >= 0 for s in times.wall_ms)


def test_cpu_memory_sees_a_large_temporary_allocation():
    def allocate_64mb():
        a = np.ones(64 * 2**20 // 8, dtype=np.float64)  # touched pages, freed on return
        return float(a[-1])

    reading = measure_cpu_memory(allocate_64mb, calls=2)
    assert isinstance(reading, MemoryReading)
    assert reading.method in ("rss_hwm", "rss_sampled")
    assert reading.peak_mb >= 48  # the sampled fallback may miss a little, never most of it
    assert reading.baseline_mb > 0


def test_cpu_memory_of_a_step_that_allocates_nothing_is_small():
    reading = measure_cpu_memory(lambda: None, calls=2)
    assert reading.peak_mb < 8


class _FakeCudaAllocator:
    """PyTorch's CUDA memory counters, for a step whose first call also allocates a big one-time workspace
    (cuDNN's algorithm search) and every call 10 MiB of working memory."""

    MB = 2**20

    def __init__(self):
        self.allocated, self.peak, self.calls = 50 * self.MB, 50 * self.MB, 0

    def step(self):
        self.calls += 1
        if self.calls == 1:
            self._alloc(300 * self.MB)
        self._alloc(10 * self.MB)

    def _alloc(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)
        self.allocated -= n

    def install(self, monkeypatch):
        import torch

        for name, fn in (("synchronize", lambda *a: None), ("memory_allocated", lambda *a: self.allocated),
                         ("max_memory_allocated", lambda *a: self.peak), ("memory_reserved", lambda *a: self.peak),
                         ("reset_peak_memory_stats", lambda *a: setattr(self, "peak", self.allocated))):
            monkeypatch.setattr(torch.cuda, name, fn)


def test_cuda_peak_memory_is_read_after_the_warm_up(monkeypatch):
    """The one-time workspace of the first call must not be counted as the model's working memory."""
    import torch

    from pgn.benchmarks import runners, worker

    alloc = _FakeCudaAllocator()
    alloc.install(monkeypatch)

    class FakeRunner:
        memory, timer = "cuda_torch", "wall"
        runtime = types.SimpleNamespace(name="torch", family="torch")

        def prepare(self):
            pass

        def step(self):
            alloc.step()

        def info(self):
            return {}

    monkeypatch.setattr(runners, "make_runner", lambda *a, **k: FakeRunner())
    monkeypatch.setattr(worker, "_load_inputs", lambda path: {})
    task = worker.Task(mode="measure", model="resnet4", runtime="torch", device="cuda", size=(32, 32), batch=1, inputs="-",
                       repeats=3, warmup=2, memory_calls=2)
    result = worker.measure(task)
    assert result["memory"]["peak_mb"] == pytest.approx(10.0)
    assert result["memory"]["detail"]["warmup_calls_before"] == 2
    assert alloc.calls == 2 + 2 + 1 + 3  # warm-up, memory, one untimed call, timed
    assert torch.cuda.memory_allocated() == alloc.allocated
