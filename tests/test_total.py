"""Every strategy returns a loss: ``weighting(losses)`` backpropagates the method's update.

Checked against ``weighting.backward(losses)`` (the plain-loop path, itself checked
against TorchJD and hand computations elsewhere), against hand-made linear losses, and
for what trainers do with a loss: scale it, hook the gradients' accumulation.
"""

from __future__ import annotations

from typing import Any

import _trainer_worker as worker
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import mtlweight as mw
from mtlweight._total import update_total

TASKS = worker.TASKS


class Net(worker.Net):
    def step(self, seed: int = 1) -> tuple[dict[str, Tensor], Tensor]:
        """Losses and features of a random batch of six samples."""
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
        y = torch.randn(6, 3, generator=generator, dtype=torch.float64) * torch.tensor(
            [1.0, 5.0, 0.2], dtype=torch.float64
        )
        return self.losses(x, y)


def build(name: str, net: Net, **options: Any) -> mw.Weighting:
    if name == "fixed":
        options["weights"] = {"a": 1.0, "b": 0.5, "c": 2.0}
    return mw.get(name, shared=net.trunk, tasks=list(TASKS), **options)


def grads_after(name: str, how: str, scale: float = 1.0, **options: Any) -> list[Tensor]:
    """The model's ``.grad`` after one step of ``name``, by ``how``: "total" or "backward"."""
    net = Net()
    torch.manual_seed(3)
    weighting = build(name, net, **options)
    for seed in (1, 2):  # two steps: stateful methods use their state at the second
        net.zero_grad(set_to_none=True)
        losses, features = net.step(seed)
        representation = features if weighting.needs_representation else None
        if how == "total":
            (weighting(losses, representation=representation) * scale).backward()
        else:
            weighting.backward(losses, representation=representation)
    return [p.grad.clone() * (1.0 if how == "total" else scale) for p in net.parameters()]  # type: ignore[union-attr]


GRADIENT_LEVEL = [
    n for n in mw.available()
    if isinstance(build(n, Net()), mw.GradientMethod)
]
CASES: list[tuple[str, dict[str, Any]]] = [(n, {}) for n in mw.available()] + [
    (n, {"task_specific": mode}) for n in GRADIENT_LEVEL for mode in ("weighted", "plain")
]


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_the_total_backpropagates_what_backward_writes(name: str, options: dict[str, Any]) -> None:
    for found, expected in zip(
        grads_after(name, "total", **options), grads_after(name, "backward", **options),
        strict=True,
    ):
        torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "graddrop", "db_mtl", "upgrad"])
def test_a_scaled_total_scales_the_update(name: str) -> None:
    """A trainer's ``loss / accumulation_steps`` (or AMP's scale) scales the whole update."""
    for found, expected in zip(
        grads_after(name, "total", scale=0.25), grads_after(name, "backward", scale=0.25),
        strict=True,
    ):
        torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["pcgrad", "imtl_g", "moco"])
def test_each_shared_gradient_is_accumulated_once_with_the_update(name: str) -> None:
    """DDP, Accelerate and Lightning hook the accumulation: it must run once, with d."""
    expected = grads_after(name, "backward")
    net = Net()
    torch.manual_seed(3)
    weighting = build(name, net)
    seen: list[list[Tensor]] = [[] for _ in net.parameters()]
    for p, log in zip(net.parameters(), seen, strict=True):
        p.register_post_accumulate_grad_hook(  # type: ignore[no-untyped-call]
            lambda q, log=log: log.append(q.grad.clone())
        )
    for seed in (1, 2):
        net.zero_grad(set_to_none=True)
        for log in seen:
            log.clear()
        weighting(net.step(seed)[0]).backward()
    for log, grad in zip(seen, expected, strict=True):
        assert len(log) == 1
        torch.testing.assert_close(log[0], grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["mgda_ub", "pcgrad", "graddrop"])
def test_a_representation_receives_the_update(name: str) -> None:
    def run(how: str) -> list[Tensor]:
        net = Net()
        torch.manual_seed(3)
        weighting = mw.get(name, task_specific="plain")
        losses, features = net.step()
        if how == "total":
            weighting(losses, representation=features).backward()
        else:
            weighting.backward(losses, representation=features)
        return [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]

    for found, expected in zip(run("total"), run("backward"), strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    d=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    c=st.lists(st.floats(-2, 2), min_size=2, max_size=2),
    scale=st.floats(-3, 3),
)
def test_update_total_gives_d_to_the_inputs_and_c_to_the_rest(
    d: list[float], c: list[float], scale: float
) -> None:
    r"""Linear losses :math:`L_t = a_t^\top \theta + k_t h_t`: the gradients are known."""
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    head = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 4.0]], dtype=torch.float64)
    k = torch.tensor([2.0, -1.5], dtype=torch.float64)
    losses = [a[t] @ theta + k[t] * head[t] for t in range(2)]
    direction = torch.tensor(d, dtype=torch.float64)
    coefficients = torch.tensor(c, dtype=torch.float64)
    residual = direction - coefficients @ a  # d - J^T c
    total = update_total(losses, [0.5, 0.5], c, [theta], [residual])
    (total * scale).backward()  # type: ignore[no-untyped-call]
    np.testing.assert_allclose(theta.grad.numpy(), scale * np.array(d), atol=1e-12)  # type: ignore[union-attr]
    np.testing.assert_allclose(
        head.grad.numpy(), scale * np.array(c) * k.numpy(), atol=1e-12  # type: ignore[union-attr]
    )


def test_update_total_checks_its_residuals() -> None:
    theta = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="1 shared inputs but 0 residuals"):
        update_total([theta.sum()], [1.0], [1.0], [theta], [])
