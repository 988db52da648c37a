"""pgn-toolkit: Perceptual Gradient Networks, the VGG perceptual loss they imitate, and a drop-in loss.

    import pgn
    model = pgn.build("resnet4")                                  # paper preset, random init
    g = model(y_hat, y)                                           # synthetic perceptual gradient
    teacher = pgn.PerceptualLoss("vgg19", weights="imagenet")     # the VGG teacher
    criterion = pgn.PGNLoss(model, mse_weight=20.0)               # one-line swap for the teacher
"""

__version__ = "0.1.0"

from .checkpoint import load, save
from .errors import PGNError
from .factory import build
from .heads import HeadConfig
from .loss import PGNLoss
from .model import PGN, PGNConfig, PGNOutput
from .perceptual import PerceptualLoss
from .presets import list_presets, register_preset
from .profile import Profile, profile
from .surrogate import check_surrogate_applies, surrogate_loss
from .value_spaces import denormalize, normalize

__all__ = [
    "PGN",
    "PGNConfig",
    "PGNError",
    "PGNLoss",
    "PGNOutput",
    "HeadConfig",
    "PerceptualLoss",
    "Profile",
    "build",
    "check_surrogate_applies",
    "denormalize",
    "list_presets",
    "load",
    "normalize",
    "profile",
    "register_preset",
    "save",
    "surrogate_loss",
]
