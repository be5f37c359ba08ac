"""FAMO: weights from the logits, the delayed logit update (Adam and SGD), TorchJD."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip, check_total_gradient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

import mtlweight as mw

Array = NDArray[np.float64]
losses_strategy = arrays(np.float64, (4, 3), elements=st.floats(1e-2, 1e2))


def call(famo: mw.FAMO, values: Array) -> Array:
    famo({f"t{i}": torch.tensor(v, dtype=torch.float64) for i, v in enumerate(values)})
    return np.array(list(famo.weights.values()))


def test_hand_derived_first_two_steps() -> None:
    famo = mw.FAMO(beta=0.1, gamma=0.0, optimizer="sgd")
    np.testing.assert_allclose(call(famo, np.array([1.0, 4.0])), [0.8, 0.2], rtol=1e-7)
    # decrease of the log-losses: (log 2, 0); z = (1/2, 1/2): delta = z (dec - z.dec) =
    # (log 2 / 4, -log 2 / 4); xi = -0.1 delta; w ~ z / L with L = (0.5, 4).
    xi = -0.1 * np.array([math.log(2) / 4, -math.log(2) / 4])
    z = np.exp(xi) / np.exp(xi).sum()
    expected = (z / np.array([0.5, 4.0])) / (z / np.array([0.5, 4.0])).sum()
    np.testing.assert_allclose(call(famo, np.array([0.5, 4.0])), expected, rtol=1e-7)
    # Adam's first step is beta * sign(delta), whatever its size
    adam = mw.FAMO(beta=0.1)
    call(adam, np.array([1.0, 4.0]))
    call(adam, np.array([0.5, 4.0]))
    assert adam.logits is not None
    np.testing.assert_allclose(adam.logits.numpy(), [-0.1, 0.1], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(losses_strategy, st.sampled_from(["adam", "sgd"]))
def test_weights_are_positive_sum_to_one_and_follow_the_softmax(
    stream: Array, optimizer: str
) -> None:
    """w_t L_t is proportional to z = softmax(xi): the update is c sum_t z_t grad log L_t."""
    famo = mw.FAMO(beta=0.5, optimizer=optimizer)  # type: ignore[arg-type]
    for values in stream:
        weights = call(famo, values)
        assert np.all(weights > 0) and weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert famo.logits is not None
        z = torch.softmax(famo.logits, 0).numpy()
        assert np.all(z > 0) and z.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(weights * values / (weights * values).sum(), z, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(losses_strategy)
def test_slower_task_gains_weight(stream: Array) -> None:
    """SGD: after one update the logit of the task whose log-loss fell least rises most."""
    famo = mw.FAMO(beta=0.5, gamma=0.0, optimizer="sgd")
    call(famo, stream[0])
    call(famo, stream[1])
    assert famo.logits is not None
    decrease = np.log(stream[0]) - np.log(stream[1])
    order = np.argsort(decrease)
    assert np.all(np.diff(famo.logits.numpy()[order]) <= 1e-12)


def test_total_gradient_resume_and_reorder(model: TinyMultiTask, tmp_path: Path) -> None:
    famo = mw.FAMO()
    for _ in range(3):
        check_total_gradient(famo, model.losses, list(model.parameters()))
    check_state_dict_round_trip(mw.FAMO, model.step_at, tmp_path)
    first, second = mw.FAMO(), mw.FAMO()
    for k in range(3):
        losses = model.step_at(k).losses
        first(losses)
        second(dict(reversed(list(losses.items()))) if k else losses)
        assert second.weights == pytest.approx(first.weights, rel=1e-12)
    assert "loss" in first.statistics  # what DDP averages


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="'b'"):
        mw.FAMO()({"a": torch.tensor(1.0), "b": torch.tensor(-1.0)})
    for option in ({"beta": 0.0}, {"gamma": -1.0}, {"optimizer": "rmsprop"}):
        with pytest.raises(ValueError, match=next(iter(option))):
            mw.FAMO(**option)  # type: ignore[arg-type]


def test_trains_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = TinyMultiTask(("a", "b"), seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    famo = mw.get("famo")
    first = float(sum(model.losses().values()).detach())
    for _ in range(40):
        optimizer.zero_grad()
        famo.backward(model.losses())
        optimizer.step()
    assert float(sum(model.losses().values()).detach()) < 0.5 * first


@pytest.mark.parametrize("count", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchjd(count: int, seed: int) -> None:
    """TorchJD's FAMO(T, lr, weight_decay), called on L^k after update(L^k), gives the
    gradient w.r.t. the losses that our call k gives as weights (badly scaled losses)."""
    scalarization = pytest.importorskip("torchjd.scalarization")
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 2, size=count)
    theirs = scalarization.FAMO(count, lr=0.05, weight_decay=1e-2)
    ours = mw.FAMO(beta=0.05, gamma=1e-2)
    for k in range(8):
        values = scales * rng.uniform(0.2, 1.0, size=count) * 0.9**k
        tensor = torch.tensor(values, dtype=torch.float32, requires_grad=True)
        if k:
            theirs.update(tensor.detach())
        expected = torch.autograd.grad(theirs(tensor), tensor)[0].double().numpy()
        np.testing.assert_allclose(call(ours, values), expected, rtol=2e-5)
