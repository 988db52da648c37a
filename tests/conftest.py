"""Shared settings for a 2-core CI machine (at most two threads, survivors of full garbage collections set aside)
and fixtures: small seeded image batches.

Tests marked ``@pytest.mark.gpu`` run for real where PyTorch sees a CUDA GPU and are skipped elsewhere; every
other test runs on both (tests of "no GPU here" errors simulate the missing GPU instead of skipping on one).
"""

import gc

import pytest


def _set_survivors_aside(phase: str, info: dict) -> None:
    """After every full garbage collection, what survived it is frozen (``gc.freeze``): the next ones look only at
    objects made since. A test process ends up holding the live objects of torch, ExecuTorch's compiler, ONNX and
    every test module, and each full collection scanned all of them again (results/RESULTS.md, "Test suite, fourth
    pass"). An object frozen here that later becomes cyclic garbage is never collected: memory only."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def pytest_configure(config):
    """Sets survivors of full collections aside (:func:`_set_survivors_aside`)."""
    gc.callbacks.append(_set_survivors_aside)


@pytest.fixture
def unfrozen_heap():
    """For tests of ``gc.freeze`` scopes: nothing frozen, and :func:`_set_survivors_aside` off for the test."""
    gc.callbacks.remove(_set_survivors_aside)
    gc.unfreeze()
    try:
        yield
    finally:
        gc.callbacks.append(_set_survivors_aside)


def pytest_collection_modifyitems(config, items):
    """Where tests are collected (each xdist worker; not the controller, which then needs no torch): at most two
    threads, and ``gpu``-marked tests skipped without a CUDA GPU, saying so."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def pair():
    """A (ŷ, y) pair of 2×3×32×32 images in [0, 1]."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


@pytest.fixture(scope="session")
def teacher19():
    """A random-weight VGG-19 teacher (no pretrained weights on CI)."""
    import pgn

    return pgn.PerceptualLoss("vgg19", weights="random", seed=0)


# --------------------------------------------------------------------------------------------------------
# Write failures (see write_faults.py)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """An existing folder that cannot be written to (EACCES): chmod 555, and patched file functions under root."""
    from write_faults import make_read_only

    folder = tmp_path / "read-only"
    folder.mkdir()
    make_read_only(folder, monkeypatch)
    yield folder
    folder.chmod(0o755)
