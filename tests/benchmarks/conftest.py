"""Fixtures for the benchmark tests: tiny sizes, one thread, few repeats (no timing thresholds anywhere)."""

import pytest

from pgn.benchmarks.results import BenchmarkResult, Row, attach_ratios

TINY = 32


@pytest.fixture(scope="session", autouse=True)
def artifact_cache_home(tmp_path_factory):
    """Exported artifacts go to a cache of the test session, never the user's (shared by the session's tests)."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("pgn-home")
        patch.setenv("PGN_HOME", str(home))
        patch.delenv("XDG_CACHE_HOME", raising=False)
        yield home


def _make_row(model, runtime, samples, memory, *, kind=None, size=(TINY, TINY), work_macs=1_000_000, status="ok", reason=None,
              precision="fp32"):
    """A synthetic measured row (no worker process involved)."""
    kind = kind or ("teacher" if model.startswith("vgg") else "pgn")
    row = Row(model=model, display=model, kind=kind, runtime=runtime, family=runtime.split("-")[0], precision=precision, device="cpu",
              size=list(size), batch=1, status=status, reason=reason, samples_ms=list(samples),
              memory_mb=memory, work_macs=work_macs, params=10, paper_macs=20)
    if status == "ok":
        from pgn.benchmarks.measure import TimingStats

        row.time_ms = TimingStats.from_samples(row.samples_ms).to_dict()
    return row


@pytest.fixture
def make_row():
    """Factory for synthetic rows: ``make_row(model, runtime, samples_ms, memory_mb, ...)``."""
    return _make_row


@pytest.fixture
def synthetic_result():
    """A two-size result with VGG-19 on two runtimes, VGG-11, a PGN, and an unavailable row."""
    rows = []
    for size, scale in (((TINY, TINY), 1.0), ((2 * TINY, 2 * TINY), 4.0)):
        rows += [
            _make_row("vgg19", "torch", [100 * scale, 110 * scale, 90 * scale], 120.0 * scale, size=size, work_macs=30_000_000),
            _make_row("vgg19", "torch-compile", [50 * scale, 55 * scale, 60 * scale], 80.0 * scale, size=size, work_macs=30_000_000),
            _make_row("vgg19", "torch-bf16", [20 * scale, 25 * scale], 60.0 * scale, size=size, work_macs=30_000_000, precision="bf16"),
            _make_row("vgg11", "torch", [70 * scale, 80 * scale, 75 * scale], 90.0 * scale, size=size, work_macs=12_000_000),
            _make_row("resnet4", "torch", [10 * scale, 12 * scale, 11 * scale, 30 * scale], 20.0 * scale, size=size, work_macs=10_000_000),
            _make_row("resnet4", "tensorrt", [], None, size=size, status="unavailable", reason="TensorRT needs an NVIDIA GPU"),
        ]
    config = {"device": "cpu", "batch": 1, "sizes": [[TINY, TINY], [2 * TINY, 2 * TINY]], "repeats": 3, "effective_warmup": 1, "weights": None}
    env = {"cpu": "test cpu", "threads": 1, "load_average_start": [0.0, 0.0, 0.0], "load_average_end": [0.0, 0.0, 0.0]}
    return BenchmarkResult(config=config, environment=env, rows=attach_ratios(rows))
