"""Two CPU processes under torchrun (gloo): the PGN stays identical across ranks, the autoencoders do not.

Pinned to the CPU (``--device cpu``), also on GPU machines, where rank 1 would need a second GPU; NCCL on a GPU
is tested in ``test_distill_gpu.py``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgn.distill import distributed as dist
from pgn.distill.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--size", "32", "--batch-size", "6", "--vgg-weights", "random", "--num-blocks", "1", "--down-channels", "16,32",
             "--up-channels", "16", "--val-images", "3", "--no-progress", "--device", "cpu", "--batches-per-epoch", "2"]


def torchrun(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pgn.distill.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_gloo_processes(tmp_path):
    run = tmp_path / "run"
    proc = torchrun(*TINY_ARGS, "--steps", "3", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "step-000000003.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    r0, r1 = state["ranks"]
    assert r0["pgn_digest"] == r1["pgn_digest"]  # DDP kept the PGN parameters identical
    for k in range(3):  # autoencoders are local: same start (same seed), different data, so different now
        assert any(not torch.equal(r0["autoencoders"][k][n], r1["autoencoders"][k][n]) for n in r0["autoencoders"][k])
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3]  # rank 0 alone writes
    assert proc.stdout.count("pgn-distill: teacher") == 1

    # resume with two processes: each rank continues from its own autoencoders
    proc = torchrun(*TINY_ARGS, "--steps", "4", "--run-dir", str(run), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state4 = torch.load(run / "checkpoints" / "step-000000004.pt", weights_only=True)
    assert state4["ranks"][0]["pgn_digest"] == state4["ranks"][1]["pgn_digest"]
    assert "resuming from" in proc.stdout


def test_single_process_helpers_degrade_gracefully(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = dist.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main_process()
    assert dist.gather_to_main({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_from_main(5) == 5
    assert dist.any_process(True, torch.device("cpu")) is True
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(t), t)
    dist.barrier()


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    from pgn.errors import PGNError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    with pytest.raises(PGNError, match="cuda"):
        dist.pick_device("cuda", 0)
