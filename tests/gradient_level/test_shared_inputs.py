"""What a gradient-level method differentiates: the representation must be reached, and the
shared parameters are resolved at each step (freezing or unfreezing a layer just works)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, per_task_gradients

import mtlweight as mw
import mtlweight._registry as registry

GRADIENT_LEVEL = [n for n in mw.available() if issubclass(registry._resolve(n), mw.GradientMethod)]


def build(name: str, model: TinyMultiTask) -> mw.Weighting:
    return mw.get(name, shared=model.trunk, tasks=model.tasks)


@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_a_representation_no_loss_reaches_is_named(name: str, model: TinyMultiTask) -> None:
    """Before: every method but GB silently returned uniform weights for a detached copy."""
    try:  # methods that keep per-coordinate state refuse any representation= (by name)
        probe = model.step()
        build(name, model).backward(probe.losses, representation=probe.representation)
    except ValueError as error:
        assert "representation=" in str(error)
        return
    step = model.step()
    assert step.representation is not None
    copy = step.representation.detach().requires_grad_()
    weighting = build(name, model)
    pattern = r"no loss reaches the representation= tensor \(shape \(6, 5\), torch.float32\)"
    with pytest.raises(ValueError, match=pattern):
        weighting.backward(step.losses, representation=copy)
    assert weighting.step == 0


def test_gradnorm_names_an_unreached_representation_too(model: TinyMultiTask) -> None:
    step = model.step()
    assert step.representation is not None
    copy = step.representation.detach().requires_grad_()
    with pytest.raises(ValueError, match=r"GradNorm: no loss reaches the representation="):
        mw.GradNorm()(step.losses, representation=copy)


def trunk_grads(model: TinyMultiTask) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return model.linear.weight.grad, model.linear.bias.grad


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "gb", "nash_mtl", "cagrad"])
def test_freezing_a_shared_layer_after_construction(name: str, model: TinyMultiTask) -> None:
    """Before: PCGrad crashed with ``split_with_sizes expects split_sizes to sum exactly``."""
    weighting = build(name, model)
    weighting.backward(model.losses())  # all shared parameters trainable
    model.zero_grad(set_to_none=True)
    model.linear.bias.requires_grad_(False)
    weights = weighting.backward(model.losses())
    weight, bias = trunk_grads(model)
    assert bias is None and weight is not None
    per_task = per_task_gradients(model.losses, [model.linear.weight])
    expected = sum(w * per_task[t] for t, w in weights.items())
    np.testing.assert_allclose(weight.double().reshape(-1).numpy(), expected, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)
    model.linear.bias.requires_grad_(True)  # and back
    weighting.backward(model.losses())
    assert all(g is not None for g in trunk_grads(model))


def test_the_gram_matrix_follows_the_trainable_parameters(model: TinyMultiTask) -> None:
    mgda = mw.MGDA(model.trunk)
    model.linear.bias.requires_grad_(False)
    mgda(model.losses())
    per_task = per_task_gradients(model.losses, [model.linear.weight])
    jac = np.stack(list(per_task.values()))
    np.testing.assert_allclose(mgda.statistics["gram"].numpy(), jac @ jac.T, rtol=1e-5)


def test_a_fully_frozen_module_is_named_at_the_step(model: TinyMultiTask) -> None:
    pcgrad = mw.PCGrad(model.trunk)
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"PCGrad: none of the 2 shared parameters requires grad"):
        pcgrad.backward(model.losses())
