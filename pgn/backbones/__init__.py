"""PGN backbones: image-to-image networks on the 6-channel concatenation [ŷ, y]."""

from __future__ import annotations

from dataclasses import asdict, fields

from torch import nn

from ..errors import PGNError
from .resnet import ResNetBackbone, ResNetConfig
from .unet import UNetBackbone, UNetConfig

#: backbone type name → (module class, config dataclass)
BACKBONES: dict[str, tuple[type[nn.Module], type]] = {
    "resnet": (ResNetBackbone, ResNetConfig),
    "unet": (UNetBackbone, UNetConfig),
}


def backbone_config(kind: str, params: dict | None = None):
    """Build the config dataclass of backbone ``kind`` from a dict of parameters (unknown keys are an error)."""
    if kind not in BACKBONES:
        raise PGNError(f"unknown backbone {kind!r}: use one of {', '.join(BACKBONES)}")
    cls = BACKBONES[kind][1]
    params = dict(params or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise PGNError(f"unknown {kind} backbone parameter(s) {unknown}: allowed are {sorted(names)}")
    _check_plausible_counts(kind, params)
    cfg = cls(**params)
    check_plausible_size(kind, cfg)
    return cfg


#: Architecture sizes no one means (the paper's largest: 8 residual blocks, widths up to 512, 5 UNet levels).
#: Refused before anything is allocated, from arguments or from a checkpoint's stored config.
MAX_NUM_BLOCKS = 256
MAX_WIDTH = 4096
MAX_LEVELS = 8
MAX_PARAMETERS = 10**9  #: about 4 GB of float32 weights


class ImplausibleSize(PGNError):
    """An architecture size beyond the limits above (a typo, or a file that claims it)."""


def _check_plausible_counts(kind: str, params: dict) -> None:
    """Refuse absurd list lengths before the config converts them (a list of 10**7 widths is work too)."""
    for name in ("down_channels", "up_channels"):
        value = params.get(name)
        if isinstance(value, (list, tuple)) and len(value) > MAX_LEVELS:
            raise ImplausibleSize(f"{kind} {name} has {len(value)} entries: at most {MAX_LEVELS} levels are supported")


def check_plausible_size(kind: str, cfg) -> None:
    """Raise :class:`ImplausibleSize` (a one-line :class:`PGNError` with the limit) for a backbone config whose
    depth, widths or parameter count no one means, before anything is built."""
    widths = [*cfg.down_channels, *cfg.up_channels] + ([cfg.top_channels] if kind == "unet" else [])
    for name in ("down_channels", "up_channels"):
        if len(getattr(cfg, name)) > MAX_LEVELS:
            raise ImplausibleSize(f"{kind} {name} has {len(getattr(cfg, name))} entries: at most {MAX_LEVELS} levels are supported")
    if kind == "resnet" and cfg.num_blocks > MAX_NUM_BLOCKS:
        raise ImplausibleSize(f"num_blocks={cfg.num_blocks} is not a plausible ResNet depth: at most {MAX_NUM_BLOCKS} "
                              f"(the paper's largest has 8)")
    if any(w < 1 or w > MAX_WIDTH for w in widths):
        raise ImplausibleSize(f"{kind} widths must be from 1 to {MAX_WIDTH} channels, got {[w for w in widths if w < 1 or w > MAX_WIDTH][:3]}")
    estimate = _parameter_estimate(kind, cfg)
    if estimate > MAX_PARAMETERS:
        raise ImplausibleSize(f"this {kind} backbone would have about {estimate:.2g} parameters ({estimate * 4 / 2**30:.3g} GiB "
                              f"in float32): at most {MAX_PARAMETERS:.0g} are supported")


def _parameter_estimate(kind: str, cfg) -> int:
    """A rough upper bound of the parameter count (3×3 convolutions between consecutive widths), without building."""
    down, up = list(cfg.down_channels), list(cfg.up_channels)
    if kind == "resnet":
        chain = [6, *down, *[down[-1]] * (2 * cfg.num_blocks), *up, 3]
    else:
        chain = [6, *down, *up[::-1], cfg.top_channels, 3]
        chain += [max(down) for _ in range(4 * len(down))]  # each level's blocks
    return sum(9 * a * b for a, b in zip(chain, chain[1:]))


def build_backbone(kind: str, params: dict | None = None) -> nn.Module:
    """Build a backbone of type ``kind`` (``resnet`` or ``unet``) from a parameter dict."""
    cfg = backbone_config(kind, params)
    return BACKBONES[kind][0](cfg)


def config_to_dict(cfg) -> dict:
    """A backbone config as a plain dict of primitives (tuples become lists), for checkpoints and JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


__all__ = [
    "BACKBONES",
    "ImplausibleSize",
    "ResNetBackbone",
    "ResNetConfig",
    "UNetBackbone",
    "UNetConfig",
    "backbone_config",
    "build_backbone",
    "config_to_dict",
]
