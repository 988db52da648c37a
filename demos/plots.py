"""Loss curves of the demos as PNG line plots (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, ylabel: str = "VGG-19 perceptual loss") -> Path:
    """One line per name: ``curves[name] = [(iteration, value), ...]``; saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for name, points in curves.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=name)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
