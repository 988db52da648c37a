"""The module every exporter freezes: normalization, backbone (BatchNorm folded), head, and the graph outputs.

Inputs are ``y_hat`` and ``y``, (N, 3, H, W) float32 RGB in [0, 1]; ImageNet normalization happens inside the
graph. Outputs:

* fp32 artifacts: ``proxy`` (P in [0, 1] space) and ``grad`` (the gradient w.r.t. the [0, 1] ``y_hat``), the same
  numbers as ``pgn.PGN`` with ``value_space="unit"``.
* fp16 artifacts: ``proxy`` and ``residual`` r = φ(ŷₙ − Pₙ) in normalized space; the host computes
  ``grad = r · k·α/(C·H·W) / σ_c`` in fp32 (:class:`GradientRecipe`). The gradient itself is ~1e-7…1e-4 and
  under- or flushes in fp16; the residual is O(1e-3…1) and survives.

The gradient scale k·α/(C·H·W) is a float constant for fixed shapes. For dynamic shapes it is computed in float
inside the graph as k·α/C divided by the sum of an (H, W) plane of ones: every converter handles a float
reduction, whereas coremltools rejects integer shape arithmetic (``inverse`` of an int32 size).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import pgn
from pgn.constants import IMAGENET_MEAN, IMAGENET_STD
from pgn.errors import PGNError

from .graph_options import GraphOptions, resolve_graph_options

INPUT_NAMES = ("y_hat", "y")
CHANNELS = 3


@dataclass(frozen=True)
class GradientRecipe:
    """How the gradient follows from the residual: ``g_c = k·α/(C·H·W) · φ(ŷₙ − Pₙ) / σ_c`` (w.r.t. [0, 1] ŷ).

    Args:
        alpha: α = 1/grad_scale of the head.
        k: 2 for the MSE loss towards P (d/dx x² = 2x), 1 for ``l1`` and ``logcosh``.
        phi: ``identity`` (mse), ``sign`` (l1) or ``tanh`` (logcosh), applied inside the graph.
        std: the ImageNet std per channel (chain rule from normalized to [0, 1] space).
    """

    alpha: float
    k: float
    phi: str
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_head(cls, head: "pgn.HeadConfig") -> "GradientRecipe":
        """The recipe of a head config (direct and hybrid heads always use MSE, as :mod:`pgn.heads` does)."""
        grad_type = "mse" if head.kind in ("direct", "hybrid") else head.grad_type
        k, phi = {"mse": (2.0, "identity"), "l1": (1.0, "sign"), "logcosh": (1.0, "tanh")}[grad_type]
        return cls(alpha=head.alpha, k=k, phi=phi)

    def scale(self, height: int, width: int) -> np.ndarray:
        """Per-channel factor (1, 3, 1, 1) float32 turning the residual into the [0, 1]-space gradient."""
        per_element = self.k * self.alpha / float(CHANNELS * height * width)
        return (per_element / np.asarray(self.std, dtype=np.float64)).astype(np.float32).reshape(1, 3, 1, 1)

    def to_dict(self) -> dict:
        """Plain-dict form for manifests, with the formula spelled out."""
        return {
            "formula": "grad[:, c] = residual[:, c] * k * alpha / (C * H * W) / std[c]   (C = 3)",
            "alpha": self.alpha,
            "k": self.k,
            "phi": self.phi,
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GradientRecipe":
        """Inverse of :meth:`to_dict`."""
        return cls(alpha=float(d["alpha"]), k=float(d["k"]), phi=str(d["phi"]), std=tuple(float(s) for s in d["std"]))


def check_exportable(head: "pgn.HeadConfig", *, dynamic: bool, legacy_exporter: bool) -> None:
    """Raise a :class:`pgn.errors.PGNError` for a head that cannot be exported with these options, for any target.

    The warped head (the authors' experimental head, not in the paper) fixes its low-resolution grid size
    ``round(H / 28)`` at export time, so it needs fixed shapes; its ``grid_sample`` converts only through the
    dynamo ONNX exporter (ONNX Runtime has no kernel for the legacy exporter's GridSample node, checked with
    onnxruntime 1.31). Targets that cannot convert it at all refuse it in :meth:`ExportTarget.validate`.
    """
    if head.kind != "warped":
        return
    if dynamic:
        raise PGNError("the warped head exports only with fixed shapes (its grid size round(H/28) is fixed at export): drop --dynamic")
    if legacy_exporter:
        raise PGNError("the warped head does not convert for the legacy ONNX exporter (its grid_sample): export it to onnx or tensorrt with the dynamo exporter")


def output_names(precision: str) -> tuple[str, str]:
    """Graph output names: ``(proxy, grad)`` for fp32 artifacts, ``(proxy, residual)`` for fp16 ones."""
    return ("proxy", "residual") if precision == "fp16" else ("proxy", "grad")


class ExportGraph(nn.Module):
    """A frozen copy of a PGN, (y_hat, y) in [0, 1] → (proxy, grad) or (proxy, residual); see the module doc.

    Args:
        model: the PGN (never modified: a deep copy is taken, put in eval mode on the CPU).
        outputs: ``grad`` (fp32 artifacts) or ``residual`` (fp16 artifacts: the host applies the scale).
        dtype: arithmetic and weight dtype inside the graph (``torch.float16`` for ONNX/TensorRT-11 fp16);
            inputs and outputs stay float32 either way. CoreML and TensorRT 10 trace float32 and lower the
            precision in the converter/builder.
        size: (H, W) of a fixed-shape export (fixes the gradient constant and the UNet's row bands); ignored when
            ``dynamic``.
        dynamic: compute the gradient scale from the input shape at run time.
        graph_options: how the backbone is computed (:class:`export.graph_options.GraphOptions`; default: its
            defaults). The numbers stay those of the model; :attr:`graph_description` says what applied.
    """

    def __init__(
        self,
        model: "pgn.PGN",
        *,
        outputs: str = "grad",
        dtype: torch.dtype = torch.float32,
        size: tuple[int, int] = (224, 224),
        dynamic: bool = False,
        graph_options: GraphOptions | str | None = None,
    ):
        super().__init__()
        if outputs not in ("grad", "residual"):
            raise ValueError(f"outputs must be 'grad' or 'residual', got {outputs!r}")
        model = copy.deepcopy(model).cpu().float().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.head_config = model.config.head
        self.recipe = GradientRecipe.for_head(self.head_config)
        self.outputs = outputs
        self.output_names = ("proxy", outputs)
        self.dynamic = dynamic
        self.compute_dtype = dtype
        self.graph_options = resolve_graph_options(graph_options)
        form, self.graph_description = backbone_form(model.backbone, self.graph_options, None if dynamic else tuple(size))
        self.backbone = fold_batchnorm(form)
        self.head = model.head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.to(dtype)
        # The gradient factor stays float32 whatever the compute dtype (it is ~1e-7..1e-3).
        if dynamic:  # k·α/C/σ_c, divided by H·W (computed in float) in forward
            self.register_buffer("scale_times_hw", torch.from_numpy(self.recipe.scale(1, 1)), persistent=False)
        else:
            self.register_buffer("grad_scale", torch.from_numpy(self.recipe.scale(*size)), persistent=False)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) [0, 1] float32 pair → (proxy in [0, 1], grad or residual), both float32."""
        x_hat, x = y_hat.to(self.compute_dtype), y.to(self.compute_dtype)
        y_hat_n = (x_hat - self.mean) / self.std
        y_n = (x - self.mean) / self.std
        raw = self.backbone(torch.cat([y_hat_n, y_n], dim=1))
        proxy_n = self.head.proxy(raw, y_hat_n, y_n)
        residual = self._residual(raw, y_hat_n, proxy_n).float()
        proxy = (proxy_n * self.std + self.mean).float()
        if self.outputs == "residual":
            return proxy, residual
        if self.dynamic:
            hw = torch.ones_like(y_hat[:1, :1]).sum()  # H·W as a float, from the shape
            return proxy, residual * (self.scale_times_hw / hw)
        return proxy, residual * self.grad_scale

    def _residual(self, raw: torch.Tensor, y_hat_n: torch.Tensor, proxy_n: torch.Tensor) -> torch.Tensor:
        if self.head_config.kind == "direct":
            # P = ŷ − B/γ, so ŷ − P = B/γ exactly; computing it by subtraction would cancel in fp16.
            diff = raw / self.head_config.out_scale
        else:
            diff = y_hat_n - proxy_n
        if self.recipe.phi == "sign":
            return torch.sign(diff)
        if self.recipe.phi == "tanh":
            return torch.tanh(diff)
        return diff


def backbone_form(backbone: nn.Module, options: GraphOptions, size: tuple[int, int] | None) -> tuple[nn.Module, dict]:
    """The backbone as the export graph computes it under ``options``, and what was applied (for the manifest).

    The UNet becomes an :class:`export.unet_graph.ExportUNet`, the ResNet an
    :class:`export.resnet_graph.ExportResNet`; other backbones are returned as they are. The description has
    ``requested`` (every option), ``applied`` and ``not_applied`` (option → why not).
    """
    from pgn.backbones.resnet import ResNetBackbone
    from pgn.backbones.unet import UNetBackbone

    from .resnet_graph import ExportResNet
    from .unet_graph import ExportUNet

    requested = options.to_dict()
    if isinstance(backbone, UNetBackbone):
        form = ExportUNet(backbone, options, size)
    elif isinstance(backbone, ResNetBackbone):
        form = ExportResNet(backbone, options)
    else:
        reason = f"no graph option applies to a {type(backbone).__name__}"
        return backbone, {"requested": requested, "applied": {}, "not_applied": dict.fromkeys(requested, reason)}
    applied, not_applied = form.describe()
    return form, {"requested": requested, "applied": applied, "not_applied": not_applied}


def describe_graph(backbone: nn.Module, options: GraphOptions, size: tuple[int, int] | None) -> dict:
    """The manifest's ``graph`` entry: what :func:`backbone_form` applies for this backbone, options and size
    (``size`` ``None`` for a dynamic export)."""
    return backbone_form(backbone, options, size)[1]


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` into that conv (torch.fx).

    Returns a new module (the input is not changed). Modules torch.fx cannot trace are returned as they are;
    the exporters then fold (ONNX) or fuse (coremltools) BatchNorm themselves, and the ONNX exporter checks
    that no ``BatchNormalization`` node is left.
    """
    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(module))
    except Exception:  # noqa: BLE001 - untraceable custom backbone: leave folding to the exporters
        return copy.deepcopy(module)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)):
            continue
        if len(src.users) != 1:
            continue
        bn, conv = modules[node.target], modules[src.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
        _set_submodule(traced, src.target, fused)
        modules[src.target] = fused
        node.replace_all_uses_with(src)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, new)
