"""Generators the demos fit: the DIP skip net, a talking-head style pose generator, a latent generator, user modules."""

from .latent import AUTOENCODER_TRAINING, LatentGenerator, LatentGeneratorConfig, train_autoencoder
from .skip_net import SkipNet, SkipNetConfig
from .talking_head import (
    META_TRAINING,
    Embedder,
    PersonalizedGenerator,
    PoseGenerator,
    TalkingHeadConfig,
    meta_train,
    personalize,
)
from .training import TrainConfig, train_adam
from .user import load_module

__all__ = [
    "AUTOENCODER_TRAINING",
    "Embedder",
    "LatentGenerator",
    "LatentGeneratorConfig",
    "META_TRAINING",
    "PersonalizedGenerator",
    "PoseGenerator",
    "SkipNet",
    "SkipNetConfig",
    "TalkingHeadConfig",
    "TrainConfig",
    "load_module",
    "meta_train",
    "personalize",
    "train_adam",
    "train_autoencoder",
]
