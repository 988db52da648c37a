"""The measuring machinery: statistics from raw samples, the call protocol, and the memory readings of the
benchmark and of the demos' per-call meter (one definition of peak memory)."""

import sys
import time
import types

import numpy as np
import pytest
import torch

from pgn.benchmarks.measure import LossMeter, MemoryReading, TimingStats, measure_cpu_memory, time_calls


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


# the demos' per-call meter


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc (Linux)")
def test_loss_meter_records_time_and_memory():
    meter = LossMeter(memory=True)
    for _ in range(2):
        with meter.measure():
            x = torch.ones(16 * 2**20 // 4)  # 16 MiB, touched
            float(x.sum())
            del x
    s = meter.summary()
    assert s["calls"] == 2 and s["time_ms"] > 0
    assert s["peak_mem_mib"] >= 15.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc (Linux)")
def test_loss_meter_counts_the_memory_but_not_the_time_of_an_untimed_setup():
    meter = LossMeter(memory=True)
    with meter.measure(timed=False):  # a setup whose 32 MiB stay for the calls
        kept = torch.ones(32 * 2**20 // 4)
        float(kept.sum())
    with meter.measure():
        float(kept.sum())
    s = meter.summary()
    assert s["calls"] == 1 and len(meter.peaks_bytes) == 2
    assert s["peak_mem_mib"] >= 31.0 and meter.peaks_bytes[1] < 8 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc (Linux)")
def test_a_nested_meter_neither_hides_the_outer_peak_nor_adds_its_reset_to_the_outer_time(monkeypatch):
    outer, inner = LossMeter(memory=True), LossMeter(memory=True)  # a whole step around its loss part
    import pgn.benchmarks.measure

    reset, reset_s = pgn.benchmarks.measure.reset_peak, 0.25

    def slow_reset():
        time.sleep(reset_s)
        return reset()

    monkeypatch.setattr(pgn.benchmarks.measure, "reset_peak", slow_reset)
    with outer.measure():
        x = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched and freed before the inner reset
        float(x.sum())
        del x
        with inner.measure(within=outer):
            float(torch.ones(1024).sum())
    assert outer.peaks_bytes[0] >= 31 * 2**20 and inner.peaks_bytes[0] < 8 * 2**20
    assert inner.times_s[0] < reset_s and outer.times_s[0] < reset_s


def test_loss_meter_without_proc_reports_no_memory(monkeypatch, tmp_path):
    import pgn.benchmarks.measure

    monkeypatch.setattr(pgn.benchmarks.measure, "_STATUS", tmp_path / "no-status")  # as on macOS or Windows
    meter = LossMeter(memory=True)
    with meter.measure():
        torch.ones(1024).sum()
    s = meter.summary()
    assert s["calls"] == 1 and s["time_ms"] > 0 and s["peak_mem_mib"] is None
