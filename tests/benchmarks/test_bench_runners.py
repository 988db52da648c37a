"""Runners in-process at a tiny size: they compute the right thing, and the accuracy check compares it."""

import numpy as np
import pytest
import torch

import pgn
from pgn.benchmarks.models import build_pgn, make_inputs
from pgn.benchmarks.runners import TorchPGNRunner, TorchTeacherRunner, compare_outputs, make_runner, reference_outputs
from pgn.errors import PGNError


@pytest.fixture
def inputs():
    y_hat, y = make_inputs(2, (32, 32))
    e_hat, e = make_inputs(2, (32, 32), seed=5)
    return {"y_hat": y_hat, "y": y, "eval_y_hat": e_hat, "eval_y": e}


def test_pgn_runner_computes_the_pgn_gradient(inputs):
    runner = make_runner("resnet4", "torch", "cpu", inputs, seed=3)
    assert isinstance(runner, TorchPGNRunner)
    runner.prepare()
    runner.step()
    out = runner.run(inputs["eval_y_hat"], inputs["eval_y"])
    with torch.no_grad():
        expected = build_pgn("resnet4", 3)(inputs["eval_y_hat"], inputs["eval_y"])
    np.testing.assert_allclose(out["grad"], expected.numpy(), rtol=1e-5, atol=1e-10)
    assert out["proxy"].shape == out["grad"].shape


def test_teacher_runner_computes_the_vgg_gradient(inputs):
    runner = make_runner("vgg11-cached", "torch", "cpu", inputs, seed=1)
    assert isinstance(runner, TorchTeacherRunner)
    runner.prepare()
    runner.step()
    out = runner.run(inputs["y_hat"], inputs["y"])
    teacher = pgn.PerceptualLoss("vgg11", weights="random", seed=1)
    np.testing.assert_allclose(out["grad"], teacher.gradient(inputs["y_hat"], inputs["y"]).numpy(), rtol=1e-4, atol=1e-9)
    with pytest.raises(PGNError):
        runner.run(inputs["eval_y_hat"], inputs["eval_y"])


def test_bf16_runner_is_close_but_not_identical(inputs):
    runner = make_runner("resnet4", "torch-bf16", "cpu", inputs, seed=3)
    runner.prepare()
    y_hat, y = runner.accuracy_inputs()
    acc = compare_outputs(reference_outputs(runner, y_hat, y), runner.run(y_hat, y))
    assert 0.99 < acc["grad_cosine_min"] <= 1.0 + 1e-9
    assert acc["grad_rel_error_max"] > 0
    assert "proxy_cosine_centered_min" in acc


def test_exported_runtimes_refuse_teachers(inputs):
    with pytest.raises(PGNError, match="autograd"):
        make_runner("vgg19", "onnxruntime", "cpu", inputs)


def test_compare_outputs_identical_and_opposite():
    g = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    same = compare_outputs({"grad": g}, {"grad": g.copy()})
    assert same["grad_cosine_min"] == pytest.approx(1.0) and same["grad_rel_error_max"] == pytest.approx(0.0)
    flipped = compare_outputs({"grad": g}, {"grad": -g})
    assert flipped["grad_cosine_min"] == pytest.approx(-1.0)


def test_an_fp32_artifact_that_disagrees_with_pytorch_fails_its_row():
    from pgn.benchmarks.runtimes import RUNTIMES
    from pgn.benchmarks.worker import FP32_ARTIFACT_MIN_COSINE, _broken_artifact_reason

    bad, good = {"grad_cosine_min": 0.5}, {"grad_cosine_min": FP32_ARTIFACT_MIN_COSINE + 1e-4}
    reason = _broken_artifact_reason(RUNTIMES["onnxruntime"], bad)
    assert reason is not None and "0.5000" in reason and "pgn-export" in reason
    assert _broken_artifact_reason(RUNTIMES["onnxruntime"], good) is None
    # reduced precision and PyTorch rows report their cosine in the table instead
    assert _broken_artifact_reason(RUNTIMES["onnxruntime-int8"], bad) is None
    assert _broken_artifact_reason(RUNTIMES["torch-bf16"], bad) is None


@pytest.mark.parametrize("error, reason", [(RuntimeError("first line\nthe rest of a long message"), "RuntimeError: first line"),
                                           (MemoryError(), "MemoryError")])
def test_a_failing_worker_reports_one_line(tmp_path, monkeypatch, error, reason):
    import json

    from pgn.benchmarks import worker

    def fail(task):
        raise error

    monkeypatch.setattr(worker, "measure", fail)
    task = worker.Task(mode="measure", model="resnet4", runtime="torch", device="cpu", size=(32, 32), batch=1, inputs="-")
    (tmp_path / "task.json").write_text(json.dumps(task.to_dict()))
    assert worker.main([str(tmp_path / "task.json"), str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == reason
    assert str(error) in result["traceback"]  # the whole message is kept there
