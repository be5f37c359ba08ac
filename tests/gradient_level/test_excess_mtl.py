"""ExcessMTL: hand-derived excess risks, the paper's update in numpy, invariants, TorchJD."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip, check_total_gradient
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw

Array = NDArray[np.float64]


def reference(jacs: list[Array], eta: float, warmup: int) -> list[Array]:
    """The paper's Algorithm 1 (with the authors' scale normalisation), in numpy."""
    count = jacs[0].shape[0]
    squares = np.zeros_like(jacs[0])
    baseline = np.zeros(count)
    alpha = np.full(count, 1.0 / count)
    result = []
    for k, jac in enumerate(jacs, start=1):
        squares = squares + jac**2
        risk = (jac**2 / np.sqrt(squares + 1e-7)).sum(axis=1)
        if k <= warmup:
            baseline = baseline + risk / warmup
        else:
            alpha = alpha * np.exp(eta * risk / baseline)
            alpha = alpha / alpha.sum()
        result.append(alpha.copy())
    return result


def weights_of(weighting: mw.Weighting, theta: nn.Parameter, jac: Array) -> Array:
    theta.grad = None
    weights = weighting.backward({f"t{i}": theta @ torch.from_numpy(r) for i, r in enumerate(jac)})
    assert theta.grad is not None
    np.testing.assert_allclose(theta.grad.numpy(), np.array(list(weights.values())) @ jac,
                               rtol=1e-10, atol=1e-12)
    return np.array(list(weights.values()))


def stream(seed: int, count: int, steps: int, low: float = -1.5) -> list[Array]:
    """``steps`` Jacobians ``(count, 6)``, each task's rows on its own scale in [10^low, 30]."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(low, 1.5, size=(count, 1))
    return [rng.normal(size=(count, 6)) * scales for _ in range(steps)]


def test_hand_derived_excess_risks() -> None:
    # Step 1: g_a = (1, 0), g_b = (0, 2): E0 = (1, 4 / 2) = (1, 2), uniform weights.
    # Step 2: g_a = (3, 0): H_a = 10, E_a = 9 / sqrt(10); g_b again: E_b = 4 / sqrt(8).
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    excess = mw.ExcessMTL([theta], robust_step_size=1.0)
    np.testing.assert_allclose(weights_of(excess, theta, np.array([[1.0, 0], [0, 2]])), [0.5, 0.5])
    ratios = np.array([9 / math.sqrt(10 + 1e-7) / (1 / math.sqrt(1 + 1e-7)),
                       4 / math.sqrt(8 + 1e-7) / (4 / math.sqrt(4 + 1e-7))])
    expected = np.exp(ratios) / np.exp(ratios).sum()
    got = weights_of(excess, theta, np.array([[3.0, 0], [0, 2]]))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(0.8946, abs=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(1, 3), st.floats(0.01, 2.0))
def test_matches_the_update_in_numpy(seed: int, count: int, warmup: int, eta: float) -> None:
    jacs = stream(seed, count, 6)
    theta = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    excess = mw.ExcessMTL([theta], robust_step_size=eta, warmup_steps=warmup)
    for k, (jac, expected) in enumerate(zip(jacs, reference(jacs, eta, warmup), strict=True)):
        got = weights_of(excess, theta, jac)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)
        assert got.min() >= 0 and got.sum() == pytest.approx(1.0, abs=1e-12)
        if k < warmup:
            np.testing.assert_allclose(got, np.full(count, 1.0 / count))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.floats(0.3, 10.0), min_size=3, max_size=3))
def test_invariant_to_the_scale_of_each_task(seed: int, factors: list[float]) -> None:
    """E_t scales with the task's gradient, and so does E0_t: the weights do not change (up to
    the 1e-7 inside the square root: the rows are kept large enough for it not to matter)."""
    jacs = stream(seed, 3, 5, low=0.0)
    plain, scaled = (nn.Parameter(torch.zeros(6, dtype=torch.float64)) for _ in range(2))
    first, second = (mw.ExcessMTL([t], robust_step_size=1.0) for t in (plain, scaled))
    for jac in jacs:
        np.testing.assert_allclose(
            weights_of(first, plain, jac),
            weights_of(second, scaled, jac * np.array(factors)[:, None]),
            rtol=1e-3,  # a missing normalisation would change them by O(1)
        )


def test_weighted_total_and_resume(model: TinyMultiTask, tmp_path: Path) -> None:
    excess = mw.ExcessMTL(model.trunk, robust_step_size=0.5, task_specific="weighted")
    for _ in range(3):
        check_total_gradient(excess, model.losses, list(model.parameters()))
    check_state_dict_round_trip(
        lambda: mw.ExcessMTL(model.trunk, robust_step_size=0.5),
        lambda i: model.step_at(i).losses,
        tmp_path,
    )


def test_task_order_may_change_between_calls() -> None:
    jacs = stream(3, 3, 4)
    theta = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    in_order, shuffled = (mw.ExcessMTL([theta], robust_step_size=1.0) for _ in range(2))
    for k, jac in enumerate(jacs):
        expected = dict(zip(("t0", "t1", "t2"), weights_of(in_order, theta, jac), strict=True))
        order = [0, 1, 2] if k == 0 else [2, 0, 1]
        theta.grad = None
        got = shuffled.backward({f"t{i}": theta @ torch.from_numpy(jac[i]) for i in order})
        assert list(got) == [f"t{i}" for i in order]
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-12)


def test_clear_errors(model: TinyMultiTask) -> None:
    step = model.step()
    with pytest.raises(ValueError, match="representation"):
        mw.ExcessMTL(model.trunk)(step.losses, representation=step.representation)
    with pytest.raises(ValueError, match="robust_step_size"):
        mw.ExcessMTL(model.trunk, robust_step_size=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        mw.ExcessMTL(model.trunk, warmup_steps=0)
    excess = mw.ExcessMTL(model.trunk)
    excess(model.losses())
    model.linear.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="shared parameters changed"):
        excess(model.losses())


def test_trains_a_tiny_model() -> None:
    from jacobians import train_tiny

    first, last = train_tiny("excess_mtl")
    assert last < 0.5 * first, (first, last)
