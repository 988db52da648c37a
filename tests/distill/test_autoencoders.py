import pytest
import torch

from pgn.distill.autoencoders import SurrogateAutoencoder, build_autoencoders, split_sizes
from pgn.distill.running_stats import MovingAverage, PlateauTracker
from pgn.errors import PGNError


@pytest.mark.parametrize("depth, params", [(0, 54_019), (1, 111_491), (2, 408_195)])
def test_parameter_counts_match_the_paper(depth, params):
    ae = SurrogateAutoencoder(depth)
    assert sum(p.numel() for p in ae.parameters()) == params


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_output_has_input_shape(depth):
    ae = SurrogateAutoencoder(depth)
    x = torch.randn(2, 3, 32, 48)
    assert ae(x).shape == x.shape


@pytest.mark.parametrize("batch, sizes", [(48, [16, 16, 16]), (44, [15, 15, 14]), (3, [1, 1, 1]), (7, [3, 2, 2])])
def test_batch_split(batch, sizes):
    assert split_sizes(batch, 3) == sizes


def test_batch_smaller_than_autoencoders_is_an_error():
    with pytest.raises(PGNError, match="need batch"):
        split_sizes(2, 3)


def test_reset_reinitializes_weights_and_running_stats():
    torch.manual_seed(0)
    ae = SurrogateAutoencoder(1).train()
    ae(torch.randn(4, 3, 32, 32) * 3 + 1)
    bn = ae.encoder[1]
    assert not torch.all(bn.running_mean == 0)
    before = ae.head.weight.clone()
    ae.reset_parameters()
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    assert not torch.equal(before, ae.head.weight)


def test_build_autoencoders_in_order():
    aes = build_autoencoders([2, 0])
    assert [a.depth for a in aes] == [2, 0]


def test_moving_average():
    ma = MovingAverage(200.0)
    assert ma.update(100.0) == pytest.approx(199.0)


def test_plateau_rule():
    t = PlateauTracker()
    args = dict(patience=100, prob=0.01, hi_threshold=1000.0)
    t.observe(1.0, 0)
    assert t.reset_probability(1.0, 0, **args) == 0.0
    t.observe(0.9, 50)  # improvement moves the best
    assert t.best_sample == 50
    t.observe(0.95, 149)
    assert t.reset_probability(0.95, 149, **args) == 0.0  # 99 samples since the best
    t.observe(0.95, 150)
    assert t.reset_probability(0.95, 150, **args) == 0.01  # 100 samples: plateau
    assert t.reset_probability(2000.0, 60, **args) == 1.0  # exploding L1: forced
    t.clear()
    assert t.best_l1 is None
