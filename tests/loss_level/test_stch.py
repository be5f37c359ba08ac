"""STCH: the gradient of the smooth Tchebycheff function, its two limits, TorchJD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_total_gradient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

import mtlweight as mw

Array = NDArray[np.float64]
values_strategy = st.integers(2, 5).flatmap(
    lambda t: arrays(np.float64, t, elements=st.floats(0.0, 100.0))
)


def weights_of(stch: mw.STCH, values: Array) -> Array:
    stch([torch.tensor(v, dtype=torch.float64) for v in values])
    return np.array(list(stch.weights.values()))


def test_hand_derived() -> None:
    # lambda (1, 2), z* (0, 1), mu 2: exponents (3 / 2, 2 (2 - 1) / 2) = (1.5, 1)
    stch = mw.STCH(2.0, preference={"a": 1.0, "b": 2.0}, ideal=[0.0, 1.0])
    stch({"a": torch.tensor(3.0), "b": torch.tensor(2.0)})
    soft = np.exp([1.5, 1.0]) / np.exp([1.5, 1.0]).sum()
    assert list(stch.weights.values()) == pytest.approx(list(np.array([1.0, 2.0]) * soft))


@settings(max_examples=40, deadline=None)
@given(values_strategy, st.floats(0.01, 100.0))
def test_weights_are_the_gradient_of_the_smooth_max(values: Array, mu: float) -> None:
    losses = torch.tensor(values, requires_grad=True)
    lam = torch.linspace(0.5, 2.0, len(values), dtype=torch.float64)
    smooth = mu * torch.logsumexp(lam * (losses - 0.1) / mu, 0)
    expected = torch.autograd.grad(smooth, losses)[0].numpy()
    stch = mw.STCH(mu, preference=lam.tolist(), ideal=[0.1] * len(values))
    np.testing.assert_allclose(weights_of(stch, values), expected, rtol=1e-10, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(values_strategy)
def test_small_mu_gives_the_max_large_mu_the_mean(values: Array) -> None:
    stch = mw.STCH(1e-6)
    total = float(stch([torch.tensor(v, dtype=torch.float64) for v in values]))
    gap = np.sort(values)[-1] - np.sort(values)[-2]
    if gap > 1e-3:  # a unique worst task gets all the weight: the total is max_t L_t
        assert total == pytest.approx(values.max(), rel=1e-9)
        one_hot = (values == values.max()).astype(float)
        assert list(stch.weights.values()) == pytest.approx(one_hot.tolist())
    weights = weights_of(mw.STCH(1e7), values)
    np.testing.assert_allclose(weights, 1.0 / len(values), rtol=1e-4)  # the mean


def test_total_gradient_and_statistic(model: TinyMultiTask) -> None:
    stch = mw.STCH(0.5)
    weights = check_total_gradient(stch, model.losses, list(model.parameters()))
    assert weights.sum() == pytest.approx(1.0) and np.all(weights > 0)
    assert "loss" in stch.statistics  # what DDP averages


def test_clear_errors() -> None:
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    with pytest.raises(ValueError, match="mu"):
        mw.STCH(0.0)
    with pytest.raises(ValueError, match="'b'"):
        mw.STCH(preference={"a": 1.0})(losses)
    with pytest.raises(ValueError, match="3 ideal values"):
        mw.STCH(ideal=[0.0, 0.0, 0.0])(losses)
    with pytest.raises(ValueError, match="positive"):
        mw.STCH(preference=[1.0, -1.0])


def test_trains_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = TinyMultiTask(("a", "b"), seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    stch = mw.get("stch", mu=0.1)
    first = float(sum(model.losses().values()).detach())
    for _ in range(40):
        optimizer.zero_grad()
        stch.backward(model.losses())
        optimizer.step()
    assert float(sum(model.losses().values()).detach()) < 0.5 * first


@pytest.mark.parametrize("count", [2, 3, 5])
@pytest.mark.parametrize("mu", [0.01, 0.5, 10.0])
def test_matches_torchjd(count: int, mu: float) -> None:
    """TorchJD's STCH(mu, weights=lambda, reference=z) is g_mu: its gradient w.r.t. the losses
    is our weights; its default lambda = 1/T is our preference [1/T] * T."""
    scalarization = pytest.importorskip("torchjd.scalarization")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        values = 10.0 ** rng.uniform(-2, 2, size=count)
        lam = rng.uniform(0.1, 1.0, size=count)
        ideal = rng.uniform(0.0, 0.01, size=count)
        tensor = torch.tensor(values, requires_grad=True)
        theirs = scalarization.STCH(mu, weights=torch.from_numpy(lam),
                                    reference=torch.from_numpy(ideal))
        expected = torch.autograd.grad(theirs(tensor), tensor)[0].numpy()
        ours = mw.STCH(mu, preference=lam.tolist(), ideal=ideal.tolist())
        np.testing.assert_allclose(weights_of(ours, values), expected, rtol=1e-9, atol=1e-300)
        expected = torch.autograd.grad(scalarization.STCH(mu)(tensor), tensor)[0].numpy()
        uniform = mw.STCH(mu, preference=[1.0 / count] * count)
        np.testing.assert_allclose(weights_of(uniform, values), expected, rtol=1e-9, atol=1e-300)
        assert math.isclose(float(sum(weights_of(mw.STCH(mu), values))), 1.0)
