"""Training-state checkpoints: write atomically, keep the last K, resume from the newest readable one.

Our training state (``<run-dir>/checkpoints/step-000001024.pt``, one file written by rank 0) holds everything a
run needs to continue exactly where it stopped: the PGN and its optimizer, the PGN grad-norm moving average, and
for **every rank** its autoencoders, their optimizers and moving averages, the plateau trackers and the random
number generator states. The authors' code saves only the PGN, its optimizer and rank 0's autoencoders.

Beside it, ``<run-dir>/pgn.pt`` is a plain :func:`pgn.save` checkpoint of the latest weights in the public
``unit`` value space, so ``pgn.load("<run-dir>/pgn.pt")`` gives the trained model.

The authors' files are read as well: ``--resume-dir D --resume-epoch e`` loads ``D/e.pth``, ``D/e_opt.pth``,
``D/e_ae_k.pth`` and ``D/e_ae_k_opt.pth``; the separate ``--pgn-checkpoint``/``--ae-checkpoints`` flags load
single files. Everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgn.authors import key_names
from pgn.checkpoint import load_backbone_state, parse_checkpoint
from pgn.checkpoint import save as save_pgn
from pgn.errors import PGNError, first_line
from pgn.files import atomic_save, read_file
from pgn.model import PGN
from pgn.state_dicts import match_state_dict

from .autoencoders import SurrogateAutoencoder

STATE_FORMAT = "pgn-distill-state"
STATE_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
PLAIN_PGN_NAME = "pgn.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
REQUIRED_KEYS = ("format", "version", "step", "config", "pgn", "pgn_optimizer", "pgn_grad_norm_ma", "ranks", "world_size")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the training state after ``step`` steps lives."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every training-state file in ``run_dir``, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_training_state(state: dict[str, Any], run_dir: str | Path, keep: int) -> Path:
    """Write ``state`` atomically as ``checkpoints/step-N.pt`` and delete all but the newest ``keep`` files.

    The older files are deleted only after the new one is complete, so a failed write (a full disk) keeps them.
    """
    path = atomic_save(dict(state, format=STATE_FORMAT, version=STATE_VERSION), checkpoint_path(run_dir, int(state["step"])))
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def read_training_state(path: str | Path) -> dict[str, Any]:
    """Read and check one training-state file; a clear :class:`PGNError` if it is not complete."""
    obj = read_file(path)
    if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
        raise PGNError(f"{path} is not a pgn-distill training state")
    if obj.get("version", 0) > STATE_VERSION:
        raise PGNError(f"{path} was written by a newer pgn-distill (state version {obj['version']}); upgrade")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise PGNError(f"{path} is incomplete: missing {', '.join(missing)}")
    return obj


def latest_training_state(run_dir: str | Path, skipped: list[tuple[Path, str]] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable training state in ``run_dir`` (``None`` if none can be read).

    Unreadable newer files are skipped: appended to ``skipped`` as (path, reason) when a list is given, else
    reported with a warning.
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_training_state(path)
        except PGNError as e:
            if skipped is None:
                warnings.warn(f"skipping checkpoint {path.name}: {e}; falling back to the previous one", stacklevel=2)
            else:
                skipped.append((path, str(e)))
    return None


def save_plain_pgn(model: PGN, path: str | Path, meta: dict | None = None) -> Path:
    """Save ``model`` with :func:`pgn.save` in the public ``unit`` value space (same weights, [0, 1] I/O)."""
    return save_pgn(getattr(model, "module", model), path, meta=meta, value_space="unit")


# --------------------------------------------------------------------------------------------------------
# Random number generators


def capture_rng(np_generator: np.random.Generator) -> dict[str, Any]:
    """States of PyTorch (CPU and the current CUDA device), NumPy's reset generator and Python's ``random``."""
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": np_generator.bit_generator.state,
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any], np_generator: np.random.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.random.set_rng_state(state["torch"])
    np_generator.bit_generator.state = state["numpy"]
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------------------------------------
# The authors' files and single-file initialization


def load_pgn_weights(model: PGN, path: str | Path) -> str:
    """Load PGN weights from our checkpoint or one of the authors' formats into ``model``; returns the format.

    The architecture must match (shapes are checked); a head that differs in kind or ``grad_scale`` is an error,
    as in the authors' loader.
    """
    parsed = parse_checkpoint(read_file(path), preset=model.config.preset)
    head = parsed.head
    if head is not None:
        ours = model.config.head
        if head.kind != ours.kind:
            raise PGNError(f"{path} was trained with the {head.kind!r} head but this run uses {ours.kind!r} (set --head)")
        if abs(head.grad_scale - ours.grad_scale) > 1e-12:
            raise PGNError(f"{path} has grad_scale {head.grad_scale} but this run uses {ours.grad_scale} (set --grad-scale)")
    load_backbone_state(model.backbone, parsed.state_dict, path)
    return parsed.format


def load_module_weights(module: torch.nn.Module, path: str | Path, what: str) -> None:
    """Load a plain state dict into ``module``: our parameter names, or the authors' for an autoencoder."""
    sd = read_file(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise PGNError(f"{path} is not a state dict for the {what}")
    authors = key_names(module, module.authors_module_names()) if isinstance(module, SurrogateAutoencoder) else None
    module.load_state_dict(match_state_dict(module.state_dict(), sd, authors=authors))


def load_optimizer_state(optimizer: torch.optim.Optimizer, path_or_state: str | Path | dict, what: str) -> None:
    """Load an optimizer state dict, checking that every stored moment has its parameter's shape."""
    sd = path_or_state if isinstance(path_or_state, dict) else read_file(path_or_state)
    where = path_or_state if not isinstance(path_or_state, dict) else "the checkpoint"
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise PGNError(f"{where} is not an optimizer state dict for the {what}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stored = [i for g in sd["param_groups"] for i in g["params"]]
    if len(stored) != len(params):
        raise PGNError(f"{where} holds optimizer state for {len(stored)} tensors but the {what} has {len(params)}")
    for slot, p in zip(stored, params):
        moment = sd["state"].get(slot, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != tuple(p.shape):
            raise PGNError(f"{where}: optimizer state of tensor {slot} has shape {tuple(moment.shape)}, the {what} needs {tuple(p.shape)}")
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError) as e:
        raise PGNError(f"{where} does not fit the {what}'s optimizer: {first_line(e)}") from None


@dataclass(frozen=True)
class InitialFiles:
    """Single files a run starts from: the authors' per-epoch files or the ``--pgn-checkpoint`` family of flags.

    ``None`` (or a ``None`` entry in the per-autoencoder lists) means a fresh initialization of that part.
    """

    pgn: str | None = None
    pgn_optimizer: str | None = None
    autoencoders: tuple[str | None, ...] = ()
    ae_optimizers: tuple[str | None, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pgn or self.pgn_optimizer or any(self.autoencoders) or any(self.ae_optimizers))


def authors_resume_files(resume_dir: str | Path, epoch: int, num_autoencoders: int) -> InitialFiles:
    """The authors' per-epoch files in ``resume_dir`` (or its ``models/``); a missing PGN file is an error,
    missing optional files are ``None``."""
    base = Path(resume_dir)
    if not (base / f"{epoch}.pth").is_file() and (base / "models" / f"{epoch}.pth").is_file():
        base = base / "models"
    pgn_file = base / f"{epoch}.pth"
    if not pgn_file.is_file():
        raise PGNError(f"--resume-dir/--resume-epoch: {pgn_file} not found (the authors' layout is <dir>/<epoch>.pth)")

    def optional(p: Path) -> str | None:
        return str(p) if p.is_file() else None

    return InitialFiles(
        pgn=str(pgn_file),
        pgn_optimizer=optional(base / f"{epoch}_opt.pth"),
        autoencoders=tuple(optional(base / f"{epoch}_ae_{k}.pth") for k in range(num_autoencoders)),
        ae_optimizers=tuple(optional(base / f"{epoch}_ae_{k}_opt.pth") for k in range(num_autoencoders)),
    )


def parse_optional_paths(values: list[str] | None, count: int, flag: str) -> list[str | None]:
    """The authors' list flags: one entry per autoencoder, the word ``None`` meaning fresh initialization."""
    if not values:
        return [None] * count
    if len(values) != count:
        raise PGNError(f"{flag} needs {count} entries (one per autoencoder, 'None' for fresh), got {len(values)}")
    return [None if v in (None, "None", "none", "") else str(v) for v in values]
