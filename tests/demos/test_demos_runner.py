"""What the demos share: a student per loss from one initialization, its two meters, the cells of the tables, the
DIP loop's early stop, and the loss table (a new loss is one row)."""

import copy
import json
import sys
import time

import pytest
import torch

from pgn.demos.common import Student, timing_cells
from pgn.demos.dip import DipConfig, StabilityMonitor, make_init, run_dip
from pgn.demos.losses import LOSSES, Loss, LossRow
from pgn.benchmarks.measure import MEMORY_CALLS
from pgn.demos.metrics import Scores

LOSS_SLEEP_S, FORWARD_SLEEP_S = 0.02, 0.03


def test_a_student_trains_a_copy_of_the_initialization(tiny_generator, fit_inputs):
    z, y = fit_inputs
    init_state = copy.deepcopy(tiny_generator.state_dict())
    student = Student(Loss("MSE"), tiny_generator, lambda g: g(z), y, 1e-2, measure_memory=False)
    losses = [float(student.step()[1].mean()) for _ in range(4)]
    assert losses[-1] < losses[0]  # it fitted
    param = next(student.generator.parameters())
    assert int(student.optimizer.state[param]["step"]) == 4
    for key, value in tiny_generator.state_dict().items():  # the shared initialization is untouched
        torch.testing.assert_close(value, init_state[key])


class _SlowMSE(Loss):
    """MSE whose loss part takes at least ``LOSS_SLEEP_S``."""

    def own(self, y_hat, y):
        time.sleep(LOSS_SLEEP_S)
        return super().own(y_hat, y)


def test_student_times_each_whole_step_around_its_loss_part(tiny_generator, fit_inputs):
    z, y = fit_inputs

    def slow_forward(generator):
        time.sleep(FORWARD_SLEEP_S)
        return generator(z)

    student = Student(_SlowMSE("slow"), tiny_generator, slow_forward, y, 1e-2, measure_memory=True)
    steps = MEMORY_CALLS + 2
    for _ in range(steps):
        student.step()
    loss_part, whole_step = student.loss_meter, student.step_meter
    assert len(loss_part.times_s) == len(whole_step.times_s) == steps  # one time per step, each
    for loss_s, step_s in zip(loss_part.times_s, whole_step.times_s):  # the same step: the whole holds the part
        assert loss_s >= LOSS_SLEEP_S and step_s >= loss_s + FORWARD_SLEEP_S
    # both measure memory on the first MEMORY_CALLS steps (the whole step's own peak; see the nested-meter test)
    measured = MEMORY_CALLS if sys.platform.startswith("linux") else 0
    assert len(loss_part.peaks_bytes) == len(whole_step.peaks_bytes) == measured
    cells = student.timing_cells()
    assert cells["step_time_ms"] >= cells["loss_time_ms"] + 1000 * FORWARD_SLEEP_S
    assert (cells["step_peak_mem_mib"] is None) == (cells["loss_peak_mem_mib"] is None) == (measured == 0)


def test_timing_cells_of_several_fits():
    fits = [{"time_ms": 2.0, "peak_mem_mib": 10.0, "peak_mem_median_mib": 4.0},
            {"time_ms": 4.0, "peak_mem_mib": 30.0, "peak_mem_median_mib": 8.0},
            {"time_ms": None, "peak_mem_mib": None, "peak_mem_median_mib": None}]
    steps = [{"time_ms": 5.0, "peak_mem_mib": 12.0, "peak_mem_median_mib": 9.0},
             {"time_ms": 9.0, "peak_mem_mib": 40.0, "peak_mem_median_mib": 11.0}]
    assert timing_cells(fits, steps) == {"loss_time_ms": 3.0, "loss_peak_mem_mib": 30.0, "loss_peak_mem_median_mib": 6.0,
                                         "step_time_ms": 7.0, "step_peak_mem_mib": 40.0, "step_peak_mem_median_mib": 10.0}
    nothing = {"time_ms": None, "peak_mem_mib": None, "peak_mem_median_mib": None}
    assert timing_cells(fits[2:], []) == {f"{part}_{key}": None for part in ("loss", "step") for key in nothing}
    # an on-device trainer's meter covers the whole step only: its loss-part cells stay empty
    assert timing_cells([], steps[:1]) == {"loss_time_ms": None, "loss_peak_mem_mib": None, "loss_peak_mem_median_mib": None,
                                           "step_time_ms": 5.0, "step_peak_mem_mib": 12.0, "step_peak_mem_median_mib": 9.0}


def test_scores_add_up_image_by_image():
    scores = Scores()
    scores.extend(Scores(mse=[0.001], pl_vgg19=[1.0], ssim=[0.5], lpips="n/a (weights unavailable)"))
    scores.extend(Scores(mse=[0.003], pl_vgg19=[3.0], ssim=[0.7], lpips="n/a (weights unavailable)"))
    cells = scores.cells("holdout_")
    assert cells["holdout_mse_x1e3"] == pytest.approx({"mean": 2.0, "std": 1.0})
    assert cells["holdout_pl_vgg19"] == pytest.approx({"mean": 2.0, "std": 1.0})
    assert cells["holdout_ssim"] == pytest.approx({"mean": 0.6, "std": 0.1})
    assert cells["holdout_lpips"] == "n/a (weights unavailable)"


def test_dip_students_see_the_same_noisy_inputs():
    init = make_init(DipConfig(size=64, input_noise_prob=1.0), 0)
    assert init.noise_std > 0
    a, b = copy.deepcopy(init.net), copy.deepcopy(init.net)
    with torch.no_grad():
        first_a, first_b = init.forward(a), init.forward(b)
        second_a, second_b = init.forward(a), init.forward(b)
    torch.testing.assert_close(first_a, first_b)
    torch.testing.assert_close(second_a, second_b)
    assert not torch.allclose(first_a, second_a)  # each step draws new noise
    clean = make_init(DipConfig(size=64, input_noise_prob=0.0), 0)
    with torch.no_grad():
        torch.testing.assert_close(clean.forward(clean.net), clean.clean(clean.net))


def test_a_stop_rule_ends_a_dip_run(tmp_path, monkeypatch):
    class StopAfterTwo(StabilityMonitor):
        def update(self, pl):
            reason = super().update(pl)
            if self.record.iterations == 2:
                self.record.outcome = "stagnated"
            return reason or (self.record.outcome if self.record.iterations == 2 else None)

    monkeypatch.setattr("pgn.demos.dip.StabilityMonitor", StopAfterTwo)
    config = DipConfig(output_dir=tmp_path, parts=("stability",), stability_images=1, stability_iterations=6,
                       divergence_threshold=float("inf"), patience=100, progress=False, measure_memory=False)
    run_dip(config)
    runs = json.loads((tmp_path / "results.json").read_text())["stability_runs"]
    assert {head: [r["iterations"] for r in records] for head, records in runs.items()} == {
        "direct": [2], "proxy": [2], "constrained": [2]}
    rows = json.loads((tmp_path / "results.json").read_text())["tables"]["stability"]["rows"]
    assert [r["stagnated_count"] for r in rows] == [1, 1, 1]


def test_a_new_loss_is_one_table_row(tmp_path, monkeypatch):
    from pgn.demos.finetune import FinetuneConfig, run_finetune

    class L1(Loss):
        def own(self, y_hat, y):
            return (y_hat - y).abs().flatten(1).mean(dim=1)

    row = LossRow("l1", "L1 ({pgn} run)", build=lambda run, config, label: L1(label), note="L1 note, {key}.")
    monkeypatch.setitem(LOSSES, "l1", row)
    config = FinetuneConfig(output_dir=tmp_path, size=16, train_frames=1, holdout_frames=1, steps=2, meta_steps=0,
                            losses=("l1",), progress=False, measure_memory=False)
    run_finetune(config)
    data = json.loads((tmp_path / "results.json").read_text())
    table = data["tables"]["finetune"]
    l1 = [r for r in table["rows"] if r.get("key") == "l1"]
    assert len(l1) == 1 and l1[0]["loss"] == "L1 (resnet4 run)" and l1[0]["status"] == "ok"
    assert l1[0]["step_time_ms"] > 0 and l1[0]["grad_cos"]["mean"] is not None
    assert "L1 note, l1." in table["notes"]
    assert data["images"][0]["columns"] == ["ground truth", "before fine-tuning", "L1 (resnet4 run)"]
