"""``pgn.build``: a PGN from a preset name, with config overrides, randomly initialized or with weights loaded.

It sits above :mod:`pgn.presets` (what a name means) and :mod:`pgn.checkpoint` (reading weights), so that neither
of those needs the other's caller and the model itself knows nothing about files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load, paper_checkpoint_path
from .model import PGN, apply_overrides
from .presets import preset_config


def build(name: str, *, weights: str | Path | None = None, **overrides: Any) -> PGN:
    """Build a PGN preset, optionally loading weights.

    Args:
        name: a preset from :func:`pgn.list_presets`: ``resnet4``, ``resnet6``, ``resnet8``, ``unet`` (the
            constrained-proxy head of the released models, paper Eq. 6-7) or a head variant such as
            ``resnet8-direct``, ``resnet8-proxy``, ``resnet8-hybrid``.
        weights: ``None`` (random init, PyTorch defaults as in the paper), a checkpoint path (ours or the
            authors'), or ``"paper"`` for the authors' released checkpoint placed in the local cache
            (see :func:`pgn.checkpoint.paper_checkpoint_path`).
        **overrides: config changes, e.g. ``grad_scale=0.03``, ``value_space="imagenet"``, ``num_blocks=5``.

    Returns:
        A :class:`PGN` in eval mode.
    """
    config = apply_overrides(preset_config(name), **overrides)
    if weights is None:
        return PGN(config).eval()
    path = paper_checkpoint_path(name) if weights == "paper" else Path(weights)
    return load(path, preset=name, **overrides)
