"""Value spaces and the images the toolkit can read without a dataset.

Two value spaces exist:

* ``"unit"``: RGB in [0, 1], NCHW float. The public API's default.
* ``"imagenet"``: ``(x - mean) / std`` with torchvision's ImageNet statistics. The authors' PGNs and VGG
  teacher work here; use it to reproduce their numbers exactly.

Gradients are always returned with respect to the tensor the caller passed, in the caller's value space.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import PGNError
from .inputs import check_images, nearest_valid_size  # noqa: F401  (the input contract lives in pgn.inputs)

VALUE_SPACES = ("unit", "imagenet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def check_value_space(value_space: str) -> str:
    """Return ``value_space`` if it is a known value space, else raise a :class:`PGNError`."""
    if value_space not in VALUE_SPACES:
        raise PGNError(f"unknown value_space {value_space!r}: use one of {', '.join(VALUE_SPACES)}")
    return value_space


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _channel_constant(IMAGENET_MEAN, like), _channel_constant(IMAGENET_STD, like)


def _channel_constant(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A (1, 3, 1, 1) tensor of ``values`` made on ``like``'s device: a host-to-device copy would wait for the GPU."""
    return torch.cat([torch.full((1, 1, 1, 1), v, dtype=like.dtype, device=like.device) for v in values], dim=1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Map (N, 3, H, W) RGB in [0, 1] to ImageNet-normalized space."""
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Map ImageNet-normalized (N, 3, H, W) tensors back to RGB [0, 1] (not clamped)."""
    mean, std = _stats(x)
    return x * std + mean


def to_imagenet(x: torch.Tensor, value_space: str) -> torch.Tensor:
    """Bring ``x`` from ``value_space`` into ImageNet-normalized space (differentiably)."""
    return normalize(x) if value_space == "unit" else x


def from_imagenet(x: torch.Tensor, value_space: str) -> torch.Tensor:
    """Bring an ImageNet-normalized image ``x`` back into ``value_space``."""
    return denormalize(x) if value_space == "unit" else x


def gradient_from_imagenet(g: torch.Tensor, value_space: str) -> torch.Tensor:
    """Chain rule for a gradient taken w.r.t. the normalized image: w.r.t. a [0, 1] image it is ``g / std``."""
    if value_space == "imagenet":
        return g
    _, std = _stats(g)
    return g / std


# --------------------------------------------------------------------------------------------------------
# Reading images


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as a (3, H, W) float tensor, RGB in [0, 1]; a clear error if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise PGNError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PGNError(f"cannot read image {path}: {e.__class__.__name__}; is it a valid image file?") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """List image files under ``folder`` (sorted); raise a :class:`PGNError` if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PGNError(f"image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PGNError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    return files


def sample_images() -> dict[str, torch.Tensor]:
    """Real photographs bundled with scikit-image and scikit-learn, as (3, H, W) tensors in [0, 1].

    They need no download, so every demo, test and default training run has real images to work on.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        import skimage.data as skd

        for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle_left"):
            fn = getattr(skd, name, None)
            if fn is None:
                continue
            try:
                img = fn()
            except Exception:  # some images are fetched lazily in newer releases; skip those
                continue
            if img.ndim == 3 and img.shape[2] >= 3:
                arrays[f"skimage/{name}"] = img[..., :3]
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for fname, img in zip(bunch.filenames, bunch.images):
            arrays[f"sklearn/{Path(fname).stem}"] = img
    except ImportError:
        pass
    if not arrays:
        raise PGNError("no bundled sample images: pip install scikit-image scikit-learn")
    return {k: torch.from_numpy(np.array(v, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0 for k, v in arrays.items()}


def face_image() -> torch.Tensor:
    """The bundled portrait (scikit-image's astronaut, a face photograph), (3, 512, 512) in [0, 1]."""
    import skimage.data as skd

    return torch.from_numpy(np.array(skd.astronaut(), dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


def resize_min_side(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (3, H, W) image so that its shorter side is ``size`` (bilinear, antialiased)."""
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    return torch.nn.functional.interpolate(img[None], size=new, mode="bilinear", antialias=True, align_corners=False)[0]


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central ``size``×``size`` square of a (3, H, W) image (resize first if it is smaller)."""
    if min(img.shape[-2:]) < size:
        img = resize_min_side(img, size)
    h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top : top + size, left : left + size]


def sample_batch(size: int, names: Iterable[str] | None = None) -> torch.Tensor:
    """A (N, 3, size, size) batch of center-cropped bundled photographs in [0, 1]."""
    imgs = sample_images()
    keys: Sequence[str] = list(names) if names is not None else sorted(imgs)
    return torch.stack([center_crop(resize_min_side(imgs[k], size), size) for k in keys])


def save_image_grid(rows: Sequence[torch.Tensor], path: str | Path, pad: int = 2) -> Path:
    """Save rows of (N, 3, H, W) [0, 1] images as one PNG grid (rows top to bottom); returns the path."""
    from PIL import Image

    rows = [r.detach().float().cpu().clamp(0, 1) for r in rows]
    n = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y0 : y0 + h, x0 : x0 + w] = r[j]
    arr = (canvas.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two [0, 1] images or batches."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
