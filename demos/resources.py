"""Which VGG teacher and which PGN a demo uses, said out loud.

Every demo reports the VGG weights and the PGN checkpoint it ran with. Random VGG weights or an untrained PGN
make the numbers meaningless as quality measurements (they then only show that the machinery works), so both
cases produce a warning that the demo prints in a banner and writes into its results.

``--vgg-weights auto`` (the default) uses torchvision's ImageNet VGG weights when they are in the torch hub cache
and falls back to random weights, with the warning, when they are not; it never downloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

import pgn
from pgn.errors import PGNError
from pgn.perceptual import imagenet_weights_path

#: ``--vgg-weights`` values besides a weights file.
VGG_WEIGHT_CHOICES = ("auto", "imagenet", "random")
DEFAULT_PGN_PRESET = "resnet4"


@dataclass
class Warnings:
    """Warnings collected while setting a demo up; printed in a banner and stored in results.json."""

    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        """Record one warning (duplicates are kept once)."""
        if message not in self.items:
            self.items.append(message)


def resolve_vgg_weights(weights: str | Path, net: str, warnings: Warnings) -> str | Path:
    """Turn ``auto`` into ``imagenet`` or ``random``; other values pass through. Adds a warning for random."""
    weights = str(weights)
    if weights == "auto":
        if imagenet_weights_path(net).is_file():
            return "imagenet"
        warnings.add(
            f"ImageNet {net.upper()} weights are not cached ({imagenet_weights_path(net)}): using RANDOM VGG weights. "
            "Perceptual-loss numbers and the VGG students then only show the mechanics; pass --vgg-weights PATH "
            "or put the torchvision file there for real numbers."
        )
        return "random"
    if weights == "random":
        warnings.add(f"--vgg-weights random: the {net.upper()} teacher is UNTRAINED; its numbers only show the mechanics.")
    return weights


def load_teacher(net: str, weights: str | Path, warnings: Warnings, seed: int = 0) -> pgn.PerceptualLoss:
    """A frozen VGG perceptual loss (RGB [0, 1] inputs, per-sample values) from ``auto|imagenet|random|PATH``."""
    resolved = resolve_vgg_weights(weights, net, warnings)
    return pgn.PerceptualLoss(net, weights=resolved, seed=seed, reduction="none", download=resolved == "imagenet")


@dataclass
class PGNSource:
    """A PGN together with a printable description of where its weights came from."""

    model: pgn.PGN
    description: str
    trained: bool


def load_pgn(checkpoint: str | Path | None, preset: str | None, warnings: Warnings, seed: int = 0) -> PGNSource:
    """Load the PGN a demo fits with.

    Args:
        checkpoint: a checkpoint file (ours, e.g. from ``pgn-distill``, or the authors'), ``"paper"`` for the
            authors' released file in the local cache, or ``None`` for an untrained PGN (with a loud warning).
        preset: expected preset (``resnet4`` when ``None`` and no checkpoint). With a checkpoint it is checked
            against the file only if given.
        warnings: where the untrained-PGN warning goes.
        seed: seeds the random initialization of an untrained PGN (so runs repeat).

    Returns:
        A :class:`PGNSource` whose model is in eval mode and works on RGB [0, 1] images.
    """
    name = preset or DEFAULT_PGN_PRESET
    if checkpoint is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = pgn.build(name)
        warnings.add(
            f"No --pgn-checkpoint: the PGN ({name}) is UNTRAINED (random weights). Its gradients are not perceptual; "
            "the PGN rows only show the mechanics. Train one with pgn-distill, or pass a released checkpoint."
        )
        return PGNSource(model, f"{name}, untrained (random init, seed {seed})", False)
    if str(checkpoint) == "paper":
        model = pgn.build(name, weights="paper", value_space="unit")
        return PGNSource(model, f"{name}, authors' released weights", True)
    path = Path(checkpoint)
    if not path.is_file():
        raise PGNError(f"PGN checkpoint not found: {path} (pass a file written by pgn-distill or pgn.save, or 'paper')")
    model = pgn.load(path, preset=preset, value_space="unit")
    label = model.config.preset or model.config.backbone
    return PGNSource(model, f"{label} ({model.config.head.kind} head) from {path}", True)
