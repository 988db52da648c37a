"""The whole fine-tuning step in ExecuTorch's training runtime (:mod:`demos.ondevice_executorch`)."""

import copy
import json
import sys

import pytest
import torch
from click.testing import CliRunner

import pgn
from pgn.errors import PGNError
from pgn.demos.cli import main
from pgn.demos.losses import PGNLossTerm
from pgn.demos.ondevice_executorch import (
    ExecuTorchTrainer,
    FinetuneStepProgram,
    executorch_training_available,
    export_step_program,
    finetune_on_executorch,
)

needs_executorch = pytest.mark.skipif(executorch_training_available() is not None, reason="ExecuTorch is not installed")
MSE_WEIGHT = 20.0
LR = 1e-3  # large enough that a wrong learning rate or a missing term moves the parameters by far more than 1e-5


@pytest.fixture(scope="module")
def pte(finetune_batch):
    """The step program of ``finetune_batch``, exported once for the module (the export takes most of the time)."""
    if executorch_training_available() is not None:
        pytest.skip("ExecuTorch is not installed")
    init, poses, train, model = finetune_batch
    return export_step_program(FinetuneStepProgram(copy.deepcopy(init), model, MSE_WEIGHT, (16, 16)), poses, train)


def _eager_sgd_step(init, model, poses, train, lr, mse_weight=MSE_WEIGHT):
    """One eager PyTorch step: pgn.PGNLoss with the λ·MSE term (``PGNLossTerm``), torch's SGD."""
    generator = copy.deepcopy(init)
    optimizer = torch.optim.SGD(generator.parameters(), lr=lr)
    PGNLossTerm(model, mse_weight).per_sample(generator(poses), train).sum().backward()
    optimizer.step()
    return {f"generator.{name}": p.detach() for name, p in generator.named_parameters()}


def test_step_program_loss_is_the_pgn_student_loss(finetune_batch):
    init, poses, train, model = finetune_batch
    program = FinetuneStepProgram(copy.deepcopy(init), model, MSE_WEIGHT, (16, 16))
    with torch.no_grad():
        loss, image = program(poses, train)
        expected = PGNLossTerm(model, MSE_WEIGHT).per_sample(init(poses), train).sum()
    torch.testing.assert_close(image, init(poses).detach())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


@needs_executorch
def test_one_executorch_step_equals_one_eager_pgnloss_step(finetune_batch, pte):
    init, poses, train, model = finetune_batch
    trainer = ExecuTorchTrainer.load(pte, poses, train, LR)
    trainer.step(poses, train)
    ours = trainer.parameters()
    reference = _eager_sgd_step(init, model, poses, train, LR)
    start = {f"generator.{name}": p.detach() for name, p in init.named_parameters()}
    assert set(ours) == set(reference)
    moved = max(float((reference[k] - start[k]).abs().max() / reference[k].abs().max()) for k in reference)
    assert moved > 1e-3  # the step is far larger than the tolerance
    for name, expected in reference.items():
        error = float((ours[name] - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        assert error <= 1e-5, (name, error)


@needs_executorch
def test_the_pgn_and_the_generators_convolutions_run_in_xnnpack(pte):
    from pgn.export.executorch import DELEGATE, read_program

    facts = read_program(pte)
    assert facts["delegates"].get(DELEGATE, 0) > 0
    # the generator's convolutions (forward and backward) are matrix multiplies in the delegate, the frozen PGN's
    # convolutions are XNNPACK convolutions: no convolution is left to ExecuTorch's portable kernels
    assert not [op for op in facts["outside_delegate"] if "convolution" in op], facts["outside_delegate"]


@needs_executorch
def test_pgn_weights_are_frozen_constants(finetune_batch, pte):
    init, poses, train, model = finetune_batch
    before = copy.deepcopy(model.state_dict())
    trainer = ExecuTorchTrainer.load(pte, poses, train, 0.05)
    names = set(trainer.module.named_parameters())
    assert names == {f"generator.{name}" for name, _ in init.named_parameters()}
    for _ in range(3):
        trainer.step(poses, train)
    # the loss the program reports after three large steps is the eager loss of its trained generator with the
    # original PGN: the PGN inside the program did not change
    generator = copy.deepcopy(init)
    generator.load_state_dict({k.removeprefix("generator."): v for k, v in trainer.parameters().items()})
    with torch.no_grad():
        expected = PGNLossTerm(model, MSE_WEIGHT).per_sample(generator(poses), train).sum()
        initial = PGNLossTerm(model, MSE_WEIGHT).per_sample(init(poses), train).sum()
    reported = trainer.step(poses, train)
    assert abs(float(initial) - reported) > 1e-3 * float(initial)  # the generator did change
    assert reported == pytest.approx(float(expected), rel=1e-5)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@needs_executorch
def test_finetune_on_executorch_returns_the_trained_generator(finetune_batch, pte):
    init, poses, train, model = finetune_batch
    tuned, trainer = finetune_on_executorch(init, model, poses, train, MSE_WEIGHT, LR, 1, pte=pte)
    reference = _eager_sgd_step(init, model, poses, train, LR)
    for name, p in tuned.named_parameters():
        torch.testing.assert_close(p.detach(), reference[f"generator.{name}"], rtol=1e-5, atol=1e-5 * float(p.detach().abs().max()))
    assert trainer.threads == torch.get_num_threads()


@pytest.fixture(scope="module")
def int8_program(finetune_batch):
    """A step program whose frozen PGN is int8, and its exported bytes."""
    if executorch_training_available() is not None:
        pytest.skip("ExecuTorch is not installed")
    init, poses, train, model = finetune_batch
    # no λ·MSE term: the whole update comes from the int8 PGN's proxy
    program = FinetuneStepProgram(copy.deepcopy(init), model, 0.0, (16, 16), precision="int8", batch=len(train))
    return program, export_step_program(program, poses, train)


def _eager_program_step(program, poses, train, lr):
    """One eager PyTorch SGD step of ``program`` itself (its int8 PGN simulated in fp32 by quantize/dequantize pairs)."""
    program = copy.deepcopy(program)
    optimizer = torch.optim.SGD(program.generator.parameters(), lr=lr)
    program(poses, train)[0].backward()
    optimizer.step()
    return {f"generator.{name}": p.detach() for name, p in program.generator.named_parameters()}


@needs_executorch
def test_an_int8_pgn_step_matches_the_eager_step_of_the_same_quantized_program(finetune_batch, int8_program):
    from pgn.export.executorch import DELEGATE, read_program

    init, poses, train, model = finetune_batch
    program, pte = int8_program
    facts = read_program(pte)
    assert facts["delegates"].get(DELEGATE, 0) > 0
    assert not [op for op in facts["outside_delegate"] if "quantize" in op or "convolution" in op], facts["outside_delegate"]
    trainer = ExecuTorchTrainer.load(pte, poses, train, LR)
    trainer.step(poses, train)
    start = {f"generator.{name}": p.detach() for name, p in init.named_parameters()}
    ours, reference = trainer.parameters(), _eager_program_step(program, poses, train, LR)
    fp32 = _eager_sgd_step(init, model, poses, train, LR, mse_weight=0.0)
    # The updates are compared, not the parameters (which one step barely moves). XNNPACK's int8 kernels and their
    # fp32 simulation in eager PyTorch round differently: measured 1.4e-3 relative here, against 3.1e-3 between
    # the int8 and fp32 PGNs' updates (a gradient cosine of 0.99999).
    ours_update, int8_update, fp32_update = (torch.cat([(d[k] - start[k]).flatten() for k in sorted(start)])
                                             for d in (ours, reference, fp32))
    error = float((ours_update - int8_update).norm() / int8_update.norm())
    assert error <= 5e-3, error
    assert error < float((ours_update - fp32_update).norm() / fp32_update.norm())  # the runtime did run the int8 PGN
    assert float(torch.nn.functional.cosine_similarity(ours_update, fp32_update, dim=0)) >= 0.99


@needs_executorch
def test_an_int8_pgn_program_stores_int8_weights_only(int8_program, pte):
    _, int8_pte = int8_program
    # the PGN's ~1.3 M weights as int8 instead of fp32: about 3.9 MB less, not the fp32 copies kept beside them
    assert len(pte) - len(int8_pte) > 3.0e6, (len(pte), len(int8_pte))


def test_int8_needs_the_xnnpack_kernels_and_unknown_precisions_are_refused(finetune_batch):
    from pgn.demos.finetune import FinetuneConfig

    init, poses, train, model = finetune_batch
    with pytest.raises(PGNError, match="int8 PGN runs in XNNPACK"):
        FinetuneConfig(executorch_precision="int8", executorch_kernels="portable")
    with pytest.raises(PGNError, match="executorch_precision must be one of fp32, int8"):
        FinetuneConfig(executorch_precision="fp16")
    with pytest.raises(PGNError, match="precision must be one of fp32, int8"):
        FinetuneStepProgram(copy.deepcopy(init), model, MSE_WEIGHT, (16, 16), precision="bf16")


@needs_executorch
def test_an_int8_program_refuses_another_batch_or_the_portable_kernels(finetune_batch, int8_program):
    init, poses, train, model = finetune_batch
    program, _ = int8_program
    with pytest.raises(PGNError, match="captured for batch 2, the step gets 1 images: build the FinetuneStepProgram with batch=1"):
        export_step_program(program, poses[:1], train[:1])
    with pytest.raises(PGNError, match="int8 PGN runs in XNNPACK"):
        export_step_program(program, poses, train, xnnpack=False)


def _finetune_rows(out, losses: str, *options: str) -> tuple[dict, dict]:
    """``pgn-demo finetune`` at 16² (1 train frame, 2 steps, no meta-training): rows by key, and the notes."""
    result = CliRunner().invoke(main, ["finetune", "-o", str(out), "--size", "16", "--train-frames", "1", "--holdout-frames", "1",
                                       "--steps", "2", "--meta-steps", "0", "--losses", losses, "--no-progress", *options],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())["tables"]["finetune"]
    return {r.get("key", r["loss"]): r for r in table["rows"]}, table["notes"]


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


class _GeneratorWithI0e(torch.nn.Module):
    """A generator with an operator outside ExecuTorch's Core ATen opset (``special_i0e``)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, poses):
        return torch.sigmoid(torch.special.i0e(self.conv(poses)))


@needs_executorch
def test_a_program_that_cannot_export_names_the_operator(finetune_batch):
    _, poses, train, model = finetune_batch
    with pytest.raises(pgn.PGNError) as info:
        export_step_program(FinetuneStepProgram(_GeneratorWithI0e(), model, MSE_WEIGHT, (16, 16)), poses, train)
    message = str(info.value)
    assert "\n" not in message and "aten.special_i0e" in message and "change the generator" in message
