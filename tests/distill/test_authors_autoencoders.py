"""The authors' autoencoder files (``e_ae_k.pth``) load into our surrogate autoencoders by their parameter names."""

import math

import pytest
import torch
from authors_reference import AuthorsAutoencoder, AuthorsResNet, distinct_state_dict, realistic_weights

from pgn.distill import checkpoints as ckpt
from pgn.distill import distributed as dist
from pgn.distill.autoencoders import SurrogateAutoencoder
from pgn.distill.trainer import Distiller


@pytest.mark.parametrize("depth, params", [(0, 54_019), (1, 111_491), (2, 408_195)])
def test_reference_autoencoder_has_the_paper_sizes(depth, params):
    assert sum(p.numel() for p in AuthorsAutoencoder(depth).parameters()) == params


@pytest.mark.parametrize(
    "depth, block_type, conv_type",
    [(0, "doubleblaze", "sep"), (1, "doubleblaze", "sep"), (2, "doubleblaze", "sep"), (3, "singleblaze", "full"),
     (2, "singleres", "sep"), (2, "doubleres", "full")],
)
def test_authors_autoencoder_forward_is_reproduced(tmp_path, depth, block_type, conv_type):
    reference = realistic_weights(AuthorsAutoencoder(depth, block_type, conv_type), seed=depth)
    torch.save(reference.state_dict(), tmp_path / "7_ae_0.pth")
    ours = SurrogateAutoencoder(depth, block_type, conv_type)
    ckpt.load_module_weights(ours, tmp_path / "7_ae_0.pth", "autoencoder 0")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference(x), rtol=1e-4, atol=1e-5)


def test_every_autoencoder_tensor_receives_its_own(tmp_path):
    source = distinct_state_dict(AuthorsAutoencoder(2))
    keys = list(source)
    torch.save(source, tmp_path / "ae.pth")
    ours = SurrogateAutoencoder(2)
    ckpt.load_module_weights(ours, tmp_path / "ae.pth", "autoencoder 0")
    received = {}
    for name, t in ours.state_dict().items():
        theirs = keys[int(math.floor(float(t.flatten()[0])))]
        torch.testing.assert_close(t, source[theirs], rtol=0, atol=0)
        received[name] = theirs
    assert sorted(received.values()) == sorted(keys)
    expected = {"encoder.4.dw1.weight": "model.1.1.cdw1.weight", "encoder.5.shortcut.weight": "model.2.c1.weight",
                "encoder.6.pointwise.bias": "model.3.1.bias", "decoder.1.spatial.weight": "model.5.0.weight",
                "decoder.5.pointwise.weight": "model.9.1.weight", "head.bias": "model.10.bias"}
    assert {k: received[k] for k in expected} == expected


def test_resume_dir_reads_the_authors_names(tiny_config, tmp_path):
    """--resume-dir with files exactly as the authors' code writes them: PGN and autoencoders under their names."""
    cfg = tiny_config(resume_dir=str(tmp_path / "authors"), resume_epoch=3, batches_per_epoch=10).resolved()
    pgn_reference = realistic_weights(AuthorsResNet(num_blocks=1, down=(16, 32), up=(16,)), seed=7)
    d = tmp_path / "authors" / "models"
    d.mkdir(parents=True)
    torch.save({
        "state_dict": pgn_reference.state_dict(), "backbone_type": "resnet",
        "backbone_params": {"down_channels": [16, 32], "up_channels": [16], "num_blocks": 1, "output_nc": 3},
        "backbone_to_grad_type": "proxy",
        "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": 1.1}, "grad_type": "mse", "grad_scale": 0.025},
        "version": 2,
    }, d / "3.pth")
    references = [realistic_weights(AuthorsAutoencoder(depth), seed=depth) for depth in cfg.ae_depths]
    for k, reference in enumerate(references):
        torch.save(reference.state_dict(), d / f"3_ae_{k}.pth")
    target = Distiller(cfg, dist.DistContext())
    target.start(tmp_path / "run", resume=False)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(target.model.backbone.eval()(torch.cat([x, x.flip(0)], 1)), pgn_reference(x, x.flip(0)), rtol=1e-4, atol=1e-5)
        for ours, reference in zip(target.autoencoders, references):
            torch.testing.assert_close(ours.eval()(x), reference(x), rtol=1e-4, atol=1e-5)
