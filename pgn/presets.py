"""Named PGN configurations: the paper's four backbones with each head, one row per preset, and a registry.

Every built-in preset is a row of :data:`PRESETS`: name, backbone type, backbone parameters, head, grad_scale (1/α)
and a one-line description (``pgn-info --presets`` lists them). The name without a suffix has the constrained
proxy head of the released models; ``-proxy``, ``-direct``, ``-hybrid`` and ``-warped`` select the other heads.
More presets can be registered (torchvision/timm style; a name registered twice is an error)::

    @pgn.register_preset("resnet2", description="ResNet-2: a smaller PGN")
    def resnet2() -> pgn.PGNConfig:
        return pgn.PGNConfig("resnet", {"num_blocks": 2}, preset="resnet2")
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from .constants import GRAD_SCALE_RESNET, GRAD_SCALE_UNET
from .errors import PGNError, first_line
from .heads import HeadConfig
from .model import PGNConfig


@dataclass(frozen=True)
class Preset:
    """One row of the preset table: everything :func:`preset_config` needs, and what the preset is."""

    name: str
    backbone: str  #: ``resnet`` or ``unet``
    params: dict[str, Any] = field(hash=False)  #: backbone parameters that differ from the backbone's defaults
    head: str  #: head kind (:data:`pgn.heads.HEAD_KINDS`)
    grad_scale: float  #: 1/α of the head
    description: str

    def config(self) -> PGNConfig:
        """The :class:`PGNConfig` of this preset."""
        head = HeadConfig(kind=self.head, grad_scale=self.grad_scale)
        return PGNConfig(self.backbone, dict(self.params), head, preset=self.name)


#: The built-in presets. ResNet-N: N residual blocks at 128 channels; UNet: ResNet-18 levels with Double
#: BlazeBlocks. Heads (paper equations): constrained Eq. 6-7, proxy Eq. 3-5, direct Eq. 2, hybrid Eq. 8-9; warped is
#: the authors' experimental head. grad_scale is what the released checkpoints use: 0.025 (α = 40) for the ResNets,
#: 0.048 (α ≈ 20.8) for the UNet.
PRESETS: tuple[Preset, ...] = (
    # name, backbone, backbone parameters, head, grad_scale, description
    Preset("resnet4", "resnet", {"num_blocks": 4}, "constrained", GRAD_SCALE_RESNET, "ResNet-4, constrained proxy: the paper's best model overall (1.34M params)"),
    Preset("resnet4-proxy", "resnet", {"num_blocks": 4}, "proxy", GRAD_SCALE_RESNET, "ResNet-4, unconstrained proxy P = B"),
    Preset("resnet4-direct", "resnet", {"num_blocks": 4}, "direct", GRAD_SCALE_RESNET, "ResNet-4 predicting the gradient directly (P = ŷ − B/512)"),
    Preset("resnet4-hybrid", "resnet", {"num_blocks": 4}, "hybrid", GRAD_SCALE_RESNET, "ResNet-4, sigmoid-constrained direct prediction"),
    Preset("resnet4-warped", "resnet", {"num_blocks": 4}, "warped", GRAD_SCALE_RESNET, "ResNet-4 warping y by a predicted flow (authors' experimental head)"),
    Preset("resnet6", "resnet", {"num_blocks": 6}, "constrained", GRAD_SCALE_RESNET, "ResNet-6, constrained proxy (1.93M params)"),
    Preset("resnet6-proxy", "resnet", {"num_blocks": 6}, "proxy", GRAD_SCALE_RESNET, "ResNet-6, unconstrained proxy P = B"),
    Preset("resnet6-direct", "resnet", {"num_blocks": 6}, "direct", GRAD_SCALE_RESNET, "ResNet-6 predicting the gradient directly (P = ŷ − B/512)"),
    Preset("resnet6-hybrid", "resnet", {"num_blocks": 6}, "hybrid", GRAD_SCALE_RESNET, "ResNet-6, sigmoid-constrained direct prediction"),
    Preset("resnet6-warped", "resnet", {"num_blocks": 6}, "warped", GRAD_SCALE_RESNET, "ResNet-6 warping y by a predicted flow (authors' experimental head)"),
    Preset("resnet8", "resnet", {"num_blocks": 8}, "constrained", GRAD_SCALE_RESNET, "ResNet-8, constrained proxy: the authors' default backbone (2.52M params)"),
    Preset("resnet8-proxy", "resnet", {"num_blocks": 8}, "proxy", GRAD_SCALE_RESNET, "ResNet-8, unconstrained proxy P = B (in the paper's Deep Image Prior head comparison)"),
    Preset("resnet8-direct", "resnet", {"num_blocks": 8}, "direct", GRAD_SCALE_RESNET, "ResNet-8 predicting the gradient directly (in the paper's Deep Image Prior head comparison)"),
    Preset("resnet8-hybrid", "resnet", {"num_blocks": 8}, "hybrid", GRAD_SCALE_RESNET, "ResNet-8, sigmoid-constrained direct prediction"),
    Preset("resnet8-warped", "resnet", {"num_blocks": 8}, "warped", GRAD_SCALE_RESNET, "ResNet-8 warping y by a predicted flow (authors' experimental head)"),
    Preset("unet", "unet", {}, "constrained", GRAD_SCALE_UNET, "UNet, constrained proxy: the fewest MACs (2.10 GMAC at 224², 1.77M params)"),
    Preset("unet-proxy", "unet", {}, "proxy", GRAD_SCALE_UNET, "UNet, unconstrained proxy P = B"),
    Preset("unet-direct", "unet", {}, "direct", GRAD_SCALE_UNET, "UNet predicting the gradient directly (P = ŷ − B/512)"),
    Preset("unet-hybrid", "unet", {}, "hybrid", GRAD_SCALE_UNET, "UNet, sigmoid-constrained direct prediction"),
    Preset("unet-warped", "unet", {}, "warped", GRAD_SCALE_UNET, "UNet warping y by a predicted flow (authors' experimental head)"),
)


class _Registered(NamedTuple):
    make: Callable[[], PGNConfig]
    description: str


_REGISTRY: dict[str, _Registered] = {}


def register_preset(name: str, description: str = "") -> Callable[[Callable[[], PGNConfig]], Callable[[], PGNConfig]]:
    """Decorator registering a function that returns the :class:`PGNConfig` of preset ``name``.

    ``description`` (default: the first line of the function's docstring) is what ``pgn-info --presets`` shows.
    """

    def deco(fn: Callable[[], PGNConfig]) -> Callable[[], PGNConfig]:
        if name in _REGISTRY:
            raise ValueError(f"preset {name!r} is already registered")
        _REGISTRY[name] = _Registered(fn, description or first_line(fn.__doc__ or ""))
        return fn

    return deco


for _row in PRESETS:
    register_preset(_row.name, _row.description)(_row.config)


def list_presets(pattern: str = "*") -> list[str]:
    """Names of the registered presets matching a shell-style ``pattern`` (e.g. ``"resnet*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _registered(name: str) -> _Registered:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PGNError(f"unknown preset {name!r}.{hint} Available: {', '.join(list_presets())}")
    return _REGISTRY[name]


def preset_config(name: str) -> PGNConfig:
    """The config of preset ``name``; a clear error with close matches if it does not exist."""
    return _registered(name).make()


def preset_description(name: str) -> str:
    """The one-line description of preset ``name``."""
    return _registered(name).description


def paper_backbones() -> list[tuple[str, dict[str, Any]]]:
    """(backbone type, parameters) of the paper's backbones (ResNet-4, -6, -8, UNet), in table order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for row in PRESETS:
        if (row.backbone, row.params) not in out:
            out.append((row.backbone, dict(row.params)))
    return out
