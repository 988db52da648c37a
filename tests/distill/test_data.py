import numpy as np
import pytest
import torch
from PIL import Image

from pgn.distill.data import (
    HELD_OUT_SAMPLES,
    StepBatchSampler,
    TrainImages,
    detect_layout,
    find_images,
    make_train_loader,
    validation_images,
)
from pgn.errors import PGNError


def write_image(path, size=(48, 40), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PGNError, match="no images"):
        find_images(str(tmp_path / "empty"))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PGNError, match="not found"):
        find_images(str(tmp_path / "nope"))


def test_samples_hold_out_whole_photographs():
    split = find_images("samples")
    assert split.kind == "samples"
    assert set(split.val) == set(HELD_OUT_SAMPLES)
    assert not set(split.val) & set(split.train)


def test_folder_split_is_disjoint_and_stable(tmp_path):
    for i in range(30):
        write_image(tmp_path / "imgs" / f"{i:03d}.png", seed=i)
    a = find_images(str(tmp_path / "imgs"), val_fraction=0.1)
    b = find_images(str(tmp_path / "imgs"), val_fraction=0.1)
    assert a.kind == "folder" and a.val and a.train
    assert not set(a.val) & set(a.train)
    assert len(a.val) + len(a.train) == 30
    assert a.val == b.val


def test_imagenet_and_ffhq_layouts(tmp_path):
    write_image(tmp_path / "in" / "ImageNet" / "train" / "n01" / "a.JPEG")
    write_image(tmp_path / "in" / "ImageNet" / "val" / "n01" / "b.JPEG")
    assert detect_layout(str(tmp_path / "in")) == "imagenet"
    split = find_images(str(tmp_path / "in"))
    assert [p.name for p in split.train] == ["a.JPEG"] and [p.name for p in split.val] == ["b.JPEG"]
    for i in (0, 1, 59999, 60000, 69999):
        write_image(tmp_path / "ffhq" / "images1024x1024" / f"{i // 1000 * 1000:05d}" / f"{i:05d}.png", seed=i)
    split = find_images(str(tmp_path / "ffhq"))
    assert split.kind == "ffhq"
    assert sorted(int(p.stem) for p in split.train) == [0, 1, 59999]
    assert sorted(int(p.stem) for p in split.val) == [60000, 69999]


def test_unreadable_and_too_small_images_are_skipped_and_counted(tmp_path):
    good = [write_image(tmp_path / f"good{i}.png", seed=i) for i in range(2)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    tiny = write_image(tmp_path / "tiny.png", size=(8, 8))
    items = [broken, tiny] + good
    ds = TrainImages(items, size=32, min_side=16)
    img, skipped, first_bad = ds[(0, 123)]
    assert img.shape == (3, 32, 32)
    assert skipped >= 1 and "broken.jpg" in first_bad and "unreadable" in first_bad
    img, skipped, first_bad = ds[(1, 5)]
    assert skipped >= 1 and "too small" in first_bad
    assert ds[(2, 5)][1] == 0


def test_loader_counts_skips_over_a_run(tmp_path):
    from pgn.distill.data import DataSplit

    items = [write_image(tmp_path / f"g{i}.png", seed=i) for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    split = DataSplit("folder", items + [tmp_path / "bad.png"], items[:1], str(tmp_path))
    loader = make_train_loader(split, size=32, batch_size=8, min_side=16, start_step=0, end_step=4, seed=0, rank=0, workers=0)
    total = sum(skipped for _, skipped, _ in loader)
    assert total > 0  # with 32 draws from 4 files the broken one comes up; it is skipped, not fatal


def test_all_images_unusable_is_a_clear_error(tmp_path):
    from pgn.distill.data import DataSplit

    bad = []
    for i in range(3):
        p = tmp_path / f"bad{i}.jpg"
        p.write_bytes(b"nope")
        bad.append(p)
    split = DataSplit("folder", bad, bad[:1], str(tmp_path))
    with pytest.raises(PGNError, match="usable"):
        make_train_loader(split, size=32, batch_size=2, min_side=16, start_step=0, end_step=1, seed=0, rank=0, workers=0)


def test_batches_depend_only_on_seed_rank_and_step():
    a = StepBatchSampler(100, 4, 0, 10, seed=1, rank=0)
    b = StepBatchSampler(100, 4, 7, 10, seed=1, rank=0)
    assert list(a)[7:] == list(b)
    assert a.batch_for_step(3) != StepBatchSampler(100, 4, 0, 10, seed=1, rank=1).batch_for_step(3)


def test_crops_are_reproducible():
    split = find_images("samples")
    loader = lambda: make_train_loader(split, size=32, batch_size=4, min_side=16, start_step=3, end_step=4, seed=0, rank=0, workers=0)  # noqa: E731
    x1, x2 = next(iter(loader()))[0], next(iter(loader()))[0]
    assert torch.equal(x1, x2)


def test_validation_views_are_fixed_and_held_out():
    split = find_images("samples")
    v1, skipped = validation_images(split, 32, 5, 16)
    v2, _ = validation_images(split, 32, 5, 16)
    assert v1.shape == (5, 3, 32, 32) and skipped == 0 and torch.equal(v1, v2)
    assert 0.0 <= float(v1.min()) and float(v1.max()) <= 1.0


def test_loader_workers_end_with_the_pass_over_the_steps(tmp_path):
    """One pass covers every step of a run: its worker processes end with it, not at some later garbage collection
    (which then waited seconds for them)."""
    import multiprocessing

    from pgn.distill.data import DataSplit

    items = [write_image(tmp_path / f"g{i}.png", seed=i) for i in range(3)]
    split = DataSplit("folder", items, items[:1], str(tmp_path))
    before = set(multiprocessing.active_children())
    loader = make_train_loader(split, size=32, batch_size=2, min_side=16, start_step=0, end_step=3, seed=0, rank=0, workers=1)
    batches = iter(loader)
    next(batches)
    assert set(multiprocessing.active_children()) - before  # a worker process serves the pass
    assert len(list(batches)) == 2
    assert set(multiprocessing.active_children()) <= before  # gone with the pass, the loader still referenced
    assert loader is not None
