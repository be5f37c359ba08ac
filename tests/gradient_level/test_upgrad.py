"""UPGrad: hand-derived projections, the projection's optimality conditions, no conflict."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from jacobians import Array, direction, jacobians, train_tiny

from mtlweight._solvers import dual_cone_weights


def check_projection(jac: Array, u: Array, v: Array) -> None:
    """KKT of y = pi_J(J^T u) = J^T v, which characterise the projection: J y >= 0,
    y - J^T u = J^T mu with mu = v - u >= 0, and mu_t (J y)_t = 0."""
    y = jac.T @ v
    norms = np.linalg.norm(jac, axis=1)
    # y sums terms v_t g_t: its rounding scales with sum_t |v_t| ||g_t||, which for an
    # ill-conditioned J (v of order 1e4, y of order 1) is far above ||J^T u||
    rounding = norms.max() * max(np.abs(u).max(), np.abs(v).sum())
    inner = jac @ y / norms  # g_t . y / ||g_t||
    assert np.all(inner >= -1e-9 * rounding), inner
    mu = v - u
    assert np.all(mu >= -1e-12 * max(np.abs(u).max(), np.abs(v).max())), mu
    noise = 1e-12 * max(np.abs(u).max(), np.abs(v).max()) * rounding  # mu of rounding size
    assert np.all(np.abs(mu * inner) <= 1e-9 * np.abs(mu) * rounding + noise), mu * inner


def test_two_conflicting_gradients() -> None:
    """g1 = (1, 0), g2 = (-1, 1): pi(g1) = g1 + g2 / 2 = (.5, .5), pi(g2) = g1 + g2 = (0, 1)."""
    weights, d = direction("upgrad", np.array([[1.0, 0.0], [-1.0, 1.0]]))
    np.testing.assert_allclose(weights, [1.0, 0.75], rtol=1e-12)
    np.testing.assert_allclose(d, [0.25, 0.75], rtol=1e-12)


def test_torchjd_documentation_example() -> None:
    """J = [[-4, 1, 1], [6, 1, 1]], G = [[18, -22], [-22, 38]]: pi(g1) = g1 + (11/19) g2 and
    pi(g2) = g2 + (11/9) g1, so w = (10/9, 15/19); TorchJD's (regularised) answer is
    (1.1109, 0.7894)."""
    weights, _d = direction("upgrad", np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
    np.testing.assert_allclose(weights, [10 / 9, 15 / 19], rtol=1e-12)
    np.testing.assert_allclose(weights, [1.1109, 0.7894], atol=3e-4)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(jacobians(full_rank=False))
@example(np.array([[0.3671875, -0.328125], [-0.328125, -0.328125], [-0.328125, -0.328125]]))
def test_each_projection_is_optimal_and_the_update_conflicts_with_no_task(jac: Array) -> None:
    count = jac.shape[0]
    gram = jac @ jac.T
    for i in range(count):
        u = np.eye(count)[i]
        check_projection(jac, u, dual_cone_weights(gram, u))
    weights, d = direction("upgrad", jac)
    norms = np.linalg.norm(jac, axis=1)
    assert np.all(jac @ d / norms >= -1e-9 * norms.max())
    assert np.all(weights >= 1.0 / count - 1e-12)
    expected = sum(dual_cone_weights(gram, np.eye(count)[i]) for i in range(count)) / count
    # the K vectors at once (batched solves) give each one's own projection
    batched = dual_cone_weights(gram, np.eye(count))
    for i in range(count):
        single = dual_cone_weights(gram, np.eye(count)[i])
        np.testing.assert_allclose(batched[i], single, rtol=1e-10,
                                   atol=1e-12 * np.abs(single).max())
    # d is unique, w is not when rows repeat: compare the directions
    np.testing.assert_allclose(d, jac.T @ expected, rtol=1e-9, atol=1e-9 * norms.max())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(jacobians(full_rank=False))
def test_without_conflict_it_is_the_mean_gradient(jac: Array) -> None:
    jac = np.abs(jac)  # non-negative entries: every inner product is >= 0
    weights, d = direction("upgrad", jac)
    np.testing.assert_allclose(weights, np.full(jac.shape[0], 1 / jac.shape[0]), rtol=1e-12)
    np.testing.assert_allclose(d, jac.mean(axis=0), rtol=1e-10, atol=1e-14 * np.abs(jac).max())


@settings(max_examples=20, deadline=None, derandomize=True)
@given(jacobians(full_rank=False))
def test_weights_do_not_depend_on_a_common_scale(jac: Array) -> None:
    # d is unique, w is not when rows repeat: d(c J) = c d(J) says the weights are scale-free
    _, d = direction("upgrad", jac)
    _, scaled = direction("upgrad", 1e3 * jac)
    bound = np.abs(jac).max() * jac.shape[0]
    # exactly opposite rows (a degenerate dual) make the solver's answer accurate to ~1e-6
    np.testing.assert_allclose(scaled / 1e3, d, rtol=1e-7, atol=1e-5 * bound)


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("upgrad")
    assert last < 0.5 * first
