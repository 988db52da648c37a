"""``benchmarks``: how much cheaper a PGN gradient is than a VGG forward + backward, on every runtime.

    from pgn.benchmarks import BenchmarkConfig, run_benchmark
    from pgn.benchmarks.report import render_table, plot_time_memory
    result = run_benchmark(BenchmarkConfig(device="cpu", models=("vgg19", "resnet4", "unet")))
    render_table(result)
    result.write_json("bench.json")
    plot_time_memory(result, "bench.png")

Command line: ``pgn-bench`` (see ``pgn-bench --help`` and ``benchmarks/README.md``).
"""

from .config import BenchmarkConfig
from .harness import run_benchmark
from .results import BenchmarkResult, Row

__all__ = ["BenchmarkConfig", "BenchmarkResult", "Row", "run_benchmark"]
