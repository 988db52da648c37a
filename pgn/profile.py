"""Parameters and multiply-accumulates (MACs) of PGNs and VGG teachers, in the paper's counting convention.

The paper's Table 1/6 counted with thop (late 2019). Per layer and per output element: conv
``cin/groups·k² (+1 with bias)``; BatchNorm 4; LeakyReLU 1; bilinear upsampling 11; AvgPool(k) k+1 (thop read
an integer kernel 2 as "2 adds + 1 divide"); Linear ``in_features``; ReLU, max-pool, nearest upsampling,
concatenation and residual adds 0. For a VGG teacher the paper reports 3 × (forward on ŷ and on y), i.e.
6 × one image's forward, as the cost of one gradient. ``conv_macs`` counts pure convolution multiply-adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import PGNError
from .factory import build
from .inputs import check_size, nearest_valid_size
from .model import PGN
from .perceptual import PerceptualLoss, vgg_features

#: The paper's Table 6 at 224×224: name → (parameters as printed, MACs in billions as printed).
PAPER_TABLE6: dict[str, tuple[str, str]] = {
    "vgg19": ("12.94M", "108.84B"),
    "vgg11": ("6.86M", "42.21B"),
    "resnet4": ("1.34M", "19.79B"),
    "resnet6": ("1.93M", "27.23B"),
    "resnet8": ("2.52M", "34.66B"),
    "unet": ("1.77M", "2.10B"),
}


@dataclass(frozen=True)
class Profile:
    """Size and cost of computing one gradient for one (ŷ, y) pair at ``size``×``size``."""

    name: str
    params: int
    macs: int  #: paper convention (thop 2019), see module docs
    conv_macs: int  #: convolution multiply-adds only
    size: tuple[int, int]

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


def _element_ops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(paper-convention MACs, pure conv MACs) of one leaf module call."""
    n = out.numel()
    if isinstance(module, nn.Conv2d):
        per = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return n * (per + (1 if module.bias is not None else 0)), n * per
    if isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
        return 4 * n, 0
    if isinstance(module, nn.LeakyReLU):
        return n, 0
    if isinstance(module, nn.Upsample):
        return (11 * n if module.mode == "bilinear" else 0), 0
    if isinstance(module, nn.AvgPool2d):
        k = module.kernel_size
        k = k if isinstance(k, int) else int(torch.tensor(k).prod())
        return (k + 1) * n, 0
    if isinstance(module, nn.Linear):
        return module.in_features * n, 0
    return 0, 0


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, int]:
    """Run ``module(*inputs)`` once and sum paper-convention MACs and conv MACs over its leaf modules."""
    totals = [0, 0]

    def hook(m, args, out):
        a, b = _element_ops(m, args[0] if args else None, out)
        totals[0] += a
        totals[1] += b

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1]


def profile(model: PGN | PerceptualLoss | str, size: int | tuple[int, int] = 224) -> Profile:
    """Parameters and MACs of a PGN, a perceptual-loss teacher, or a preset/teacher name.

    Args:
        model: a :class:`pgn.PGN`, a :class:`pgn.PerceptualLoss`, a preset name (``"resnet4"``) or ``"vgg19"`` /
            ``"vgg11"``.
        size: input height and width (an int for squares).

    Returns:
        A :class:`Profile`; for a teacher, MACs are for one gradient (3 × forward on both images).

    Raises:
        PGNError: a size the model cannot take (the message names the nearest valid sizes).
    """
    h, w = (size, size) if isinstance(size, int) else size
    check_size(h, w, what="profile size")
    if isinstance(model, str):
        if model in ("vgg19", "vgg11"):
            return _profile_vgg(model, vgg_features(model), (h, w))
        model = build(model)
    if isinstance(model, PerceptualLoss):
        return _profile_vgg(model.net, model.features, (h, w))
    check_profile_size(model, (h, w))
    backbone = model.backbone
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        macs, conv = count_macs(backbone, torch.zeros(1, backbone.in_channels, h, w, device=device))
    finally:
        backbone.train(was_training)
    params = sum(p.numel() for p in backbone.parameters())
    return Profile(model.config.preset or model.config.backbone, params, macs, conv, (h, w))


def _profile_vgg(net: str, features: nn.Module, size: tuple[int, int]) -> Profile:
    device = next(features.parameters()).device
    macs, conv = count_macs(features, torch.zeros(1, 3, *size, device=device))
    params = sum(p.numel() for p in features.parameters())
    return Profile(net, params, 6 * macs, 6 * conv, size)


def check_profile_size(model: PGN, size: tuple[int, int]) -> None:
    """Raise a one-line :class:`PGNError` unless ``model`` takes ``size`` (H, W); names the nearest valid sizes."""
    multiple = model.size_multiple
    name = model.config.preset or model.config.backbone
    for dim, n in zip(("height", "width"), size):
        if n < multiple or n % multiple:
            raise PGNError(
                f"{name} cannot take {size[0]}x{size[1]} inputs: {dim} must be a multiple of {multiple}; "
                f"nearest valid {dim}: {nearest_valid_size(n, multiple)}"
            )
