"""Chosen Jacobians for the gradient-level tests: losses ``L_t = J[t] @ theta`` and what a method
makes of them (weights, and the direction ``d`` read back from ``theta.grad``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw

Array = NDArray[np.float64]

__all__ = ["KINDS", "Array", "apply", "direction", "jacobians", "random_jacobian", "train_tiny"]

KINDS = ("gaussian", "badly_scaled", "conflicting")


def apply(weighting: mw.Weighting, theta: nn.Parameter, jac: Array) -> tuple[Array, Array]:
    """One ``weighting.backward`` of the losses ``L_t = jac[t] @ theta``; weights and ``d``."""
    theta.grad = None
    losses = {f"t{i}": theta @ torch.from_numpy(row.copy()) for i, row in enumerate(jac)}
    weights = weighting.backward(losses)
    assert theta.grad is not None
    return np.array(list(weights.values())), theta.grad.numpy().copy()


def direction(name: str, jac: Array, **options: Any) -> tuple[Array, Array]:
    """The weights and the direction ``d`` (``theta.grad``) of ``mw.get(name)`` on ``jac``.

    ``theta`` is a float64 parameter and ``L_t = jac[t] @ theta``, so the
    gradient of ``L_t`` is ``jac[t]``.
    """
    theta = nn.Parameter(torch.zeros(jac.shape[1], dtype=torch.float64))
    return apply(mw.get(name, shared=[theta], **options), theta, jac)


def random_jacobian(seed: int, count: int, kind: str, width: int | None = None) -> Array:
    """A ``(count, width)`` Jacobian: Gaussian rows, rows scaled over 4 decades, or rows
    that conflict (each a mix of a common direction and a large opposite component)."""
    rng = np.random.default_rng(seed)
    width = count + 3 if width is None else width
    jac = rng.normal(size=(count, width))
    if kind == "badly_scaled":
        jac *= 10.0 ** rng.uniform(-2.0, 2.0, size=(count, 1))
    elif kind == "conflicting":
        common = rng.normal(size=width)
        jac = 0.3 * common + jac - 1.5 * jac.mean(axis=0)  # pushed apart: negative inner products
        jac *= 10.0 ** rng.uniform(-1.0, 1.0, size=(count, 1))
    elif kind != "gaussian":
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return jac


@st.composite
def jacobians(draw: st.DrawFn, max_tasks: int = 5, full_rank: bool = True) -> Array:
    """Hypothesis: a ``(T, P)`` Jacobian, ``2 <= T <= max_tasks``, rows scaled over 4 decades;
    with ``full_rank`` its rows are linearly independent (singular values >= 1e-3 of the top)."""
    count = draw(st.integers(2, max_tasks))
    width = draw(st.integers(count if full_rank else 1, count + 3))
    base = draw(arrays(np.float64, (count, width), elements=st.floats(-1.0, 1.0, width=64)))
    scales = draw(arrays(np.float64, (count, 1), elements=st.floats(-2.0, 2.0)))
    jac: Array = base * 10.0**scales
    if full_rank:
        unit = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-300)
        singular = np.linalg.svd(unit, compute_uv=False)
        assume(np.all(np.linalg.norm(base, axis=1) > 1e-3))
        assume(singular[-1] > 1e-3 * singular[0])
    else:
        assume(np.all(np.linalg.norm(base, axis=1) > 1e-3))
    return jac


def train_tiny(name: str, steps: int = 40, **options: Any) -> tuple[float, float]:
    """Train a tiny two-task regression with ``mw.get(name).backward``; the total loss before
    and after ``steps`` Adam steps."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
    x = torch.randn(32, 4)
    y = torch.stack([x[:, 0] - x[:, 1], 3.0 * x[:, 2]], dim=1)
    weighting = mw.get(name, shared=trunk, **options)
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=3e-2)

    def losses() -> dict[str, torch.Tensor]:
        features = trunk(x)
        return {
            f"t{i}": nn.functional.mse_loss(h(features).squeeze(1), y[:, i])
            for i, h in enumerate(heads)
        }

    with torch.no_grad():
        first = float(sum(losses().values()))
    for _ in range(steps):
        optimizer.zero_grad()
        weighting.backward(losses())
        optimizer.step()
    with torch.no_grad():
        last = float(sum(losses().values()))
    return first, last
