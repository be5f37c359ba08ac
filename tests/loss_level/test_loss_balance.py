"""LossBalance (LB): weights against plain arithmetic, properties, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    TinyMultiTask,
    balance_numpy,
    check_balanced,
    check_grad_untouched,
    check_permutation_equivariance,
    check_scale_invariance,
    check_total_gradient,
    check_weights,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import mtlweight as mw

FAST = settings(max_examples=40, deadline=None)

# Loss vectors for the properties: T in 2..8, non-negative, not all zero, on
# scales from 1e-3 to 1e3 (so that scaling by 1e-3..1e4 stays in float32 range).
loss_vectors = st.lists(
    st.one_of(st.just(0.0), st.floats(1e-3, 1e3)), min_size=2, max_size=8
).filter(lambda xs: any(x > 0 for x in xs))


def named(values: list[float], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    return {f"task{i}": torch.tensor(v, dtype=dtype) for i, v in enumerate(values)}


# ------------------------------------------------------------- known values
def test_two_tasks_by_hand() -> None:
    lb = mw.LossBalance()
    total = lb({"pixel": torch.tensor(3.0), "edge": torch.tensor(1.0)})
    # w = 1 - L / (3 + 1): 1/4 and 3/4; total = 3/4 + 3/4
    assert lb.weights == {"pixel": 0.25, "edge": 0.75}
    assert float(total) == 1.5


def test_three_tasks_by_hand() -> None:
    lb = mw.LossBalance()
    lb([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(5.0)])
    assert lb.weights == pytest.approx({"0": 7 / 8, "1": 6 / 8, "2": 3 / 8}, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_numpy(dtype: torch.dtype) -> None:
    values = [0.3, 12.0, 4e-3, 7.5]
    lb = mw.LossBalance()
    lb(named(values, dtype))
    rtol = 1e-15 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(
        check_weights(lb, list(named(values))), balance_numpy(values), rtol=rtol
    )
    assert lb.statistics["loss"].dtype == dtype


def test_total_gradient_on_tiny_model(model: TinyMultiTask) -> None:
    lb = mw.LossBalance()
    weights = check_total_gradient(lb, model.losses, list(model.parameters()))
    values = [float(v.detach()) for v in model.losses().values()]
    np.testing.assert_allclose(weights, balance_numpy(values), rtol=1e-6)


def test_weights_are_detached_constants() -> None:
    """d total / d L_t = w_t: no gradient flows through the weights."""
    losses = [torch.tensor(v, requires_grad=True) for v in (1.0, 3.0, 4.0)]
    lb = mw.LossBalance()
    total = lb(losses)
    grads = torch.autograd.grad(total, losses)
    expected = balance_numpy([1.0, 3.0, 4.0])
    np.testing.assert_allclose([float(g) for g in grads], expected, rtol=1e-6)


@pytest.mark.parametrize("tasks", [2, 3, 7])
def test_all_zero_losses_give_equal_weights(tasks: int) -> None:
    lb = mw.LossBalance()
    lb([torch.tensor(0.0)] * tasks)
    assert lb.weights == pytest.approx({str(t): 1 - 1 / tasks for t in range(tasks)})


def test_one_zero_loss_gets_weight_one() -> None:
    lb = mw.LossBalance()
    lb({"a": torch.tensor(0.0), "b": torch.tensor(2.0), "c": torch.tensor(6.0)})
    assert lb.weights == {"a": 1.0, "b": 0.75, "c": 0.25}


def test_negative_zero_is_not_negative() -> None:
    lb = mw.LossBalance()
    lb({"a": torch.tensor(-0.0), "b": torch.tensor(1.0)})
    assert lb.weights == {"a": 1.0, "b": 0.0}


def test_no_smoothing_across_steps() -> None:
    """Each call uses only its own losses."""
    lb = mw.LossBalance()
    lb([torch.tensor(9.0), torch.tensor(1.0)])
    lb([torch.tensor(1.0), torch.tensor(3.0)])
    assert lb.weights == {"0": 0.75, "1": 0.25}
    assert list(lb.history) == [pytest.approx({"0": 0.1, "1": 0.9}), {"0": 0.75, "1": 0.25}]


def test_grad_untouched(model: TinyMultiTask) -> None:
    check_grad_untouched(mw.LossBalance(), model.losses, list(model.parameters()))


def test_ignores_representation(model: TinyMultiTask) -> None:
    lb = mw.LossBalance()
    step = model.step()
    lb(step.losses, representation=step.representation)
    with_rep = lb.weights
    lb(model.losses())
    assert lb.weights == with_rep


# ----------------------------------------------------------------- errors
def test_single_task_is_rejected_with_reason() -> None:
    with pytest.raises(ValueError, match=r"LossBalance needs at least 2 tasks.*single task"):
        mw.LossBalance()({"pixel": torch.tensor(1.0)})


@pytest.mark.parametrize("bad", [-1.0, -1e-30])
def test_negative_loss_names_task(bad: float) -> None:
    lb = mw.LossBalance()
    with pytest.raises(ValueError, match=r"non-negative.*task 'edge'"):
        lb({"pixel": torch.tensor(1.0), "edge": torch.tensor(bad)})
    assert lb.step == 0 and len(lb.history) == 0


def test_non_scalar_loss_names_task() -> None:
    with pytest.raises(ValueError, match=r"task 'edge' must be a scalar.*\(2, 2\)"):
        mw.LossBalance()({"pixel": torch.tensor(1.0), "edge": torch.ones(2, 2)})


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_names_task(bad: float) -> None:
    with pytest.raises(FloatingPointError, match=r"loss of task 'edge' is not finite"):
        mw.LossBalance()({"pixel": torch.tensor(1.0), "edge": torch.tensor(bad)})


def test_integer_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"task '1' must be floating point.*int64"):
        mw.LossBalance()([torch.tensor(1.0), torch.tensor(2)])


# --------------------------------------------------------------- properties
@FAST
@given(values=loss_vectors)
def test_property_matches_arithmetic_in_unit_interval(values: list[float]) -> None:
    lb = mw.LossBalance()
    lb(named(values))
    weights = check_weights(lb, list(named(values)))
    check_balanced(weights)
    np.testing.assert_allclose(weights, balance_numpy(values), atol=1e-6)


@FAST
@given(values=loss_vectors, factor=st.floats(1e-3, 1e4))
def test_property_scale_invariance(values: list[float], factor: float) -> None:
    check_scale_invariance(mw.LossBalance, lambda: named(values), factor)


@FAST
@given(data=st.data(), values=loss_vectors)
def test_property_permutation_equivariance(data: st.DataObject, values: list[float]) -> None:
    permutation = data.draw(st.permutations(range(len(values))))
    check_permutation_equivariance(mw.LossBalance, lambda: named(values), permutation)


@FAST
@given(tasks=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_property_random_models(tasks: int, seed: int) -> None:
    model = TinyMultiTask([f"t{i}" for i in range(tasks)], seed=seed)
    weights = check_total_gradient(mw.LossBalance(), model.losses, list(model.parameters()))
    check_balanced(weights)


def test_state_dict_keeps_no_tensors() -> None:
    lb = mw.LossBalance()
    lb([torch.tensor(1.0), torch.tensor(2.0)])
    assert all(not isinstance(v, Tensor) for v in lb.state_dict().values())


def test_huge_finite_losses_whose_sum_overflows() -> None:
    """Three float32 losses of ~1e38 are finite but their sum is not: the rule still holds."""
    values = [3e38, 3e38, 1e38]
    lb = mw.LossBalance()
    lb(named(values))
    weights = check_weights(lb, list(named(values)))
    check_balanced(weights)
    np.testing.assert_allclose(weights, balance_numpy(values), rtol=1e-6)


@FAST
@given(size=st.integers(1, 6), values=st.lists(loss_vectors, min_size=1, max_size=10))
def test_property_history_bounded(size: int, values: list[list[float]]) -> None:
    """Calls with varying task counts (LB is not stateful): the last ``size`` weights are kept."""
    lb = mw.LossBalance(history_size=size)
    for vector in values:
        lb(named(vector))
    assert len(lb.history) == min(size, len(values))
    for entry, vector in zip(lb.history, values[-size:], strict=True):
        assert list(entry) == list(named(vector))
        np.testing.assert_allclose(list(entry.values()), balance_numpy(vector), atol=1e-6)
    assert lb.step == len(values)
