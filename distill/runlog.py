"""What a run leaves in its directory for people and machines (rank 0 only).

* ``metrics.jsonl``: one JSON object per logged step, every scalar with its ``step`` (and ``samples``, the
  global sample counter the authors plot against); lines with an ``event`` key mark starts and resumes.
* ``tb/``: the same scalars and the image grids for TensorBoard (``--tensorboard``).
* ``curves.png``: the training curve (cosine similarity of predicted vs true gradients, train and held-out;
  meta-loss), redrawn at every checkpoint and at the end.
* ``images/step-N.png``: grids with rows y (target), ŷ (autoencoder output), P (the PGN's proxy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from pgn.images import save_image_grid
from pgn.value_spaces import denormalize

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curves.png"


class RunLog:
    """Writes metrics, image grids and plots into ``run_dir``; every method is a no-op when ``enabled`` is False.

    Args:
        run_dir: the run directory.
        enabled: True on rank 0 only.
        tensorboard: also write TensorBoard event files under ``run_dir/tb``.
        resume_step: when resuming, drop metric lines logged after this step (a crashed run may have logged
            steps the resumed run will redo).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        self._written = 0  #: lines this log wrote to metrics.jsonl
        self._plotted: int | None = None  #: ``_written`` when curves.png was last drawn
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._file = self.metrics_path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from pgn.errors import PGNError

                raise PGNError('--tensorboard needs the tensorboard package: pip install "pgn-toolkit[tensorboard]"') from None
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [r for r in read_records(self.metrics_path) if "event" in r or r.get("step", 0) <= step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def event(self, name: str, **fields: Any) -> None:
        """Record a non-scalar event (``start``, ``resume``, ``reset``, …) in ``metrics.jsonl``."""
        if self.enabled:
            self._write({"event": name, **fields})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Record scalars at ``step`` (file and TensorBoard)."""
        if not self.enabled:
            return
        self._write({"step": step, **{k: _clean(v) for k, v in values.items()}})
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def _write(self, rec: dict) -> None:
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        self._written += 1

    def image_grid(self, step: int, y: torch.Tensor, y_hat: torch.Tensor, proxy: torch.Tensor, limit: int = 8) -> Path | None:
        """Save rows y / ŷ / P (normalized tensors, the first ``limit`` samples) as ``images/step-N.png``."""
        if not self.enabled:
            return None
        rows = [denormalize(t[:limit].detach().float().cpu()).clamp(0, 1) for t in (y, y_hat, proxy)]
        path = save_image_grid(rows, self.run_dir / "images" / f"step-{step:09d}.png")
        if self.writer is not None:
            self.writer.add_image("samples/y_yhat_proxy", torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1), step)
        return path

    def plot(self) -> Path | None:
        """Redraw ``curves.png`` from ``metrics.jsonl``, unless nothing was logged since it was last drawn (a run
        that ends on a checkpoint draws once, not twice)."""
        if not self.enabled:
            return None
        curves = self.run_dir / CURVE_FILE
        if self._plotted == self._written and curves.is_file():
            return curves
        path = plot_curves(self.metrics_path, curves)
        self._plotted = self._written if path is not None else None
        return path

    def close(self) -> None:
        """Flush and close the files."""
        if not self.enabled:
            return
        self._file.close()
        if self.writer is not None:
            self.writer.close()


def _clean(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_records(path: str | Path) -> list[dict]:
    """Every JSON object in a ``metrics.jsonl``, in order; lines a crash cut short (or that are not objects) are skipped."""
    out = []
    with Path(path).open(errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """The scalar records of a ``metrics.jsonl`` (event lines left out)."""
    return [r for r in read_records(path) if "event" not in r]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path | None:
    """Plot cosine similarity (train, held-out) and meta-loss against the step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return None
    records = read_metrics(metrics_path)
    if not records:
        return None
    fig, (ax_cos, ax_loss) = plt.subplots(1, 2, figsize=(11, 5))
    steps, cos = _series(records, "train/cos")
    if steps:
        ax_cos.plot(steps, cos, color="tab:blue", alpha=0.25, lw=0.8)
        ax_cos.plot(steps, _smooth(cos), color="tab:blue", label="train (EMA 0.9)")
    for key, color, label in (("val/cos", "tab:red", "held-out, fixed degradations"), ("val/ae_cos", "tab:green", "held-out, autoencoder outputs")):
        s, v = _series(records, key)
        if s:
            ax_cos.plot(s, v, "o-", color=color, label=label, ms=4)
        s, v = _series(records, key + "_untrained")
        if s:
            ax_cos.plot(s, v, "--", color=color, alpha=0.6, lw=1, label="  same pairs, untrained PGN")
    s, v = _series(records, "val/cos_mse")
    if s:
        ax_cos.plot(s, v, ":", color="tab:red", alpha=0.6, lw=1, label="  same pairs, MSE gradient ŷ − y")
    ax_cos.set_xlabel("step")
    ax_cos.set_ylabel("cosine(g_PGN, g_VGG)")
    ax_cos.grid(alpha=0.3)
    ax_cos.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7)
    steps, loss = _series(records, "train/loss")
    if steps:
        ax_loss.plot(steps, loss, color="tab:gray", alpha=0.3, lw=0.8)
        ax_loss.plot(steps, _smooth(loss), color="black", label="meta-loss (batch mean)")
        for key, color in (("train/term_grad", "tab:orange"), ("train/term_vgg", "tab:purple"), ("train/term_l1", "tab:brown")):
            s, v = _series(records, key)
            if s:
                ax_loss.plot(s, _smooth(v), color=color, label=key.split("/")[1], lw=1)
        if all(x > 0 for x in loss):
            ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    # fixed margins with room for the legends below the axes: tight_layout measured every text to find them and
    # cost more than a third of a drawing, which a run repeats at every checkpoint
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.26, top=0.92 if title else 0.97, wspace=0.2)
    from pgn.files import save_figure

    try:
        return save_figure(fig, out_path, dpi=110)
    finally:
        plt.close(fig)
