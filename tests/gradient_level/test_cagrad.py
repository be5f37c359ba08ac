"""CAGrad: the dual against scipy, strong duality with the primal, c = 0 is the mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from scipy.optimize import minimize
from torch import nn

import mtlweight as mw
from mtlweight.gradient_level._cagrad import cagrad_dual

Array = NDArray[np.float64]
# Entries are 0 or at least 1e-6 in magnitude (at most 10): row norms within seven decades
# of each other, the range in which CAGrad's direction is exact (see its docstring). A
# 1e-74 next to a 1 (hypothesis found such draws) is exact in the dual's value only.
finite = st.floats(-10, 10, allow_nan=False, width=64).map(lambda x: 0.0 if abs(x) < 1e-6 else x)


@st.composite
def jacobians(draw: st.DrawFn, max_tasks: int = 5) -> Array:
    count = draw(st.integers(1, max_tasks))
    jac: Array = draw(arrays(np.float64, (count, draw(st.integers(1, 5))), elements=finite))
    if count > 1 and draw(st.booleans()):
        jac[-1] = jac[0] if draw(st.booleans()) else -jac[0]
    return jac


def dual_objective(gram: Array, rho: float, w: Array) -> float:
    b = np.full(len(gram), 1.0 / len(gram))
    return float(w @ gram @ b) + rho * math.sqrt(max(float(w @ gram @ w), 0.0))


def scipy_dual(gram: Array, rho: float) -> float:
    """The authors' solver: SLSQP from the centre (and, to be safe, every vertex)."""
    count = len(gram)
    best = np.inf
    for start in [np.full(count, 1.0 / count), *np.eye(count)]:
        result = minimize(
            lambda w: dual_objective(gram, rho, w),
            start,
            bounds=[(0.0, 1.0)] * count,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        w = np.clip(result.x, 0.0, None)
        best = min(best, dual_objective(gram, rho, w / w.sum()))
    return best


def run(jac: Array, **options: float) -> tuple[dict[str, float], Array]:
    """CAGrad on linear losses with gradients the rows of ``jac``: (weights, d)."""
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    weights = mw.CAGrad([theta], **options).backward(  # type: ignore[arg-type]
        [theta @ torch.from_numpy(g) for g in jac]
    )
    assert theta.grad is not None
    return weights, theta.grad.numpy()


@settings(max_examples=25, deadline=None)
@given(jacobians(), st.floats(0.05, 2.0))
def test_dual_is_no_worse_than_scipy(jac: Array, c: float) -> None:
    gram = jac @ jac.T
    b = np.full(len(gram), 1.0 / len(gram))
    rho = c * math.sqrt(max(float(b @ gram @ b), 0.0))
    if rho == 0.0:
        return
    w = cagrad_dual(gram, rho)
    assert np.all(w >= 0) and math.isclose(w.sum(), 1.0, abs_tol=1e-12)
    scale = float(np.max(np.diag(gram)))
    assert dual_objective(gram, rho, w) <= scipy_dual(gram, rho) + 1e-8 * scale


@settings(max_examples=25, deadline=None)
@given(jacobians(), st.floats(0.05, 2.0), st.integers(0, 2**32 - 1))
def test_d_maximises_the_worst_improvement_in_the_ball(jac: Array, c: float, seed: int) -> None:
    """Strong duality: min_t g_t . d equals the dual optimum, and no d' in the ball beats d.

    Except where the dual optimum is g_w = 0 (0 in the hull and c large): there
    the weights are the mean's and d = g0, as in the authors' code.
    """
    weights, d = run(jac, c=c, rescale=0)
    g0 = jac.mean(axis=0)
    radius = c * float(np.linalg.norm(g0))
    scale = float(np.abs(jac).max()) ** 2 + 1e-300
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-5) + 1e-12 * math.sqrt(scale)
    if radius == 0:
        return
    if list(weights.values()) == [1.0 / len(jac)] * len(jac):
        np.testing.assert_allclose(d, g0, atol=1e-12 * math.sqrt(scale))
        return
    gram = jac @ jac.T
    optimum = dual_objective(gram, radius, cagrad_dual(gram, radius))  # unique value
    worst = float(np.min(jac @ d))
    np.testing.assert_allclose(worst, optimum, atol=1e-6 * scale)
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(200, jac.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) + 1e-300
    lengths = radius * rng.uniform(0, 1, size=(200, 1)) ** (1 / jac.shape[1])
    candidates = g0 + directions * lengths  # uniform in the ball
    assert worst >= float(np.min(candidates @ jac.T, axis=1).max()) - 1e-6 * scale


@settings(max_examples=25, deadline=None)
@given(jacobians())
def test_c_zero_is_the_mean_gradient(jac: Array) -> None:
    weights, d = run(jac, c=0.0)
    np.testing.assert_array_equal(list(weights.values()), np.full(len(jac), 1.0 / len(jac)))
    np.testing.assert_allclose(d, jac.mean(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("rescale", "divisor"), [(0, 1.0), (1, 1.25), (2, 1.5)])
def test_rescale(rescale: int, divisor: float) -> None:
    jac = np.array([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [0.5, -2.0, 1.0]])
    base, d0 = run(jac, c=0.5, rescale=0)
    weights, d = run(jac, c=0.5, rescale=rescale)
    np.testing.assert_allclose(list(weights.values()), np.array(list(base.values())) / divisor)
    np.testing.assert_allclose(d, d0 / divisor)


def test_single_task_moves_along_its_gradient() -> None:
    weights, d = run(np.array([[3.0, 4.0]]), c=0.5, rescale=0)
    np.testing.assert_allclose(d, [4.5, 6.0])  # g0 + c ||g0|| g / ||g|| = 1.5 g
    assert weights == {"0": pytest.approx(1.5)}


def test_opposite_gradients() -> None:
    """g0 = 0: the ball is a point, d = 0, the weights are the mean's."""
    weights, d = run(np.array([[1.0, 2.0], [-1.0, -2.0]]), c=0.5)
    np.testing.assert_allclose(d, 0.0)
    assert all(math.isfinite(v) for v in weights.values())


@pytest.mark.parametrize("c", [-0.1, float("nan"), float("inf")])
def test_bad_c(c: float) -> None:
    with pytest.raises(ValueError, match=r"c must be a finite number >= 0"):
        mw.CAGrad(c=c)


def test_bad_rescale() -> None:
    with pytest.raises(ValueError, match=r"rescale must be 0, 1 or 2; found 3"):
        mw.CAGrad(rescale=3)  # type: ignore[arg-type]
