"""``backward(losses, representation=z)``: the heads from the per-task passes, the trunk from d.

The per-task passes to the representation ``z`` also collect the gradients of the
leaves between ``z`` and the losses (the task heads), so the update needs no second
pass over the losses' graph: the heads get :math:`\\sum_t c_t \\nabla L_t` from those
passes and only the trunk below ``z`` is backpropagated, from :math:`d`. This must
give the same ``.grad`` everywhere as the general path (the total backpropagated
once more with :math:`d` put in place of its gradient at ``z``), for every
gradient-level method in both ``task_specific`` modes, and the graphs it cannot
serve (a head leaf also used below ``z``, a loss that reaches the trunk around
``z``, a leaf or nested representation, another output of ``z``'s node) must take
the general path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from update_paths import Counted, Step, assert_same_update

import mtlweight as mw
import mtlweight._engine.plans as plans
from mtlweight._engine.graph import leaves_above
from mtlweight.gradient_level import GradientMethod

TASKS = ["a", "b", "c"]


def representation_methods() -> list[str]:
    """Every registered gradient-level method that takes ``representation=``."""
    out = []
    for name in mw.available():
        try:
            w = mw.get(name, tasks=TASKS)
        except (TypeError, ValueError):
            continue
        if not isinstance(w, GradientMethod):
            continue
        z = torch.randn(2, 3, requires_grad=True) * 1.0
        try:  # some keep per-coordinate state of parameters: no representation=
            w.backward({t: (z * (i + 1)).pow(2).sum() for i, t in enumerate(TASKS)},
                       representation=z)
        except ValueError:
            continue
        out.append(name)
    return out


METHODS = representation_methods()


class Net(nn.Module):
    """A trunk to ``z`` (batch x width) and per-task losses from ``z``, with or without heads."""

    def __init__(self, width: int = 5, tasks: int = 3, heads: bool = True, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, width)).double()
        for p in self.trunk.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        self.heads = nn.ModuleList(nn.Linear(width, 2) for _ in range(tasks)).double() if heads \
            else None
        if self.heads is not None:
            for p in self.heads.parameters():
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        self.mix = torch.randn(tasks, width, generator=gen, dtype=torch.float64)
        self.x = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        self.tasks = tasks

    def losses(self, counted: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.trunk(self.x)
        above = Counted.apply(z) if counted else z
        out = {}
        for t in range(self.tasks):
            if self.heads is not None:
                y = self.heads[t](torch.sin(above + t))
                out[str(t)] = (y - 0.3 * t).pow(2).mean() * (t + 1)
            else:
                out[str(t)] = (torch.sin(above) * self.mix[t]).sum(1).pow(2).mean() * (t + 1)
        return z, out


def grads_of(
    net: nn.Module,
    name: str,
    mode: str,
    losses: Callable[[], tuple[Tensor, dict[str, Tensor]]],
    general: bool,
    monkeypatch: pytest.MonkeyPatch,
    **options: Any,
) -> Step:
    """The weights and every parameter's ``.grad`` of one ``backward`` (``general``: old path)."""
    weighting = mw.get(name, task_specific=mode, **options)
    with monkeypatch.context() as patch:
        if general:
            patch.setattr(plans, "leaves_above", lambda losses, representation: None)
        net.zero_grad(set_to_none=True)
        z, found = losses()
        weights = weighting.backward(found, representation=z)
    return weights, {
        n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None
    }


def check_same(
    net: nn.Module,
    name: str,
    mode: str,
    losses: Callable[[], tuple[Tensor, dict[str, Tensor]]],
    monkeypatch: pytest.MonkeyPatch,
    rtol: float = 1e-9,
) -> None:
    fast = grads_of(net, name, mode, losses, False, monkeypatch)
    general = grads_of(net, name, mode, losses, True, monkeypatch)
    assert_same_update(fast, general, f"{name} {mode}", rtol)


@pytest.mark.parametrize("heads", [True, False], ids=["heads", "no-heads"])
@pytest.mark.parametrize("mode", ["weighted", "plain"])
@pytest.mark.parametrize("name", METHODS)
def test_same_grads_as_general_path(
    name: str, mode: str, heads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = Net(heads=heads)
    check_same(net, name, mode, net.losses, monkeypatch)


@pytest.mark.parametrize("name", ["gradient_balance", "upgrad", "mgda", "pcgrad"])
def test_losses_graph_walked_once_per_task(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """T per-task passes over the losses' graph and no further one (was T + 1)."""
    net = Net(heads=True)
    Counted.calls = 0
    grads_of(net, name, "weighted", lambda: net.losses(counted=True), False, monkeypatch)
    assert Counted.calls == net.tasks
    Counted.calls = 0
    grads_of(net, name, "weighted", lambda: net.losses(counted=True), True, monkeypatch)
    assert Counted.calls == net.tasks + 1  # the general path: one more


def test_trunk_gets_d_and_heads_weighted_sum() -> None:
    """Against a hand computation: trunk grads = J_z^T-vector product with d, heads sum w_t."""
    net = Net(heads=True)
    z, losses = net.losses()
    gb = mw.GradientBalance()
    weights = gb.backward(losses, representation=z)
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    # independent: per-task gradients at z and at the heads, by autograd
    net.zero_grad(set_to_none=True)
    z, losses = net.losses()
    w = torch.tensor([weights[k] for k in losses], dtype=torch.float64)
    g_z = [torch.autograd.grad(v, z, retain_graph=True)[0] for v in losses.values()]
    d = sum(wi * gi for wi, gi in zip(w, g_z, strict=True))
    trunk = list(net.trunk.parameters())
    expected_trunk = torch.autograd.grad(z, trunk, d, retain_graph=True)
    heads = list(net.heads.parameters())  # type: ignore[union-attr]
    per_task = [torch.autograd.grad(v, heads, retain_graph=True, allow_unused=True)
                for v in losses.values()]
    names = [n for n, _ in net.named_parameters()]
    for (n, _), e in zip(net.trunk.named_parameters(), expected_trunk, strict=True):
        torch.testing.assert_close(got[f"trunk.{n}"], e, rtol=1e-10, atol=1e-12)
    for j, (n, _) in enumerate(net.heads.named_parameters()):  # type: ignore[union-attr]
        e = sum(wi * (torch.zeros_like(heads[j]) if g[j] is None else g[j])
                for wi, g in zip(w, per_task, strict=True))
        torch.testing.assert_close(got[f"heads.{n}"], e, rtol=1e-10, atol=1e-12)
    assert len(got) == len(names)


# ---------------------------------------------------------------- fallbacks
def tied_losses(net: Net) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
    """Head 0's bias is also added inside the trunk, below z."""
    def losses() -> tuple[Tensor, dict[str, Tensor]]:
        assert net.heads is not None
        bias = net.heads[0].bias
        h = net.trunk[1](net.trunk[0](net.x) + bias.sum())
        z = net.trunk[2](h)
        return z, {str(t): net.heads[t](torch.sin(z)).pow(2).mean() for t in range(net.tasks)}
    return losses


def around_losses(net: Net) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
    """Task 1 also reaches the trunk's first layer without passing through z."""
    def losses() -> tuple[Tensor, dict[str, Tensor]]:
        h = net.trunk[1](net.trunk[0](net.x))
        z = net.trunk[2](h)
        out = {str(t): (torch.sin(z) * net.mix[t]).sum(1).pow(2).mean() for t in range(net.tasks)}
        out["1"] = out["1"] + h.pow(2).mean()
        return z, out
    return losses


def decay_losses(net: Net) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
    """Task 0 has a weight-decay term on a trunk weight (a leaf below z, reached directly)."""
    def losses() -> tuple[Tensor, dict[str, Tensor]]:
        z, out = net.losses()
        out["0"] = out["0"] + 0.1 * net.trunk[0].weight.pow(2).sum()
        return z, out
    return losses


def chunk_losses(net: Net) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
    """z is one chunk of a layer's output; the other chunk feeds task 2."""
    def losses() -> tuple[Tensor, dict[str, Tensor]]:
        h = net.trunk[1](net.trunk[0](net.x))
        z, other = h.chunk(2, dim=1)
        out = {str(t): torch.sin(z).sum(1).pow(2).mean() * (t + 1) for t in range(net.tasks)}
        out["2"] = out["2"] + other.pow(2).mean()
        return z, out
    return losses


FALLBACKS = {"tied": tied_losses, "around": around_losses, "decay": decay_losses,
             "chunk": chunk_losses}


@pytest.mark.parametrize("graph", list(FALLBACKS))
def test_fallback_graphs(graph: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(heads=True)
    losses = FALLBACKS[graph](net)
    z, found = losses()
    assert leaves_above(list(found.values()), [z]) is None
    for name in ["gradient_balance", "upgrad", "mgda"]:
        for mode in ["weighted", "plain"]:
            check_same(net, name, mode, losses, monkeypatch)


def test_leaf_and_nested_representations() -> None:
    leaf = torch.randn(3, 2, requires_grad=True)
    assert leaves_above([leaf.sin().sum()], [leaf]) is None
    w = nn.Parameter(torch.randn(2, 2))
    z1 = torch.randn(3, 2) @ w
    z2 = z1.tanh()
    assert leaves_above([z2.sum(), z1.sum()], [z1, z2]) is None
    loss = z1.sum()
    assert leaves_above([loss], [z1]) == []
    head = nn.Parameter(torch.ones(2))
    assert [id(t) for t in leaves_above([(z1 * head).sum()], [z1]) or []] == [id(head)]


def test_loss_is_the_representation() -> None:
    w = nn.Parameter(torch.randn(2))
    z = (w * 2).sum()
    assert leaves_above([z, (z * 3)], [z]) is None


def test_reduced_precision_representation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bfloat16 representation gets d in its dtype, as the general path gives it."""
    net = Net(heads=False)

    def losses() -> tuple[Tensor, dict[str, Tensor]]:
        z = net.trunk(net.x).to(torch.bfloat16)
        return z, {str(t): (torch.sin(z) * net.mix[t].to(torch.bfloat16)).sum(1).pow(2).mean()
                   for t in range(net.tasks)}

    check_same(net, "gradient_balance", "weighted", losses, monkeypatch, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 6),
    tasks=st.integers(2, 4),
    heads=st.booleans(),
    mode=st.sampled_from(["weighted", "plain"]),
    name=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_property_same_as_general_path(
    width: int, tasks: int, heads: bool, mode: str, name: str, seed: int
) -> None:
    net = Net(width=width, tasks=tasks, heads=heads, seed=seed)
    with pytest.MonkeyPatch.context() as monkeypatch:
        check_same(net, name, mode, net.losses, monkeypatch, rtol=1e-7)


def test_assemble_off() -> None:
    """``assemble = False``: the losses' graph walked T + 1 times, the same gradients."""
    net = Net(heads=True)
    results = []
    for flag in (True, False):
        gb = mw.GradientBalance()
        gb.assemble = flag
        net.zero_grad(set_to_none=True)
        Counted.calls = 0
        z, losses = net.losses(counted=True)
        weights = gb.backward(losses, representation=z)
        results.append(((weights, {n: p.grad.clone() for n, p in net.named_parameters()}),
                        Counted.calls))
    assert [calls for _, calls in results] == [net.tasks, net.tasks + 1]
    assert_same_update(results[0][0], results[1][0], "assemble")
