"""EqualWeight (EW): the mean of the losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    TinyMultiTask,
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

FAST = settings(max_examples=25, deadline=None)
FLOATS = st.floats(-1e6, 1e6, allow_nan=False)


def test_doc_values() -> None:
    ew = mw.EqualWeight()
    total = ew(
        {"pixel": torch.tensor(3.0), "edge": torch.tensor(1.0), "texture": torch.tensor(8.0)}
    )
    assert total.item() == pytest.approx(4.0)
    assert ew.weights == pytest.approx({"pixel": 1 / 3, "edge": 1 / 3, "texture": 1 / 3})


def test_single_task_is_the_loss_itself() -> None:
    ew = mw.EqualWeight()
    loss = torch.tensor(2.5, requires_grad=True)
    total = ew([loss])
    total.backward()  # type: ignore[no-untyped-call]
    assert total.item() == 2.5 and ew.weights == {"0": 1.0}
    assert loss.grad is not None and loss.grad.item() == 1.0


@FAST
@given(st.lists(FLOATS, min_size=1, max_size=8))
def test_property_total_is_mean_and_weights_sum_to_one(values: list[float]) -> None:
    ew = mw.EqualWeight()
    losses = [torch.tensor(v, dtype=torch.float64) for v in values]
    total = ew(losses)
    np.testing.assert_allclose(total.item(), np.mean(values), rtol=1e-12, atol=1e-9)
    weights = check_weights(ew, [str(i) for i in range(len(values))])
    np.testing.assert_allclose(weights, 1 / len(values))


def test_total_gradient_on_tiny_model(model: TinyMultiTask, shared: list[Tensor]) -> None:
    weights = check_total_gradient(mw.EqualWeight(), model.losses, list(model.parameters()))
    np.testing.assert_allclose(weights, 1 / 3)
    check_grad_untouched(mw.EqualWeight(), model.losses, list(model.parameters()))


def test_permutation_and_scale(model: TinyMultiTask) -> None:
    check_permutation_equivariance(mw.EqualWeight, model.losses, [2, 0, 1])
    check_scale_invariance(mw.EqualWeight, model.losses, 1e3)


def test_backward_returns_weights(model: TinyMultiTask) -> None:
    weights = mw.EqualWeight().backward(model.losses())
    assert weights == pytest.approx(dict.fromkeys(model.tasks, 1 / 3))
    assert all(p.grad is not None for p in model.parameters())


def test_bad_inputs_name_the_task() -> None:
    ew = mw.EqualWeight()
    with pytest.raises(FloatingPointError, match="'edge'"):
        ew({"pixel": torch.tensor(1.0), "edge": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match=r"'pixel'.*shape \(2,\)"):
        ew({"pixel": torch.ones(2)})
    with pytest.raises(ValueError, match="empty"):
        ew({})
