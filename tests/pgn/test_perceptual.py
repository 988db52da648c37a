"""The VGG teacher: architecture, weight sources, per-sample loss and its true gradient."""

import pytest
import torch

import pgn
from pgn.perceptual import VGG_TAPS, imagenet_weights_path, vgg_features


def test_vgg_sizes_and_taps(teacher19):
    assert sum(p.numel() for p in teacher19.parameters()) == 12_944_960
    assert sum(p.numel() for p in vgg_features("vgg11").parameters()) == 6_860_672
    assert len(teacher19.taps) == 13 and len(VGG_TAPS["vgg11"]) == 7
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in teacher19.modules())
    assert all(not p.requires_grad for p in teacher19.parameters())
    assert len(teacher19.activations(torch.zeros(1, 3, 32, 32))) == 13


def test_loss_formula(teacher19, pair):
    """Sum over taps of the per-layer mean |φ(ŷ) − φ(y)|, one value per sample, no batch mean."""
    x, y = pair
    fx = teacher19.activations(pgn.normalize(x))
    fy = teacher19.activations(pgn.normalize(y))
    expected = sum((a - b).abs().mean(dim=(1, 2, 3)) for a, b in zip(fx, fy))
    torch.testing.assert_close(teacher19.per_sample(x, y), expected)
    torch.testing.assert_close(teacher19(x, y), expected.sum())


def test_gradient_equals_autograd(teacher19, pair):
    x, y = pair
    xr = x.clone().requires_grad_(True)
    teacher19(xr, y).backward()
    g, losses = teacher19.gradient_and_loss(x, y)
    torch.testing.assert_close(g, xr.grad)
    assert losses.shape == (2,)


def test_gradient_is_per_sample(teacher19, pair):
    """One sample's gradient does not change when another sample in the batch changes."""
    x, y = pair
    g1 = teacher19.gradient(x, y)
    x2 = x.clone()
    x2[1] = torch.rand_like(x2[1])
    g2 = teacher19.gradient(x2, y)
    torch.testing.assert_close(g1[0], g2[0])
    assert not torch.allclose(g1[1], g2[1])


def test_imagenet_value_space_chain_rule(pair):
    t_unit = pgn.PerceptualLoss("vgg11", weights="random")
    t_norm = pgn.PerceptualLoss("vgg11", weights="random", value_space="imagenet")
    x, y = pair
    g_unit = t_unit.gradient(x, y)
    g_norm = t_norm.gradient(pgn.normalize(x), pgn.normalize(y))
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(g_unit, g_norm / std, rtol=1e-4, atol=1e-9)


def test_cached_target_matches(teacher19, pair):
    x, y = pair
    expected = teacher19.gradient(x, y)
    teacher19.cache_target(y)
    try:
        torch.testing.assert_close(teacher19.gradient(x), expected)
        with pytest.raises(pgn.PGNError, match="cached target"):
            teacher19(torch.rand(2, 3, 64, 64))
    finally:
        teacher19.clear_target()
    with pytest.raises(pgn.PGNError, match="no target"):
        teacher19(x)


def test_random_weights_are_seeded_and_labelled():
    a = pgn.PerceptualLoss("vgg11", weights="random", seed=3)
    b = pgn.PerceptualLoss("vgg11", weights="random", seed=3)
    c = pgn.PerceptualLoss("vgg11", weights="random", seed=4)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert not a.weights.pretrained and "UNTRAINED" in str(a.weights)


def test_weights_from_state_dict_file(tmp_path):
    src = pgn.PerceptualLoss("vgg11", weights="random", seed=7)
    # a torchvision-style full state dict: features.* plus classifier entries that must be ignored
    sd = {f"features.{k}": v for k, v in src.features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(sd, tmp_path / "vgg11.pth")
    t = pgn.PerceptualLoss("vgg11", weights=tmp_path / "vgg11.pth")
    assert torch.equal(t.features[0].weight, src.features[0].weight)
    assert t.weights.pretrained and "vgg11.pth" in str(t.weights)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(pgn.PGNError, match="does not fit"):
        pgn.PerceptualLoss("vgg11", weights=tmp_path / "bad.pth")
    with pytest.raises(pgn.PGNError, match="not found"):
        pgn.PerceptualLoss("vgg11", weights=tmp_path / "missing.pth")


def test_imagenet_weights_from_hub_cache(tmp_path, monkeypatch):
    """'imagenet' reads torchvision's cached file offline; without it, one line naming the file and where."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = imagenet_weights_path("vgg11")
    assert path.name == "vgg11-8a719046.pth"
    with pytest.raises(pgn.PGNError) as err:
        pgn.PerceptualLoss("vgg11", weights="imagenet", download=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    src = pgn.PerceptualLoss("vgg11", weights="random", seed=5)
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in src.features.state_dict().items()}, path)
    t = pgn.PerceptualLoss("vgg11", weights="imagenet", download=False)
    assert torch.equal(t.features[3].weight, src.features[3].weight)
    assert "ImageNet" in str(t.weights)


def test_imagenet_weights_are_torchvisions_and_downloaded_with_their_hash_checked(tmp_path, monkeypatch):
    from torchvision.models import VGG11_Weights, VGG19_Weights

    from pgn.perceptual import IMAGENET_WEIGHTS_URLS

    assert IMAGENET_WEIGHTS_URLS == {"vgg19": VGG19_Weights.IMAGENET1K_V1.url, "vgg11": VGG11_Weights.IMAGENET1K_V1.url}
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    asked = []

    def offline(url, **kwargs):
        asked.append((url, kwargs))
        raise ConnectionError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(pgn.PGNError) as err:
        pgn.PerceptualLoss("vgg19", weights="imagenet")
    [(url, kwargs)] = asked
    assert url == VGG19_Weights.IMAGENET1K_V1.url and kwargs["check_hash"] is True
    assert f"download {url} and save it as {imagenet_weights_path('vgg19')}" in str(err.value) and "\n" not in str(err.value)


def test_bad_options():
    with pytest.raises(pgn.PGNError, match="vgg19 or vgg11"):
        pgn.PerceptualLoss("vgg16", weights="random")
    with pytest.raises(pgn.PGNError, match="reduction"):
        pgn.PerceptualLoss("vgg11", weights="random", reduction="avg")
    with pytest.raises(pgn.PGNError, match="value_space"):
        pgn.PerceptualLoss("vgg11", weights="random", value_space="01")


@pytest.mark.parametrize("seed", ["abc", 1.5, None, True])
def test_seed_must_be_an_integer(seed):
    with pytest.raises(pgn.PGNError, match="seed must be an integer"):
        pgn.PerceptualLoss("vgg11", weights="random", seed=seed)


def test_the_other_vgg_is_named_with_the_reason(tmp_path):
    import torchvision

    with torch.device("meta"):  # the layout of a full torchvision VGG-11 file; its classifier (500 MB) is never read
        layout = torchvision.models.vgg11().state_dict()
    full = {k: torch.zeros(v.shape if k.startswith("features.") else (1,)) for k, v in layout.items()}
    assert any(k.startswith("classifier.") for k in full)
    torch.save(full, tmp_path / "vgg11-full.pth")
    with pytest.raises(pgn.PGNError, match=r"this is a VGG-11 state dict \(8 conv layers\), not VGG-19: pass net='vgg11'"):
        pgn.PerceptualLoss("vgg19", weights=tmp_path / "vgg11-full.pth")
    src = pgn.PerceptualLoss("vgg19", weights="random", seed=1)
    torch.save(src.features.state_dict(), tmp_path / "vgg19-features.pth")
    with pytest.raises(pgn.PGNError, match=r"this is a VGG-19 state dict \(13 conv layers\), not VGG-11"):
        pgn.PerceptualLoss("vgg11", weights=tmp_path / "vgg19-features.pth")
    # neither VGG: the differing tensors are named
    sd = dict(src.features.state_dict())
    sd["2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(pgn.PGNError, match=r"shape of 2.weight \(64, 64, 1, 1\) instead of \(64, 64, 3, 3\)"):
        pgn.PerceptualLoss("vgg19", weights=tmp_path / "odd.pth")


_BAD_KINDS = {
    "uint8": (lambda x: (x * 255).to(torch.uint8), "floating-point image .*got uint8"),
    "bool": (lambda x: x > 0.5, "floating-point image .*got bool"),
    "list": (lambda x: x.tolist(), "must be a torch.Tensor, got list"),
    "numpy": (lambda x: x.numpy(), "must be a torch.Tensor, got ndarray; convert with torch.from_numpy"),
    "meta": (lambda x: torch.empty_like(x, device="meta"), "meta tensor"),
    "sparse": (lambda x: x.to_sparse(), "sparse_coo tensor: images must be dense"),
}


@pytest.mark.parametrize("kind", list(_BAD_KINDS))
@pytest.mark.parametrize("which", ["y_hat", "y"])
def test_the_teachers_gradient_applies_the_input_contract(teacher19, pair, kind, which):
    """The contract of pgn.inputs, before anything touches the tensors (was: raw errors from autograd)."""
    make, match = _BAD_KINDS[kind]
    y_hat, y = pair
    args = (make(y_hat), y) if which == "y_hat" else (y_hat, make(y))
    for call in (teacher19.gradient, teacher19.gradient_and_loss, teacher19):
        with pytest.raises(pgn.PGNError, match=f"^{which} .*{match}") as err:
            call(*args)
        assert "\n" not in str(err.value)
