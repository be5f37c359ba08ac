"""ConFIG: hand-derived directions, equal cosines, the paper's formula on the vectors."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from jacobians import Array, direction, jacobians, train_tiny


def paper_formula(jac: Array) -> Array:
    """Equation 2 of the paper on the vectors: g_u = U^+ 1 normalised, d = (sum_t g_t . g_u) g_u."""
    unit = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    g_u = np.linalg.pinv(unit) @ np.ones(jac.shape[0])
    g_u /= np.linalg.norm(g_u)
    result: Array = np.sum(jac @ g_u) * g_u
    return result


def test_orthogonal_gradients() -> None:
    """g = (1, 0), (0, 2): g_u = (1, 1)/sqrt(2), length (1 + 2)/sqrt(2): d = (1.5, 1.5)."""
    weights, d = direction("config", np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(weights, [1.5, 0.75], rtol=1e-12)
    np.testing.assert_allclose(d, [1.5, 1.5], rtol=1e-12)


def test_identical_gradients_give_their_sum() -> None:
    """U = [u; u]: U^+ 1 = u, and the length is 2 ||g||: d = 2 g (a singular cosine matrix)."""
    g = np.array([3.0, -4.0, 1.0])
    weights, d = direction("config", np.stack([g, g]))
    np.testing.assert_allclose(weights, [1.0, 1.0], rtol=1e-9)
    np.testing.assert_allclose(d, 2 * g, rtol=1e-9)


def test_a_zero_gradient_gets_no_weight() -> None:
    weights, d = direction("config", np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(weights, [1.5, 0.0, 0.75], rtol=1e-12)
    np.testing.assert_allclose(d, [1.5, 1.5], rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_equal_cosines_and_the_papers_formula(jac: Array) -> None:
    _weights, d = direction("config", jac)
    cosines = jac @ d / np.linalg.norm(jac, axis=1) / np.linalg.norm(d)
    np.testing.assert_allclose(cosines, cosines[0], rtol=1e-6, atol=1e-9)
    assert cosines[0] > 0  # conflicts with no task
    np.testing.assert_allclose(np.linalg.norm(d) ** 2, np.sum(jac @ d), rtol=1e-9)
    np.testing.assert_allclose(d, paper_formula(jac), rtol=1e-6, atol=1e-9 * np.abs(d).max())


@settings(max_examples=20, deadline=None)
@given(jacobians())
def test_scaling_the_losses_keeps_the_direction(jac: Array) -> None:
    weights, d = direction("config", jac)
    scaled_weights, scaled = direction("config", 10.0 * jac)
    np.testing.assert_allclose(scaled_weights, weights, rtol=1e-7)  # d = J^T w scales with J
    np.testing.assert_allclose(scaled, 10.0 * d, rtol=1e-7, atol=1e-9 * np.abs(scaled).max())


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("config")
    assert last < 0.5 * first
