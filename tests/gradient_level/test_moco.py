"""MoCo: the paper's Algorithm 1 in numpy, lambda on the simplex, resuming, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from backward_state import check_backward_round_trip, jacobian_stream
from helpers import TinyMultiTask
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw

Array = NDArray[np.float64]


def project(v: Array) -> Array:
    """Projection onto the simplex by bisection on the threshold (not the sort-based solver)."""
    low, high = float(v.min()) - 1.0, float(v.max())
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if np.maximum(v - middle, 0).sum() > 1 else (low, middle)
    return np.maximum(v - high, 0.0)


def reference(jacs: list[Array], beta: float, beta_sigma: float, gamma: float,
              gamma_sigma: float, rho: float) -> list[tuple[Array, Array]]:
    """(lambda, d) at each step of the paper's Algorithm 1."""
    count = jacs[0].shape[0]
    tracked, lam, result = np.zeros_like(jacs[0]), np.full(count, 1.0 / count), []
    for k, jac in enumerate(jacs, start=1):
        tracked = tracked - beta / k**beta_sigma * (tracked - jac)
        step = (tracked @ tracked.T + rho * np.eye(count)) @ lam
        lam = project(lam - gamma / k**gamma_sigma * step)
        result.append((lam, lam @ tracked))
    return result


def run(moco: mw.MoCo, theta: nn.Parameter, jac: Array) -> Array:
    theta.grad = None
    moco.backward({f"t{i}": theta @ torch.from_numpy(row) for i, row in enumerate(jac)})
    assert theta.grad is not None
    return theta.grad.numpy().copy()


def test_hand_derived_two_steps() -> None:
    # beta = 1: Y = J. Step 1: G = diag(1, 4), lambda = P((1/2, 1/2) - 0.5 (1/2, 2)) = (7/8, 1/8).
    # Step 2 (gamma_2 = 0.5 / sqrt 2): lambda - gamma_2 G lambda = (7/8 - 7/(16 r), 1/8 - 1/(4 r)),
    # r = sqrt 2, projected by adding the same t to both.
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    moco = mw.MoCo([theta], beta=1.0, beta_sigma=0.0, gamma=0.5)
    jac = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(run(moco, theta, jac), [7 / 8, 2 / 8])
    assert moco.lambdas == pytest.approx({"t0": 7 / 8, "t1": 1 / 8})
    r = np.sqrt(2.0)
    v = np.array([7 / 8 - 7 / (16 * r), 1 / 8 - 1 / (4 * r)])
    lam = v + (1 - v.sum()) / 2
    np.testing.assert_allclose(run(moco, theta, jac), lam @ jac)
    assert list(moco.lambdas.values()) == pytest.approx(list(lam))


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(2, 5),
    st.floats(0.05, 1.0),
    st.floats(0.0, 1.0),
    st.floats(0.001, 0.05),  # gamma |G| up to ~25: larger steps amplify rounding chaotically
    st.floats(0.0, 1.0),
    st.floats(0.0, 2.0),
)
def test_matches_the_algorithm_in_numpy(
    seed: int, count: int, beta: float, beta_sigma: float, gamma: float, gamma_sigma: float,
    rho: float,
) -> None:
    jacs = [jacobian_stream(seed, count, 5)(k) for k in range(5)]
    theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    moco = mw.MoCo([theta], beta=beta, beta_sigma=beta_sigma, gamma=gamma,
                   gamma_sigma=gamma_sigma, rho=rho)
    expected = reference(jacs, beta, beta_sigma, gamma, gamma_sigma, rho)
    for jac, (lam, d) in zip(jacs, expected, strict=True):
        got = run(moco, theta, jac)
        values = np.array(list(moco.lambdas.values()))
        assert values.min() >= 0 and values.sum() == pytest.approx(1.0, abs=1e-12)  # simplex
        np.testing.assert_allclose(values, lam, atol=1e-8)
        np.testing.assert_allclose(got, d, rtol=1e-6, atol=1e-8 * np.abs(jac).max())


def test_resumes_exactly(tmp_path: Path) -> None:
    check_backward_round_trip(lambda shared: mw.MoCo(shared), jacobian_stream(1, 3, 6), tmp_path)


def test_heads_get_the_plain_gradient(model: TinyMultiTask) -> None:
    moco = mw.MoCo(model.trunk)
    moco.backward(model.losses())
    for task in model.tasks:
        head = model.head(task)
        expected = torch.autograd.grad(model.losses()[task], head.weight)[0]
        torch.testing.assert_close(head.weight.grad, expected)


def test_clear_errors(model: TinyMultiTask) -> None:
    step = model.step()
    with pytest.raises(ValueError, match="representation"):
        mw.MoCo(model.trunk).backward(step.losses, representation=step.representation)
    for option in ({"beta": 0.0}, {"gamma": -1.0}, {"rho": -0.5}, {"beta_sigma": -1.0}):
        with pytest.raises(ValueError, match=next(iter(option))):
            mw.MoCo(model.trunk, **option)


def test_trains_a_tiny_model() -> None:
    from jacobians import train_tiny

    first, last = train_tiny("moco")
    assert last < 0.5 * first, (first, last)
