"""Images of the demos: target images read from a folder, frames of one person for the few-shot fine-tuning demo,
and the pose input (an edge map) of each frame.

Without video data, frames are made from one photograph by pose changes: a seeded random rotation, zoom and
shift of a crop around the face (the bundled portrait is scikit-image's astronaut). "Train" and "holdout"
frames use disjoint random poses, so holdout poses are unseen, as in the paper's talking-head protocol. A folder
of real frames of one person can be used instead (:func:`read_frames`).

The generator is conditioned on an edge map of each frame (a dense stand-in for the facial-landmark images of
Neural Talking Heads): Sobel gradient magnitude of the blurred grey image, scaled per frame to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import torch
import torch.nn.functional as F

from pgn.errors import PGNError
from pgn.images import center_crop, face_image, list_images, read_image, resize_min_side, sample_images

#: Face centre (x, y) and crop side in pixels of the 512×512 bundled portrait.
FACE_CENTER = (228.0, 110.0)
FACE_CROP = 220.0
#: The bundled portrait's name among :func:`pgn.images.sample_images`.
PORTRAIT = "skimage/astronaut"
#: :func:`photo_frames` crops this fraction of a photograph's shorter side.
PHOTO_CROP = 0.6


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, H, W) image resized (shorter side to ``size``) and centre-cropped to ``size``×``size``."""
    return center_crop(resize_min_side(image, size), size)


def read_images(folder: Path, n: int, size: int, lower: str, noun: str = "image") -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` images of ``folder`` (sorted by name) as (n, 3, size, size) in [0, 1], and their file names;
    a one-line error naming the options that ask for them (``lower``) if the folder has fewer."""
    files = list_images(folder)
    if len(files) < n:
        raise PGNError(f"{folder} has {len(files)} {noun}(s), need {n}: add {noun}s or lower {lower}")
    return torch.stack([square(read_image(f), size) for f in files[:n]]), [f.name for f in files[:n]]


@dataclass(frozen=True)
class Pose:
    """An in-plane head pose: rotation (degrees), zoom (>1 = closer) and shift (fractions of the crop side)."""

    angle: float = 0.0
    zoom: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0


def random_poses(n: int, seed: int, max_angle: float = 12.0, zoom: tuple[float, float] = (0.85, 1.15), max_shift: float = 0.08) -> list[Pose]:
    """``n`` seeded random poses."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=g))

    return [Pose(u(-max_angle, max_angle), u(*zoom), u(-max_shift, max_shift), u(-max_shift, max_shift)) for _ in range(n)]


def render_frame(photo: torch.Tensor, center: tuple[float, float], crop: float, pose: Pose, size: int) -> torch.Tensor:
    """A ``size``×``size`` frame of ``photo`` (3, H, W): the posed square crop of side ``crop`` around ``center``."""
    _, h, w = photo.shape
    if size > crop:
        raise PGNError(f"frame size {size} is larger than the crop ({crop:.0f} px) it is cut from")
    src = photo
    if crop / size > 2.0:  # pre-shrink so bilinear sampling does not alias
        factor = (crop / size) / 2.0
        src = F.interpolate(photo[None], scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False)[0]
    half = crop / 2.0 / pose.zoom
    a = math.radians(pose.angle)
    cx = center[0] + pose.shift_x * crop
    cy = center[1] + pose.shift_y * crop
    # Output coordinates in [-1, 1] map to photo pixels: p = c + R·(half·u); then to grid_sample's [-1, 1].
    theta = torch.tensor(
        [
            [math.cos(a) * half / (w / 2), -math.sin(a) * half / (w / 2), (cx - w / 2) / (w / 2)],
            [math.sin(a) * half / (h / 2), math.cos(a) * half / (h / 2), (cy - h / 2) / (h / 2)],
        ],
        dtype=photo.dtype,
    )[None]
    grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
    return F.grid_sample(src[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0].clamp(0, 1)


def face_frames(size: int, train: int = 8, holdout: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, holdout) frames of the bundled portrait, (N, 3, size, size) in [0, 1], with disjoint random poses."""
    photo = face_image()
    first = [Pose()] + random_poses(train - 1, seed) if train else []
    frames_train = [render_frame(photo, FACE_CENTER, FACE_CROP, p, size) for p in first]
    frames_holdout = [render_frame(photo, FACE_CENTER, FACE_CROP, p, size) for p in random_poses(holdout, seed + 1000)]
    return torch.stack(frames_train), torch.stack(frames_holdout)


def photo_frames(photo: torch.Tensor, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random posed crops of a (non-face) photo: the "identities" of pre-training; (n, 3, size, size)."""
    _, h, w = photo.shape
    side = PHOTO_CROP * min(h, w)
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    poses = random_poses(n, seed, max_shift=0.12)
    return torch.stack([render_frame(photo, (w / 2, h / 2), side, p, size) for p in poses])


def pretraining_photos(size: int, exclude: Collection[str] = (PORTRAIT,)) -> list[torch.Tensor]:
    """The bundled photographs but ``exclude``, for :func:`photo_frames` of ``size``: shrunk so that a crop spans
    about twice the frame (no aliasing, little work)."""
    side = int(2 * size / PHOTO_CROP) + 1
    return [resize_min_side(img, side) for name, img in sorted(sample_images().items()) if name not in exclude]


def read_frames(folder: str | Path, size: int, train: int, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a person's frames from ``folder`` (sorted by name): the first ``train`` fine-tune, the next ``holdout`` evaluate.

    Each frame is resized (shorter side) and centre-cropped to ``size``. A one-line error if the folder has no
    readable images or too few of them.
    """
    batch, _ = read_images(Path(folder), train + holdout, size, "--train-frames/--holdout-frames", noun="frame")
    return batch[:train], batch[train:]


def edge_map(frames: torch.Tensor) -> torch.Tensor:
    """Pose input of each frame: blurred-grey Sobel magnitude scaled per frame to [0, 1]; (N, 1, H, W)."""
    grey = (0.299 * frames[:, 0] + 0.587 * frames[:, 1] + 0.114 * frames[:, 2])[:, None]
    blur = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=frames.dtype) / 16.0
    kernel = torch.outer(blur, blur)[None, None]
    grey = F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="replicate"), kernel)
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=frames.dtype)[None, None]
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, sx), F.conv2d(padded, sx.transpose(2, 3))
    mag = torch.sqrt(gx**2 + gy**2 + 1e-12)
    scale = torch.quantile(mag.flatten(1), 0.99, dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (mag / scale).clamp(0, 1)
