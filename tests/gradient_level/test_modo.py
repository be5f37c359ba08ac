"""MoDo: one projected step by hand, the fixed point is regularised MGDA, the simplex."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st
from jacobians import Array, apply, direction, jacobians, train_tiny
from torch import nn

import mtlweight as mw
from mtlweight._solvers import min_norm_weights


def test_one_step_by_hand() -> None:
    """G = diag(1, 4), lambda = (.5, .5), gamma = .1, rho = .2:
    (.5, .5) - .1 ((.5, 2) + .2 (.5, .5)) = (.44, .29), projected: + .135 -> (.575, .425)."""
    weights, d = direction("modo", np.array([[1.0, 0.0], [0.0, 2.0]]), gamma=0.1, rho=0.2)
    np.testing.assert_allclose(weights, [0.575, 0.425], rtol=1e-12)
    np.testing.assert_allclose(d, [0.575, 0.85], rtol=1e-12)


def test_a_long_step_lands_on_a_vertex() -> None:
    """(.5, .5) - 1 * ((.5, 2) + 0) = (0, -1.5): projected onto the simplex, (1, 0)."""
    weights, _ = direction("modo", np.array([[1.0, 0.0], [0.0, 2.0]]), gamma=1.0, rho=0.0)
    np.testing.assert_allclose(weights, [1.0, 0.0], atol=1e-15)


@settings(max_examples=15, deadline=None)
@given(jacobians(max_tasks=4), st.sampled_from([0.0, 0.1, 1.0]))
def test_fixed_point_is_regularised_mgda(jac: Array, rho: float) -> None:
    """Repeated on one J, lambda converges to argmin_simplex lambda^T (G + rho I) lambda,
    the min-norm problem MGDA's exact solver answers: with the step 1/L (L the largest
    eigenvalue), projected gradient descent has f(lambda_k) - f* <= L ||lambda_0 - lambda*||^2
    / (2k) <= L / k on the simplex, for f = lambda^T (G + rho I) lambda / 2."""
    gram = jac @ jac.T
    regularised = gram + rho * np.eye(gram.shape[0])
    gamma = 1.0 / np.linalg.eigvalsh(regularised).max()
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    modo = mw.MoDo(shared=[theta], gamma=gamma, rho=rho)
    weights, _ = apply(modo, theta, jac)  # fixes the tasks; then the same step, repeated
    values = torch.zeros(jac.shape[0], dtype=torch.float64)
    for _ in range(2000):
        weights = modo.gram_weights(torch.from_numpy(gram), values).numpy()
    optimum = min_norm_weights(regularised)
    value, best = weights @ regularised @ weights / 2, optimum @ regularised @ optimum / 2
    assert value <= best + (1 + 1e-9) / (gamma * 2000) + 1e-12 * np.max(np.diag(regularised))


@settings(max_examples=30, deadline=None)
@given(jacobians(full_rank=False), st.floats(1e-4, 1.0), st.floats(0.0, 1.0))
def test_weights_stay_on_the_simplex(jac: Array, gamma: float, rho: float) -> None:
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    modo = mw.MoDo(shared=[theta], gamma=gamma, rho=rho)
    for _ in range(3):
        weights, d = apply(modo, theta, jac)
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
        assert np.all(weights >= 0)
        np.testing.assert_allclose(d, jac.T @ weights, rtol=1e-10, atol=1e-12 * np.abs(jac).max())


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = TinyMultiTask(seed=0)
    check_state_dict_round_trip(
        lambda: mw.MoDo(shared=model.trunk, gamma=0.05),
        lambda i: model.step_at(i).losses,
        tmp_path,
    )


@pytest.mark.parametrize(("option", "value"), [("gamma", 0.0), ("rho", -0.1)])
def test_rejects_bad_options(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        mw.MoDo(**{option: value})


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("modo", gamma=0.1)
    assert last < 0.5 * first
