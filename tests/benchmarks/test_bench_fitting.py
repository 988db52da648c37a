"""``pgn-bench --fitting``: the whole fitting step per loss in eager PyTorch and ExecuTorch (:mod:`benchmarks.fitting`).

One tiny run through the CLI (talking-head generator at 32², batch 1, the MSE loss, eager PyTorch in a worker
process), and the ExecuTorch row's export and measurement in this process.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from pgn.benchmarks.cli import main
from pgn.benchmarks.fitting import FittingGrid, FittingRow, _export, _measure, markdown, rows_from_json
from pgn.export.training import executorch_training_available

needs_executorch = pytest.mark.skipif(executorch_training_available() is not None, reason="ExecuTorch is not installed")


def test_a_tiny_fitting_run_measures_in_workers_and_writes_every_output(tmp_path):
    out = {name: tmp_path / f"fit.{name}" for name in ("json", "md", "png")}
    result = CliRunner().invoke(main, ["--fitting", "default", "--sweep-size", "32", "--batch", "1", "--fitting-losses", "mse",
                                       "--repeats", "1", "--threads", "1", "--json", str(out["json"]),
                                       "--markdown", str(out["md"]), "--plot", str(out["png"]), "--fitting-runtimes", "eager"])
    assert result.exit_code == 0, result.output
    rows, header = rows_from_json(out["json"])
    assert [(r.generator, r.size, r.batch, r.loss, r.runtime, r.status) for r in rows] == [
        ("talking-head", 32, 1, "mse", "eager", "ok")]
    assert rows[0].median_ms > 0 and rows[0].peak_mb > 0 and len(rows[0].details["wall_ms"]) == 1
    assert rows[0].loss_ms == 0 and rows[0].loss_mb == 0  # the MSE row is its own baseline
    assert header["command"].startswith("pgn-bench ")
    assert "| talking-head | 32² | 1 | mse | eager |" in out["md"].read_text()
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@needs_executorch
def test_the_executorch_row_exports_a_training_program_and_measures_it(tmp_path):
    """The two tasks a worker runs for an ExecuTorch row, in this process."""
    case = dict(generator="talking-head", size=32, batch=1, loss="mse", runtime="executorch")
    exported = _export(case, tmp_path / "step.pte")
    assert exported["planned_memory_mb"] > 0 and exported["export_s"] > 0 and exported["pte_mb"] > 0
    grid = asdict(FittingGrid(repeats=2, warmup=0, memory_calls=2, threads=1))
    measured = _measure(case, grid, tmp_path / "step.pte")
    assert measured["median_ms"] > 0 and measured["peak_mb"] > 0 and len(measured["wall_ms"]) == 2


def test_batch_one_given_restricts_the_grid_and_the_default_keeps_both(monkeypatch):
    seen = []
    monkeypatch.setattr("pgn.benchmarks.fitting.main_fitting", lambda grid, *a: seen.append(grid))
    for args in (["--batch", "1"], []):
        assert CliRunner().invoke(main, ["--fitting", "default", *args]).exit_code == 0
    assert seen[0].batches == (1,) and seen[1].batches == FittingGrid().batches == (1, 8)


def test_a_loss_row_shows_what_it_adds_over_the_mse_row_and_failures_stay_rows():
    rows = [FittingRow("talking-head", 64, 8, "mse", "eager", median_ms=100.0, peak_mb=50.0),
            FittingRow("talking-head", 64, 8, "vgg19", "eager", median_ms=400.0, peak_mb=250.0, loss_ms=300.0, loss_mb=200.0),
            FittingRow("talking-head", 64, 8, "pgn", "executorch", status="RuntimeError: no kernel for aten::foo")]
    text = markdown(rows, "pgn-bench --fitting default", "a CPU")
    assert "| vgg19 | eager | 400 | — | 250 | 300 | 200 | ok |" in text
    assert "| pgn | executorch | — | — | — | — | — | RuntimeError: no kernel for aten::foo |" in text
    assert json.loads(json.dumps([r.__dict__ for r in rows]))  # rows serialize


def test_an_unknown_runtime_is_one_line():
    result = CliRunner().invoke(main, ["--fitting", "default", "--fitting-runtimes", "eager,tflite"])
    assert result.exit_code != 0 and "unknown runtimes tflite: choose from eager, executorch" in result.output
