"""GradNorm: learnable weights updated inside the call, against the paper's autograd recipe."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    TinyMultiTask,
    check_grad_untouched,
    check_state_dict_round_trip,
    check_total_gradient,
    check_weights,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import mtlweight as mw

FAST = settings(max_examples=25, deadline=None)


def paper_update(
    weights: Tensor,
    losses: dict[str, Tensor],
    shared: Sequence[Tensor],
    initial: Tensor,
    alpha: float,
    lr: float,
) -> Tensor:
    """One GradNorm step done as the paper describes it, with autograd through the norms.

    G_t = ||grad_W (w_t L_t)|| with ``create_graph``; L_grad = sum |G_t - sg(mean G r_t^alpha)|;
    the gradient of L_grad with respect to w, divided by the mean norm of grad_W L_t, is the step.
    """
    w = weights.detach().clone().requires_grad_(True)
    values = torch.stack([v.detach() for v in losses.values()])
    norms, plain = [], []
    for t, loss in enumerate(losses.values()):
        grads = torch.autograd.grad(w[t] * loss, list(shared), retain_graph=True, create_graph=True)
        norms.append(torch.cat([g.reshape(-1) for g in grads]).norm())
        plain.append(norms[-1].detach() / w[t].detach())
    g = torch.stack(norms)
    rates = values / initial
    target = (g.mean() * (rates / rates.mean()) ** alpha).detach()
    (gradient,) = torch.autograd.grad((g - target).abs().sum(), w)
    updated = (w.detach() - lr * gradient / torch.stack(plain).mean()).clamp_min(1e-6)
    return updated * len(updated) / updated.sum()


def test_doc_values_by_hand() -> None:
    head = torch.nn.Linear(1, 1, bias=False)
    head.weight.data.fill_(1.0)
    gradnorm = mw.GradNorm(shared=head, alpha=0.0, lr=0.1)
    y = head(torch.tensor([[1.0]])).sum()
    gradnorm({"a": y, "b": 3 * y})
    assert gradnorm.weights == {"a": 1.0, "b": 1.0}
    # G = (1, 3), target 2 for both; step 0.1 * (-1, +3) / 2; renormalised to sum 2.
    assert gradnorm.task_weights == pytest.approx({"a": 2 * 1.05 / 1.9, "b": 2 * 0.85 / 1.9})
    gradnorm({"a": y, "b": 3 * y})
    assert gradnorm.weights == pytest.approx({"a": 2 * 1.05 / 1.9, "b": 2 * 0.85 / 1.9})


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_matches_the_papers_recipe_while_training(model: TinyMultiTask, alpha: float) -> None:
    shared = list(model.trunk.parameters())
    gradnorm = mw.GradNorm(shared=model.trunk, alpha=alpha, lr=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = torch.ones(3)
    initial: Tensor | None = None
    for _ in range(5):
        losses = model.losses()
        if initial is None:
            initial = torch.stack([v.detach() for v in losses.values()])
        expected = paper_update(weights, losses, shared, initial, alpha, 0.05)
        optimizer.zero_grad()
        gradnorm(losses).backward()
        np.testing.assert_allclose(check_weights(gradnorm, model.tasks), weights.numpy(), rtol=1e-6)
        np.testing.assert_allclose(
            list(gradnorm.task_weights.values()), expected.numpy(), rtol=1e-5
        )
        optimizer.step()
        weights = expected


@FAST
@given(
    st.integers(2, 5).flatmap(
        lambda t: st.lists(
            st.lists(st.floats(1e-3, 1e3), min_size=t, max_size=t), min_size=2, max_size=6
        )
    ),
    st.floats(0.0, 3.0),
    st.floats(1e-3, 10.0),
)
def test_property_weights_positive_and_sum_to_t_after_every_update(
    scales: list[list[float]], alpha: float, lr: float
) -> None:
    """L_t = a_t x with x = 1: gradient norm a_t, loss a_t (rates vary from step to step)."""
    x = torch.ones(1, requires_grad=True)
    gradnorm = mw.GradNorm(shared=[x], alpha=alpha, lr=lr)
    for step in scales:
        gradnorm([a * x.sum() for a in step])
        weights = np.array(list(gradnorm.task_weights.values()))
        assert np.all(weights > 0), weights
        np.testing.assert_allclose(weights.sum(), len(step), rtol=1e-5)


def test_alpha_zero_equalises_the_gradient_norms() -> None:
    x = torch.ones(1, requires_grad=True)
    gradnorm = mw.GradNorm(shared=[x], alpha=0.0, lr=0.01)
    for _ in range(300):
        gradnorm({"a": 1.0 * x.sum(), "b": 4.0 * x.sum()})
    w = gradnorm.task_weights
    assert w["a"] * 1.0 == pytest.approx(w["b"] * 4.0, rel=0.05)  # w = (1.6, 0.4)


def test_slow_task_gets_the_larger_weight() -> None:
    """Equal gradient norms; the loss of "b" falls (L_b = x - c, c a constant), that of "a" not."""
    x = torch.ones(1, requires_grad=True)
    gradnorm = mw.GradNorm(shared=[x], alpha=1.0, lr=0.02)
    for k in range(50):
        gradnorm({"a": x.sum(), "b": x.sum() - (1.0 - 1.0 / (1.0 + 0.1 * k))})
    assert gradnorm.task_weights["a"] > 1.1 > 0.9 > gradnorm.task_weights["b"]
    constant = mw.GradNorm(shared=[x], alpha=1.0, lr=0.02)
    for _ in range(50):
        constant({"a": x.sum(), "b": x.sum()})
    assert constant.task_weights == {"a": 1.0, "b": 1.0}


def test_user_optimizer_not_involved(model: TinyMultiTask) -> None:
    gradnorm = mw.GradNorm(shared=model.trunk)
    assert list(gradnorm.parameters()) == []
    check_grad_untouched(gradnorm, model.losses, list(model.parameters()))
    check_total_gradient(mw.GradNorm(shared=model.trunk), model.losses, list(model.parameters()))


def test_representation_gives_the_norms_of_the_features(model: TinyMultiTask) -> None:
    gradnorm = mw.GradNorm(alpha=0.0, lr=0.1)
    step = model.step()
    assert step.representation is not None
    gradnorm(step.losses, representation=step.representation)
    step = model.step()
    assert step.representation is not None
    norms = mw.autograd.grad_norms(list(step.losses.values()), step.representation)
    target = norms.mean()
    expected = 1 - 0.1 * torch.sign(norms - target) * norms / norms.mean()
    expected = 3 * expected / expected.sum()
    np.testing.assert_allclose(list(gradnorm.task_weights.values()), expected.numpy(), rtol=1e-5)


def test_task_order_may_change_between_calls() -> None:
    x = torch.ones(1, requires_grad=True)
    gradnorm = mw.GradNorm(shared=[x], alpha=0.0, lr=0.1)
    gradnorm({"a": x.sum(), "b": 3 * x.sum()})
    before = gradnorm.task_weights
    gradnorm({"b": 3 * x.sum(), "a": x.sum()})
    assert list(gradnorm.weights) == ["b", "a"]
    assert gradnorm.weights == pytest.approx(before)
    assert gradnorm.task_weights["a"] > before["a"]


def test_state_round_trip(model: TinyMultiTask, tmp_path: Path) -> None:
    check_state_dict_round_trip(
        lambda: mw.GradNorm(shared=model.trunk, lr=0.1),
        lambda i: model.losses(),
        tmp_path,
    )


def test_bad_inputs(model: TinyMultiTask) -> None:
    x = torch.ones(1, requires_grad=True)
    for kwargs in [{"alpha": -1.0}, {"alpha": math.nan}, {"lr": 0.0}, {"lr": math.inf}]:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            mw.GradNorm(shared=[x], **kwargs)
    with pytest.raises(ValueError, match="shared parameters"):
        mw.GradNorm()(model.losses())
    with pytest.raises(ValueError, match="at least 2 tasks"):
        mw.GradNorm(shared=[x])([x.sum()])
    with pytest.raises(ValueError, match=r"positive losses at its first call.*'1' is 0\.0"):
        mw.GradNorm(shared=[x])([x.sum(), 0 * x.sum()])
    gradnorm = mw.GradNorm(shared=[x])
    gradnorm([x.sum(), x.sum()])
    with pytest.raises(ValueError, match=r"non-negative losses.*'0' is -1\.0"):
        gradnorm([-x.sum(), x.sum()])
    with pytest.raises(FloatingPointError, match="'1'"):
        gradnorm([x.sum(), x.sum() * math.nan])
    with pytest.raises(FloatingPointError, match="gradient norm of task '0'"):
        gradnorm([(x - 1).sqrt().sum(), x.sum()])  # value 0, gradient infinite
