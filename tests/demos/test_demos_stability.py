"""Divergence and stagnation detection on constructed loss sequences (paper Table 5's stop rules)."""

import math

import pytest
import torch

from pgn.demos.dip import StabilityMonitor, StopRule, summarize_runs
from pgn.errors import PGNError


def feed(monitor, values):
    for j, v in enumerate(values):
        reason = monitor.update(torch.as_tensor(v, dtype=torch.float64).reshape(-1))
        if reason is not None:
            return reason, j
    return None, len(values) - 1


def test_divergence_at_twice_the_initial_loss():
    m = StabilityMonitor(StopRule(2.0, 100))
    reason, j = feed(m, [10.0, 9.0, 15.0, 19.99, 20.0, 5.0])
    assert (reason, j) == ("diverged", 4)
    r = m.record
    assert r.outcome == "diverged" and r.last_iteration == 4 and r.last_pl == 20.0
    assert r.best_iteration == 1 and r.best_pl == 9.0


def test_stagnation_needs_a_strict_improvement():
    m = StabilityMonitor(StopRule(2.0, 3))
    # best 8 at iteration 1; equal values are not improvements; stop once j - 3 >= 1, i.e. at j = 4
    reason, j = feed(m, [10.0, 8.0, 8.0, 9.0, 8.0, 7.0])
    assert (reason, j) == ("stagnated", 4)
    assert m.record.best_iteration == 1 and m.record.best_pl == 8.0


def test_improving_run_is_successful():
    m = StabilityMonitor(StopRule(2.0, 2))
    reason, _ = feed(m, [10.0, 9.0, 8.5, 8.4, 8.0, 7.9])
    assert reason is None and m.record.outcome == "successful" and m.record.iterations == 6


def test_batch_semantics_any_diverges_all_stagnate():
    m = StabilityMonitor(StopRule(2.0, 2))
    # sample 0 stalls, sample 1 keeps improving: no stagnation; then sample 1 doubles: divergence
    seq = [[1.0, 1.0], [0.9, 0.9], [0.95, 0.8], [0.95, 0.7], [0.95, 0.6], [0.95, 2.0]]
    reason, j = feed(m, seq)
    assert (reason, j) == ("diverged", 5)


def test_infinite_threshold_never_diverges():
    m = StabilityMonitor(StopRule(math.inf, 1000))
    reason, _ = feed(m, [1.0, 100.0, 1e9])
    assert reason is None


def test_bad_rules_are_errors():
    with pytest.raises(PGNError):
        StopRule(0.5, 10)
    with pytest.raises(PGNError):
        StopRule(2.0, 0)


def test_summary_counts_and_means():
    records = []
    for values, patience in (([10.0, 30.0], 10), ([10.0, 9.0, 9.5, 9.5], 2), ([10.0, 9.0, 8.0], 5), ([10.0, 7.0, 6.0], 5)):
        m = StabilityMonitor(StopRule(2.0, patience))
        feed(m, values)
        records.append(m.record)
    s = summarize_runs(records)
    assert s["diverged"]["count"] == 1 and s["diverged"]["last_pl"] == 30.0
    assert s["stagnated"]["count"] == 1 and s["stagnated"]["best_iteration"] == 1
    assert s["successful"]["count"] == 2 and s["successful"]["best_pl"] == pytest.approx(7.0)
