"""The generator's whole training step on ONNX Runtime training (runs only where onnxruntime-training is installed)."""

import sys

import pytest
import torch
from proxy_runtimes import TorchProxyRuntime

from pgn.demos.losses import PGNLossTerm
from pgn.demos.ondevice_training import FinetuneLossGraph, finetune_on_device, training_available
from pgn.demos.common import Student


def test_loss_graph_is_the_pgn_student_loss(finetune_batch):
    init, poses, train, model = finetune_batch
    graph = FinetuneLossGraph(init, model.alpha, 20.0)
    with torch.no_grad():
        image = init(poses)
        proxy = model.proxy(image, train)
        loss, out = graph(poses, proxy, train)
        expected = PGNLossTerm(model, 20.0).per_sample(image, train).sum()
    torch.testing.assert_close(out, image)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(training_available() is not None, reason="onnxruntime-training is not installed")
def test_ort_training_matches_the_pytorch_pgn_student(tmp_path, finetune_batch):
    init, poses, train, model = finetune_batch
    tuned = finetune_on_device(init, poses, train, TorchProxyRuntime(model), model.alpha, 20.0, 5e-5, 3, tmp_path)
    student = Student(PGNLossTerm(model, 20.0), init, lambda g: g(poses), train, 5e-5, measure_memory=False)
    for _ in range(3):
        student.step()
    with torch.no_grad():
        ours, reference, start = tuned(poses), student.generator(poses), init(poses)
    assert float((reference - start).abs().max()) > 1e-4  # the step moved the images
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5)


def test_unavailable_training_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.training", None)  # as without onnxruntime-training
    reason = training_available()
    assert reason is not None and reason.startswith("onnxruntime-training not installed")
