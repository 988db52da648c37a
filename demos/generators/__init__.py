"""Generators the demos fit: the DIP skip net, a talking-head style pose generator, a latent generator, user modules."""

from .latent import AutoencoderTrainConfig, LatentGenerator, LatentGeneratorConfig, train_autoencoder
from .skip_net import SkipNet, SkipNetConfig
from .talking_head import (
    Embedder,
    MetaTrainConfig,
    PersonalizedGenerator,
    PoseGenerator,
    TalkingHeadConfig,
    meta_train,
    personalize,
)
from .user import load_module

__all__ = [
    "AutoencoderTrainConfig",
    "Embedder",
    "LatentGenerator",
    "LatentGeneratorConfig",
    "MetaTrainConfig",
    "PersonalizedGenerator",
    "PoseGenerator",
    "SkipNet",
    "SkipNetConfig",
    "TalkingHeadConfig",
    "load_module",
    "meta_train",
    "personalize",
    "train_autoencoder",
]
