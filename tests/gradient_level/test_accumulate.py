"""Gradient accumulation: per-task gradients summed over micro-batches, weighted once per step.

The reference is the same method on the full batch in one call: with mean losses divided by
the number of micro-batches, the weights and every ``.grad`` must match it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask
from torch import Tensor

import mtlweight as mw

METHODS: dict[str, Callable[[TinyMultiTask], mw.GradientMethod]] = {
    "nash_mtl": lambda m: mw.NashMTL(m.trunk, max_norm=0.0),
    "nash_mtl_plain": lambda m: mw.NashMTL(m.trunk, max_norm=0.0, task_specific="plain"),
    "mgda": lambda m: mw.MGDA(m.trunk),
    "pcgrad": lambda m: mw.PCGrad(m.trunk, seed=3),
    "gb": lambda m: mw.GradientBalance(m.trunk),
}


def losses_of(model: TinyMultiTask, rows: slice, divisor: float = 1.0) -> dict[str, Tensor]:
    """Mean losses over ``rows`` of the model's fixed batch, divided by ``divisor``."""
    _, outputs = model(model.inputs[rows])
    return {
        t: model.scales[t] * (outputs[t] - model.targets[t][rows]).square().mean() / divisor
        for t in model.tasks
    }


def grads(model: TinyMultiTask) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize(
    "splits", [[slice(0, 3), slice(3, 6)], [slice(0, 1), slice(1, 4), slice(4, 6)]]
)
def test_accumulation_equals_the_full_batch(name: str, splits: list[slice]) -> None:
    model = TinyMultiTask(seed=1)
    full = METHODS[name](model)
    full_weights = full.backward(losses_of(model, slice(0, 6)))
    reference = grads(model)
    model.zero_grad(set_to_none=True)
    accumulated = METHODS[name](model)
    for rows in splits:  # micro-batch losses: their mean over 6 samples, split
        share = (rows.stop - rows.start) / 6
        accumulated.accumulate(losses_of(model, rows, 1 / share))
        assert all(p.grad is None for p in model.parameters())  # nothing written yet
    weights = accumulated.backward_accumulated()
    np.testing.assert_allclose(list(weights.values()), list(full_weights.values()), rtol=1e-5)
    for got, want in zip(grads(model), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert accumulated.step == 1 and accumulated.history[-1] == weights


def test_per_micro_batch_weighting_is_not_the_full_batch() -> None:
    """The test above has power: weighting each micro-batch (the old way) differs."""
    model = TinyMultiTask(seed=1)
    mw.NashMTL(model.trunk, max_norm=0.0).backward(losses_of(model, slice(0, 6)))
    reference = grads(model)
    model.zero_grad(set_to_none=True)
    nash = mw.NashMTL(model.trunk, max_norm=0.0)
    for rows in (slice(0, 3), slice(3, 6)):
        nash.backward(losses_of(model, rows, 2.0))
    assert not torch.allclose(grads(model)[0], reference[0], rtol=1e-2)


def test_accumulate_adds_to_existing_grads_and_clears_its_sums() -> None:
    model = TinyMultiTask(seed=1)
    mgda = mw.MGDA(model.trunk)
    mgda.accumulate(losses_of(model, slice(0, 6)))
    mgda.backward_accumulated()
    once = grads(model)
    mgda.accumulate(losses_of(model, slice(0, 6)))
    mgda.backward_accumulated()
    for got, want in zip(grads(model), once, strict=True):
        torch.testing.assert_close(got, 2 * want)
    with pytest.raises(RuntimeError, match=r"nothing was accumulated; call \.accumulate"):
        mgda.backward_accumulated()


def test_accumulate_refuses_other_tasks_midway(model: TinyMultiTask) -> None:
    mgda = mw.MGDA(model.trunk)
    losses = losses_of(model, slice(0, 3))
    mgda.accumulate(losses)
    with pytest.raises(ValueError, match=r"this micro-batch has the tasks \['pixel', 'edge'\]"):
        mgda.accumulate({k: v for k, v in losses_of(model, slice(3, 6)).items() if k != "texture"})


def test_a_representation_method_cannot_accumulate(model: TinyMultiTask) -> None:
    with pytest.raises(ValueError, match=r"MGDAUB takes the gradients .* cannot be summed"):
        mw.MGDAUB().accumulate(model.losses())
