"""One process per device under ``torchrun``; everything degrades to a single process without it.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the rendezvous variables); we detect them,
join the process group (NCCL on GPUs, gloo on CPUs) and put each process on ``cuda:LOCAL_RANK`` or the CPU.
Multi-node needs nothing more than torchrun's own flags::

    torchrun --standalone --nproc_per_node 8 -m distill.cli --backbone resnet4 --data /data/ImageNet
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \
        -m distill.cli ...

Helpers (:func:`get_rank`, :func:`get_world_size`, :func:`is_main_process`, :func:`barrier`, …) return
single-process values when no process group is running, so the trainer has no special cases.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pgn.errors import PGNError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its ranks, the world size, its device and the backend (``None``: single)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when a process group is running (even with one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the launcher set ``RANK`` and ``WORLD_SIZE`` (torchrun, or any env:// launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(device: str, local_rank: int) -> torch.device:
    """``auto`` → ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "cpu":
        return torch.device("cpu")
    if device in ("auto", "cuda"):
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise PGNError(
                    f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: start at most "
                    f"that many processes per node (torchrun --nproc_per_node)"
                )
            return torch.device("cuda", local_rank)
        if device == "cuda":
            raise PGNError("device 'cuda' requested but torch.cuda.is_available() is False: use --device cpu or auto")
        return torch.device("cpu")
    raise PGNError(f"unknown device {device!r}: use auto, cpu or cuda")


def init_distributed(device: str = "auto", backend: str | None = None, init_method: str = "env://") -> DistContext:
    """Join the process group when launched by torchrun; otherwise return a single-process context."""
    if not launched_by_torchrun():
        return DistContext(device=pick_device(device, 0))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = pick_device(device, local_rank)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise PGNError("the NCCL backend needs GPUs: use --dist-backend gloo on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world, **kwargs)
    return DistContext(rank, local_rank, world, dev, backend)


def shutdown() -> None:
    """Leave the process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _running() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if _running() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if _running() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if _running():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over processes of a 1-D float tensor (identity in a single process)."""
    if _running() and get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= get_world_size()
    return values


def any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process (so every process takes the same decision)."""
    if not (_running() and get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` in a single process."""
    if not (_running() and get_world_size() > 1):
        return [obj]
    out = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not (_running() and get_world_size() > 1):
        return obj
    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) with the same seed on every rank, as the authors do."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
