"""Images as tensors: reading files, the photographs bundled with scikit-image and scikit-learn, resizing and
cropping them, and saving rows of images as one PNG grid.

Every image here is a float tensor, RGB in [0, 1] (the ``unit`` value space of :mod:`pgn.value_spaces`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import PGNError
from .extras import install_hint, require

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def _unit_tensor(array: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 array as a (3, H, W) float tensor in [0, 1] (copied: the source may be read-only)."""
    return torch.from_numpy(np.array(array, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


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
    return _unit_tensor(arr)


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

    They need no download, so every demo, test and default training run has real images to work on. Decoded
    once per process; every call returns new tensors.
    """
    arrays = _sample_arrays()
    if not arrays:
        raise PGNError(f"no bundled sample images: scikit-image and scikit-learn are not installed: {install_hint('images')}")
    return {k: _unit_tensor(v) for k, v in arrays}


@functools.lru_cache(maxsize=1)
def _sample_arrays() -> tuple[tuple[str, np.ndarray], ...]:
    """The decoded photographs of :func:`sample_images` as read-only (H, W, 3) uint8 arrays, in a fixed order."""
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
    arrays.update(_sklearn_sample_images())
    for a in arrays.values():
        a.flags.writeable = False
    return tuple(arrays.items())


def _sklearn_sample_images() -> dict[str, np.ndarray]:
    """scikit-learn's sample photographs (``load_sample_images``: its ``datasets/images/*.jpg``, read with Pillow),
    read from its package folder without importing scikit-learn (1.8 s), or through it where that folder is not
    laid out so; empty where scikit-learn is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        return {}
    folders = [Path(p) / "datasets" / "images" for p in spec.submodule_search_locations or ()]
    files = sorted(f for folder in folders if folder.is_dir() for f in folder.glob("*.jpg"))
    if files:
        from PIL import Image

        arrays = {}
        for f in files:
            with Image.open(f) as im:
                arrays[f"sklearn/{f.stem}"] = np.asarray(im)
        return arrays
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return {}
    bunch = load_sample_images()
    return {f"sklearn/{Path(fname).stem}": img for fname, img in zip(bunch.filenames, bunch.images)}


def face_image() -> torch.Tensor:
    """The bundled portrait (scikit-image's astronaut, a face photograph), (3, 512, 512) in [0, 1]."""
    skd = require("skimage.data", "the bundled portrait")
    return _unit_tensor(skd.astronaut())


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

