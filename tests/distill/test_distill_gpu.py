"""Distillation on a CUDA GPU: one process under torchrun with NCCL, and a single-process run (skipped without a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgn.distill.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--size", "32", "--batch-size", "6", "--vgg-weights", "random", "--num-blocks", "1", "--down-channels", "16,32",
             "--up-channels", "16", "--val-images", "3", "--no-progress", "--batches-per-epoch", "2", "--device", "cuda"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def one_rank_nccl(run_dir: Path, steps: int, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 1 -m distill.cli ... --device cuda`` (NCCL is the default backend on GPUs)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "pgn.distill.cli",
           *TINY_ARGS, "--steps", str(steps), "--run-dir", str(run_dir), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.gpu
def test_one_rank_nccl_distillation_trains_and_resumes(tmp_path):
    run = tmp_path / "run"
    proc = one_rank_nccl(run, 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in lines if r.get("event") == "start")
    assert start["device"] == "cuda" and start["backend"] == "nccl" and start["world_size"] == 1
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 3 and all(v == v and abs(v) < float("inf") for v in losses)  # finite
    state = torch.load(run / "checkpoints" / "step-000000003.pt", weights_only=True, map_location="cpu")
    assert state["world_size"] == 1
    proc = one_rank_nccl(run, 4, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout and (run / "checkpoints" / "step-000000004.pt").is_file()
    assert json.loads((run / "config.json").read_text())["device"] == "cuda"


@pytest.mark.gpu
def test_single_process_cuda_distillation(tiny_config):
    from pgn.distill.trainer import train

    result = train(tiny_config(device="cuda", steps=2))
    assert result.steps == 2 and result.last_validation["val/cos"] == result.last_validation["val/cos"]
    import pgn

    model = pgn.load(result.pgn_path)
    g = model.cuda()(torch.rand(1, 3, 32, 32, device="cuda"), torch.rand(1, 3, 32, 32, device="cuda"))
    assert g.is_cuda and torch.isfinite(g).all()
