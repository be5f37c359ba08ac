"""GeometricMean (GLS): the geometric mean of the losses and its implied weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    TinyMultiTask,
    check_grad_untouched,
    check_permutation_equivariance,
    check_scale_invariance,
    check_state_dict_round_trip,
    check_total_gradient,
    check_weights,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight as mw

FAST = settings(max_examples=25, deadline=None)
POSITIVE = st.floats(1e-6, 1e6)


def test_doc_values() -> None:
    gls = mw.GeometricMean()
    total = gls(
        {"pixel": torch.tensor(4.0), "edge": torch.tensor(1.0), "texture": torch.tensor(2.0)}
    )
    assert total.item() == pytest.approx(2.0)  # (4 * 1 * 2) ** (1 / 3)
    assert gls.weights == pytest.approx({"pixel": 1 / 6, "edge": 2 / 3, "texture": 1 / 3})


@FAST
@given(st.lists(POSITIVE, min_size=1, max_size=8))
def test_property_total_and_implied_weights_match_direct_formula(values: list[float]) -> None:
    gls = mw.GeometricMean()
    losses = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    total = gls(losses)
    expected = float(np.exp(np.mean(np.log(values))))  # (prod L_t) ** (1 / T)
    np.testing.assert_allclose(total.item(), expected, rtol=1e-10)
    weights = check_weights(gls, [str(i) for i in range(len(values))])
    np.testing.assert_allclose(weights, expected / (len(values) * np.array(values)), rtol=1e-10)
    # The gradient with respect to each loss is the implied weight: that of the direct formula.
    direct = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    torch.prod(torch.stack(direct)).pow(1 / len(values)).backward()  # type: ignore[no-untyped-call]
    total.backward()  # type: ignore[no-untyped-call]
    for ours, reference in zip(losses, direct, strict=True):
        assert ours.grad is not None and reference.grad is not None
        np.testing.assert_allclose(ours.grad.item(), reference.grad.item(), rtol=1e-9)


@FAST
@given(st.lists(POSITIVE, min_size=2, max_size=6), st.floats(1e-3, 1e3), st.data())
def test_property_scaling_one_loss(values: list[float], factor: float, data: st.DataObject) -> None:
    """Scaling L_k by c scales the total by c^(1/T), w_k by c^(1/T - 1), the others by c^(1/T)."""
    k = data.draw(st.integers(0, len(values) - 1))
    t = len(values)
    plain, scaled = mw.GeometricMean(), mw.GeometricMean()
    a = plain([torch.tensor(v, dtype=torch.float64) for v in values])
    b = scaled(
        [
            torch.tensor(v * (factor if i == k else 1.0), dtype=torch.float64)
            for i, v in enumerate(values)
        ]
    )
    np.testing.assert_allclose(b.item(), a.item() * factor ** (1 / t), rtol=1e-9)
    for i in range(t):
        exponent = 1 / t - 1 if i == k else 1 / t
        np.testing.assert_allclose(
            scaled.weights[str(i)], plain.weights[str(i)] * factor**exponent, rtol=1e-9
        )


def test_scaling_one_task_keeps_the_gradient_direction(model: TinyMultiTask) -> None:
    params = list(model.parameters())
    plain = torch.autograd.grad(mw.GeometricMean()(model.losses()), params)
    losses = model.losses()
    losses["edge"] = 1e4 * losses["edge"]
    scaled = torch.autograd.grad(mw.GeometricMean()(losses), params)
    for g, h in zip(plain, scaled, strict=True):
        torch.testing.assert_close(h, g * 1e4 ** (1 / 3), rtol=1e-4, atol=1e-6)


def test_no_overflow_or_underflow_in_the_product() -> None:
    gls = mw.GeometricMean()
    assert gls([torch.tensor(1e30)] * 5).item() == pytest.approx(1e30, rel=1e-5)
    assert gls([torch.tensor(1e-30)] * 5).item() == pytest.approx(1e-30, rel=1e-5)
    assert math.isfinite(sum(gls.weights.values()))


def test_on_tiny_model(model: TinyMultiTask) -> None:
    params = list(model.parameters())
    check_total_gradient(mw.GeometricMean(), model.losses, params)
    check_grad_untouched(mw.GeometricMean(), model.losses, params)
    check_permutation_equivariance(mw.GeometricMean, model.losses, [1, 2, 0])
    check_scale_invariance(mw.GeometricMean, model.losses, 1e-3)


def test_state_round_trip(model: TinyMultiTask, tmp_path: Path) -> None:
    check_state_dict_round_trip(mw.GeometricMean, lambda i: model.losses(), tmp_path)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_loss_names_the_task(bad: float) -> None:
    with pytest.raises(ValueError, match=f"'edge' is {bad}"):
        mw.GeometricMean()({"pixel": torch.tensor(1.0), "edge": torch.tensor(bad)})


def test_non_finite_loss_names_the_task() -> None:
    with pytest.raises(FloatingPointError, match="'pixel'"):
        mw.GeometricMean()({"pixel": torch.tensor(float("inf")), "edge": torch.tensor(1.0)})
