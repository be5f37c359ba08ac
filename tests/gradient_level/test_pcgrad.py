"""PCGrad: projections against a direct vector implementation; no conflict remains."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw
from mtlweight.gradient_level._pcgrad import pcgrad_coefficients

Array = NDArray[np.float64]
# Zero or at least 1e-3 in size: squares of tinier numbers underflow in the reference.
finite = st.just(0.0) | st.floats(1e-3, 10) | st.floats(-10, -1e-3)


def project_vectors(jac: Array, orders: Sequence[Sequence[int]]) -> Array:
    """The paper's Algorithm 1 on the vectors themselves: the projected gradients, (T, P)."""
    projected: Array = jac.copy()
    for i, order in enumerate(orders):
        for j in order:
            dot = projected[i] @ jac[j]
            if dot < 0:
                projected[i] = projected[i] - dot / (jac[j] @ jac[j]) * jac[j]
    return projected


@st.composite
def problems(draw: st.DrawFn, max_tasks: int = 5) -> tuple[Array, list[list[int]]]:
    """A Jacobian and, for each task, an order of the other tasks."""
    count = draw(st.integers(2, max_tasks))
    jac = draw(arrays(np.float64, (count, draw(st.integers(1, 5))), elements=finite))
    for i in range(count):
        if draw(st.booleans()) and not np.any(jac[i]):
            jac[i, 0] = 1.0  # mostly non-zero rows; zero rows are tested separately
    orders = [draw(st.permutations([j for j in range(count) if j != i])) for i in range(count)]
    return jac, orders


@settings(max_examples=25, deadline=None)
@given(problems())
def test_coefficients_match_projecting_the_vectors(problem: tuple[Array, list[list[int]]]) -> None:
    jac, orders = problem
    coefficients = pcgrad_coefficients(jac @ jac.T, orders)
    expected = project_vectors(jac, orders)
    scale = max(float(np.abs(jac).max()), 1e-300)
    np.testing.assert_allclose(coefficients @ jac, expected, rtol=1e-7, atol=1e-7 * scale)


@settings(max_examples=25, deadline=None)
@given(problems())
def test_no_conflict_with_the_last_gradient_projected_against(
    problem: tuple[Array, list[list[int]]],
) -> None:
    """Each projection leaves g~_i . g_j = 0; the last one visited is never undone."""
    jac, orders = problem
    projected = pcgrad_coefficients(jac @ jac.T, orders) @ jac
    scale = float(np.abs(jac).max()) ** 2 + 1e-300
    for i, order in enumerate(orders):
        assert projected[i] @ jac[order[-1]] >= -1e-9 * scale


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (2, 4), elements=finite))
def test_two_tasks_no_remaining_conflict(jac: Array) -> None:
    """With two tasks neither projected gradient, nor d, conflicts with either gradient."""
    theta = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    weights = mw.PCGrad([theta]).backward([theta @ torch.from_numpy(g) for g in jac])
    coefficients = pcgrad_coefficients(jac @ jac.T, [[1], [0]])
    np.testing.assert_allclose(list(weights.values()), coefficients.sum(axis=0), rtol=1e-12)
    assert theta.grad is not None
    d = theta.grad.numpy()
    scale = float(np.abs(jac).max()) ** 2 + 1e-300
    assert np.all(jac @ d >= -1e-9 * scale), jac @ d
    projected = coefficients @ jac
    assert projected[0] @ jac[1] >= -1e-9 * scale and projected[1] @ jac[0] >= -1e-9 * scale


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (4, 3), elements=st.floats(0, 10, width=64)))
def test_without_conflicts_d_is_the_sum(jac: Array) -> None:
    """Non-negative entries: no pair conflicts, nothing is projected, every weight is 1."""
    coefficients = pcgrad_coefficients(jac @ jac.T, [[1, 2, 3], [3, 2, 0], [0, 1, 3], [2, 1, 0]])
    np.testing.assert_array_equal(coefficients, np.eye(4))


def test_zero_gradient_is_never_projected_against() -> None:
    jac = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    coefficients = pcgrad_coefficients(jac @ jac.T, [[1, 2], [0, 2], [0, 1]])
    assert np.all(np.isfinite(coefficients))
    # g1 . g3 = -1: g1 -> g1 + g3 / 2, g3 -> g3 + g1; the zero gradient stays zero
    np.testing.assert_allclose(coefficients @ jac, [[0.5, 0.5], [0.0, 0.0], [0.0, 1.0]])


def test_weights_come_from_one_of_the_orders() -> None:
    """Three tasks whose result depends on the order: every call matches some order, and
    over several calls the generator uses more than one."""
    jac = np.array([[1.0, 0.0], [-1.0, 1.0], [-0.5, -1.0]])
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    pcgrad = mw.PCGrad([theta], seed=3)
    possible = {}
    for choice in itertools.product([0, 1], repeat=3):
        orders = [
            [j for j in range(3) if j != i][:: 1 if c == 0 else -1] for i, c in enumerate(choice)
        ]
        possible[choice] = pcgrad_coefficients(jac @ jac.T, orders).sum(axis=0)
    assert len({tuple(np.round(v, 9)) for v in possible.values()}) > 1
    seen = set()
    for _ in range(12):
        weights = np.array(
            list(pcgrad.backward([theta @ torch.from_numpy(g) for g in jac]).values())
        )
        matches = [k for k, v in possible.items() if np.allclose(v, weights, rtol=1e-12)]
        assert matches, weights
        seen.add(tuple(np.round(weights, 9)))
    assert len(seen) > 1


def test_seeded_and_independent_of_the_global_generator() -> None:
    jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-0.5, -1.0]], dtype=torch.float64)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        pcgrad = mw.PCGrad([theta], seed=7)
        runs.append([pcgrad.backward([theta @ g for g in jac]) for _ in range(6)])
    assert runs[0] == runs[1]
