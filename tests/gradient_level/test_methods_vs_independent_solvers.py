"""Nash-MTL, IMTL-G and CAGrad on their hard cases (raw and badly scaled Gram matrices,
rank-deficient J, tiny tasks), each against an independent computation (hand-derived
values, numpy least squares, scipy.optimize).

Everything goes through the public API (``mw.NashMTL``, ``mw.get(name, ...)``), so
the tests do not depend on where the methods live.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import Tensor

import mtlweight as mw

optimize = pytest.importorskip("scipy.optimize")


def linear_losses(jac: np.ndarray) -> tuple[Tensor, list[Tensor]]:
    """A parameter ``theta`` (zeros) and losses ``L_t = J_t . theta``: their gradients are ``J``."""
    rows = torch.as_tensor(jac, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.zeros(rows.shape[1], dtype=torch.float64))
    return theta, [theta @ row for row in rows]


def run(name: str, jac: np.ndarray, **options: object) -> tuple[np.ndarray, np.ndarray]:
    """The weights and the update ``d`` (``theta.grad``) of ``mw.get(name)`` on gradients ``J``."""
    theta, losses = linear_losses(jac)
    method = mw.get(name, shared=[theta], **options)
    weights = method.backward(losses)
    assert theta.grad is not None
    return np.array(list(weights.values())), theta.grad.numpy().copy()


full_rank_jacobians = st.integers(2, 4).flatmap(
    lambda t: arrays(np.float64, (t, t + 2), elements=st.floats(-3, 3, width=32))
)


# --------------------------------------------------------------------- Nash-MTL
def test_nash_mtl_solves_the_papers_equation_on_the_raw_gram_matrix() -> None:
    """J = [[10, 0], [0, 20]]: G a = 1/a gives a = (1/10, 1/20) and d = J^T a = (1, 1)."""
    jac = np.array([[10.0, 0.0], [0.0, 20.0]])
    weights, d = run("nash_mtl", jac, max_norm=0.0)
    np.testing.assert_allclose(weights, [0.1, 0.05], rtol=1e-7)
    np.testing.assert_allclose(d, [1.0, 1.0], rtol=1e-7)
    theta, losses = linear_losses(jac)
    nash = mw.NashMTL(shared=[theta], max_norm=0.0)
    assert list(nash.backward(losses).values()) == pytest.approx([0.1, 0.05], rel=1e-7)


def test_nash_mtl_normalised_variant_is_an_option() -> None:
    """``normalize_gram=True`` (the authors' code): G / ||G||_F, so d is sqrt(||G||_F) larger."""
    jac = np.array([[10.0, 0.0], [0.0, 20.0]])
    frobenius = math.hypot(100.0, 400.0)
    weights, d = run("nash_mtl", jac, max_norm=0.0, normalize_gram=True)
    np.testing.assert_allclose(d, [math.sqrt(frobenius)] * 2, rtol=1e-7)  # (20.3, 20.3)
    np.testing.assert_allclose(weights, np.array([0.1, 0.05]) * math.sqrt(frobenius), rtol=1e-7)


@settings(max_examples=40, deadline=None)
@given(full_rank_jacobians, st.floats(1e-3, 1e3))
def test_nash_mtl_bargaining_condition_and_scale_invariance(jac: np.ndarray, scale: float) -> None:
    """(G a)_t a_t = 1 for every task, and d does not change when all the losses are scaled."""
    gram = jac @ jac.T
    eig = np.linalg.eigvalsh(gram)
    assume(eig[0] > 1e-3 * eig[-1] and eig[-1] > 1e-2)
    weights, d = run("nash_mtl", jac, max_norm=0.0)
    np.testing.assert_allclose(weights * (gram @ weights), 1.0, rtol=1e-6)
    assert np.all(weights > 0)
    scaled_weights, scaled_d = run("nash_mtl", jac * scale, max_norm=0.0)
    np.testing.assert_allclose(scaled_weights, weights / scale, rtol=1e-6)
    np.testing.assert_allclose(scaled_d, d, rtol=1e-6, atol=1e-9 * float(np.abs(d).max()))


# ----------------------------------------------------------------------- IMTL-G
def test_imtl_g_with_more_tasks_than_the_rank_of_j_by_hand() -> None:
    """g = (1, 0), (0, 1), (1, 1): rank 2 < T = 3. The closed form with a pseudo-inverse,
    w = G^+ n / 1^T G^+ n (n: the gradient norms), gives w = (1/4, 1/4, 1/2), d = (3/4, 3/4),
    the least-squares solution of J d = c n; the old code returned d = 0."""
    jac = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    weights, d = run("imtl_g", jac)
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.5], rtol=1e-9)
    np.testing.assert_allclose(d, [0.75, 0.75], rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 6), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_imtl_g_rank_deficient_j_matches_least_squares(tasks: int, rank: int, seed: int) -> None:
    """T > rank(J): d is parallel to the minimum-norm least-squares solution of J d = n
    (numpy's lstsq), with weights that sum to 1 (which sets the sign, as in the paper's
    closed form); d is not 0."""
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(tasks, rank)) @ rng.normal(size=(rank, 5))
    norms = np.linalg.norm(jac, axis=1)
    target = np.linalg.lstsq(jac, norms, rcond=None)[0]
    assume(np.linalg.norm(target) > 1e-3)
    weights, d = run("imtl_g", jac)
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    scale = float(d @ target / (target @ target))
    assert abs(scale) > 1e-6
    np.testing.assert_allclose(d, scale * target, rtol=1e-6, atol=1e-9 * np.abs(target).max())


@settings(max_examples=40, deadline=None)
@given(full_rank_jacobians)
def test_imtl_g_full_rank_gives_equal_projections(jac: np.ndarray) -> None:
    """The paper's property where J has full row rank: d . u_t is the same for every task."""
    gram = jac @ jac.T
    eig = np.linalg.eigvalsh(gram)
    assume(eig[0] > 1e-3 * eig[-1] and eig[-1] > 1e-2)
    weights, d = run("imtl_g", jac)
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    projections = units @ d
    np.testing.assert_allclose(projections, projections[0], rtol=1e-6, atol=1e-9)
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------------ CAGrad
def cagrad_primal_2d(jac: np.ndarray, c: float) -> np.ndarray:
    """max_d min_t g_t . d s.t. ||d - g0|| <= c ||g0||, in 2-D: d = g0 + r (cos a, sin a),
    solved over the angle a by scipy (a grid, then a bounded scalar search)."""
    g0 = jac.mean(axis=0)
    radius = c * float(np.linalg.norm(g0))

    def negative(angle: float) -> float:
        d = g0 + radius * np.array([math.cos(angle), math.sin(angle)])
        return -float(np.min(jac @ d))

    grid = np.linspace(-math.pi, math.pi, 3601)
    best = grid[int(np.argmin([negative(a) for a in grid]))]
    res = optimize.minimize_scalar(negative, bounds=(best - 0.01, best + 0.01), method="bounded",
                                   options={"xatol": 1e-13})
    return g0 + radius * np.array([math.cos(res.x), math.sin(res.x)])


@pytest.mark.parametrize(
    "jac",
    [
        [[1.0, 0.0], [0.0, 1e-7]],  # the case: one gradient 1e-7 of the other
        [[1.0, 0.0], [0.0, 1e-9]],
        [[1.0, 0.2], [-3e-8, 1e-7]],
    ],
)
def test_cagrad_badly_scaled_rows_match_scipy(jac: list[list[float]]) -> None:
    """A task whose gradient is <= 1e-6 of the largest still steers d (the old code fell back
    to the mean); rescale=0, so d is the primal solution itself."""
    j = np.array(jac)
    expected = cagrad_primal_2d(j, 0.4)
    _, d = run("cagrad", j, c=0.4, rescale=0)
    np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())
    assert not np.allclose(d, j.mean(axis=0))


def test_cagrad_tiny_task_by_hand() -> None:
    """g = (1, 0), (0, 1e-7), c = 0.4: the tiny task is the worst for every feasible d, so d
    moves the whole radius towards it: d = g0 + 0.4 ||g0|| e_2."""
    j = np.array([[1.0, 0.0], [0.0, 1e-7]])
    g0 = j.mean(axis=0)
    _, d = run("cagrad", j, c=0.4, rescale=0)
    np.testing.assert_allclose(d, g0 + 0.4 * np.linalg.norm(g0) * np.array([0.0, 1.0]),
                               rtol=1e-9)


def test_cagrad_three_tasks_one_tiny_matches_an_socp_solver() -> None:
    """Three tasks in 3-D, one 1e-7 of the others: the primal as a second-order cone program
    (cvxpy, Clarabel; constraints divided by each ||g_t||) finds no better feasible d.

    (scipy's SLSQP was the reference before; scipy 1.17 stops it at this problem with
    "Positive directional derivative for linesearch".)"""
    cp = pytest.importorskip("cvxpy")
    j = np.array([[1.0, 0.0, 0.0], [0.0, 1e-7, 0.0], [0.3, 0.0, 0.8]])
    c = 0.5
    g0 = j.mean(axis=0)
    radius = c * float(np.linalg.norm(g0))
    norms = np.linalg.norm(j, axis=1)
    unit = norms.min()

    def worst(d: np.ndarray) -> float:
        return float(np.min(j @ d))

    x, s = cp.Variable(3), cp.Variable()
    constraints = [(j[t] @ x - s * unit) / norms[t] >= 0 for t in range(3)]
    constraints.append(cp.norm(x - g0) <= radius)
    problem = cp.Problem(cp.Maximize(s), constraints)
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal", problem.status
    reference = np.asarray(x.value)
    _, d = run("cagrad", j, c=c, rescale=0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9)
    assert worst(d) >= worst(reference) * (1 - 1e-6)
    np.testing.assert_allclose(d, reference, atol=1e-5)


def test_cagrad_near_cancelling_tiny_task_keeps_a_good_direction() -> None:
    """g = (-1e-61), (1), c = 2 (found by hypothesis): 0 is in the hull, the dual optimum is 0,
    and the best worst-case improvement is 0. The min-norm solver stops at the tiny task's
    vertex (the cancelling weight 1e-61 is below its tolerance), whose direction sent d to
    -0.5, a step that raises the second loss; d must not be worse than g0."""
    j = np.array([[-1e-61], [1.0]])
    _, d = run("cagrad", j, c=2.0, rescale=0)
    g0 = j.mean(axis=0)
    assert float(np.min(j @ d)) >= float(np.min(j @ g0)) - 1e-12
    np.testing.assert_allclose(d, g0, atol=1e-12)
