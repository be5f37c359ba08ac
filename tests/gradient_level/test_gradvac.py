"""GradVac: the first step is PCGrad, the correction reaches its target, targets as an EMA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st
from jacobians import Array, apply, direction, jacobians, train_tiny
from torch import nn

import mtlweight as mw


def two_tasks(jac: Array, targets: Array, beta: float = 0.5) -> tuple[Array, Array, mw.GradVac]:
    """One GradVac step on two tasks from the given targets; weights and d."""
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    gradvac = mw.GradVac(shared=[theta], beta=beta)
    gradvac.targets = torch.from_numpy(targets.copy())
    weights, d = apply(gradvac, theta, jac)
    return weights, d, gradvac


def test_first_step_is_pcgrad() -> None:
    """Targets start at 0: g1 = (1, 0), g2 = (-1, 1) are projected to orthogonality, as PCGrad:
    (0.5, 0.5) and (0, 1)."""
    jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    weights, d = direction("gradvac", jac)
    np.testing.assert_allclose(weights, [2.0, 1.5], rtol=1e-12)
    np.testing.assert_allclose(d, [0.5, 1.5], rtol=1e-12)
    np.testing.assert_allclose(d, direction("pcgrad", jac)[1], rtol=1e-12)


def test_second_step_uses_the_moving_average() -> None:
    """After one step (beta = 0.5) the targets are 0.5 cos = -1/(2 sqrt 2); the second step turns
    each gradient to exactly that cosine with the other (the paper's closed form)."""
    jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    gradvac = mw.GradVac(shared=[theta], beta=0.5)
    apply(gradvac, theta, jac)
    phi, target = -1 / math.sqrt(2), -1 / (2 * math.sqrt(2))
    assert gradvac.targets is not None
    np.testing.assert_allclose(gradvac.targets.numpy(), [[0, target], [target, 0]], rtol=1e-12)
    weights, _ = apply(gradvac, theta, jac)
    norms = np.linalg.norm(jac, axis=1)
    closed = (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2)) / math.sqrt(
        1 - target**2
    )
    step_0 = norms[0] * closed / norms[1]  # coefficient of g2 in g1~
    step_1 = norms[1] * closed / norms[0]  # coefficient of g1 in g2~
    np.testing.assert_allclose(weights, [1 + step_1, 1 + step_0], rtol=1e-12)
    corrected = jac[0] + step_0 * jac[1]
    cosine = corrected @ jac[1] / np.linalg.norm(corrected) / norms[1]
    np.testing.assert_allclose(cosine, target, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(jacobians(max_tasks=2), st.floats(-0.9, 0.9), st.floats(-0.9, 0.9))
def test_a_corrected_gradient_reaches_its_target(jac: Array, t01: float, t10: float) -> None:
    """Two tasks: g1~ = g1 + (w2 - 1) g2 has cosine max(phi, target) with g2 (and symmetrically)."""
    targets = np.array([[0.0, t01], [t10, 0.0]])
    weights, _, gradvac = two_tasks(jac, targets, beta=0.25)
    norms = np.linalg.norm(jac, axis=1)
    phi = jac[0] @ jac[1] / norms[0] / norms[1]
    for i, j, target in ((0, 1, t01), (1, 0, t10)):
        corrected = jac[i] + (weights[j] - 1.0) * jac[j]
        cosine = corrected @ jac[j] / np.linalg.norm(corrected) / norms[j]
        np.testing.assert_allclose(cosine, max(phi, target), rtol=1e-7, atol=1e-9)
    assert gradvac.targets is not None
    expected = 0.75 * targets + 0.25 * phi * (1 - np.eye(2))
    np.testing.assert_allclose(gradvac.targets.numpy(), expected, rtol=1e-12, atol=1e-15)


@settings(max_examples=30, deadline=None)
@given(jacobians(full_rank=False), st.floats(-1.0, 0.0))
def test_no_op_when_similarities_exceed_their_targets(jac: Array, target: float) -> None:
    """Every cosine at or above its target: d is the plain sum of the gradients."""
    jac = np.abs(jac)  # cosines >= 0
    count = jac.shape[0]
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    gradvac = mw.GradVac(shared=[theta])
    gradvac.targets = torch.full((count, count), target, dtype=torch.float64)
    weights, d = apply(gradvac, theta, jac)
    np.testing.assert_array_equal(weights, np.ones(count))
    np.testing.assert_allclose(d, jac.sum(axis=0), rtol=1e-12)


def test_state_is_in_the_order_of_the_first_call() -> None:
    """The same tasks listed in another order give the same weights (by name)."""
    jac = np.array([[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0], [0.2, -1.0, 1.0]])

    def run(order: list[int]) -> dict[str, float]:
        theta = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        gradvac = mw.GradVac(shared=[theta], seed=3)
        rows = {f"t{i}": torch.from_numpy(jac[i]) for i in range(3)}
        gradvac.backward({f"t{i}": theta @ rows[f"t{i}"] for i in range(3)})  # fixes the order
        return gradvac.backward({f"t{i}": theta @ rows[f"t{i}"] for i in order})

    first, second = run([0, 1, 2]), run([2, 0, 1])
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == pytest.approx(second[name], rel=1e-12)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = TinyMultiTask(seed=0)
    check_state_dict_round_trip(
        lambda: mw.GradVac(shared=model.trunk, beta=0.3, seed=1),
        lambda i: model.step_at(i).losses,
        tmp_path,
    )


def test_rejects_a_bad_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        mw.GradVac(beta=1.5)


def test_trains_a_tiny_model() -> None:
    first, last = train_tiny("gradvac")
    assert last < 0.5 * first
