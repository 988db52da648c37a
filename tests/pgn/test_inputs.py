"""Bad inputs get one-line errors that say what to do; images can be read and bundled samples exist."""

from pathlib import Path

import numpy as np
import pytest
import torch

import pgn
from pgn.images import list_images, read_image, sample_batch, sample_images
from pgn.inputs import check_images


@pytest.fixture(scope="module")
def model():
    return pgn.build("resnet4")


@pytest.mark.parametrize(
    "y_hat,y,match",
    [
        (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 64), "same shape"),
        (torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 32), "3 channels"),
        (torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3), "channels-last"),
        (torch.rand(3, 32, 32), torch.rand(3, 32, 32), "add a batch dimension"),
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
    with pytest.raises(pgn.PGNError, match=r"torch.Tensor, got ndarray; convert with torch.from_numpy\(y_hat\)"):
        model(np.random.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


# --------------------------------------------------------------------------------------------------------
# Other float dtypes: computed in the module's dtype, returned in the caller's


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.detach().double().flatten(), b.detach().double().flatten(), dim=0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_model_and_proxy_take_any_float_dtype(model, pair, dtype):
    y_hat, y = pair
    ref = model.outputs(y_hat, y)
    out = model.outputs(y_hat.to(dtype), y.to(dtype))  # raised a raw dtype error before
    assert out.grad.dtype == dtype and out.proxy.dtype == dtype and model.proxy(y_hat.to(dtype), y.to(dtype)).dtype == dtype
    assert _cos(out.grad, ref.grad) > 0.999 and _cos(model(y_hat.to(dtype), y.to(dtype)), ref.grad) > 0.999
    if dtype == torch.float64:
        torch.testing.assert_close(out.grad, ref.grad.double())  # the same fp32 computation, widened


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_pgn_loss_takes_any_float_dtype(model, pair, dtype):
    y_hat, y = pair
    expected = model(y_hat, y)
    x = y_hat.to(dtype).requires_grad_(True)
    pgn.PGNLoss(model)(x, y.to(dtype)).backward()
    assert x.grad.dtype == dtype and _cos(x.grad, expected) > 0.999


def test_pgn_loss_keeps_fp16_gradients_for_a_loss_scaler():
    """The injected gradient is multiplied by the incoming (scaled) gradient before it is cast to float16."""
    torch.manual_seed(0)
    model = pgn.build("resnet4")
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(1, 3, 256, 256, generator=g).half(), torch.rand(1, 3, 256, 256, generator=g).half()
    with torch.no_grad():
        expected = model(y_hat.float(), y.float())
    tiny = expected.abs() < 2e-6  # deep in float16's subnormal range: only a few bits survive a cast
    assert int(tiny.sum()) > 20
    scale = 2.0**12
    x = y_hat.clone().requires_grad_(True)
    (pgn.PGNLoss(model)(x, y) * scale).backward()
    unscaled_error = ((expected.half().float() - expected).abs() / expected.abs())[tiny].median()
    scaled_error = ((x.grad.float() / scale - expected).abs() / expected.abs())[tiny].median()
    assert scaled_error < 1e-3 < unscaled_error
    assert _cos(x.grad.float() / scale, expected) > 0.99999


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_teacher_gradient_takes_any_float_dtype(teacher19, dtype):
    g = torch.Generator().manual_seed(1)
    y_hat, y = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    ref = teacher19.gradient(y_hat, y)
    out = teacher19.gradient(y_hat.to(dtype), y.to(dtype))  # raised a raw dtype error before
    assert out.dtype == dtype and _cos(out, ref) > 0.999
    assert teacher19(y_hat.to(dtype), y.to(dtype)).dtype == torch.float32  # the loss is computed in the teacher's dtype
    teacher19.cache_target(y.to(dtype))
    try:
        assert _cos(teacher19.gradient(y_hat.to(dtype)), ref) > 0.999
    finally:
        teacher19.clear_target()


# --------------------------------------------------------------------------------------------------------
# Sizes, devices, and when the value check reads the data


def test_profile_of_size_zero_is_a_pgn_error(model):
    for size in (0, (0, 32), -4):
        with pytest.raises(pgn.PGNError, match="at least 1"):
            pgn.profile(model, size=size)
    with pytest.raises(pgn.PGNError, match="at least 1"):
        pgn.profile("vgg19", size=0)


def test_teacher_on_images_smaller_than_its_poolings(teacher19):
    for side in (1, 8, 15):
        with pytest.raises(pgn.PGNError, match=f"{side}x{side} is too small.*at least 16"):
            teacher19.gradient(torch.rand(1, 3, side, side), torch.rand(1, 3, side, side))
    assert teacher19.gradient(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_inputs_on_another_device_than_the_model():
    on_meta = pgn.build("resnet4").to("meta")
    with pytest.raises(pgn.PGNError, match="y_hat is on cpu but the model is on meta"):
        on_meta(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(pgn.PGNError, match="y is a meta tensor"):  # no data: refused before any device check
        check_images(("y_hat", torch.rand(1, 3, 8, 8)), ("y", torch.rand(1, 3, 8, 8, device="meta")))


@pytest.mark.gpu
def test_inputs_on_two_devices_are_refused():
    with pytest.raises(pgn.PGNError, match="one device"):
        check_images(("y_hat", torch.rand(1, 3, 8, 8)), ("y", torch.rand(1, 3, 8, 8, device="cuda")))


@pytest.mark.gpu
def test_value_check_stays_off_accelerator_tensors_unless_asked():
    """Reading the values of a GPU tensor synchronizes the host with it; "auto" leaves them alone."""
    nan = torch.full((1, 3, 8, 8), float("nan"), device="cuda")
    check_images(("y_hat", nan))  # auto: structure only
    check_images(("y_hat", nan), check_values="never")
    with pytest.raises(pgn.PGNError, match="NaN"):
        check_images(("y_hat", nan), check_values="always")


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_meta_tensors_are_refused_whatever_the_value_check(mode):
    meta = torch.empty(1, 3, 8, 8, device="meta")
    with pytest.raises(pgn.PGNError, match="meta tensor"):
        check_images(("y_hat", meta), check_values=mode)


def test_value_check_modes_on_host_tensors(model):
    nan = torch.full((1, 3, 32, 32), float("nan"))
    with pytest.raises(pgn.PGNError, match="NaN"):
        check_images(("y_hat", nan), check_values="always")
    check_images(("y_hat", nan), check_values="never")
    with pytest.raises(pgn.PGNError, match="check_values must be one of auto, always, never"):
        check_images(("y_hat", nan), check_values="sometimes")
    model.check_values = "never"
    try:
        assert torch.isnan(model(nan, torch.rand(1, 3, 32, 32))).all()
    finally:
        del model.check_values
    with pytest.raises(pgn.PGNError, match="NaN"):
        model(nan, torch.rand(1, 3, 32, 32))


def test_range_rule_only_in_unit_space():
    big = torch.rand(1, 3, 32, 32) * 255
    with pytest.raises(pgn.PGNError, match="0..255"):
        pgn.build("resnet4")(big, torch.rand(1, 3, 32, 32))
    slightly_out = torch.rand(1, 3, 32, 32) * 1.4 - 0.2  # a generator overshooting [0, 1] is fine
    pgn.build("resnet4")(slightly_out, torch.rand(1, 3, 32, 32))
    normalized = torch.randn(1, 3, 32, 32) * 20  # the authors' space is unbounded while training
    pgn.build("resnet4", value_space="imagenet")(normalized, normalized)


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
    # decoded once per process, but every call hands out its own tensors
    first = next(iter(imgs))
    expected = imgs[first].clone()
    imgs[first].zero_()
    assert torch.equal(sample_images()[first], expected)


def test_scikit_learns_photographs_are_read_as_its_loader_reads_them(monkeypatch):
    """Read from scikit-learn's folder without importing it, and through its loader where the folder is not there."""
    load_sample_images = pytest.importorskip("sklearn.datasets").load_sample_images
    import pgn.images

    bunch = load_sample_images()
    expected = {f"sklearn/{Path(f).stem}": img for f, img in zip(bunch.filenames, bunch.images)}
    for read in (pgn.images._sklearn_sample_images(), None):
        if read is None:  # a scikit-learn without that folder
            monkeypatch.setattr(Path, "is_dir", lambda self: False)
            read = pgn.images._sklearn_sample_images()
        assert read.keys() == expected.keys() and len(read) >= 2
        assert all(np.array_equal(read[k], expected[k]) for k in expected)


@pytest.mark.parametrize("make, match", [
    (lambda x: x.to_sparse(), "sparse_coo tensor: images must be dense; convert with y_hat.to_dense()"),
    (lambda x: torch.empty_like(x, device="meta"), "meta tensor"),
])
def test_sparse_and_meta_tensors_never_reach_the_value_check(model, make, match):
    x = torch.rand(1, 3, 32, 32)
    for call in (lambda: model(make(x), x), lambda: pgn.PGNLoss(model)(make(x), x),
                 lambda: check_images(("y_hat", make(x)), accept_numpy=True, check_values="always")):
        with pytest.raises(pgn.PGNError, match=match):
            call()
