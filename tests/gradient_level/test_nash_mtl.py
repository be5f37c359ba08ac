"""Nash-MTL: the solver satisfies the bargaining condition; normalisation, max_norm, reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip, per_task_gradients
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from torch import Tensor, nn

import mtlweight as mw
from mtlweight._engine.plans import Plan
from mtlweight.gradient_level._nash_mtl import nash_weights

Array = NDArray[np.float64]


@st.composite
def grams(draw: st.DrawFn, max_tasks: int = 6) -> Array:
    """J J^T for a (T, P) matrix of rank T with a condition number below 30."""
    count = draw(st.integers(1, max_tasks))
    jac: Array = draw(
        arrays(np.float64, (count, count + draw(st.integers(0, 3))), elements=st.floats(-5, 5))
    )
    singular = np.linalg.svd(jac, compute_uv=False)
    assume(singular[0] > 1e-3 and singular[-1] > singular[0] / 30)
    gram: Array = jac @ jac.T
    return gram


@settings(max_examples=25, deadline=None)
@given(grams(), st.floats(1e-3, 1e3))
def test_bargaining_condition(gram: Array, scale: float) -> None:
    """(G alpha)_t = 1 / alpha_t with alpha > 0: each task's utility times its weight is 1."""
    gram = gram * scale
    alpha = nash_weights(gram)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(alpha * (gram @ alpha), 1.0, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(grams(), st.integers(0, 2**32 - 1))
def test_the_solution_does_not_depend_on_the_warm_start(gram: Array, seed: int) -> None:
    init = np.random.default_rng(seed).uniform(0.01, 100.0, size=len(gram))
    np.testing.assert_allclose(nash_weights(gram, init), nash_weights(gram), rtol=1e-6)


def test_orthogonal_gradients_closed_form() -> None:
    """G diagonal: alpha_t = 1 / ||g_t||."""
    np.testing.assert_allclose(nash_weights(np.diag([1.0, 4.0, 0.25])), [1.0, 0.5, 2.0], rtol=1e-7)


def test_degenerate_grams_are_finite() -> None:
    for gram in (np.zeros((3, 3)), np.ones((3, 3)), np.array([[1.0, -1.0], [-1.0, 1.0]])):
        alpha = nash_weights(gram)
        assert np.all(np.isfinite(alpha)) and np.all(alpha > 0), (gram, alpha)


def test_the_class_solves_the_normalised_problem(model: TinyMultiTask) -> None:
    """normalize_gram=True (the authors' code): weights alpha with (G^ alpha)_t alpha_t = 1,
    G^ = G / ||G||_F, from independent gradients (the paper's raw G:
    test_methods_vs_independent_solvers)."""
    trunk = list(model.trunk.parameters())
    jac = np.stack(list(per_task_gradients(model.losses, trunk).values()))
    gram = jac @ jac.T
    normalised = gram / np.linalg.norm(gram)
    nash = mw.NashMTL(model.trunk, max_norm=0.0, normalize_gram=True)
    alpha = np.array(list(nash.backward(model.losses()).values()))
    np.testing.assert_allclose(alpha * (normalised @ alpha), 1.0, rtol=1e-4)


def test_max_norm_bounds_the_shared_update(model: TinyMultiTask) -> None:
    free = mw.NashMTL(model.trunk, max_norm=0.0)
    free_weights = np.array(list(free.backward(model.losses()).values()))
    trunk = list(model.trunk.parameters())
    free_d = torch.cat([p.grad.reshape(-1) for p in trunk]).double()  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)
    bound = 0.5 * float(free_d.norm())
    clipped = mw.NashMTL(model.trunk, max_norm=bound)
    weights = np.array(list(clipped.backward(model.losses()).values()))
    d = torch.cat([p.grad.reshape(-1) for p in trunk]).double()  # type: ignore[union-attr]
    np.testing.assert_allclose(float(d.norm()), bound, rtol=1e-5)
    np.testing.assert_allclose(weights, free_weights * 0.5, rtol=1e-5)


class Counting(mw.NashMTL):
    """Counts the per-task gradient computations."""

    jacobians = 0

    def plan(self, losses: list[Tensor], representation: Tensor | None, *, update: bool) -> Plan:
        self.jacobians += 1
        return super().plan(losses, representation, update=update)


@pytest.mark.parametrize("task_specific", ["weighted", "plain"])
def test_update_every_reuses_the_weights(model: TinyMultiTask, task_specific: str) -> None:
    nash = Counting(model.trunk, update_every=3, task_specific=task_specific)  # type: ignore[arg-type]
    seen = []
    for i in range(7):
        seen.append(nash.backward(model.step_at(i).losses))
    assert seen[0] == seen[1] == seen[2] and seen[3] == seen[4] == seen[5]
    assert seen[0] != seen[3] != seen[6]
    # weighted: J only on update steps; plain: also for d on the reused steps
    assert nash.jacobians == (3 if task_specific == "weighted" else 7)


def test_state_dict_round_trip_with_update_every(model: TinyMultiTask, tmp_path: Path) -> None:
    check_state_dict_round_trip(
        lambda: mw.NashMTL(model.trunk, update_every=2),
        lambda i: dict(model.step_at(i).losses),
        tmp_path,
        before=3,
        after=3,
    )
    nash = mw.NashMTL(model.trunk)
    nash(model.losses())
    state = torch.load(_save(nash, tmp_path), weights_only=True)
    resumed = mw.NashMTL(model.trunk)
    resumed.load_state_dict(state)
    assert resumed.alpha is not None and nash.alpha is not None
    torch.testing.assert_close(resumed.alpha, nash.alpha)


def _save(module: nn.Module, tmp_path: Path) -> Path:
    path = tmp_path / "nash.pt"
    torch.save(module.state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"update_every": 0}, r"update_every must be an integer >= 1; found 0"),
        ({"update_every": 1.5}, r"update_every must be an integer >= 1; found 1.5"),
        ({"max_norm": -1.0}, r"max_norm must be >= 0 \(0 disables it\); found -1.0"),
    ],
)
def test_bad_options(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mw.NashMTL(**options)  # type: ignore[arg-type]


def test_fixes_the_tasks_at_the_first_call(model: TinyMultiTask) -> None:
    nash = mw.NashMTL(model.trunk)
    nash(model.losses())
    losses = model.losses()
    losses["other"] = losses.pop("edge")
    with pytest.raises(ValueError, match=r"task 'edge' is missing"):
        nash(losses)
