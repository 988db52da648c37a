"""The VGG perceptual loss a PGN imitates (the "teacher"), and its true gradient.

``VGG(ŷ, y) = Σ_l mean_{c,h,w} |φ_l(ŷ) − φ_l(y)|`` over the output of every ReLU up to relu5_1 (13 taps for
VGG-19, 7 for VGG-11), with every MaxPool replaced by AvgPool(2), one value per sample and no batch mean.

Weight sources:

* ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` VGG weights (the authors' ``pretrained=True``). Read from the
  torch hub cache when present (works offline); otherwise downloaded; offline without the file, a one-line
  error names the file and where to put it.
* a path to a state dict file (a full torchvision VGG state dict, or only its ``features``).
* ``"random"``: seeded default initialization (tests, and machines without the weights). The loss is then
  not perceptual; anything reported with it shows the mechanics only.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import PGNError
from .files import read_file
from .inputs import check_images, compute_dtype
from .value_spaces import check_value_space, to_imagenet

#: VGG feature configs up to and including relu5_1 ("M" marks a pooling layer), as in torchvision.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512],
}
#: Number of torchvision ``features`` modules kept (through relu5_1).
VGG_MODULES = {"vgg19": 30, "vgg11": 18}
#: ReLU tap names in order.
VGG_TAPS = {
    "vgg19": ["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
              "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1"],
    "vgg11": ["relu1_1", "relu2_1", "relu3_1", "relu3_2", "relu4_1", "relu4_2", "relu5_1"],
}
#: Display names.
VGG_NAMES = {"vgg19": "VGG-19", "vgg11": "VGG-11"}
REDUCTIONS = ("sum", "mean", "none")
#: Loss scale of gradients computed in float16 (``torch.autocast(dtype=float16)`` or a ``.half()`` teacher):
#: VGG gradients of ~1e-7 underflow in fp16, so the backward starts from this value instead of 1 and the result
#: is divided by it in fp32. It is halved and the gradient recomputed if it overflows. 2**15 is the largest power
#: of two below fp16's maximum (65504).
FP16_LOSS_SCALE = 2.0**15


@dataclass(frozen=True)
class TeacherWeights:
    """Where a teacher's weights came from, for printing beside every reported number."""

    net: str
    source: str  # "imagenet", "random" or "file"
    detail: str

    @property
    def pretrained(self) -> bool:
        """True unless the weights are random."""
        return self.source != "random"

    def __str__(self) -> str:
        name = VGG_NAMES[self.net]
        warn = "" if self.pretrained else " — UNTRAINED: results show the mechanics only"
        return f"{name} ({self.detail}){warn}"


def vgg_features(net: str) -> nn.Sequential:
    """The truncated VGG feature extractor (AvgPool instead of MaxPool), default-initialized, in torchvision order."""
    if net not in VGG_CONFIGS:
        raise PGNError(f"unknown perceptual network {net!r}: use vgg19 or vgg11")
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG_CONFIGS[net]:
        if v == "M":
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2, padding=0))
        else:
            conv = nn.Conv2d(cin, int(v), 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            cin = int(v)
    assert len(layers) == VGG_MODULES[net]
    return nn.Sequential(*layers)


#: torchvision's ``VGG19_Weights.IMAGENET1K_V1`` and ``VGG11_Weights.IMAGENET1K_V1`` files. Named here rather than
#: looked up in ``torchvision.models``, whose import costs 1.1–1.7 s in every process that resolves the weights;
#: the hash prefix in each name is what ``torch.hub`` checks a download against.
IMAGENET_WEIGHTS_URLS = {
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
}


def imagenet_weights_path(net: str) -> Path:
    """Where torchvision's ImageNet VGG weights for ``net`` are cached (``$TORCH_HOME/hub/checkpoints/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET_WEIGHTS_URLS[net])


def _feature_tensors(sd: dict) -> dict[str, torch.Tensor]:
    """The ``features`` tensors of a torchvision VGG state dict (full or features-only), keyed ``"<index>.<leaf>"``."""
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    out = {}
    for key, value in sd.items():
        k = key[len("features."):] if key.startswith("features.") else key
        if isinstance(value, torch.Tensor) and k.split(".")[0].isdigit():
            out[k] = value
    return out


def _features_state_dict(sd: dict, net: str, where: str) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in _feature_tensors(sd).items() if int(k.split(".")[0]) < VGG_MODULES[net]}
    if not out:
        raise PGNError(f"{where} holds no VGG feature weights (expected keys like 'features.0.weight' or '0.weight')")
    return out


def _conv_indices(net: str) -> list[int]:
    """Indices of the conv layers of ``net``'s ``features`` up to relu5_1 (torchvision numbering)."""
    out, index = [], 0
    for v in VGG_CONFIGS[net]:
        if v != "M":
            out.append(index)
        index += 1 if v == "M" else 2  # pooling: one module; conv: conv + ReLU
    return out


def _misfit(features: nn.Sequential, sd: dict, net: str) -> str:
    """Why the state dict ``sd`` does not load into ``features`` of ``net``: the other VGG, or the tensors that differ."""
    tensors = _feature_tensors(sd)
    convs = sorted(int(k.split(".")[0]) for k, v in tensors.items() if k.endswith(".weight") and v.dim() == 4)
    for other in VGG_CONFIGS:
        if other != net and [i for i in convs if i < VGG_MODULES[other]] == _conv_indices(other):
            return (f"this is a {VGG_NAMES[other]} state dict ({len(convs)} conv layers), not {VGG_NAMES[net]}: "
                    f"pass net={other!r} or a {VGG_NAMES[net]} file")
    want = features.state_dict()
    have = _features_state_dict(sd, net, "")
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [f"{k} {tuple(have[k].shape)} instead of {tuple(want[k].shape)}" for k in want if k in have and have[k].shape != want[k].shape]
    parts = [f"missing {', '.join(missing[:3])}" if missing else "", f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
             f"shape of {', '.join(wrong[:2])}" if wrong else ""]
    return "; ".join(p for p in parts if p) or "its tensors do not fit"


def load_teacher_weights(features: nn.Sequential, net: str, weights: str | os.PathLike, seed: int, download: bool) -> TeacherWeights:
    """Fill ``features`` from a weight source; returns a description of what was loaded."""
    if weights == "random":
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            fresh = vgg_features(net)
        finally:
            torch.random.set_rng_state(gen_state)
        features.load_state_dict(fresh.state_dict())
        return TeacherWeights(net, "random", f"random init, seed {seed}")
    if weights == "imagenet":
        path = imagenet_weights_path(net)
        if path.is_file():
            sd = torch.load(path, map_location="cpu", weights_only=True)
        elif download:
            url = IMAGENET_WEIGHTS_URLS[net]
            try:
                sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                        weights_only=True)
            except Exception as e:  # no network, proxy errors, hash mismatch
                raise PGNError(
                    f"ImageNet {net} weights are not available offline ({e.__class__.__name__}): download "
                    f"{url} and save it as {path}, or pass weights='random' or a state-dict path"
                ) from None
        else:
            raise PGNError(f"ImageNet {net} weights not found: save {IMAGENET_WEIGHTS_URLS[net]} as {path}")
        detail = "ImageNet, torchvision IMAGENET1K_V1"
    else:
        path = Path(weights)
        if not path.is_file():
            raise PGNError(f"VGG weights file not found: {path} (use 'imagenet', 'random' or a state-dict path)")
        sd = read_file(path)
        if not isinstance(sd, dict):
            raise PGNError(f"{path} is not a VGG state dict")
        detail = f"file {path.name}"
    try:
        features.load_state_dict(_features_state_dict(sd, net, str(path)), strict=True)
    except RuntimeError:
        raise PGNError(f"{path} does not fit {net} up to relu5_1: {_misfit(features, sd, net)}") from None
    return TeacherWeights(net, "imagenet" if weights == "imagenet" else "file", detail)


class PerceptualLoss(nn.Module):
    """VGG-19 / VGG-11 perceptual loss with its true gradient (the PGN's teacher).

    Args:
        net: ``"vgg19"`` (paper) or ``"vgg11"``.
        weights: ``"imagenet"``, ``"random"`` or a path to a state-dict file (see module docs).
        seed: seed of ``"random"`` weights.
        value_space: ``"unit"`` (inputs RGB in [0, 1], normalized inside; default) or ``"imagenet"``.
        reduction: ``"sum"`` over the batch (default: each sample's gradient is the gradient of its own loss,
            as in the paper), ``"mean"`` or ``"none"`` (the per-sample vector).
        download: allow downloading the ImageNet weights when they are not cached.

    Example::

        teacher = pgn.PerceptualLoss("vgg19", weights="imagenet")
        loss = teacher(y_hat, y)            # scalar (sum over the batch)
        g_true = teacher.gradient(y_hat, y) # ∂loss_i/∂y_hat_i, same shape as y_hat

    Inputs follow :mod:`pgn.inputs` (any floating dtype, at least 16×16; gradients in ``y_hat``'s dtype);
    ``check_values`` decides when the NaN/range check reads the data (``auto``: not for GPU tensors).
    """

    #: When the value check (finite, plausible range) reads the input data; see :mod:`pgn.inputs`.
    check_values: str = "auto"

    def __init__(
        self,
        net: str = "vgg19",
        weights: str | os.PathLike = "imagenet",
        *,
        seed: int = 0,
        value_space: str = "unit",
        reduction: str = "sum",
        download: bool = True,
    ):
        super().__init__()
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise PGNError(f"seed must be an integer (it seeds weights='random'), got {seed!r}")
        self.net = net
        self.value_space = check_value_space(value_space)
        self.reduction = check_reduction(reduction)
        self.features = vgg_features(net)
        self.weights = load_teacher_weights(self.features, net, weights, seed, download)
        self.features.requires_grad_(False).eval()
        self._target: list[torch.Tensor] | None = None
        self._target_shape: tuple[int, ...] | None = None

    @property
    def taps(self) -> list[str]:
        """Names of the compared ReLU outputs."""
        return list(VGG_TAPS[self.net])

    def train(self, mode: bool = True):
        """The teacher has no train-mode behaviour; it stays frozen in eval mode."""
        super().train(mode)
        self.features.eval()
        return self

    def activations(self, x_normalized: torch.Tensor) -> list[torch.Tensor]:
        """Every ReLU output up to relu5_1 for an ImageNet-normalized batch."""
        out = []
        h = x_normalized
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                out.append(h)
        return out

    @property
    def min_size(self) -> int:
        """Smallest input height and width: relu5_1 follows four 2×2 poolings, so 16."""
        return 2 ** sum(isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) for m in self.features)

    def _check(self, *named: tuple[str, torch.Tensor]) -> None:
        check_images(*named, min_size=self.min_size, value_space=self.value_space, check_values=self.check_values,
                     device=next(self.features.parameters()).device)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.activations(to_imagenet(x.to(compute_dtype(self.features)), self.value_space))

    def cache_target(self, y: torch.Tensor) -> None:
        """Precompute the target's features (for a fixed target: DIP, inversion); later calls may pass ``y=None``."""
        self._check(("y", y))
        with torch.no_grad():
            self._target = [t.detach() for t in self._features(y)]
        self._target_shape = tuple(y.shape)

    def clear_target(self) -> None:
        """Forget the cached target features."""
        self._target, self._target_shape = None, None

    def per_sample(self, y_hat: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of each sample, shape (N,), differentiable w.r.t. ``y_hat``."""
        if y is None:
            if self._target is None:
                raise PGNError("no target: pass y, or call cache_target(y) first")
            self._check(("y_hat", y_hat))
            n_cached = self._target_shape[0]
            if tuple(y_hat.shape[1:]) != self._target_shape[1:] or n_cached not in (1, y_hat.shape[0]):
                raise PGNError(f"y_hat shape {tuple(y_hat.shape)} does not fit the cached target {self._target_shape}")
            target = self._target
        else:
            self._check(("y_hat", y_hat), ("y", y))
            with torch.no_grad():
                target = self._features(y.detach())
        feats = self._features(y_hat)
        total = 0
        for f, t in zip(feats, target):
            total = total + (f - t).abs().flatten(1).mean(dim=1)
        return total

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The perceptual loss, reduced over the batch as ``reduction`` says."""
        return apply_reduction(self.per_sample(y_hat, y), self.reduction)

    def gradient_and_loss(self, y_hat: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """True gradient ``∂loss_i/∂y_hat_i`` (shape of ``y_hat``, w.r.t. ``y_hat`` as passed) and the (N,) losses.

        One forward and one input-only backward; the VGG stays frozen and ``y_hat``'s own graph is untouched.
        In float16 the backward is loss-scaled (:data:`FP16_LOSS_SCALE`) and unscaled in fp32.
        """
        # The input contract first, as for the forward: nothing below may touch a list, an integer or a meta tensor.
        self._check(("y_hat", y_hat)) if y is None else self._check(("y_hat", y_hat), ("y", y))
        return input_gradient(self.per_sample, y_hat, y, fp16=self._computes_in_fp16(y_hat))

    def _computes_in_fp16(self, y_hat: torch.Tensor) -> bool:
        device = y_hat.device.type
        autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
        return autocast or compute_dtype(self.features) == torch.float16

    def gradient(self, y_hat: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """True gradient of each sample's loss w.r.t. ``y_hat`` (same shape, same value space)."""
        return self.gradient_and_loss(y_hat, y)[0]

    def extra_repr(self) -> str:
        return f"{self.weights}, value_space={self.value_space!r}, reduction={self.reduction!r}"


def input_gradient(per_sample, y_hat: torch.Tensor, y: torch.Tensor | None, *, fp16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂ per_sample(y_hat, y)_i / ∂ y_hat_i`` and the per-sample values, for any differentiable ``per_sample``.

    With ``fp16`` the backward starts from :data:`FP16_LOSS_SCALE` instead of 1 (so activation gradients of
    ~1e-7 do not underflow) and the gradient is unscaled in fp32; on overflow the scale is halved and the
    gradient recomputed. This reads the gradient once per call to check it (a device synchronization).
    """
    scale = FP16_LOSS_SCALE if fp16 else 1.0
    while True:
        with torch.enable_grad():
            x = y_hat.detach().requires_grad_(True)
            losses = per_sample(x, y)
            start = torch.full_like(losses, scale)
            (g,) = torch.autograd.grad(losses, x, grad_outputs=start)
        if scale == 1.0:
            return g, losses.detach()
        g = (g.float() / scale).to(g.dtype)
        if bool(torch.isfinite(g).all()) or scale <= 1.0:
            return g, losses.detach()
        scale = max(1.0, scale / 2**4)


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise a one-line :class:`PGNError`."""
    if reduction not in REDUCTIONS:
        raise PGNError(f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    return reduction


def apply_reduction(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses (N,) reduced over the batch: ``sum``, ``mean`` or ``none`` (the vector itself)."""
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    return per_sample


__all__ = ["FP16_LOSS_SCALE", "REDUCTIONS", "PerceptualLoss", "TeacherWeights", "VGG_TAPS", "apply_reduction", "check_reduction",
           "input_gradient", "vgg_features", "imagenet_weights_path"]
