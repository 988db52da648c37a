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
    return cls(**params)


def build_backbone(kind: str, params: dict | None = None) -> nn.Module:
    """Build a backbone of type ``kind`` (``resnet`` or ``unet``) from a parameter dict."""
    cfg = backbone_config(kind, params)
    return BACKBONES[kind][0](cfg)


def config_to_dict(cfg) -> dict:
    """A backbone config as a plain dict of primitives (tuples become lists), for checkpoints and JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


__all__ = [
    "BACKBONES",
    "ResNetBackbone",
    "ResNetConfig",
    "UNetBackbone",
    "UNetConfig",
    "backbone_config",
    "build_backbone",
    "config_to_dict",
]
