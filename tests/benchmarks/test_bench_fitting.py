"""``pgn-bench --fitting``: the whole fitting step per loss in eager PyTorch and ExecuTorch (:mod:`benchmarks.fitting`).

One tiny run through the CLI (talking-head generator at 32², batch 1, the MSE loss, eager PyTorch in a worker
process), and an ExecuTorch row's export, program cache and measurement in this process (a two-convolution
generator stands in for the talking head there: lowering its program would cost half a minute).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from pgn.benchmarks.cli import main
from pgn.benchmarks import fitting
from pgn.benchmarks.fitting import (FittingGrid, FittingRow, _export, _exported_program, _measure, markdown,
                                      program_key, rows_from_json)
from pgn.export.cache import ArtifactCache
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


class TinyGenerator(nn.Module):
    """(1, 4, 16, 16) codes → (1, 3, 16, 16) images: two convolutions (the row's pipeline is what is tested here;
    the talking-head generator's own program is exported by the demos' tests)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(codes))))


def tiny_case(case: dict):
    torch.manual_seed(0)
    return TinyGenerator(), (torch.rand(1, 4, 16, 16),), torch.rand(1, 3, 16, 16)


@needs_executorch
def test_the_executorch_row_is_exported_once_then_measured_from_the_cache(tmp_path, monkeypatch):
    """The export task (run in this process here) and the measure task of an ExecuTorch row, and the program cache."""
    monkeypatch.setattr(fitting, "build_case", tiny_case)
    case = dict(generator="talking-head", size=16, batch=1, loss="mse", runtime="executorch")
    cache, _ = ArtifactCache.open(tmp_path / "cache")
    calls = []

    def export_here(task, workdir, grid):
        calls.append(task["kind"])
        return {**_export(task["case"], Path(task["pte"])), "status": "ok"}

    monkeypatch.setattr(fitting, "_run", export_here)
    grid = FittingGrid(repeats=2, warmup=0, memory_calls=2, threads=1)
    first, pte = _exported_program(case, grid, tmp_path, tmp_path / "a.pte", cache)
    assert calls == ["export"] and first["status"] == "ok" and first["export_s"] > 0 and first["planned_memory_mb"] > 0
    assert pte.parent.parent == cache.root
    second, cached = _exported_program(case, grid, tmp_path, tmp_path / "b.pte", cache)
    assert calls == ["export"] and second["cached"] and cached == pte
    assert second["planned_memory_mb"] == first["planned_memory_mb"]

    measured = _measure(case, asdict(grid), cached)
    assert measured["median_ms"] > 0 and measured["peak_mb"] > 0 and len(measured["wall_ms"]) == 2

    manifest_file = cached.parent / (cached.name + ".manifest.json")  # its hash right, but no fitting step's manifest
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({k: v for k, v in manifest.items() if k != "exporter"}))
    monkeypatch.setattr(fitting, "_run", lambda task, workdir, grid: calls.append("manifest") or {"status": "export failed (test)"})
    assert _exported_program(case, grid, tmp_path, tmp_path / "m.pte", cache)[0]["status"] == "export failed (test)"
    assert calls[-1] == "manifest"

    data = bytearray(cached.read_bytes())  # a damaged entry is never measured: the program is exported again
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    monkeypatch.setattr(fitting, "_run", lambda task, workdir, grid: calls.append("again") or {"status": "export failed (test)"})
    third, _ = _exported_program(case, grid, tmp_path, tmp_path / "c.pte", cache)
    assert calls[-1] == "again" and third["status"] == "export failed (test)"
    assert program_key({**case, "batch": 2}) != program_key(case) == program_key({**case, "runtime": "eager"})


def test_batch_one_given_restricts_the_grid_and_no_cache_reaches_it(monkeypatch):
    seen = []
    monkeypatch.setattr("pgn.benchmarks.fitting.main_fitting", lambda grid, *a: seen.append(grid))
    for args in (["--batch", "1"], ["--no-cache"]):
        assert CliRunner().invoke(main, ["--fitting", "default", *args]).exit_code == 0
    assert seen[0].batches == (1,) and seen[1].batches == FittingGrid().batches == (1, 8)
    assert seen[0].cache and not seen[1].cache


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
