"""DB-MTL: log-losses, the moving average and the max-norm rescaling, in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from backward_state import check_backward_round_trip, jacobian_stream
from helpers import TinyMultiTask
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw

Array = NDArray[np.float64]


def run(db: mw.Weighting, theta: nn.Parameter, jac: Array, offsets: Array) -> Array:
    """Backward of ``L_t = jac[t] @ theta + offsets[t]`` at ``theta = 0``: log-loss gradients
    ``jac[t] / offsets[t]``; returns ``d``."""
    theta.grad = None
    db.backward({f"t{i}": theta @ torch.from_numpy(r) + float(c)
                 for i, (r, c) in enumerate(zip(jac, offsets, strict=True))})
    assert theta.grad is not None
    return theta.grad.numpy().copy()


def test_hand_derived() -> None:
    # L = (1 + theta_0, 2 + 4 theta_1): log-loss gradients (1, 0) and (0, 2), norms 1 and 2;
    # beta 0.5: averages (1/2, 0) and (0, 1), rescaled to the largest norm 1: d = (1, 1).
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    db = mw.DBMTL([theta], beta=0.5)
    d = run(db, theta, np.array([[1.0, 0.0], [0.0, 4.0]]), np.array([1.0, 2.0]))
    np.testing.assert_allclose(d, [1.0, 1.0], rtol=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.floats(0.0, 0.99), st.floats(0.0, 1.0),
       arrays(np.float64, 5, elements=st.floats(0.1, 10.0)))
def test_matches_the_update_in_numpy(
    seed: int, count: int, beta: float, beta_sigma: float, offsets: Array
) -> None:
    offsets = offsets[:count]
    theta = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    db = mw.DBMTL([theta], beta=beta, beta_sigma=beta_sigma)
    average = np.zeros((count, 6))
    for k in range(1, 5):
        jac = jacobian_stream(seed, count, 6)(k)
        b = beta / k**beta_sigma
        average = b * average + (1 - b) * jac / (offsets[:, None] + 1e-8)
        norms = np.linalg.norm(average, axis=1)
        expected = (norms.max() / norms) @ average
        np.testing.assert_allclose(run(db, theta, jac, offsets), expected, rtol=1e-7)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (3, 4), elements=st.floats(-1, 1)), st.floats(0.1, 10.0))
def test_equal_norms_each_normalised_gradient_times_the_largest_norm(
    base: Array, norm: float
) -> None:
    """Equal norms: every normalised gradient is scaled by that norm, d = sum_t g_t."""
    lengths = np.linalg.norm(base, axis=1, keepdims=True)
    if np.any(lengths < 1e-3):
        return
    jac = norm * base / lengths
    theta = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    d = run(mw.DBMTL([theta], beta=0.0), theta, jac, np.ones(3))
    np.testing.assert_allclose(d, jac.sum(axis=0), rtol=1e-6, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), arrays(np.float64, 3, elements=st.floats(1e-2, 1e2)))
def test_invariant_to_the_scale_of_each_loss(seed: int, factors: Array) -> None:
    """log(c L) has the gradient of log L: scaling a loss changes nothing (up to eps)."""
    jac = jacobian_stream(seed, 3, 4)(0)
    thetas = [nn.Parameter(torch.zeros(4, dtype=torch.float64)) for _ in range(2)]
    plain = run(mw.DBMTL([thetas[0]]), thetas[0], jac, np.ones(3))
    scaled = run(mw.DBMTL([thetas[1]]), thetas[1], jac * factors[:, None], factors)
    np.testing.assert_allclose(scaled, plain, rtol=1e-5)


def test_heads_get_the_gradient_of_the_log_losses(model: TinyMultiTask) -> None:
    mw.DBMTL(model.trunk).backward(model.losses())
    for task in model.tasks:
        head = model.head(task)
        loss = model.losses()[task]
        expected = torch.autograd.grad(torch.log(loss + 1e-8), head.weight)[0]
        torch.testing.assert_close(head.weight.grad, expected)


def test_resumes_exactly(tmp_path: Path) -> None:
    def make(shared: list[nn.Parameter]) -> mw.Weighting:
        return mw.DBMTL(shared, beta=0.8, beta_sigma=0.5)

    # the stream's losses J theta are 0 at theta = 0: log(0 + eps) is fine, its gradient 1/eps
    check_backward_round_trip(make, jacobian_stream(2, 3, 5), tmp_path)


def test_clear_errors(model: TinyMultiTask) -> None:
    step = model.step()
    with pytest.raises(ValueError, match="representation"):
        mw.DBMTL(model.trunk).backward(step.losses, representation=step.representation)
    losses = model.losses()
    losses["edge"] = -losses["edge"]
    with pytest.raises(ValueError, match="'edge'"):
        mw.DBMTL(model.trunk).backward(losses)
    with pytest.raises(ValueError, match="beta"):
        mw.DBMTL(model.trunk, beta=1.0)
    with pytest.raises(ValueError, match="micro-batches"):
        mw.DBMTL(model.trunk).accumulate(model.losses())


def test_trains_a_tiny_model() -> None:
    from jacobians import train_tiny

    first, last = train_tiny("db_mtl")
    assert last < 0.5 * first, (first, last)
