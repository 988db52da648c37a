"""Bad inputs get one-line errors that say what to do; images can be read and bundled samples exist."""

import pytest
import torch

import pgn
from pgn.images import list_images, read_image, sample_batch, sample_images


@pytest.fixture(scope="module")
def model():
    return pgn.build("resnet4")


@pytest.mark.parametrize(
    "y_hat,y,match",
    [
        (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 64), "same shape"),
        (torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 32), "3 channels"),
        (torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3), "channels-last"),
        (torch.rand(3, 32, 32), torch.rand(3, 32, 32), "unsqueeze"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), torch.rand(1, 3, 32, 32), "floating-point"),
        (torch.full((1, 3, 32, 32), float("nan")), torch.rand(1, 3, 32, 32), "NaN"),
        (torch.rand(1, 3, 33, 32), torch.rand(1, 3, 33, 32), "multiples of 2"),
    ],
)
def test_bad_image_tensors(model, y_hat, y, match):
    with pytest.raises(pgn.PGNError, match=match) as err:
        model(y_hat, y)
    assert "\n" not in str(err.value)


def test_unet_size_names_nearest_valid():
    with pytest.raises(pgn.PGNError, match=r"multiples of 32; nearest valid height 96 or 128, width 224 or 256"):
        pgn.build("unet")(torch.rand(1, 3, 100, 250), torch.rand(1, 3, 100, 250))
    with pytest.raises(pgn.PGNError, match="height 32"):
        pgn.build("unet")(torch.rand(1, 3, 20, 32), torch.rand(1, 3, 20, 32))


def test_non_tensor_input(model):
    with pytest.raises(pgn.PGNError, match="torch.Tensor"):
        model([[0.0]], torch.rand(1, 3, 32, 32))


def test_read_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.jpg").write_bytes(b"\x00\x01 not a jpeg")
    img = read_image(tmp_path / "red.png")
    assert img.shape == (3, 30, 40) and float(img[0].min()) == 1.0 and float(img[1].max()) == 0.0
    with pytest.raises(pgn.PGNError, match="cannot read image"):
        read_image(tmp_path / "broken.jpg")
    with pytest.raises(pgn.PGNError, match="not found"):
        read_image(tmp_path / "nope.png")
    assert len(list_images(tmp_path)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(pgn.PGNError, match="no images"):
        list_images(tmp_path / "empty")


def test_bundled_sample_images():
    imgs = sample_images()
    assert len(imgs) >= 4
    assert all(t.shape[0] == 3 and 0.0 <= float(t.min()) and float(t.max()) <= 1.0 for t in imgs.values())
    batch = sample_batch(64)
    assert batch.shape == (len(imgs), 3, 64, 64)
