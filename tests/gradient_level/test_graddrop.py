"""GradDrop: hand-derived masks, the leak limits, sign consistency, unbiasedness, TorchJD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from backward_state import check_backward_round_trip, jacobian_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw
from mtlweight.gradient_level._graddrop import graddrop_direction

Array = NDArray[np.float64]
entries = st.just(0.0) | st.floats(1e-3, 10) | st.floats(-10, -1e-3)
matrices = st.integers(1, 5).flatmap(
    lambda t: arrays(np.float64, (t, 6), elements=entries)
)


def run(weighting: mw.Weighting, theta: nn.Parameter, jac: Array) -> Array:
    """``weighting.backward`` of ``L_t = jac[t] @ theta``; returns ``d = theta.grad``."""
    theta.grad = None
    weighting.backward([theta @ torch.from_numpy(row.copy()) for row in jac])
    assert theta.grad is not None
    return theta.grad.numpy().copy()


def test_hand_derived_masks() -> None:
    # Column 0: g = (1, -3), purity (1 - 2/4) / 2 = 1/4; column 1: g = (2, 1), purity 1;
    # column 2: g = (0, 0) stays 0.
    jac = torch.tensor([[1.0, 2.0, 0.0], [-3.0, 1.0, 0.0]], dtype=torch.float64)
    leak = torch.zeros(2, dtype=torch.float64)
    u = torch.tensor([0.5, 0.999, 0.3], dtype=torch.float64)
    assert graddrop_direction(jac, u, leak).tolist() == [-3.0, 3.0, 0.0]  # U > 1/4: negatives
    u = torch.tensor([0.2, 0.999, 0.3], dtype=torch.float64)
    assert graddrop_direction(jac, u, leak).tolist() == [1.0, 3.0, 0.0]  # U < 1/4: positives
    # leak (0.5, 0) with the negatives kept: 0.5 * 1 + (-3) in column 0; column 1 keeps all.
    leak = torch.tensor([0.5, 0.0], dtype=torch.float64)
    u = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    assert graddrop_direction(jac, u, leak).tolist() == [-2.5, 3.0, 0.0]


@settings(max_examples=30, deadline=None)
@given(matrices)
def test_leak_one_is_the_plain_sum(jac: Array) -> None:
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    d = run(mw.GradDrop([theta], leak=1.0), theta, jac)
    np.testing.assert_allclose(d, jac.sum(axis=0), rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(matrices, st.integers(0, 2**31 - 1))
def test_each_coordinate_keeps_one_sign(jac: Array, seed: int) -> None:
    """No leak: every coordinate of d is the sum of the positive or of the negative parts,
    so it never mixes gradients of opposite signs; one-signed coordinates keep their sum."""
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    d = run(mw.GradDrop([theta], seed=seed), theta, jac)
    positive = np.where(jac > 0, jac, 0.0).sum(axis=0)
    negative = np.where(jac < 0, jac, 0.0).sum(axis=0)
    assert np.all(np.isclose(d, positive) | np.isclose(d, negative)), (d, positive, negative)
    one_signed = (jac >= 0).all(axis=0) | (jac <= 0).all(axis=0)
    np.testing.assert_allclose(d[one_signed], jac.sum(axis=0)[one_signed], rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(matrices, st.floats(0.0, 1.0))
def test_unbiased_over_the_draw(jac: Array, leak: float) -> None:
    """E_U[d] = sum_i g_i: d is S+ when U < P and S- otherwise, and P S+ + (1 - P) S- = S+ + S-.
    Averaged over a grid of U (the same U in every coordinate) the error is at most the step."""
    grid = 1000
    tensor = torch.from_numpy(jac)
    leaks = torch.full((jac.shape[0],), leak, dtype=torch.float64)
    total = torch.zeros(jac.shape[1], dtype=torch.float64)
    for k in range(grid):
        total += graddrop_direction(tensor, torch.full_like(tensor[0], (k + 0.5) / grid), leaks)
    bound = 2.0 * np.abs(jac).sum(axis=0) / grid + 1e-9
    assert np.all(np.abs(total.numpy() / grid - jac.sum(axis=0)) <= bound)


def test_seeded_independent_of_the_global_generator_and_resumable(tmp_path: Path) -> None:
    jac = np.array([[1.0, -2.0, 0.5, 3.0], [-1.0, 1.0, -0.5, -1.0], [0.2, 1.0, -2.0, 1.0]])
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        theta = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        graddrop = mw.GradDrop([theta], seed=5)
        runs.append([run(graddrop, theta, jac) for _ in range(8)])
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))
    assert len({tuple(d) for d in runs[0]}) > 1  # the draws change from step to step
    check_backward_round_trip(
        lambda shared: mw.GradDrop(shared, seed=3), jacobian_stream(0, 3, 7), tmp_path
    )


def test_weights_are_the_least_squares_coefficients_of_d() -> None:
    jac = np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, -0.5]])
    theta = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    graddrop = mw.GradDrop([theta], seed=1)
    d = run(graddrop, theta, jac)
    weights = np.array(list(graddrop.weights.values()))
    expected = np.linalg.lstsq(jac.T, d, rcond=None)[0]
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)


def test_invalid_leak() -> None:
    theta = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="leak"):
        mw.GradDrop([theta], leak=1.5)
    with pytest.raises(ValueError, match="2 leak values"):
        mw.GradDrop([theta], leak=[0.0, 0.5]).backward([theta.sum(), theta[0], theta[1]])


def test_trains_a_tiny_model() -> None:
    from jacobians import train_tiny

    first, last = train_tiny("graddrop")
    assert last < 0.5 * first, (first, last)
