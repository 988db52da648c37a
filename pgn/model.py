"""The PGN model (backbone + gradient head) and its config.

Example::

    import pgn
    model = pgn.build("resnet4")        # paper preset, constrained-proxy head, random init
    g = model(y_hat, y)                 # gradient of the VGG-19 perceptual loss at y_hat (approximated)
    p = model.proxy(y_hat, y)           # the proxy target P

Named configurations are in :mod:`pgn.presets`; :func:`pgn.build` makes a model from one (:mod:`pgn.factory`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from .backbones import BACKBONES, backbone_config, build_backbone, config_to_dict
from .errors import PGNError
from .heads import GradientHead, HeadConfig
from .inputs import check_images, compute_dtype
from .value_spaces import check_value_space, from_imagenet, gradient_from_imagenet, to_imagenet


@dataclass(frozen=True)
class PGNConfig:
    """Everything needed to rebuild a PGN; stored in every checkpoint.

    Args:
        backbone: ``resnet`` or ``unet``.
        backbone_params: constructor arguments of the backbone config (see :class:`pgn.backbones.ResNetConfig`,
            :class:`pgn.backbones.UNetConfig`); missing keys take their defaults.
        head: the gradient head (:class:`pgn.heads.HeadConfig`).
        value_space: ``unit`` (inputs, proxy and gradient in RGB [0, 1]; default) or ``imagenet`` (the authors'
            ImageNet-normalized space).
        preset: name of the preset this config came from, if any (informational).
    """

    backbone: str = "resnet"
    backbone_params: dict = field(default_factory=dict)
    head: HeadConfig = HeadConfig()
    value_space: str = "unit"
    preset: str | None = None

    def __post_init__(self):
        check_value_space(self.value_space)
        cfg = backbone_config(self.backbone, self.backbone_params)  # validates
        object.__setattr__(self, "backbone_params", config_to_dict(cfg))

    def to_dict(self) -> dict:
        """Plain-dict form (only str/int/float/bool/list/dict/None), safe for ``torch.load(weights_only=True)``."""
        return {
            "backbone": self.backbone,
            "backbone_params": dict(self.backbone_params),
            "head": self.head.to_dict(),
            "value_space": self.value_space,
            "preset": self.preset,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PGNConfig":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        head = HeadConfig.from_dict(d.pop("head", {}))
        return cls(head=head, **d)


class PGNOutput(NamedTuple):
    """All outputs of one PGN forward, in the model's value space."""

    grad: torch.Tensor  #: the synthetic gradient g, same shape as y_hat
    proxy: torch.Tensor  #: the proxy target P
    raw: torch.Tensor  #: the raw backbone output B


class PGN(nn.Module):
    """Perceptual Gradient Network: predicts ∂VGG(ŷ, y)/∂ŷ in one forward pass.

    Call ``model(y_hat, y)`` with two (N, 3, H, W) float tensors (RGB in [0, 1] unless the model's
    ``value_space`` is ``imagenet``) to get the gradient, same shape as ``y_hat``, with respect to ``y_hat`` as
    passed. Heads are closed-form, so the whole forward exports to ONNX/CoreML/TensorRT.

    Inputs follow :mod:`pgn.inputs`: any floating dtype is computed in the model's parameter dtype and the
    gradient and proxy come back in ``y_hat``'s dtype. ``check_values`` (``auto``, ``always``, ``never``)
    decides whether the NaN/range check reads the data: ``auto`` skips it for GPU tensors, where it would
    synchronize the device on every call.
    """

    #: When the value check (finite, plausible range) reads the input data; see :mod:`pgn.inputs`.
    check_values: str = "auto"

    def __init__(self, config: PGNConfig = PGNConfig()):
        super().__init__()
        backbone_params = dict(config.backbone_params, out_channels=config.head.out_channels)
        config = replace(config, backbone_params=backbone_params)
        self.config = config
        self.backbone = build_backbone(config.backbone, backbone_params)
        self.head = GradientHead(config.head)

    @property
    def value_space(self) -> str:
        """``unit`` or ``imagenet``: the space of inputs, proxy and gradient."""
        return self.config.value_space

    @property
    def alpha(self) -> float:
        """α = 1/grad_scale of the head."""
        return self.config.head.alpha

    @property
    def size_multiple(self) -> int:
        """Height and width of inputs must be multiples of this."""
        return self.backbone.size_multiple

    def check_inputs(self, y_hat: torch.Tensor, y: torch.Tensor) -> None:
        """Raise a one-line :class:`PGNError` unless ``(y_hat, y)`` meet the input contract (:mod:`pgn.inputs`)."""
        param = next(self.backbone.parameters(), None)
        check_images(("y_hat", y_hat), ("y", y), multiple_of=self.size_multiple, value_space=self.value_space,
                     check_values=self.check_values, device=None if param is None else param.device)

    def outputs(self, y_hat: torch.Tensor, y: torch.Tensor) -> PGNOutput:
        """Gradient, proxy and raw backbone output for a batch (see :class:`PGNOutput`).

        ``grad`` and ``proxy`` have ``y_hat``'s dtype; ``raw`` has the model's.
        """
        self.check_inputs(y_hat, y)
        out = self._compute(y_hat, y)
        return PGNOutput(out.grad.to(y_hat.dtype), out.proxy.to(y_hat.dtype), out.raw)

    def _compute(self, y_hat: torch.Tensor, y: torch.Tensor) -> PGNOutput:
        """The forward on checked inputs, in the model's dtype."""
        vs, dtype = self.config.value_space, compute_dtype(self.backbone)
        y_hat_n, y_n = to_imagenet(y_hat.to(dtype), vs), to_imagenet(y.to(dtype), vs)
        raw = self.backbone(torch.cat([y_hat_n, y_n], dim=1))
        proxy_n = self.head.proxy(raw, y_hat_n, y_n)
        grad_n = self.head.gradient(y_hat_n, proxy_n, raw)
        return PGNOutput(gradient_from_imagenet(grad_n, vs), from_imagenet(proxy_n, vs), raw)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The synthetic gradient g ≈ ∂VGG(ŷ, y)/∂ŷ, shape of ``y_hat``."""
        return self.outputs(y_hat, y).grad

    def proxy(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The proxy target P (the image the gradient pulls ``y_hat`` towards), in the model's value space."""
        return self.outputs(y_hat, y).proxy

    def extra_repr(self) -> str:
        return f"preset={self.config.preset!r}, head={self.config.head.kind!r}, value_space={self.value_space!r}"


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` that hold NaN or infinite values (floating point only)."""
    named = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
    with torch.no_grad():
        sums = [t.sum().double() for _, t in named]  # a NaN or inf makes its tensor's sum non-finite: one quick pass
        if not named or bool(torch.isfinite(torch.stack(sums)).all()):
            return []
        return [name for (name, t), total in zip(named, sums) if not bool(torch.isfinite(total)) and not bool(torch.isfinite(t).all())]


def apply_overrides(config: PGNConfig, **overrides: Any) -> PGNConfig:
    """Return ``config`` with keyword overrides applied.

    Keys may be ``head`` (the head kind), any :class:`HeadConfig` field (``grad_scale``, ``beta``, …), any field of
    the backbone config (``num_blocks``, ``down_channels``, …), or ``value_space``. ``None`` values are ignored,
    so CLI defaults never override library defaults. Unknown keys are an error that lists the allowed ones.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    head_fields = {f.name for f in fields(HeadConfig)}
    backbone_fields = {f.name for f in fields(BACKBONES[config.backbone][1])} - {"out_channels"}
    head_kw, backbone_kw = {}, {}
    for key, value in overrides.items():
        if key == "head":
            head_kw["kind"] = value
        elif key in head_fields:
            head_kw[key] = value
        elif key in backbone_fields:
            backbone_kw[key] = value
        elif key == "value_space":
            config = replace(config, value_space=value)
        else:
            allowed = sorted(head_fields | backbone_fields | {"head", "value_space"})
            raise PGNError(f"unknown option {key!r} for a {config.backbone} PGN: allowed are {', '.join(allowed)}")
    if head_kw:
        config = replace(config, head=replace(config.head, **head_kw))
    if backbone_kw:
        config = replace(config, backbone_params=dict(config.backbone_params, **backbone_kw))
    return config
