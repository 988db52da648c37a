"""The skeleton every demo shares: set up, fit one student per loss from one initialization, score, report.

A demo (:mod:`demos.finetune`, :mod:`demos.dip`, :mod:`demos.invert`) says only what is its own: its generator and
initialization, its targets, its losses and its tables. :class:`DemoRun` does the rest:

1. :meth:`DemoRun.start` makes the output folder, loads the VGG-19 teacher that scores every result, LPIPS and
   the PGN, checks the image size against the PGN and prints which weights the run uses, with the warnings;
2. :meth:`DemoRun.fit` trains a copy of the shared initialization with one loss, behind a progress bar;
3. its :class:`~demos.common.Evaluator` scores the results, and :func:`timing_cells` the time and memory of the
   loss part and of the whole step, as table cells (:data:`RECONSTRUCTION_COLUMNS`, :func:`score_columns`);
4. :meth:`DemoRun.finish` writes ``results.json`` and ``results.md`` and returns the report.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

import pgn

from .common import CommonConfig, Evaluator, check_size, progress_bar
from .generators.training import Progress
from .losses import Loss, PGNLossTerm
from pgn.benchmarks.measure import MEMORY_CALLS
from .metrics import LPIPSMetric
from .report import Column, DemoReport, Table, print_warnings
from .resources import PGNSource, Warnings, load_pgn, load_teacher
from .students import Forward, StepResult, Student

#: ``observe(t, result)`` after step ``t`` of a fit; a true return value stops the fit early.
Observer = Callable[[int, StepResult], "bool | None"]


@dataclass
class DemoRun:
    """One demo run under way: its configuration, warnings, scorer (VGG-19 teacher, LPIPS), PGN and clock."""

    name: str
    config: CommonConfig
    warnings: Warnings
    evaluator: Evaluator
    pgn: PGNSource
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, name: str, config: CommonConfig, console=None, *, check_pgn_size: bool = True) -> "DemoRun":
        """Set a run up and announce it on ``console``.

        Args:
            check_pgn_size: check ``config.size`` against the PGN now (a demo whose image size comes from elsewhere
                calls :meth:`check_pgn_size` itself).
        """
        started = time.perf_counter()
        config.output_dir.mkdir(parents=True, exist_ok=True)
        warnings = Warnings()
        teacher = load_teacher("vgg19", config.vgg_weights, warnings, seed=config.seed)
        evaluator = Evaluator(teacher, LPIPSMetric.try_load())
        source = load_pgn(config.pgn_checkpoint, config.pgn_preset, warnings, seed=config.seed)
        run = cls(name, config, warnings, evaluator, source, started)
        if check_pgn_size:
            run.check_pgn_size(config.size)
        if console is not None:
            for key, value in run.weights().items():
                console.print(f"[bold]{key}[/bold]: {value}")
            print_warnings(console, warnings.items)
        return run

    @property
    def pgn_name(self) -> str:
        """The PGN's preset (or backbone), as row labels show it."""
        return self.pgn.model.config.preset or self.pgn.model.config.backbone

    def check_pgn_size(self, size: int) -> None:
        """A one-line error unless ``size`` suits the PGN."""
        check_size(size, self.pgn.model.size_multiple, f"the PGN ({self.pgn_name})")

    def weights(self) -> dict[str, str]:
        """Which VGG weights and which PGN this run uses, printable."""
        return {"vgg_weights": str(self.evaluator.teacher19.weights), "pgn": self.pgn.description}

    def teacher(self, net: str = "vgg19") -> pgn.PerceptualLoss:
        """A VGG teacher of its own (its target cache is not shared) with this run's weights, for a student's loss."""
        return load_teacher(net, self.config.vgg_weights, self.warnings, seed=self.config.seed)

    def pgn_loss(self, mse_weight: float) -> PGNLossTerm:
        """The PGN student's loss, labelled with the PGN's name."""
        return PGNLossTerm(self.pgn.model, mse_weight, label=f"PGN {self.pgn_name}")

    def progress(self, total: int, desc: str):
        """A progress bar on stderr, shown unless the run was asked for none."""
        return progress_bar(total, desc, self.config.progress)

    def pretrain(self, desc: str, steps: int, train: Callable[[Progress], list[float]]) -> float | None:
        """Train a demo's own generator (``train(progress)`` returns every step's loss) behind a progress bar.

        Returns the mean loss of the last 20 steps (None without steps).
        """
        bar = self.progress(steps, desc)
        losses = train(lambda step, loss: (bar.update(1), bar.set_postfix(l1=f"{loss:.3f}")))
        bar.close()
        tail = losses[-20:]
        return sum(tail) / len(tail) if tail else None

    def fit(self, loss: Loss, init: nn.Module, forward: Forward, target: torch.Tensor, steps: int, lr: float, *,
            bar=None, observe: Observer | None = None, measure_memory: bool | None = None) -> Student:
        """Fit a copy of ``init`` with ``loss`` towards ``target`` for ``steps`` Adam steps; return the student.

        Args:
            forward: how the generator makes its images (``forward(generator) -> ŷ``).
            bar: a progress bar to advance (default: one of its own for this fit).
            observe: sees every step (curves, stop rules); returning true ends the fit early.
            measure_memory: measure the memory of the loss part and of the whole step (default: as the run's
                configuration says).
        """
        memory = self.config.measure_memory if measure_memory is None else measure_memory
        student = Student.from_init(loss.label, loss, init, lr, measure_memory=memory)
        own_bar = bar is None
        if own_bar:
            bar = self.progress(steps, f"{self.name} {loss.label}")
        for t in range(steps):
            result = student.step(forward, target)
            bar.update(1)
            bar.set_postfix(loss=f"{float(result.loss.mean()):.4g}")
            if observe is not None and observe(t, result):
                bar.update(steps - t - 1)
                break
        if own_bar:
            bar.close()
        return student

    def finish(self, tables: list[Table], images: list[dict] | None = None, extra: dict | None = None, **setup: str) -> DemoReport:
        """Write ``results.json`` and ``results.md``; ``setup`` adds what the demo ran with to the weights and LPIPS."""
        setup = {**self.weights(), **setup, "lpips": self.evaluator.lpips.reason or "available"}
        report = DemoReport(self.name, asdict(self.config), setup, self.warnings.items, tables, images or [], extra or {})
        report.elapsed_s = time.perf_counter() - self.started
        report.write(self.config.output_dir)
        return report


def timing_cells(loss_part: list[dict], whole_step: list[dict]) -> dict:
    """Timing cells from :meth:`~benchmarks.measure.LossMeter.summary` of one or more fits.

    ``loss_*`` cells from the loss-part meters, ``step_*`` cells from the whole-step meters (``None`` for a part
    nobody measured: pass ``[]``). Each part: the mean of the fits' median times per step, the largest peak
    memory, and the median of their median peaks.
    """
    return {**_meter_cells("loss_", loss_part), **_meter_cells("step_", whole_step)}


def student_timing_cells(student: Student) -> dict:
    """:func:`timing_cells` of one fitted student (its loss-part and whole-step meters)."""
    return timing_cells([student.meter.summary()], [student.step_meter.summary()])


def _meter_cells(prefix: str, meters: list[dict]) -> dict:
    times = [s["time_ms"] for s in meters if s["time_ms"] is not None]
    peaks = [s["peak_mem_mib"] for s in meters if s["peak_mem_mib"] is not None]
    medians = [s["peak_mem_median_mib"] for s in meters if s["peak_mem_median_mib"] is not None]
    return {
        f"{prefix}time_ms": statistics.fmean(times) if times else None,
        f"{prefix}peak_mem_mib": max(peaks) if peaks else None,
        f"{prefix}peak_mem_median_mib": statistics.median(medians) if medians else None,
    }


_SCORE_HEADERS = {"mse_x1e3": ("MSE×10³", "{:.2f}"), "pl_vgg19": ("PL VGG-19", "{:.3f}"), "ssim": ("SSIM", "{:.3f}"),
                  "lpips": ("LPIPS", "{:.3f}")}


def score_columns(prefix: str = "", keys: tuple[str, ...] = tuple(_SCORE_HEADERS)) -> list[Column]:
    """Columns of :meth:`~demos.common.Scores.cells` (with the same ``prefix``, e.g. ``holdout_``)."""
    label = prefix.replace("_", " ")
    return [Column(prefix + key, label + _SCORE_HEADERS[key][0], _SCORE_HEADERS[key][1]) for key in keys]


LOSS_COLUMN = Column("loss", "Loss")
GRAD_COS_COLUMN = Column("grad_cos", "grad cos vs VGG-19", "{:.3f}")
#: Time per step and peak memory, of the loss part and of the whole step (:func:`timing_cells`).
TIMING_COLUMNS = [Column("loss_time_ms", "ms/step (loss)", "{:.1f}"), Column("loss_peak_mem_mib", "peak MiB (loss)", "{:.1f}"),
                  Column("step_time_ms", "ms/step (whole)", "{:.1f}"), Column("step_peak_mem_mib", "peak MiB (whole)", "{:.1f}")]
#: What :data:`TIMING_COLUMNS` cover, for the notes under a table of students.
TIMING_NOTE = ("ms/step (loss) and peak MiB (loss) cover the loss part (loss forward + backward to the image); "
               "ms/step (whole) and peak MiB (whole) the whole training step (generator forward, loss part, "
               "backward into the generator, Adam update). Peak MiB is the largest growth of the process's peak "
               f"RSS during that part over the first {MEMORY_CALLS} steps (first-call allocations that stay included).")
#: One row per loss, scored against one set of targets (DIP quality, inversion).
RECONSTRUCTION_COLUMNS = [LOSS_COLUMN, *score_columns(), GRAD_COS_COLUMN, *TIMING_COLUMNS]
