"""Training Perceptual Gradient Networks as in the paper (Nikulin et al., 2020, §3) and the authors' code.

    from pgn.distill import DistillConfig, train
    result = train(DistillConfig(backbone="resnet4", vgg_weights="imagenet", data="/data/ImageNet"))
    model = pgn.load(result.pgn_path)

The command line is ``pgn-distill`` (:mod:`distill.cli`); several processes run under ``torchrun``.
"""

from .autoencoders import SurrogateAutoencoder, build_autoencoders, split_sizes
from .config import DistillConfig, load_config, save_config
from .metalosses import MetaLossWeights, gradient_metrics, meta_loss
from .trainer import Distiller, TrainResult, train
from .validation import evaluate_pgn

__all__ = [
    "DistillConfig",
    "Distiller",
    "MetaLossWeights",
    "SurrogateAutoencoder",
    "TrainResult",
    "build_autoencoders",
    "evaluate_pgn",
    "gradient_metrics",
    "load_config",
    "meta_loss",
    "save_config",
    "split_sizes",
    "train",
]
