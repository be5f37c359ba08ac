"""FairGrad: closed forms for orthogonal gradients, the equation, alpha = 1 and Nash-MTL."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jacobians import Array, direction, jacobians, train_tiny

import mtlweight as mw


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 8.0])
def test_orthogonal_gradients(alpha: float) -> None:
    """G = diag(n^2): n_t^2 w_t = w_t^(-1/alpha), so w_t = n_t^(-2 alpha / (1 + alpha))."""
    norms = np.array([1.0, 2.0, 5.0])
    weights, d = direction("fairgrad", np.diag(norms), alpha=alpha)
    expected = norms ** (-2 * alpha / (1 + alpha))
    np.testing.assert_allclose(weights, expected, rtol=1e-10)
    np.testing.assert_allclose(d, norms * expected, rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(jacobians(), st.sampled_from([0.3, 1.0, 2.0, 5.0]))
def test_solves_the_papers_equation(jac: Array, alpha: float) -> None:
    weights, d = direction("fairgrad", jac, alpha=alpha)
    assert np.all(weights > 0)
    utilities = jac @ d  # g_t . d = (G w)_t, up to the rounding of its terms |G| w
    rounding = np.abs(jac @ jac.T) @ weights
    assert np.all(np.abs(utilities - weights ** (-1 / alpha)) <= 1e-6 * (rounding + utilities))


@settings(max_examples=25, deadline=None)
@given(jacobians())
def test_alpha_one_is_nash_mtl_up_to_scale(jac: Array) -> None:
    """alpha = 1 is Nash-MTL's G w = 1/w: equal to NashMTL (max_norm=0); with the authors'
    normalize_gram=True Nash-MTL solves it for G / ||G||_F: w = alpha_nash / sqrt(||G||_F)."""
    weights, d = direction("fairgrad", jac, alpha=1.0)
    nash, _nash_d = direction("nash_mtl", jac, max_norm=0.0)
    np.testing.assert_allclose(weights, nash, rtol=1e-6)
    normalised, normalised_d = direction("nash_mtl", jac, max_norm=0.0, normalize_gram=True)
    scale = np.sqrt(np.linalg.norm(jac @ jac.T))
    np.testing.assert_allclose(weights, normalised / scale, rtol=1e-6)
    np.testing.assert_allclose(d, normalised_d / scale, rtol=1e-6, atol=1e-9 * np.abs(d).max())


@settings(max_examples=20, deadline=None)
@given(jacobians(), st.sampled_from([0.5, 1.0, 3.0]))
def test_scaling_the_losses(jac: Array, alpha: float) -> None:
    """J -> s J: w -> s^(-2 alpha / (1 + alpha)) w."""
    weights, _ = direction("fairgrad", jac, alpha=alpha)
    scaled, _ = direction("fairgrad", 3.0 * jac, alpha=alpha)
    np.testing.assert_allclose(scaled, weights * 3.0 ** (-2 * alpha / (1 + alpha)), rtol=1e-6)


def test_degenerate_gradients_stay_finite() -> None:
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])  # G w > 0 has no solution: the ridge decides
    weights, _ = direction("fairgrad", opposite, alpha=1.0)
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)
    weights, d = direction("fairgrad", np.array([[1.0, 0.0], [0.0, 0.0]]), alpha=2.0)
    np.testing.assert_allclose(d, [1.0, 0.0], rtol=1e-10)  # the zero gradient is left out


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf")])
def test_rejects_a_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        mw.FairGrad(alpha=alpha)


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("fairgrad", alpha=2.0)
    assert last < 0.5 * first
