"""Reconstruction and gradient metrics of the demos: MSE, VGG-19 perceptual loss, SSIM, LPIPS, gradient cosine.

All image arguments are (N, 3, H, W) float RGB in [0, 1]; every metric returns one value per sample, shape (N,).

* MSE is reported in [0, 1] RGB space (the number people compare; ×10³ in the tables, as the paper prints it).
  The losses the students *optimize* use ImageNet-normalized MSE, as the paper's λ_MSE values assume.
* SSIM is the authors' validation SSIM (Gaussian window 11, σ = 1.5, per-channel, zero padding 5, C1 = 0.01², C2 = 0.03²,
  mean over C, H, W). The authors' code applied it to normalized images although its constants assume a [0, 1]
  range; we apply it in [0, 1], where the constants mean what they say.
* LPIPS is computed only if the ``lpips`` package and its backbone weights are available offline; otherwise
  its column says why not.
* Gradient cosine similarity is taken between gradients with respect to the ImageNet-normalized image, the
  space of the paper's Table 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pgn.constants import IMAGENET_STD

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample in [0, 1] RGB space; shape (N,)."""
    return (y_hat.detach() - y.detach()).pow(2).flatten(1).mean(dim=1)


def _gaussian_window(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = torch.outer(g, g).to(dtype=dtype, device=device)
    return window.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim_map(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-pixel SSIM map (N, C, H, W): Gaussian window 11, σ = 1.5, zero padding (so borders are pulled down)."""
    y_hat, y = y_hat.detach().double(), y.detach().double()
    c = y_hat.shape[1]
    w = _gaussian_window(c, y_hat.dtype, y_hat.device)
    pad = SSIM_WINDOW // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=pad, groups=c)

    mu_a, mu_b = blur(y_hat), blur(y)
    var_a = blur(y_hat * y_hat) - mu_a**2
    var_b = blur(y * y) - mu_b**2
    cov = blur(y_hat * y) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return num / den


def ssim(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per sample (mean of :func:`ssim_map` over C, H, W); 1 for identical images; shape (N,)."""
    return ssim_map(y_hat, y).flatten(1).mean(dim=1).float()


def to_normalized_gradient(g_unit: torch.Tensor) -> torch.Tensor:
    """A gradient w.r.t. a [0, 1] image, re-expressed w.r.t. the ImageNet-normalized image (× σ per channel)."""
    std = torch.tensor(IMAGENET_STD, dtype=g_unit.dtype, device=g_unit.device).view(1, 3, 1, 1)
    return g_unit * std


def gradient_cosine(g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per sample between two gradients taken w.r.t. [0, 1] images, measured in normalized space."""
    a = to_normalized_gradient(g_a.detach()).flatten(1).double()
    b = to_normalized_gradient(g_b.detach()).flatten(1).double()
    return F.cosine_similarity(a, b, dim=1, eps=1e-30).float()


@dataclass
class LPIPSMetric:
    """LPIPS (Zhang et al., 2018) if the ``lpips`` package and its weights load offline, else unavailable.

    Build with :meth:`try_load`; ``available`` tells which, and ``reason`` says why not.
    """

    model: object | None
    reason: str

    UNAVAILABLE = "n/a (weights unavailable)"

    @classmethod
    def try_load(cls, net: str = "alex") -> "LPIPSMetric":
        """Load LPIPS without touching the network; any failure makes an unavailable metric with the reason."""
        try:
            import lpips
        except ImportError:
            return cls(None, "lpips package not installed")
        import os

        from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

        hub = {"alex": AlexNet_Weights.IMAGENET1K_V1, "vgg": VGG16_Weights.IMAGENET1K_V1, "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1}[net]
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(hub.url))
        if not os.path.isfile(cached):
            return cls(None, f"{net} backbone weights not cached ({cached})")
        try:
            model = lpips.LPIPS(net=net, verbose=False).eval()
        except Exception as e:  # a broken install or missing linear-layer weights
            return cls(None, f"lpips failed to load: {e.__class__.__name__}")
        return cls(model, "")

    @property
    def available(self) -> bool:
        """True when LPIPS values can be computed."""
        return self.model is not None

    def __call__(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """LPIPS per sample, or ``None`` when unavailable."""
        if self.model is None:
            return None
        with torch.no_grad():
            return self.model(y_hat.detach() * 2 - 1, y.detach() * 2 - 1).flatten().float()


def mean_std(values: torch.Tensor | list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of a list of per-sample values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(unbiased=False)) if v.numel() > 1 else 0.0


def summary(values) -> dict | str:
    """``{"mean", "std"}`` of per-sample values (passes a string such as "n/a (...)" through)."""
    if isinstance(values, str):
        return values
    m, s = mean_std(values)
    return {"mean": m, "std": s}


@dataclass
class Scores:
    """Per-sample MSE ([0, 1] space), VGG-19 perceptual loss, SSIM and LPIPS (a string saying why when unavailable)."""

    mse: list[float] = field(default_factory=list)
    pl_vgg19: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lpips: list[float] | str = field(default_factory=list)

    def extend(self, other: "Scores") -> None:
        """Append ``other``'s samples (DIP scores one image at a time; an unavailable LPIPS stays unavailable)."""
        self.mse, self.pl_vgg19, self.ssim = self.mse + other.mse, self.pl_vgg19 + other.pl_vgg19, self.ssim + other.ssim
        self.lpips = other.lpips if isinstance(other.lpips, str) else self.lpips + other.lpips

    def cells(self, prefix: str = "") -> dict:
        """Table cells ``{prefix}mse_x1e3``, ``pl_vgg19``, ``ssim``, ``lpips``: mean ± std, MSE ×10³ as the paper prints it."""
        return {f"{prefix}mse_x1e3": summary([v * 1e3 for v in self.mse]), f"{prefix}pl_vgg19": summary(self.pl_vgg19),
                f"{prefix}ssim": summary(self.ssim), f"{prefix}lpips": summary(self.lpips)}
