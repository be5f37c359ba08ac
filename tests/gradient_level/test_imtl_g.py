"""IMTL-G: the paper's closed form on the vectors; equal projections onto every task direction."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw
from mtlweight.gradient_level._imtl_g import imtl_g_weights

Array = NDArray[np.float64]


@st.composite
def independent(draw: st.DrawFn, max_tasks: int = 5) -> Array:
    """A (T, P) matrix with P >= T and well-conditioned rows (the closed form is defined)."""
    count = draw(st.integers(2, max_tasks))
    width = draw(st.integers(count, count + 3))
    # zero or at least 1e-3 in size: squares of tinier numbers underflow in the reference
    elements = st.just(0.0) | st.floats(1e-3, 5) | st.floats(-5, -1e-3)
    jac: Array = draw(arrays(np.float64, (count, width), elements=elements))
    singular = np.linalg.svd(jac, compute_uv=False)
    assume(singular[-1] > 1e-2 * singular[0])
    return jac


def paper_closed_form(jac: Array) -> Array:
    """alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:T}, as in the paper."""
    unit = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    d = jac[0] - jac[1:]
    u = unit[0] - unit[1:]
    rest = jac[0] @ u.T @ np.linalg.inv(d @ u.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def run(jac: Array) -> tuple[Array, Array]:
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    weights = mw.IMTLG([theta]).backward([theta @ torch.from_numpy(g) for g in jac])
    assert theta.grad is not None
    return np.array(list(weights.values())), theta.grad.numpy()


@settings(max_examples=25, deadline=None)
@given(independent())
def test_matches_the_paper_closed_form(jac: Array) -> None:
    weights, _ = run(jac)
    np.testing.assert_allclose(weights, paper_closed_form(jac), rtol=1e-6, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(independent())
def test_equal_projections_onto_every_task_direction(jac: Array) -> None:
    weights, d = run(jac)
    unit = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    projections = unit @ d
    np.testing.assert_allclose(projections, projections[0], rtol=1e-7, atol=1e-9 * np.abs(d).max())
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-10)


def test_orthogonal_gradients() -> None:
    """Orthogonal g_t: d . u_t = alpha_t ||g_t|| is equal for all t: alpha_t ~ 1/||g_t||."""
    jac = np.diag([1.0, 2.0, 4.0])
    weights, d = run(jac)
    expected = np.array([1.0, 0.5, 0.25]) / 1.75
    np.testing.assert_allclose(weights, expected, rtol=1e-12)
    np.testing.assert_allclose(d, [1 / 1.75] * 3, rtol=1e-12)


def test_degenerate_gradients() -> None:
    identical = imtl_g_weights(np.ones((3, 3)))
    np.testing.assert_allclose(identical, [1 / 3] * 3, rtol=1e-12)  # least squares, min norm
    jac = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])  # a zero gradient gets no weight
    np.testing.assert_allclose(imtl_g_weights(jac @ jac.T), [2 / 3, 0.0, 1 / 3], rtol=1e-12)
    np.testing.assert_array_equal(imtl_g_weights(np.zeros((2, 2))), [0.5, 0.5])
    np.testing.assert_array_equal(imtl_g_weights(np.array([[4.0]])), [1.0])
