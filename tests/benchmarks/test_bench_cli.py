"""``pgn-bench`` through click's CliRunner: options, outputs, one-line errors, exit codes."""

import json

import pytest
import torch
from click.testing import CliRunner

from pgn.benchmarks.cli import main

TINY = ["--threads", "1", "--repeats", "2", "--warmup", "1", "--quiet"]


def test_help_has_examples():
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0 and "Examples:" in out.output and "--sweep-size" in out.output


def test_sweep_writes_json_and_both_plots(tmp_path):
    args = ["--models", "resnet4", "--runtimes", "torch,coreml", "--sweep-size", "32,64", "--json", str(tmp_path / "b.json"),
            "--plot", str(tmp_path / "b.png"), "--markdown", str(tmp_path / "b.md"), *TINY]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["config"]["sizes"] == [[32, 32], [64, 64]]
    assert {(r["runtime"], tuple(r["size"])) for r in data["rows"]} == {(rt, s) for rt in ("torch", "coreml") for s in ((32, 32), (64, 64))}
    assert (tmp_path / "b.png").is_file() and (tmp_path / "b-scaling.png").is_file()
    assert "coreml" in out.output
    again = CliRunner().invoke(main, ["--from-json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "c.png")])
    assert again.exit_code == 0 and "ResNet-4" in again.output and (tmp_path / "c-scaling.png").is_file()
    markdown = (tmp_path / "b.md").read_text()
    assert markdown.count("| ResNet-4 | torch |") == 2 and "coreml" in markdown and "32×32" in markdown and "64×64" in markdown


def test_size_and_sweep_are_exclusive():
    out = CliRunner().invoke(main, ["--size", "64", "--sweep-size", "32,64"])
    assert out.exit_code == 2 and "either --size or --sweep-size" in out.output


def test_bad_model_is_one_line_and_exit_1():
    out = CliRunner().invoke(main, ["--models", "resnet5", *TINY])
    assert out.exit_code == 1
    assert out.output.strip().startswith("error: unknown model 'resnet5'") and len(out.output.strip().splitlines()) == 1


def test_bad_size_is_one_line_and_exit_1():
    out = CliRunner().invoke(main, ["--models", "unet", "--size", "48", *TINY])
    assert out.exit_code == 1 and "multiples of 32" in out.output


def test_nothing_measurable_is_an_error():
    out = CliRunner().invoke(main, ["--models", "resnet4", "--runtimes", "tensorrt", "--size", "32", *TINY])
    assert out.exit_code == 1 and "nothing could be measured" in out.output


def test_cuda_without_a_gpu_is_rows_with_reasons_and_exit_1(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    out = CliRunner().invoke(main, ["--device", "cuda", "--models", "resnet4", "--runtimes", "torch,onnxruntime,tensorrt", "--size", "32", *TINY])
    assert out.exit_code == 1
    assert "no CUDA GPU" in out.output and "nothing could be measured" in out.output


def _errors(out):
    return [line for line in out.output.splitlines() if line.startswith("error:")]


def test_unwritable_outputs_fail_before_measuring(read_only_dir, tmp_path, monkeypatch):
    import pgn.benchmarks.harness

    monkeypatch.setattr(pgn.benchmarks.harness, "run_benchmark", lambda *a, **k: pytest.fail("measured with nowhere to save"))
    (tmp_path / "file").write_text("x")
    for option, path in (("--json", read_only_dir / "b.json"), ("--plot", read_only_dir / "b.png"), ("--json", tmp_path / "file" / "b.json")):
        out = CliRunner().invoke(main, ["--models", "resnet4", "--size", "32", option, str(path), *TINY])
        assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1 and _errors(out)[0].startswith(f"error: {option}")


def test_a_late_write_failure_keeps_the_table_and_saves_the_results_elsewhere(synthetic_result, tmp_path, monkeypatch):
    import pgn.benchmarks.harness
    from write_faults import make_read_only

    results = tmp_path / "results"
    results.mkdir()

    def measure_then_lose_the_folder(*args, **kwargs):
        make_read_only(results, monkeypatch)  # e.g. a network share that went read-only during the run
        return synthetic_result

    monkeypatch.setattr(pgn.benchmarks.harness, "run_benchmark", measure_then_lose_the_folder)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["--models", "resnet4", "--size", "32", "--json", str(results / "b.json"),
                                    "--plot", str(results / "b.png"), *TINY])
    assert out.exit_code == 1 and "resnet4" in out.output  # the table was printed
    (line,) = _errors(out)
    saved = next(tmp_path.glob("pgn-bench-*.json"))
    assert str(results / "b.json") in line and "permission denied" in line and f"the results are in {saved} " in line
    again = CliRunner().invoke(main, ["--from-json", str(saved)])
    assert again.exit_code == 0 and "resnet4" in again.output


@pytest.mark.parametrize("content", ["[1, 2]", "{\"schema\": \"pgn-bench/1\", \"rows\": [{\"x\": 1}]}", b"\x89PNG\r\n\x1a\n\x00"])
def test_from_json_of_something_else_is_one_line(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = CliRunner().invoke(main, ["--from-json", str(path)])
    assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1 and _errors(out)


def test_nan_timeout_is_a_usage_error():
    out = CliRunner().invoke(main, ["--timeout", "nan"])
    assert out.exit_code == 2 and "finite" in out.output


def test_check_values_is_recorded_and_said(tmp_path):
    args = ["--models", "resnet4", "--runtimes", "torch", "--size", "32", "--check-values", "always", "--json", str(tmp_path / "b.json"),
            "--markdown", str(tmp_path / "b.md"), *TINY]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["config"]["check_values"] == "always"
    assert data["rows"][0]["runtime_info"]["check_values"] == "always"
    assert "checked input values: always" in (tmp_path / "b.md").read_text()
    bad = CliRunner().invoke(main, ["--check-values", "sometimes", *TINY])
    assert bad.exit_code == 2 and "sometimes" in bad.output


def test_bad_graph_options_are_one_line_and_exit_1():
    out = CliRunner().invoke(main, ["--models", "unet", "--graph-options", "band_rowz=4", *TINY])
    assert out.exit_code == 1 and "band_rows, band_levels" in out.output and len(out.output.strip().splitlines()) == 1


def test_graph_options_reach_the_export_task(monkeypatch, tmp_path):
    from pgn.benchmarks import harness
    from pgn.benchmarks.config import BenchmarkConfig

    config = BenchmarkConfig(models=("unet",), runtimes=("onnxruntime",), sizes=(32,), graph_options="decoder_conv=split")
    assert config.to_dict()["graph_options"] == "decoder_conv=split"
    tasks = []
    monkeypatch.setattr(harness, "run_task", lambda task, *args, **kwargs: tasks.append(task) or {"status": "failed", "reason": "stub"})
    harness._Artifacts(config, tmp_path).get("unet", "onnxruntime", (32, 32), tmp_path / "inputs.pt")
    assert [(t.mode, t.graph_options) for t in tasks] == [("prepare", config.graph_options)]


def test_redirected_output_is_the_table_alone_and_the_last_line_names_full(tmp_path):
    """Not a terminal (CliRunner, a file, a CI log): no progress, no row lines, the table and its notes, then the hint."""
    from pgn.benchmarks.cli import FULL_HINT

    out = CliRunner().invoke(main, ["--models", "resnet4", "--runtimes", "torch", "--size", "32", "--threads", "1", "--repeats", "2"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("pgn-bench: cpu") and "32×32" in lines[0] and "quick run" in lines[0]
    assert lines[-1] == FULL_HINT and "--full" in FULL_HINT
    assert not any("rows" in line or "left" in line or "✓" in line for line in lines)


def test_live_progress_on_a_terminal_prints_each_row_as_it_ends(make_row):
    import io

    from rich.console import Console

    from pgn.benchmarks.progress import LiveProgress
    from pgn.benchmarks.results import attach_ratios

    stream = io.StringIO()
    vgg, pgn_row = make_row("vgg19", "torch", [100.0, 100.0], 50.0), make_row("resnet4", "torch", [10.0, 10.0], 5.0)
    skipped = make_row("resnet4", "coreml", [], None, status="unavailable", reason="Core ML models run only on macOS")
    attach_ratios([vgg, pgn_row, skipped])
    with LiveProgress(True, 3, 30.0, console=Console(file=stream, force_terminal=True, width=120)) as live:
        for row in (vgg, pgn_row, skipped):
            live.step(f"measuring {row.model} on {row.runtime}")
            live.advance(10.0)
            live.row(row)
    text = stream.getvalue()
    assert "vgg19 · torch · 100.0 ms · 50.0 MB" in text
    assert "resnet4 · torch · 10.0 ms · 5.0 MB · 10.0× faster than VGG-19" in text
    assert "resnet4 · coreml: unavailable: Core ML models run only on macOS" in text
    assert "3/3 rows" in text and "left" in text  # the bar: rows done and time left
    quiet = io.StringIO()
    with LiveProgress(True, 1, 1.0, console=Console(file=quiet, force_terminal=False)) as live:
        live.row(vgg)
    assert quiet.getvalue() == ""  # not a terminal: nothing
