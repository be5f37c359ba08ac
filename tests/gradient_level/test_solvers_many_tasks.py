"""The Gram-matrix solvers at many tasks (T = 8 .. 512): the optimality conditions of the
small cases, and the batched complementarity solver against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from jacobians import Array
from test_upgrad import check_projection

from mtlweight._solvers import (
    _wolfe_min_norm,
    dual_cone_weights,
    fair_weights,
    min_norm_weights,
    solve_lcp,
)
from mtlweight.gradient_level._imtl_g import imtl_g_weights

COUNTS = [8, 32, 128, pytest.param(512, marks=pytest.mark.slow)]


def instance_jacobian(count: int, seed: int = 0, width: int | None = None) -> Array:
    """Per-sample gradients as in instance-wise weighting: a small shared direction plus a
    per-sample part, so that each conflicts with about 40% of the others; rows scaled over
    2 decades. ``width`` (default ``2 T``) near ``T`` makes ``G`` ill-conditioned."""
    rng = np.random.default_rng(seed)
    width = 2 * count if width is None else width
    jac = 0.05 * rng.normal(size=width) + rng.normal(size=(count, width)) / np.sqrt(2.0)
    scaled: Array = jac * 10.0 ** rng.uniform(-1.0, 1.0, size=(count, 1))
    return scaled


def brute_force_lcp(m: Array, q: Array) -> Array:
    """The solution of x >= 0, m x + q >= 0, x^T (m x + q) = 0 by trying every support."""
    count = len(q)
    for size in range(count + 1):
        for support in itertools.combinations(range(count), size):
            idx = list(support)
            x = np.zeros(count)
            x[idx] = np.linalg.solve(m[np.ix_(idx, idx)], -q[idx]) if idx else []
            if np.all(x >= -1e-12) and np.all(m @ x + q >= -1e-10):
                return x
    raise AssertionError("no support solves the LCP")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 6).flatmap(
    lambda t: st.tuples(arrays(np.float64, (t, t + 1), elements=st.floats(-1.0, 1.0)),
                        arrays(np.float64, (3, t), elements=st.floats(-1.0, 1.0)))))
def test_solve_lcp_is_the_brute_force_solution(pair: tuple[Array, Array]) -> None:
    a, q = pair
    m = a @ a.T + 0.05 * np.eye(len(a))  # positive definite: one solution
    x, ok = solve_lcp(torch.from_numpy(m), torch.from_numpy(q))
    assert bool(ok.all())
    for row, qk in zip(x.numpy(), q, strict=True):
        np.testing.assert_allclose(row, brute_force_lcp(m, qk), atol=1e-9)


@pytest.mark.parametrize("warm_steps", [0, 50])
@pytest.mark.parametrize("count", [8, 64])
def test_solve_lcp_kkt_with_and_without_the_first_guess(count: int, warm_steps: int) -> None:
    jac = instance_jacobian(count, seed=count)
    norms = np.linalg.norm(jac, axis=1)
    cosines = torch.from_numpy(jac @ jac.T / np.outer(norms, norms))
    q = torch.from_numpy(np.diag(norms)) @ cosines  # the K = T problems of UPGrad
    x, ok = solve_lcp(cosines, q, warm_steps=warm_steps)
    assert bool(ok.all())
    y = x @ cosines + q
    assert float(x.min()) >= 0.0 and float(y.min()) >= -1e-11 * float(q.abs().max())
    assert float((x * y).abs().max()) <= 1e-10 * float(q.abs().max()) ** 2


def test_solve_lcp_reports_a_singular_matrix() -> None:
    m = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # no x with m x >= (1, 1)
    _, ok = solve_lcp(m, torch.tensor([[-1.0, -1.0]], dtype=torch.float64), max_iter=20)
    assert not bool(ok.any())


@pytest.mark.parametrize("count", COUNTS)
def test_upgrad_projections_at_many_tasks(count: int) -> None:
    jac = instance_jacobian(count)
    eye = np.eye(count)
    weights = dual_cone_weights(jac @ jac.T, eye)
    for i in range(count):
        check_projection(jac, eye[i], weights[i])


@pytest.mark.parametrize("count", [32, 128])
def test_upgrad_projections_ill_conditioned(count: int) -> None:
    jac = instance_jacobian(count, seed=5, width=count + 3)  # cond(G) of order 1e6
    eye = np.eye(count)
    weights = dual_cone_weights(jac @ jac.T, eye)
    for i in range(count):
        check_projection(jac, eye[i], weights[i])


@pytest.mark.parametrize("count", COUNTS)
def test_dualproj_projection_at_many_tasks(count: int) -> None:
    jac = instance_jacobian(count, seed=1)
    u = np.full(count, 1.0 / count)
    check_projection(jac, u, dual_cone_weights(jac @ jac.T, u))


@pytest.mark.parametrize("count", COUNTS)
def test_min_norm_kkt_at_many_tasks(count: int) -> None:
    gram = instance_jacobian(count, seed=2)
    gram = gram @ gram.T
    w = min_norm_weights(gram)
    assert np.all(w >= 0.0) and abs(w.sum() - 1.0) <= 1e-12
    scale = float(np.max(np.diag(gram)))
    gw = gram @ w
    norm2 = float(w @ gw)
    assert norm2 > 1e-6 * scale  # not in the hull: the complementarity path, not Wolfe's
    assert np.all(gw >= norm2 - 1e-9 * scale)
    np.testing.assert_allclose(gw[w > 1e-9], norm2, rtol=0, atol=1e-9 * scale)
    if count <= 128:  # Wolfe's method, the independent reference, is slow beyond
        np.testing.assert_allclose(w, _wolfe_min_norm(gram / scale, tol=1e-12), atol=1e-9)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("count", COUNTS)
def test_fair_weights_solve_the_equation_at_many_tasks(count: int, alpha: float) -> None:
    jac = instance_jacobian(count, seed=3)
    gram = jac @ jac.T
    w = fair_weights(gram, alpha)
    assert np.all(w > 0)
    rounding = np.abs(gram) @ w
    assert np.all(np.abs(gram @ w - w ** (-1 / alpha)) <= 1e-6 * (rounding + gram @ w))


@pytest.mark.parametrize("count", COUNTS)
def test_imtl_g_equal_projections_at_many_tasks(count: int) -> None:
    jac = instance_jacobian(count, seed=4)
    alpha = imtl_g_weights(jac @ jac.T)
    d = jac.T @ alpha
    projections = jac @ d / np.linalg.norm(jac, axis=1)
    assert abs(alpha.sum() - 1.0) <= 1e-9
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-7)
