"""The demo's ExecuTorch row (``pgn-demo finetune --losses pgn-executorch-train``): it calls ``export.export_training_step``
and ``export.load_training`` (their step-equivalence tests are in ``tests/export/test_export_training.py``)."""

import json
import sys

import pytest
from click.testing import CliRunner

import pgn
from pgn.demos.cli import main
from pgn.export.training import executorch_training_available

needs_executorch = pytest.mark.skipif(executorch_training_available() is not None, reason="ExecuTorch is not installed")


def test_int8_needs_the_xnnpack_kernels_and_unknown_precisions_are_refused():
    from pgn.demos.finetune import FinetuneConfig

    with pytest.raises(pgn.PGNError, match="int8 PGN runs in XNNPACK"):
        FinetuneConfig(executorch_precision="int8", executorch_kernels="portable")
    with pytest.raises(pgn.PGNError, match="executorch_precision must be one of fp32, int8"):
        FinetuneConfig(executorch_precision="fp16")


def _finetune_rows(out, losses: str, *options: str) -> tuple[dict, dict]:
    """``pgn-demo finetune`` at 16² (1 train frame, 2 steps, no meta-training): rows by key, and the notes."""
    result = CliRunner().invoke(main, ["finetune", "-o", str(out), "--size", "16", "--train-frames", "1", "--holdout-frames", "1",
                                       "--steps", "2", "--meta-steps", "0", "--losses", losses, "--no-progress", *options],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())["tables"]["finetune"]
    return {r.get("key", r["loss"]): r for r in table["rows"]}, table["notes"]


@pytest.mark.slow
@needs_executorch
def test_finetune_cli_runs_the_executorch_row(tmp_path):
    # the portable program exports in a fraction of the XNNPACK one's time; the XNNPACK program is tested above
    rows, notes = _finetune_rows(tmp_path / "ft", "pgn,pgn-executorch-train", "--executorch-kernels", "portable")
    row = rows["pgn-executorch-train"]
    assert row["status"] == "ok", row["status"]
    assert row["executorch_kernels"] == "portable"
    from pgn.export.executorch import read_program

    assert read_program((tmp_path / "ft" / "executorch_training" / "finetune_step.pte").read_bytes())["delegates"] == {}
    # timed and memory-measured like the other rows' whole step (no loss part apart); the program is kept, its size reported
    assert row["step_time_ms"] > 0 and row["step_peak_mem_mib"] is not None and row["pte_mib"] > 0.1
    assert row["loss_time_ms"] is None and row["loss_peak_mem_mib"] is None
    assert rows["pgn"]["step_time_ms"] > 0 and rows["pgn"]["step_peak_mem_mib"] is not None  # the eager row to compare with
    assert (tmp_path / "ft" / "executorch_training" / "finetune_step.pte").stat().st_size == pytest.approx(row["pte_mib"] * 2**20)
    assert row["holdout_mse_x1e3"]["mean"] != rows["before fine-tuning"]["holdout_mse_x1e3"]["mean"]
    assert any(f"is {row['pte_mib']:.2f} MiB" in note and "every operator on ExecuTorch's portable" in note for note in notes)
    assert any("no loss part of their own" in note for note in notes)
    assert row["pgn_precision"] == "fp32" and not any("in int8" in note for note in notes)


def test_the_notes_say_when_the_pgn_ran_in_int8():
    from pgn.demos.finetune import FinetuneConfig, _notes

    row = {"key": "pgn-executorch-train", "status": "ok", "sgd_lr": 5e-5, "executorch_kernels": "xnnpack",
           "pgn_precision": "int8", "pte_mib": 5.41, "pte_path": "run/executorch_training/finetune_step.pte"}
    notes = [note for note in _notes(FinetuneConfig(executorch_precision="int8"), [row], {}) if "ExecuTorch row" in note]
    assert len(notes) == 1 and "is 5.41 MiB." in notes[0] and "convolutions ran in int8" in notes[0]


def test_unknown_kernels_are_refused_in_one_line():
    from pgn.demos.finetune import FinetuneConfig

    with pytest.raises(pgn.PGNError, match="executorch_kernels must be one of xnnpack, portable"):
        FinetuneConfig(executorch_kernels="gpu")


def test_missing_executorch_is_a_skipped_row_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.extension.training", None)  # as without ExecuTorch
    reason = executorch_training_available()
    assert reason is not None and 'pip install "pgn-toolkit[executorch]"' in reason and "\n" not in reason
    rows, _ = _finetune_rows(tmp_path / "ft", "mse,pgn-executorch-train")
    assert rows["pgn-executorch-train"]["status"] == reason
    assert rows["mse"]["status"] == "ok"
