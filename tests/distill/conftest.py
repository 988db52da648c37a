"""Shared settings for the distill tests: one thread, a tiny PGN, 32-pixel crops, a random-weight teacher, the CPU.

Every test here runs on the CPU, also on a GPU machine: exact-resume comparisons need deterministic kernels, and
the GPU paths have tests of their own (``test_distill_gpu.py``).
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: A ResNet PGN small enough for a CPU test (the paper's architecture, narrower and shallower).
TINY = dict(
    size=32,
    batch_size=6,
    num_blocks=1,
    down_channels=[16, 32],
    up_channels=[16],
    vgg_weights="random",  # no pretrained VGG on the test machine: mechanics only
    val_images=3,
    progress=False,
    device="cpu",
)


@pytest.fixture
def tiny_config(tmp_path):
    """A DistillConfig for a few-second run in a fresh run directory."""
    from pgn.distill.config import DistillConfig

    def make(**kw):
        values = dict(TINY, run_dir=str(tmp_path / "run"), batches_per_epoch=2)
        values.update(kw)
        return DistillConfig(**values)

    return make
