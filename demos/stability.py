"""Early termination of a fitting run by its true perceptual loss: divergence and stagnation (paper Table 5).

Checked every iteration ``j`` on ``PL_j``, the VGG-19 perceptual loss of the image *before* step ``j``
(``PL_0`` is the loss of the initial output):

* divergence: some sample has ``PL_j ≥ threshold · PL_0`` (threshold 2; ``inf`` disables it);
* stagnation: for every sample, the best (strictly lowest) loss so far was reached at an iteration
  ``≤ j − patience`` (patience 2000 in the paper).

A run that reaches its last iteration without either is "successful".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from pgn.errors import PGNError

OUTCOMES = ("diverged", "stagnated", "successful")


@dataclass(frozen=True)
class StopRule:
    """Divergence threshold (a factor of the initial loss; ``math.inf`` disables) and stagnation patience."""

    divergence_threshold: float = 2.0
    patience: int = 2000

    def __post_init__(self):
        if not self.divergence_threshold > 1.0:
            raise PGNError(f"divergence threshold must be > 1 (or inf), got {self.divergence_threshold}")
        if self.patience < 1:
            raise PGNError(f"stagnation patience must be at least 1 iteration, got {self.patience}")


@dataclass
class RunRecord:
    """The Table 5 columns of one run, filled by :class:`StabilityMonitor`."""

    outcome: str = "successful"
    iterations: int = 0  #: iterations observed (the last one is ``iterations - 1``)
    last_iteration: int | None = None
    last_pl: float | None = None
    best_iteration: int | None = None
    best_pl: float | None = None

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass
class StabilityMonitor:
    """Feed it ``PL_j`` every iteration; it says when to stop and records the run.

    ``update`` returns ``"diverged"``, ``"stagnated"`` or ``None`` (go on). Losses are per sample, shape (N,);
    the run's best iteration and loss are those of the batch mean.
    """

    rule: StopRule = field(default_factory=StopRule)
    initial: torch.Tensor | None = None
    best: torch.Tensor | None = None
    best_at: torch.Tensor | None = None
    record: RunRecord = field(default_factory=RunRecord)
    _best_mean: float = math.inf

    def update(self, pl: torch.Tensor) -> str | None:
        """Register ``PL_j`` (per sample) for the next iteration ``j``; return the stop reason, if any."""
        pl = torch.as_tensor(pl, dtype=torch.float64).detach().flatten().cpu()
        j = self.record.iterations
        self.record.iterations += 1
        self.record.last_iteration, self.record.last_pl = j, float(pl.mean())
        if self.initial is None:
            self.initial = pl.clone()
            self.best = pl.clone()
            self.best_at = torch.zeros_like(pl, dtype=torch.long)
        else:
            improved = pl < self.best
            self.best = torch.where(improved, pl, self.best)
            self.best_at = torch.where(improved, torch.full_like(self.best_at, j), self.best_at)
        if float(pl.mean()) < self._best_mean:
            self._best_mean = float(pl.mean())
            self.record.best_iteration, self.record.best_pl = j, self._best_mean
        if bool((pl >= self.rule.divergence_threshold * self.initial).any()):
            self.record.outcome = "diverged"
            return "diverged"
        if bool((self.best_at <= j - self.rule.patience).all()):
            self.record.outcome = "stagnated"
            return "stagnated"
        return None


def summarize_runs(records: list[RunRecord]) -> dict:
    """Table 5 for one PGN: per outcome, the count and the mean last/best iteration and loss."""
    out: dict = {}
    for outcome in OUTCOMES:
        runs = [r for r in records if r.outcome == outcome]
        row: dict = {"count": len(runs)}
        for key in ("last_iteration", "last_pl", "best_iteration", "best_pl"):
            if outcome != "diverged" and key.startswith("last"):
                continue
            vals = [getattr(r, key) for r in runs if getattr(r, key) is not None]
            row[key] = sum(vals) / len(vals) if vals else None
        out[outcome] = row
    return out
