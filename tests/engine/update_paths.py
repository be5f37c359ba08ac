"""Shared pieces of the tests that compare a fast update path with the general one.

A fast path (the update assembled from the per-task passes, a cut, a representation)
must give the same weights and the same ``.grad`` on every parameter as the general
path; :class:`Counted` counts how often a part of the graph is backpropagated.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

__all__ = ["Counted", "Step", "assert_same_update"]

#: The weights and every parameter's ``.grad`` after one ``backward``.
Step = tuple[dict[str, float], dict[str, Tensor]]


class Counted(torch.autograd.Function):
    """Identity whose backward calls are counted (how often the graph above it is walked)."""

    calls = 0

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        Counted.calls += 1
        return grad


def assert_same_update(fast: Step, general: Step, label: str, rtol: float = 1e-9) -> None:
    """Same weights and same ``.grad`` everywhere, to ``rtol`` of each tensor's largest entry."""
    w_fast, g_fast = fast
    w_gen, g_gen = general
    assert w_fast.keys() == w_gen.keys()
    for k in w_fast:
        assert w_fast[k] == pytest.approx(w_gen[k], rel=rtol, abs=1e-12), (label, k)
    assert g_fast.keys() == g_gen.keys()
    assert g_fast, "no parameter received a gradient"
    for k in g_fast:
        scale = max(float(g_gen[k].abs().max()), 1e-12)
        torch.testing.assert_close(g_fast[k], g_gen[k], rtol=rtol, atol=rtol * scale,
                                   msg=f"{label}: .grad of {k}")
