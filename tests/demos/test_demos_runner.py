"""The skeleton the demos share: a fit per loss from one initialization, its early stop, the cells of the tables."""

import copy

import pytest
import torch

from demos.common import CommonConfig, Scores
from demos.dip import DipConfig, make_init
from demos.losses import MSELoss
from demos.resources import Warnings
from demos.runner import DemoRun, timing_cells


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


def test_timing_cells_of_several_fits():
    fits = [{"time_ms": 2.0, "peak_mem_mib": 10.0, "peak_mem_median_mib": 4.0},
            {"time_ms": 4.0, "peak_mem_mib": 30.0, "peak_mem_median_mib": 8.0},
            {"time_ms": None, "peak_mem_mib": None, "peak_mem_median_mib": None}]
    assert timing_cells(fits) == {"loss_time_ms": 3.0, "loss_peak_mem_mib": 30.0, "loss_peak_mem_median_mib": 6.0}
    assert timing_cells(fits[2:]) == {"loss_time_ms": None, "loss_peak_mem_mib": None, "loss_peak_mem_median_mib": None}


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
