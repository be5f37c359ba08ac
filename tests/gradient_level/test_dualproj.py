"""DualProj: a hand-derived projection, the projection's optimality conditions, no conflict."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from jacobians import Array, direction, jacobians, train_tiny
from test_upgrad import check_projection


def test_mean_conflicting_with_a_task() -> None:
    """g1 = (1, 0), g2 = (-2, 1): the mean (-0.5, 0.5) has g1 . mean < 0; projected onto
    {x: g1 . x >= 0} it is (0, 0.5) = g1 + g2 / 2, which g2 accepts (g2 . d = 0.5)."""
    weights, d = direction("dualproj", np.array([[1.0, 0.0], [-2.0, 1.0]]))
    np.testing.assert_allclose(weights, [1.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(d, [0.0, 0.5], atol=1e-15)


def test_mean_already_in_the_dual_cone() -> None:
    """g1 = (1, 0), g2 = (-1, 1) conflict, but their mean (0, 0.5) conflicts with neither."""
    weights, d = direction("dualproj", np.array([[1.0, 0.0], [-1.0, 1.0]]))
    np.testing.assert_allclose(weights, [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(d, [0.0, 0.5], atol=1e-15)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(jacobians(full_rank=False))
def test_the_projection_is_optimal(jac: Array) -> None:
    count = jac.shape[0]
    weights, d = direction("dualproj", jac)
    check_projection(jac, np.full(count, 1.0 / count), weights)
    rounding = np.abs(jac).max() * np.abs(weights).sum()  # of the sum J^T w
    np.testing.assert_allclose(d, jac.T @ weights, rtol=1e-10, atol=1e-12 * rounding)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(jacobians(full_rank=False))
def test_without_conflict_it_is_the_mean_gradient(jac: Array) -> None:
    jac = np.abs(jac)
    weights, _ = direction("dualproj", jac)
    np.testing.assert_allclose(weights, np.full(jac.shape[0], 1 / jac.shape[0]), rtol=1e-12)


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("dualproj")
    assert last < 0.5 * first
