"""Named constants of Perceptual Gradient Networks, with where each comes from.

Every number the paper (Nikulin et al., 2020) or the authors' reference implementation fixes lives here,
so that the library, the exporters and the trainer read one source. Where the paper and the authors' code
disagree, the value that the released checkpoints need is the default and the disagreement is stated.
"""

from __future__ import annotations

#: ImageNet mean and std per RGB channel (torchvision). The authors' PGNs live in the space
#: ``(x - IMAGENET_MEAN) / IMAGENET_STD`` ("imagenet" value space).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: α of the proxy heads (paper Eq. 4-9): the PGN gradient is ``α · ∇ MSE(ŷ, sg[P])``.
#: The authors' code stores its inverse, ``grad_scale = 1/α``.
ALPHA: float = 40.0
GRAD_SCALE_RESNET: float = 1.0 / ALPHA  # 0.025, released ResNet-4/6/8

#: The released UNet uses grad_scale 0.048 (α ≈ 20.83), not the paper's α = 40. The authors call it legacy
#: and report insensitivity within an order of magnitude. We default UNet presets to 0.048 so the released
#: checkpoint reproduces its published behaviour.
GRAD_SCALE_UNET: float = 0.048

#: Version-0 UNet checkpoints stored grad_scale 1e-3 together with a batch-mean MSE over 48 samples;
#: the loader rewrites exactly this value to :data:`GRAD_SCALE_UNET` (1e-3 · 48), as the authors' loader does.
LEGACY_UNET_GRAD_SCALE: float = 1e-3

#: β of the constrained proxy (paper Eq. 6): ``P = β · normalize(sigmoid(B))``. β multiplies the
#: *normalized* value, so in [0, 1] pixels the range (0, 1) is stretched about the ImageNet mean.
BETA: float = 1.1

#: 1/γ of the direct and hybrid heads (paper Eq. 2 and 8): the backbone output is divided by 512.
#: Paper Eq. 2 writes the direct head as ``α·B`` with α = 1/512; the authors' code additionally multiplies
#: by ``2/(C·H·W)/grad_scale``. We follow the code (checkpoints need it); see :mod:`pgn.heads`.
OUT_SCALE: float = 512.0

#: Warped-target proxy (authors' experimental head, not in the paper).
WARP_SCALE: float = 3.0 / 112.0  # tanh grid correction: 3 pixels at 224
WARP_DOWNSCALE_BY: float = 224.0 / 8.0  # low-resolution factor of grid and additive parts
WARP_ADDITIVE_SCALE: float = 0.05

#: Meta-loss weights. The paper (Eq. 10) gives λ_VGG = 0.5, λ_L1 = 0.2; the authors' published training
#: command uses the CLI defaults VGG(P, y) × 0.2 and L1(P, y) × 0.5, i.e. swapped. The reference values are
#: our defaults (they produced the released checkpoints); the paper's are a documented preset in ``distill``.
META_GRAD_LOSS_SCALE: float = 2.0**26
META_VGG_WEIGHT_REFERENCE: float = 0.2
META_L1_WEIGHT_REFERENCE: float = 0.5
META_VGG_WEIGHT_PAPER: float = 0.5
META_L1_WEIGHT_PAPER: float = 0.2

#: λ_MSE paired with the PGN gradient in the paper's generator experiments (talking heads, Image2StyleGAN);
#: the MSE is taken in ImageNet-normalized space.
PAPER_MSE_WEIGHT: float = 20.0
