"""Shared ``nn.Linear`` layers: G and the update from activations equal the general path.

The shortcut (``mtlweight/gradient_level/_linear_gram.py``) never forms a task's
weight gradient: ``<grad_W L_s, grad_W L_t> = <D_s D_t^T, x x^T>`` and
``sum_t c_t grad_W L_t = (sum_t c_t D_t)^T x``. Every method of ``G`` alone must
give the same weights and the same ``.grad`` everywhere with it as without it
(``linear_shortcut = False``), and the graphs it cannot serve (tied weights, a
non-linear shared layer, trainable layers below the shared ones) must take the
general path.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import mtlweight as mw
import mtlweight._engine.plans as plans
from mtlweight._engine.linear import linear_taps
from mtlweight.gradient_level import GradientMethod

TASKS = ["a", "b", "c"]


def gram_methods() -> list[str]:
    """Every registered gradient-level method of ``G`` alone (the shortcut's domain)."""
    out = []
    probe = nn.Linear(2, 2)
    for name in mw.available():
        try:
            w = mw.get(name, shared=probe, tasks=TASKS)
        except (TypeError, ValueError):
            continue
        if isinstance(w, GradientMethod) and not (w.needs_matrix or w.needs_representation):
            out.append(name)
    return out


class Spy:
    """Counts the calls of the shortcut's per-task passes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = plans.linear_task_grads

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(plans, "linear_task_grads", counted)


def mlp(widths: list[int], heads: int, bias: bool = True, seed: int = 0
        ) -> tuple[nn.Sequential, nn.ModuleList]:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b, bias=bias), nn.Tanh()]
    trunk = nn.Sequential(*layers).double()
    return trunk, nn.ModuleList(nn.Linear(widths[-1], 1) for _ in range(heads)).double()


def step(name: str, fast: bool, widths: list[int], rows: tuple[int, ...], heads: int = 3,
         bias: bool = True, mode: str | None = None, seed: int = 0,
         trunk_fn: Any = None) -> tuple[dict[str, float], list[torch.Tensor]]:
    trunk, head_list = mlp(widths, heads, bias, seed)
    if trunk_fn is not None:
        trunk_fn(trunk)
    options: dict[str, Any] = {} if mode is None else {"task_specific": mode}
    w = mw.get(name, shared=trunk, tasks=TASKS[:heads] if heads <= 3 else None, **options)
    w.linear_shortcut = fast
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*rows, widths[0], generator=g, dtype=torch.float64)
    y = torch.randn(*rows, heads, generator=g, dtype=torch.float64)
    features = trunk(x)
    losses = {f"t{i}": F.mse_loss(h(features).squeeze(-1), y[..., i])
              for i, h in enumerate(head_list)}
    weights = w.backward(losses)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for p in [*trunk.parameters(), *head_list.parameters()]]
    return weights, grads


def assert_same(a: tuple[dict[str, float], list[torch.Tensor]],
                b: tuple[dict[str, float], list[torch.Tensor]], rtol: float = 1e-9) -> None:
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert a[0][k] == pytest.approx(b[0][k], rel=rtol, abs=1e-12), k
    for ga, gb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("mode", ["plain", "weighted"])
@pytest.mark.parametrize("name", gram_methods())
def test_every_gram_method_takes_it_and_agrees(name: str, mode: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    try:
        fast = step(name, True, [6, 8, 8, 5], (7,), mode=mode)
    except TypeError:  # a method without task_specific modes
        pytest.skip(f"{name} has no task_specific={mode!r}")
    assert spy.calls == 1, f"{name} did not take the shortcut"
    assert_same(fast, step(name, False, [6, 8, 8, 5], (7,), mode=mode))
    assert spy.calls == 1


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    rows=st.sampled_from([(1,), (5,), (12,), (2, 3), (3, 1, 4)]),
    heads=st.integers(2, 4),
    name=st.sampled_from(["gb", "upgrad", "mgda", "imtl_g"]),
    seed=st.integers(0, 10_000),
)
def test_random_mlps_agree(widths: list[int], rows: tuple[int, ...], heads: int, name: str,
                           seed: int) -> None:
    """Any widths, batch shapes (leading dimensions are flattened by F.linear) and tasks;
    both the N x N route (small batch) and the direct one (batch above the widths).

    Every task gradient factors through the trunk's output (``N x width`` numbers), so with
    fewer of those than tasks ``G`` is singular and the weights of a method are not unique
    (rounding picks them): such draws are left out."""
    assume(math.prod(rows) * widths[-1] >= heads)
    assert_same(step(name, True, widths, rows, heads=heads, seed=seed),
                step(name, False, widths, rows, heads=heads, seed=seed), rtol=1e-7)


def test_frozen_biases_and_bias_free_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    def freeze(trunk: nn.Sequential) -> None:
        for m in trunk:
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.requires_grad_(False)

    spy = Spy(monkeypatch)
    assert_same(step("gb", True, [4, 6, 3], (5,), trunk_fn=freeze),
                step("gb", False, [4, 6, 3], (5,), trunk_fn=freeze))
    assert spy.calls == 1
    # without bias F.linear is an mm, not an addmm: the general path, same result
    assert_same(step("gb", True, [4, 6, 3], (5,), bias=False),
                step("gb", False, [4, 6, 3], (5,), bias=False))
    assert spy.calls == 1


def test_a_task_that_does_not_reach_the_trunk() -> None:
    """Its D is zero: the same weights and update as the general path (zeros there too)."""
    def run(fast: bool) -> tuple[dict[str, float], list[torch.Tensor]]:
        trunk, heads = mlp([3, 4, 2], 3)
        w = mw.UPGrad(shared=trunk)
        w.allow_unreached = True
        w.linear_shortcut = fast
        x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        f = trunk(x)
        losses = [heads[0](f).square().mean(), heads[1](f).abs().mean(),
                  heads[2](torch.ones(6, 2, dtype=torch.float64)).square().mean()]
        weights = w.backward(losses)
        return weights, [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                         for p in [*trunk.parameters(), *heads.parameters()]]

    assert_same(run(True), run(False))


def test_graphs_it_cannot_serve_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    torch.manual_seed(0)
    layer = nn.Linear(4, 4).double()
    heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)

    def losses(f: torch.Tensor) -> list[torch.Tensor]:
        return [h(f).square().mean() for h in heads]

    gb = mw.GradientBalance(shared=layer)
    gb.backward(losses(layer(layer(x).tanh())))  # the layer called twice (tied)
    trunk = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).double()
    mw.GradientBalance(shared=trunk).backward(losses(trunk(x)))  # a non-linear shared layer
    below = nn.Linear(4, 4).double()
    mw.GradientBalance(shared=layer).backward(losses(layer(below(x))))  # trainable below
    assert spy.calls == 0


def test_taps_name_every_shared_tensor() -> None:
    trunk, heads = mlp([3, 5, 2], 2)
    x = torch.randn(4, 3, dtype=torch.float64)
    f = trunk(x)
    losses = [h(f).sum() for h in heads]
    taps = linear_taps(losses, list(trunk.parameters()))
    assert taps is not None and len(taps) == 2
    found = {id(t.weight) for t in taps} | {id(t.bias) for t in taps}
    assert found == {id(p) for p in trunk.parameters()}
    shapes = sorted(tuple(t.inputs.shape) for t in taps)
    assert shapes == [(4, 3), (4, 5)]  # each layer's input, as autograd saved it
    assert linear_taps(losses, [*trunk.parameters(), heads[0].weight]) is None  # a head too
