"""Generators the demos fit: the DIP skip net, a talking-head style pose generator, a latent generator, user modules."""

from .latent import AUTOENCODER_TRAINING, LatentGenerator, LatentGeneratorConfig, train_autoencoder  # noqa: F401
from .skip_net import SkipNet, SkipNetConfig  # noqa: F401
from .talking_head import META_TRAINING, Embedder, PersonalizedGenerator, PoseGenerator, TalkingHeadConfig, meta_train, personalize  # noqa: F401
from .training import TrainConfig, train_adam  # noqa: F401
from .user import load_module  # noqa: F401
