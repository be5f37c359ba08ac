"""MGDA: the min-norm point of the convex hull, against scipy, brute force and KKT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from scipy.optimize import minimize
from torch import nn

import mtlweight as mw
from mtlweight._solvers import min_norm_weights

Array = NDArray[np.float64]
finite = st.floats(-10, 10, allow_nan=False, width=64)


@st.composite
def jacobians(draw: st.DrawFn, min_tasks: int = 1, max_tasks: int = 6) -> Array:
    """A (T, P) matrix, sometimes with repeated, zero or opposite rows."""
    count = draw(st.integers(min_tasks, max_tasks))
    width = draw(st.integers(1, 6))
    jac: Array = draw(arrays(np.float64, (count, width), elements=finite))
    for i in range(1, count):
        kind = draw(st.sampled_from(["free", "free", "copy", "zero", "opposite"]))
        j = draw(st.integers(0, i - 1))
        if kind == "copy":
            jac[i] = jac[j]
        elif kind == "zero":
            jac[i] = 0.0
        elif kind == "opposite":
            jac[i] = -jac[j]
    return jac


def scipy_min_norm(gram: Array) -> float:
    """Smallest w^T G w on the simplex by SLSQP from every vertex and the centre."""
    count = gram.shape[0]
    best = np.inf
    for start in [np.full(count, 1.0 / count), *np.eye(count)]:
        result = minimize(
            lambda w: w @ gram @ w,
            start,
            jac=lambda w: 2 * gram @ w,
            bounds=[(0.0, 1.0)] * count,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        w = np.clip(result.x, 0.0, None)
        w = w / w.sum()
        best = min(best, float(w @ gram @ w))
    return best


def on_simplex(w: Array) -> None:
    assert np.all(w >= 0.0), w
    np.testing.assert_allclose(w.sum(), 1.0, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(jacobians())
def test_kkt_conditions(jac: Array) -> None:
    """w* is optimal iff g_j . d >= ||d||^2 for every j, with equality on the support."""
    gram = jac @ jac.T
    w = min_norm_weights(gram)
    on_simplex(w)
    scale = max(float(np.max(np.diag(gram))), 1e-300)
    gw = gram @ w
    norm2 = float(w @ gw)
    assert np.all(gw >= norm2 - 1e-9 * scale), (gw, norm2)
    support = w > 1e-9
    np.testing.assert_allclose(gw[support], norm2, rtol=0, atol=1e-9 * scale)


@settings(max_examples=25, deadline=None)
@given(jacobians(), st.integers(0, 2**32 - 1))
def test_no_convex_combination_is_shorter(jac: Array, seed: int) -> None:
    gram = jac @ jac.T
    w = min_norm_weights(gram)
    scale = max(float(np.max(np.diag(gram))), 1e-300)
    points = np.random.default_rng(seed).dirichlet(np.ones(len(gram)), size=200)
    norms = np.einsum("ni,ij,nj->n", points, gram, points)
    assert float(w @ gram @ w) <= norms.min() + 1e-12 * scale
    assert float(w @ gram @ w) <= scipy_min_norm(gram) + 1e-10 * scale


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (2, 3), elements=finite))
def test_two_tasks_closed_form(jac: Array) -> None:
    """Sener and Koltun's T = 2 solution: w1 = clip((g2 - g1) . g2 / ||g1 - g2||^2, 0, 1)."""
    g1, g2 = jac
    diff = float((g1 - g2) @ (g1 - g2))
    w1 = 0.5 if diff == 0 else float(np.clip((g2 - g1) @ g2 / diff, 0.0, 1.0))
    expected = w1 * g1 + (1 - w1) * g2
    w = min_norm_weights(jac @ jac.T)
    got = w @ jac
    scale = max(float(np.abs(jac).max()), 1e-300)
    np.testing.assert_allclose(got @ got, expected @ expected, rtol=1e-9, atol=1e-12 * scale**2)
    if diff > 1e-12 * scale**2:  # unique minimiser
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * scale)


def test_three_tasks_brute_force() -> None:
    rng = np.random.default_rng(0)
    grid = [
        (a / 100, b / 100, 1 - (a + b) / 100)
        for a, b in itertools.product(range(101), repeat=2)
        if a + b <= 100
    ]
    points = np.array(grid)
    for _ in range(5):
        jac = rng.normal(size=(3, 4))
        gram = jac @ jac.T
        w = min_norm_weights(gram)
        brute = np.einsum("ni,ij,nj->n", points, gram, points).min()
        assert float(w @ gram @ w) <= brute + 1e-12
        assert float(w @ gram @ w) >= brute - 0.05 * np.max(np.diag(gram))  # a coarse grid


@pytest.mark.parametrize(
    ("jac", "expected"),
    [
        ([[1.0, 0.0], [0.0, 2.0]], [0.8, 0.2]),
        ([[3.0, 4.0]], [1.0]),
        ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [1 / 3, 1 / 3, 1 / 3]),  # every point is 0
        ([[1.0, 1.0], [0.0, 0.0], [2.0, -1.0]], [0.0, 1.0, 0.0]),  # a zero gradient
        ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.5, 0.5, 0.0]),  # g3 above the segment
    ],
)
def test_known_weights(jac: list[list[float]], expected: list[float]) -> None:
    gram = np.asarray(jac) @ np.asarray(jac).T
    np.testing.assert_allclose(min_norm_weights(gram), expected, atol=1e-12)


def test_identical_gradients_give_that_gradient() -> None:
    jac = np.array([[1.0, 2.0, 3.0]] * 4)
    w = min_norm_weights(jac @ jac.T)
    on_simplex(w)
    np.testing.assert_allclose(w @ jac, jac[0], rtol=1e-12)


def test_l2_normalisation_is_min_norm_of_unit_gradients() -> None:
    jac = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    weights = mw.MGDA([theta], normalization="l2").backward([theta @ g + 1 for g in jac])
    unit = (jac / jac.norm(dim=1, keepdim=True)).numpy()
    expected = min_norm_weights(unit @ unit.T)
    np.testing.assert_allclose(list(weights.values()), expected, atol=1e-12)
    # applied to the raw losses, as the authors' code does
    assert theta.grad is not None
    np.testing.assert_allclose(theta.grad.numpy(), expected @ jac.numpy(), atol=1e-12)


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_loss_normalisation(normalization: str) -> None:
    jac = np.array([[1.0, 0.0], [0.0, 2.0]])
    offsets = np.array([2.0, 0.5])
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    losses = [theta @ torch.from_numpy(g) + c for g, c in zip(jac, offsets, strict=True)]
    weights = mw.MGDA([theta], normalization=normalization).backward(losses)  # type: ignore[arg-type]
    scale = offsets * (np.linalg.norm(jac, axis=1) if normalization == "loss+" else 1.0)
    scaled = jac / scale[:, None]
    np.testing.assert_allclose(
        list(weights.values()), min_norm_weights(scaled @ scaled.T), atol=1e-12
    )


def test_loss_normalisation_needs_positive_losses() -> None:
    theta = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"must be positive; loss of task 'edge' is -2.0"):
        mw.MGDA([theta], normalization="loss+")({"pixel": theta.sum(), "edge": -theta.sum()})


def test_unknown_normalisation() -> None:
    with pytest.raises(ValueError, match=r"normalization must be one of .*found 'L2'"):
        mw.MGDA(normalization="L2")  # type: ignore[arg-type]


def test_mgda_with_a_representation_is_mgda_ub(model: TinyMultiTask) -> None:
    mgda, ub = mw.MGDA(model.trunk), mw.MGDAUB()
    step = model.step()
    mgda(step.losses, representation=step.representation)
    ub(step.losses, representation=step.representation)
    assert mgda.weights == ub.weights
    assert mgda.weights != mw.MGDA(model.trunk).backward(model.losses())


def test_common_descent_direction(model: TinyMultiTask) -> None:
    """-d decreases every task to first order: g_t . d >= ||d||^2 > 0 unless d = 0."""
    mgda = mw.MGDA(model.trunk)
    mgda.backward(model.losses())
    gram = mgda.statistics["gram"].numpy()
    w = np.array(list(mgda.weights.values()))
    assert np.all(gram @ w >= w @ gram @ w * (1 - 1e-6))
