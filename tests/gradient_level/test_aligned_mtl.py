"""Aligned-MTL: the aligned gradients are orthogonal with equal norms; the scale options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from scipy.linalg import sqrtm
from torch import nn

import mtlweight as mw
from mtlweight.gradient_level._aligned_mtl import aligned_mtl_weights

Array = NDArray[np.float64]


@st.composite
def full_rank(draw: st.DrawFn, max_tasks: int = 5) -> Array:
    """A (T, P) matrix of rank T, condition number below 100."""
    count = draw(st.integers(1, max_tasks))
    jac: Array = draw(
        arrays(np.float64, (count, count + draw(st.integers(0, 3))), elements=st.floats(-5, 5))
    )
    singular = np.linalg.svd(jac, compute_uv=False)
    assume(singular[0] > 1e-3 and singular[-1] > singular[0] / 100)
    return jac


def run(jac: Array, **options: str) -> tuple[Array, Array]:
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    weighting = mw.AlignedMTL([theta], **options)  # type: ignore[arg-type]
    weights = weighting.backward([theta @ torch.from_numpy(g) for g in jac])
    assert theta.grad is not None
    return np.array(list(weights.values())), theta.grad.numpy()


@settings(max_examples=25, deadline=None)
@given(full_rank())
def test_aligned_gradients_are_orthogonal_with_equal_norms(jac: Array) -> None:
    """B J J^T B = sigma I with sigma the smallest eigenvalue: condition number 1."""
    gram = jac @ jac.T
    weights, d = run(jac)
    eigenvalues = np.linalg.eigvalsh(gram)
    # B from its definition, with scipy's matrix square root (independent of eigh)
    b = np.sqrt(eigenvalues.min()) * np.linalg.inv(np.real(sqrtm(gram)))
    np.testing.assert_allclose(weights, b.sum(axis=1), rtol=1e-6, atol=1e-9)
    aligned = b @ jac
    np.testing.assert_allclose(
        aligned @ aligned.T, eigenvalues.min() * np.eye(len(jac)), atol=1e-6 * eigenvalues.max()
    )
    np.testing.assert_allclose(d, aligned.sum(axis=0), rtol=1e-6, atol=1e-9 * np.abs(jac).max())


@pytest.mark.parametrize(
    ("scale", "sigma"),
    [("min", 1.0), ("median", 4.0), ("rmse", (1.0 + 4.0 + 9.0 + 16.0) / 4)],
)
def test_scales(scale: str, sigma: float) -> None:
    """G = diag(1, 4, 9, 16): B = sqrt(sigma) diag(1, 1/2, 1/3, 1/4); lower median 4."""
    jac = np.diag([1.0, 2.0, 3.0, 4.0])
    weights, d = run(jac, scale=scale)
    np.testing.assert_allclose(weights, np.sqrt(sigma) / np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(d, np.full(4, np.sqrt(sigma)))


def test_rank_deficient_keeps_the_range() -> None:
    """g3 = g1 + g2: only the two non-zero eigenvalues are inverted."""
    jac = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    gram = jac @ jac.T
    weights = aligned_mtl_weights(gram)
    assert np.all(np.isfinite(weights))
    lam, v = np.linalg.eigh(gram)
    keep = lam > 1e-9
    b = np.sqrt(lam[keep].min()) * v[:, keep] @ np.diag(lam[keep] ** -0.5) @ v[:, keep].T
    np.testing.assert_allclose(weights, b.sum(axis=1), rtol=1e-9)


def test_identical_and_zero_gradients() -> None:
    np.testing.assert_allclose(aligned_mtl_weights(np.ones((3, 3))), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(aligned_mtl_weights(np.zeros((2, 2))), [1.0, 1.0])


def test_bad_scale() -> None:
    with pytest.raises(ValueError, match=r"scale must be 'min', 'median' or 'rmse'; found 'max'"):
        mw.AlignedMTL(scale="max")  # type: ignore[arg-type]
