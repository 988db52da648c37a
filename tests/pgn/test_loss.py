"""PGNLoss: its backward delivers exactly the PGN gradient (plus the MSE term), in both value spaces."""

import pytest
import torch

import pgn


@pytest.mark.parametrize("value_space", ["unit", "imagenet"])
@pytest.mark.parametrize("mse_weight", [0.0, 20.0])
def test_backward_is_pgn_gradient(value_space, mse_weight, pair):
    model = pgn.build("resnet4", value_space=value_space)
    x, y = pair
    if value_space == "imagenet":
        x, y = pgn.normalize(x), pgn.normalize(y)
    criterion = pgn.PGNLoss(model, mse_weight=mse_weight)
    xr = x.clone().requires_grad_(True)
    criterion(xr, y).backward()

    expected = model(x, y)
    if not mse_weight:
        assert torch.equal(xr.grad, expected)  # exactly the PGN gradient, bit for bit
    else:
        xm = x.clone().requires_grad_(True)
        to_n = pgn.normalize if value_space == "unit" else (lambda t: t)
        mse = (to_n(xm) - to_n(y)).pow(2).flatten(1).mean(1).sum()
        expected = expected + mse_weight * torch.autograd.grad(mse, xm)[0]
        torch.testing.assert_close(xr.grad, expected, rtol=1e-5, atol=1e-7)


def test_gradient_flows_into_a_generator(pair):
    """The loss drives a generator's parameters with the PGN gradient chained through it."""
    model = pgn.build("resnet4")
    x, y = pair
    gen = torch.nn.Conv2d(3, 3, 1)
    criterion = pgn.PGNLoss(model)
    out = gen(x)
    criterion(out, y).backward()
    g = model(out.detach(), y)
    expected_bias_grad = g.sum(dim=(0, 2, 3))
    torch.testing.assert_close(gen.bias.grad, expected_bias_grad, rtol=1e-5, atol=1e-9)


def test_value_is_alpha_mse_to_proxy(pair):
    model = pgn.build("resnet4")
    x, y = pair
    p = model.proxy(x, y)
    value = pgn.PGNLoss(model, reduction="none")(x, y)
    expected = 40.0 * (pgn.normalize(x) - pgn.normalize(p)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-7)


def test_reductions_and_swap_signature(pair, teacher19):
    model = pgn.build("resnet4")
    x, y = pair
    none = pgn.PGNLoss(model, reduction="none")(x, y)
    assert none.shape == (2,)
    torch.testing.assert_close(pgn.PGNLoss(model, reduction="mean")(x, y), none.mean())
    torch.testing.assert_close(pgn.PGNLoss(model)(x, y), none.sum())
    # same call signature as the teacher: swapping is one line
    for criterion in (teacher19, pgn.PGNLoss(model)):
        xr = x.clone().requires_grad_(True)
        criterion(xr, y).backward()
        assert xr.grad.shape == x.shape


def test_bad_arguments(pair):
    with pytest.raises(pgn.PGNError, match="pgn.PGN"):
        pgn.PGNLoss(torch.nn.Identity())
    with pytest.raises(pgn.PGNError, match="reduction"):
        pgn.PGNLoss(pgn.build("resnet4"), reduction="batchmean")
    x, y = pair
    with pytest.raises(pgn.PGNError, match="same shape"):
        pgn.PGNLoss(pgn.build("resnet4"))(x, y[:1])


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0, "20", True])
def test_pgnloss_refuses_a_weight_that_is_not_a_finite_number_at_least_0(weight):
    with pytest.raises(pgn.PGNError, match="mse_weight must be a finite number ≥ 0"):
        pgn.PGNLoss(pgn.build("resnet4", num_blocks=1), mse_weight=weight)
