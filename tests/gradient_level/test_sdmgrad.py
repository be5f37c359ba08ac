"""SDMGrad: the inner problem's solution in closed form, lambda = 0 is MGDA, the simplex."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TinyMultiTask, check_state_dict_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st
from jacobians import Array, direction, jacobians, train_tiny

import mtlweight as mw
from mtlweight._solvers import min_norm_weights


def two_task_optimum(jac: Array, lam: float) -> Array:
    """argmin_{w in simplex} ||J^T (w + lam / 2)||^2 for two tasks: w = (t, 1 - t) with
    t = clip(-a.c / ||a||^2, 0, 1), a = g1 - g2, c = g2 + lam g0 (g0 the mean gradient)."""
    a = jac[0] - jac[1]
    c = jac[1] + lam * jac.mean(axis=0)
    t = float(np.clip(-(a @ c) / (a @ a), 0.0, 1.0))
    return np.array([t, 1.0 - t])


def test_symmetric_gradients_give_the_mean() -> None:
    weights, d = direction("sdmgrad", np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(weights, [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(d, [0.5, 0.5], rtol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_converges_to_the_inner_optimum(lam: float) -> None:
    """With enough small inner steps w is the minimiser: (w + lam/2)/(1 + lam) are the weights.

    (The authors' lr = 10 overshoots here: w jumps to a vertex, see the class's note.)"""
    jac = np.array([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3]])
    weights, d = direction("sdmgrad", jac, lambda_=lam, n_iter=500, lr=0.1)
    w = two_task_optimum(jac, lam)
    np.testing.assert_allclose(weights, (w + lam / 2) / (1 + lam), rtol=1e-6)
    np.testing.assert_allclose(d, jac.T @ weights, rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(jacobians(max_tasks=4))
def test_lambda_zero_is_mgda(jac: Array) -> None:
    """lambda = 0: min over the simplex of ||J^T w||^2, MGDA's problem (its exact solver), with
    a step of half the inverse curvature of the normalised Gram matrix."""
    gram = jac @ jac.T
    scale = float(np.mean(np.sqrt(np.diag(gram)))) ** 2
    curvature = float(np.linalg.eigvalsh(gram).max())
    weights, _ = direction("sdmgrad", jac, lambda_=0.0, n_iter=2000, lr=0.5 * scale / curvature)
    optimum = min_norm_weights(gram)
    value, best = float(weights @ gram @ weights), float(optimum @ gram @ optimum)
    assert value <= best + 1e-3 * curvature


@settings(max_examples=30, deadline=None)
@given(jacobians(full_rank=False), st.floats(0.0, 5.0))
def test_weights_are_on_the_simplex_above_the_preference(jac: Array, lam: float) -> None:
    weights, _ = direction("sdmgrad", jac, lambda_=lam)
    count = jac.shape[0]
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
    assert np.all(weights >= lam / (count * (1 + lam)) - 1e-12)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = TinyMultiTask(seed=0)
    check_state_dict_round_trip(
        lambda: mw.SDMGrad(shared=model.trunk, n_iter=3),
        lambda i: model.step_at(i).losses,
        tmp_path,
    )


@pytest.mark.parametrize(
    ("option", "value"), [("lambda_", -1.0), ("lr", 0.0), ("momentum", 1.0), ("n_iter", 0)]
)
def test_rejects_bad_options(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        mw.SDMGrad(**{option: value})


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("sdmgrad")
    assert last < 0.5 * first
