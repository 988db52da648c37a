"""Training and held-out images: the bundled photographs, an image folder, ImageNet and FFHQ layouts.

Sources (``dataset``):

* ``samples`` (default): the real photographs bundled with scikit-image and scikit-learn
  (:func:`pgn.images.sample_images`). Two whole photographs (``HELD_OUT_SAMPLES``) are held out for validation;
  the others are trained on through random crops, so a run needs no download.
* ``folder``: any folder of images (searched recursively). A fixed ``val_fraction`` of the files, chosen by a
  hash of their relative path (stable when files are added), is held out and never trained on.
* ``imagenet``: the torchvision ImageNet layout, ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``
  (``ROOT/ImageNet/...`` is found too, as in the authors' ``--data-dir``).
* ``ffhq``: the FFHQ ``images1024x1024`` tree; image id < 60000 trains, id ≥ 60000 is validation, as the authors did.

Training transform (the torchvision classifier recipe the paper uses): RandomResizedCrop(size, scale 0.08–1,
ratio 3/4–4/3, bilinear) → RandomHorizontalFlip → [0, 1] → ImageNet normalization. Validation: Resize(size·256/224)
→ CenterCrop(size).

Sampling is with replacement, as in the reference, but each step's indices and crop seeds are a pure function
of (seed, rank, step): a resumed run draws exactly the batches the uninterrupted run would have drawn, whatever
the number of loader workers.

Bad data: a missing or empty folder is a one-line error before training starts; an unreadable or too-small
image found during training is skipped (another image takes its place) and counted, never a crash mid-run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pgn.errors import PGNError
from pgn.extras import install_hint
from pgn.images import IMAGE_SUFFIXES, list_images
from pgn.value_spaces import normalize

#: The bundled photographs kept out of training (validation only).
HELD_OUT_SAMPLES = ("skimage/chelsea", "sklearn/flower")
#: Consecutive unusable images after which loading gives up with an error (the data is broken, not noisy).
MAX_CONSECUTIVE_BAD = 64
#: FFHQ: ids below this train, the rest validate (the authors' split).
FFHQ_TRAIN_IDS = 60_000

Item = "Path | str"  # a file path, or the name of a bundled photograph


@dataclass
class DataSplit:
    """Training items, held-out items, and how they were found."""

    kind: str
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    root: str = ""

    def describe(self) -> str:
        """One line for logs: what was found where."""
        where = f" in {self.root}" if self.root else ""
        return f"{self.kind}{where}: {len(self.train)} training images, {len(self.val)} held out"


# --------------------------------------------------------------------------------------------------------
# Finding the images


def detect_layout(data: str) -> str:
    """Guess the dataset kind of ``data``: ``samples``, ``imagenet``, ``ffhq`` or ``folder``."""
    if data == "samples":
        return "samples"
    root = Path(data)
    if not root.exists():
        raise PGNError(f"data folder not found: {root} (pass an image folder, an ImageNet or FFHQ root, or 'samples')")
    if not root.is_dir():
        raise PGNError(f"--data must be a folder of images, got a file: {root}")
    if _imagenet_root(root) is not None:
        return "imagenet"
    if _ffhq_root(root) is not None:
        return "ffhq"
    return "folder"


def _imagenet_root(root: Path) -> Path | None:
    for cand in (root, root / "ImageNet", root / "imagenet"):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    return None


def _ffhq_root(root: Path) -> Path | None:
    for cand in (root / "images1024x1024", root / "ffhq-dataset" / "images1024x1024"):
        if cand.is_dir():
            return cand
    return root if root.name == "images1024x1024" else None


def _hash_order(path: Path, root: Path) -> bytes:
    """A stable order of a folder's files, independent of how the file system lists them."""
    return hashlib.sha1(str(path.relative_to(root)).encode()).digest()


def _held_out(rel: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def find_images(data: str, dataset: str = "auto", val_fraction: float = 0.02) -> DataSplit:
    """Split the images of ``data`` into training and held-out items (see the module docs for the layouts)."""
    kind = detect_layout(data) if dataset == "auto" else dataset
    if kind == "samples":
        names = sorted(_sample_arrays())
        val = [n for n in names if n in HELD_OUT_SAMPLES] or names[-2:]
        train = [n for n in names if n not in val]
        if not train:
            raise PGNError(f"too few bundled sample images to hold some out: {install_hint('images')} brings more")
        return DataSplit("samples", train, val, "scikit-image + scikit-learn")
    root = Path(data)
    if not root.is_dir():
        raise PGNError(f"data folder not found: {root}")
    if kind == "imagenet":
        base = _imagenet_root(root)
        if base is None:
            raise PGNError(f"{root} is not in the torchvision ImageNet layout: expected {root}/train/<class>/ and {root}/val/<class>/")
        return DataSplit("imagenet", list_images(base / "train"), list_images(base / "val"), str(base))
    if kind == "ffhq":
        base = _ffhq_root(root) or root
        files = list_images(base)
        ids = {f: _numeric_id(f) for f in files}
        bad = [f for f, i in ids.items() if i is None]
        if bad:
            raise PGNError(f"FFHQ layout expects numeric file names (00000.png ...), found {bad[0].name} in {base}")
        train = [f for f in files if ids[f] < FFHQ_TRAIN_IDS]
        val = [f for f in files if ids[f] >= FFHQ_TRAIN_IDS]
        if not train or not val:
            raise PGNError(
                f"FFHQ split needs ids below and from {FFHQ_TRAIN_IDS} (train / validation); {base} has "
                f"{len(train)} and {len(val)}"
            )
        return DataSplit("ffhq", train, val, str(base))
    if kind == "folder":
        files = list_images(root)
        val = [f for f in files if _held_out(str(f.relative_to(root)), val_fraction)]
        if not val:  # tiny folders: hold out the file with the smallest hash
            val = [min(files, key=lambda f: _hash_order(f, root))]
        held = set(val)
        train = [f for f in files if f not in held]
        if not train:
            raise PGNError(f"{root} has only {len(files)} image(s): need at least 2 (one is held out for validation)")
        return DataSplit("folder", train, val, str(root))
    raise PGNError(f"unknown dataset {kind!r}: use auto, samples, folder, imagenet or ffhq")


def _numeric_id(path: Path) -> int | None:
    return int(path.stem) if path.stem.isdigit() else None


# --------------------------------------------------------------------------------------------------------
# Reading and transforming


class UnusableImage(Exception):
    """An image that cannot be read or is smaller than the minimum side."""


def open_item(item, min_side: int, samples: dict | None = None):
    """Return a PIL image (files) or a (3, H, W) [0, 1] tensor (bundled photographs); raise UnusableImage."""
    if isinstance(item, str) and samples is not None and item in samples:
        img = samples[item]
        h, w = img.shape[-2:]
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(item) as im:
                img = im.convert("RGB")
                img.load()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise UnusableImage(f"{item}: unreadable ({e.__class__.__name__})") from None
        w, h = img.size
    if min(h, w) < min_side:
        raise UnusableImage(f"{item}: too small ({w}x{h}, minimum side {min_side})")
    return img


def _to_unit_tensor(img) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).float() / 255.0


def train_transform(size: int):
    """RandomResizedCrop(size, 0.08–1, 3/4–4/3, bilinear) → RandomHorizontalFlip(0.5); PIL or tensor in, same out."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.RandomHorizontalFlip(0.5),
        ]
    )


def center_view(img, size: int) -> torch.Tensor:
    """Validation view: Resize(size·256/224) → CenterCrop(size), as (3, size, size) in [0, 1]."""
    from torchvision import transforms as T

    resize = T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR, antialias=True)
    return _to_unit_tensor(T.CenterCrop(size)(resize(img)))


@functools.lru_cache(maxsize=1)
def _sample_arrays() -> dict[str, torch.Tensor]:
    """The bundled photographs, read once per process (callers must not modify the dict)."""
    from pgn.images import sample_images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-image hands out non-writable NumPy arrays
        return sample_images()


class TrainImages(Dataset):
    """Training images; indexed by ``(index, crop_seed)`` pairs from :class:`StepBatchSampler`.

    Returns ``(image, skipped, first_bad)``: the normalized (3, size, size) crop, how many unusable images were
    passed over to find it, and the first of those (for the warning). The crop is drawn from a generator seeded
    with ``crop_seed``, so it does not depend on worker processes or on anything else that ran before.
    """

    def __init__(self, items: Sequence, size: int, min_side: int, samples: dict | None = None):
        if not items:
            raise PGNError("no training images")
        self.items = list(items)
        self.size = size
        self.min_side = min_side
        self.samples = samples
        self.transform = train_transform(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        index, seed = key
        first_bad = ""
        for attempt in range(MAX_CONSECUTIVE_BAD):
            item = self.items[(index + attempt * 7919) % len(self.items)]
            try:
                img = open_item(item, self.min_side, self.samples)
            except UnusableImage as e:
                first_bad = first_bad or str(e)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = _to_unit_tensor(self.transform(img))
            return normalize(x[None])[0], attempt, first_bad
        raise PGNError(f"{MAX_CONSECUTIVE_BAD} images in a row could not be used (last: {first_bad}); check the data")


class StepBatchSampler(Sampler):
    """Batches for steps ``start .. end-1``: ``batch_size`` (index, crop seed) pairs drawn with replacement.

    Step ``s`` of rank ``r`` always gets the same batch (a generator seeded with ``(seed, r, s)``), which makes
    resumed runs exact; ranks get different images.
    """

    def __init__(self, num_items: int, batch_size: int, start: int, end: int, seed: int, rank: int):
        self.num_items, self.batch_size = num_items, batch_size
        self.start, self.end, self.seed, self.rank = start, end, seed, rank

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """The (index, crop seed) pairs of one step."""
        rng = np.random.default_rng([self.seed, self.rank, step])
        idx = rng.integers(0, self.num_items, self.batch_size)
        seeds = rng.integers(0, 2**62, self.batch_size)
        return [(int(i), int(s)) for i, s in zip(idx, seeds)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.end):
            yield self.batch_for_step(step)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def default_workers(kind: str, world_size: int) -> int:
    """Loader processes per training process: 0 for the in-memory samples, else up to 4 sharing the CPU cores."""
    if kind == "samples":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) // max(1, world_size) - 1))


def make_train_loader(
    split: DataSplit,
    *,
    size: int,
    batch_size: int,
    min_side: int,
    start_step: int,
    end_step: int,
    seed: int,
    rank: int,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader yielding ``(images, skipped, first_bad)`` batches for steps ``start_step .. end_step-1``."""
    samples = _sample_arrays() if split.kind == "samples" else None
    probe_images(split.train, min_side, samples)
    dataset = TrainImages(split.train, size, min_side, samples)
    sampler = StepBatchSampler(len(dataset), batch_size, start_step, end_step, seed, rank)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=_collate,
        generator=torch.Generator(),  # the loader's own base seed: never draws from the global RNG (exact resume)
    )


def _collate(batch: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, int, str]:
    images = torch.stack([b[0] for b in batch])
    skipped = sum(b[1] for b in batch)
    first_bad = next((b[2] for b in batch if b[2]), "")
    return images, skipped, first_bad


def probe_images(items: Sequence, min_side: int, samples: dict | None = None, count: int = 16) -> int:
    """Open up to ``count`` items spread over the list; all unusable → a clear error. Returns how many were bad."""
    if not items:
        raise PGNError("no training images")
    picks = sorted({round(i * (len(items) - 1) / max(1, count - 1)) for i in range(min(count, len(items)))})
    problems = []
    for i in picks:
        try:
            open_item(items[i], min_side, samples)
        except UnusableImage as e:
            problems.append(str(e))
    if len(problems) == len(picks):
        raise PGNError(f"none of {len(picks)} probed training images is usable (e.g. {problems[0]}); check the data")
    return len(problems)


def validation_images(split: DataSplit, size: int, count: int, min_side: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """``count`` held-out views, (N, 3, size, size) RGB in [0, 1], and how many held-out files were unusable.

    With at least ``count`` held-out images, evenly spaced ones are center-cropped (the authors' validation
    view). With fewer (the bundled photographs), each image gives several views: first its center crop, then
    crops from a generator with a fixed seed, so the set never changes between runs.

    Unusable held-out files are skipped as in training. If none is usable in a plain folder, the next usable
    file (in the folder's stable hash order) is held out instead: it moves from ``split.train`` to ``split.val``,
    so it is never trained on.
    """
    samples = _sample_arrays() if split.kind == "samples" else None
    items = split.val
    if len(items) > count:
        items = [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]
    usable, skipped = [], 0
    for item in items:
        try:
            usable.append(open_item(item, min_side, samples))
        except UnusableImage:
            skipped += 1
    if not usable and split.kind == "folder":
        usable.append(_hold_out_another(split, min_side))
    if not usable:
        raise PGNError(f"none of the {len(items)} held-out images could be used (unreadable or smaller than {min_side} px)")
    views = []
    crop = _fixed_crop(size)
    for i in range(count):
        img = usable[i % len(usable)]
        if i < len(usable):
            views.append(center_view(img, size))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + i)
                views.append(_to_unit_tensor(crop(img)))
    return torch.stack(views).clamp(0, 1), skipped


def _hold_out_another(split: DataSplit, min_side: int):
    """Move the first usable training file (stable hash order) of a plain folder to the held-out items; open it."""
    root = Path(split.root)
    for item in sorted(split.train, key=lambda f: _hash_order(f, root)):
        if len(split.train) < 2:
            break  # training needs at least one image
        try:
            img = open_item(item, min_side)
        except UnusableImage:
            continue
        split.train.remove(item)
        split.val.append(item)
        return img
    raise PGNError(f"no usable image in {root} can be held out for validation (unreadable or smaller than {min_side} px): add images")


def _fixed_crop(size: int):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), T.RandomHorizontalFlip(0.5)])


__all__ = [
    "DataSplit",
    "HELD_OUT_SAMPLES",
    "IMAGE_SUFFIXES",
    "StepBatchSampler",
    "TrainImages",
    "default_workers",
    "detect_layout",
    "find_images",
    "make_train_loader",
    "probe_images",
    "train_transform",
    "validation_images",
]
