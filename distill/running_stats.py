"""Running statistics of a distillation run: the grad-norm averages that clipping measures against, and the
plateau trackers that decide when an autoencoder is re-initialized.

Both the PGN's and every autoencoder's update clip the total grad norm at a multiple of a :class:`MovingAverage`
of earlier norms; each autoencoder has a :class:`PlateauTracker` of its reconstruction L1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MovingAverage:
    """``value ← decay·value + (1 − decay)·x``: the running grad norm that clipping is measured against."""

    value: float
    decay: float = 0.99

    def update(self, x: float) -> float:
        """Fold in a new observation; returns the new value."""
        self.value = self.decay * self.value + (1.0 - self.decay) * float(x)
        return self.value


@dataclass
class PlateauTracker:
    """Best reconstruction L1 of one autoencoder and the global sample count (all processes) when it was reached.

    As in the authors' code, a plateau is measured in samples seen, not in steps (the paper only says "a fixed
    number of batches").
    """

    best_l1: float | None = None
    best_sample: int = 0

    def observe(self, l1: float, sample: int) -> None:
        """Record this step's L1; a strict improvement (or the first observation) moves the best."""
        if self.best_l1 is None or l1 < self.best_l1:
            self.best_l1, self.best_sample = float(l1), int(sample)

    def reset_probability(self, l1: float, sample: int, patience: int, prob: float, hi_threshold: float) -> float:
        """Chance to reset now: ``prob`` after ``patience`` samples without improvement, 1 if L1 > threshold."""
        if self.best_l1 is not None and sample - self.best_sample >= patience:
            return prob
        if l1 > hi_threshold:
            return 1.0
        return 0.0

    def clear(self) -> None:
        """Forget the best (after a reset)."""
        self.best_l1, self.best_sample = None, 0

    def state_dict(self) -> dict:
        """Plain-data state for checkpoints."""
        return {"best_l1": self.best_l1, "best_sample": self.best_sample}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        self.best_l1, self.best_sample = state["best_l1"], int(state["best_sample"])
