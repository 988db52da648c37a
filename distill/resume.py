"""Where a run starts: the newest checkpoint (``--resume``), the authors' per-epoch files, single files, or scratch.

:func:`starting_point` only decides and reads; :meth:`distill.trainer.Distiller.start` applies the answer to the
models. Rank 0 looks at the run directory and reads the checkpoint; every rank receives the same answer (a
broadcast), so a run directory on rank 0's disk is enough, also across machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgn.errors import PGNError

from . import checkpoints as ckpt
from . import distributed
from .config import DistillConfig, changed_settings
from .rundir import PREVIOUS_PREFIX, run_history


@dataclass(frozen=True)
class StartingPoint:
    """What a run starts from: at most one of a training state and initial files; neither means scratch."""

    step: int  #: the first step to run
    source: str | None = None  #: for the log: the checkpoint or the authors' epoch resumed from
    state: dict[str, Any] | None = None  #: a training state written by this trainer (``--resume``)
    files: ckpt.InitialFiles | None = None  #: single files to initialize from (the authors' layouts)


def starting_point(config: DistillConfig, run_dir: Path, resume: bool, ctx: distributed.DistContext) -> StartingPoint:
    """Decide what the run starts from, reading the checkpoint if it resumes one.

    ``--resume`` never starts over in a used run folder: if its checkpoints cannot be read, or it holds an earlier
    run but no checkpoint, or the checkpoint was trained with other settings, this raises a one-line
    :class:`PGNError` and changes nothing. A new run refuses a used folder (see :mod:`distill.rundir`).
    """
    history = distributed.broadcast_from_main(run_history(run_dir) if ctx.is_main else None)
    if not resume and history:
        raise PGNError(
            f"{run_dir} already holds a run ({_names(history)}): pass --resume to continue it, --fresh to start over "
            f"(its files are moved to {run_dir}/{PREVIOUS_PREFIX}<time>/), or choose another --run-dir"
        )
    if resume:
        found, problem = distributed.broadcast_from_main(_find_resumable(config, run_dir, history) if ctx.is_main else None)
        if problem:
            raise PGNError(problem)
        if found is not None:
            path, state = found
            if state["world_size"] != ctx.world_size and ctx.is_main:
                print(f"pgn-distill: warning: checkpoint written by {state['world_size']} process(es), now {ctx.world_size}: "
                      f"autoencoders are reused round-robin and the continuation is not exact")
            return StartingPoint(int(state["step"]), str(path), state=state)
        if ctx.is_main:
            print(f"pgn-distill: no checkpoint in {run_dir} yet: starting a new run")
    n = len(config.ae_depths)
    if config.resume_dir is not None:
        files = ckpt.authors_resume_files(config.resume_dir, config.resume_epoch, n)
        step = (config.resume_epoch + 1) * config.batches_per_epoch
        return StartingPoint(step, f"{config.resume_dir} epoch {config.resume_epoch}", files=files)
    files = ckpt.InitialFiles(
        config.pgn_checkpoint,
        config.pgn_checkpoint_opt,
        tuple(ckpt.parse_optional_paths(config.ae_checkpoints, n, "--ae-checkpoints")),
        tuple(ckpt.parse_optional_paths(config.ae_checkpoints_opt, n, "--ae-checkpoints-opt")),
    )
    return StartingPoint((config.start_epoch or 0) * config.batches_per_epoch, files=files or None)


def _find_resumable(config: DistillConfig, run_dir: Path, history: list[str]) -> tuple[tuple[Path, dict] | None, str | None]:
    """(newest readable checkpoint or None, why resuming must stop or None); prints skipped checkpoints (rank 0)."""
    skipped: list[tuple[Path, str]] = []
    found = ckpt.latest_training_state(run_dir, skipped)
    if found is None and skipped:
        names = ", ".join(p.name for p, _ in skipped)
        return None, (
            f"--resume: none of the {len(skipped)} checkpoint(s) in {run_dir / ckpt.CHECKPOINT_DIR} can be read ({names}; "
            f"newest: {skipped[0][1]}); nothing was changed: restore a checkpoint, or start over with --fresh "
            f"(the old files are moved to {run_dir}/{PREVIOUS_PREFIX}<time>/)"
        )
    if found is None and history:
        return None, (
            f"--resume: {run_dir} holds an earlier run ({_names(history)}) but no checkpoint to continue from; nothing "
            f"was changed: start over with --fresh (the old files are moved to {run_dir}/{PREVIOUS_PREFIX}<time>/)"
        )
    for path, reason in skipped:
        print(f"pgn-distill: warning: skipping unreadable checkpoint {path.name} ({reason})")
    if found is not None:
        changed = changed_settings(found[1]["config"], config.to_dict())
        if changed:
            return None, (
                f"--resume: {found[0].name} was trained with other settings ({changed}): continue it without changing "
                f"them, or start a new run with another --run-dir (or --fresh)"
            )
    return found, None


def _names(history: list[str], limit: int = 3) -> str:
    more = f" and {len(history) - limit} more" if len(history) > limit else ""
    return ", ".join(history[:limit]) + more
