"""The skeleton the demos share: a fit per loss from one initialization, its early stop, the cells of the tables."""

import copy
import sys
import time

import pytest
import torch

from pgn.demos.common import CommonConfig, Scores
from pgn.demos.dip import DipConfig, make_init
from pgn.demos.losses import MSELoss
from pgn.benchmarks.measure import MEMORY_CALLS
from pgn.demos.resources import Warnings
from pgn.demos.runner import DemoRun, student_timing_cells, timing_cells
from pgn.demos.students import Student

LOSS_SLEEP_S, FORWARD_SLEEP_S = 0.02, 0.03


def _run(tmp_path):
    config = CommonConfig(output_dir=tmp_path, progress=False, measure_memory=False)
    return DemoRun("test", config, Warnings(), evaluator=None, pgn=None)


def test_fit_trains_a_copy_and_stops_when_the_observer_says_so(tmp_path, tiny_generator, fit_inputs):
    z, y = fit_inputs
    init_state = copy.deepcopy(tiny_generator.state_dict())
    seen = []

    def observe(t, result):
        seen.append((t, float(result.loss.mean())))
        return t == 3

    student = _run(tmp_path).fit(MSELoss(), tiny_generator, lambda g: g(z), y, 10, 1e-2, observe=observe)
    assert [t for t, _ in seen] == [0, 1, 2, 3]
    assert seen[-1][1] < seen[0][1]  # it fitted
    param = next(student.generator.parameters())
    assert int(student.optimizer.state[param]["step"]) == 4
    for key, value in tiny_generator.state_dict().items():  # the shared initialization is untouched
        torch.testing.assert_close(value, init_state[key])


class _SlowMSE(MSELoss):
    """MSE whose loss part takes at least ``LOSS_SLEEP_S``."""

    def own(self, y_hat, y):
        time.sleep(LOSS_SLEEP_S)
        return super().own(y_hat, y)


def test_student_times_each_whole_step_around_its_loss_part(tiny_generator, fit_inputs):
    z, y = fit_inputs

    def slow_forward(generator):
        time.sleep(FORWARD_SLEEP_S)
        return generator(z)

    student = Student.from_init("slow", _SlowMSE(), tiny_generator, 1e-2, measure_memory=True)
    steps = MEMORY_CALLS + 2
    for _ in range(steps):
        student.step(slow_forward, y)
    loss_part, whole_step = student.meter, student.step_meter
    assert len(loss_part.times_s) == len(whole_step.times_s) == steps  # one time per step, each
    for loss_s, step_s in zip(loss_part.times_s, whole_step.times_s):  # the same step: the whole holds the part
        assert loss_s >= LOSS_SLEEP_S and step_s >= loss_s + FORWARD_SLEEP_S
    # both measure memory on the first MEMORY_CALLS steps (the whole step's own peak; see the nested-meter test)
    measured = MEMORY_CALLS if sys.platform.startswith("linux") else 0
    assert len(loss_part.peaks_bytes) == len(whole_step.peaks_bytes) == measured
    cells = student_timing_cells(student)
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
