"""Shared parameters above trainable layers: the graph below them gets one pass from a cut.

With ``shared`` the last layer (the paper's GB) and trainable layers below it, the
per-task passes to the shared parameters also take the gradients of the heads and
of the edges into the rest of the graph (the *cut*), and that rest is
backpropagated once, from the combined gradients at the cut. The top of the graph
(the losses, the shared layer) is then walked ``T`` times, not ``T + 1``. Every
gradient-level method must give the same ``.grad`` everywhere as the general path
(the total backpropagated with :math:`d` in place of its gradient at the shared
parameters), in both ``task_specific`` modes, and the graphs it cannot serve must
take the general path.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from update_paths import Counted, Step, assert_same_update

import mtlweight as mw
import mtlweight._engine.plans as plans
from mtlweight._engine.graph import shared_cut
from mtlweight.gradient_level import GradientMethod

TASKS = ["0", "1", "2"]


def shared_methods() -> list[str]:
    """Every registered gradient-level method that takes shared parameters."""
    out = []
    probe = nn.Linear(2, 2)
    for name in mw.available():
        try:
            w = mw.get(name, shared=probe)
        except (TypeError, ValueError):
            continue
        if isinstance(w, GradientMethod) and not w.needs_representation:
            out.append(name)
    return out


METHODS = shared_methods()


def randomise(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))


class Net(nn.Module):
    """Trainable trunk, a shared last layer, per-task losses (with or without heads)."""

    def __init__(self, width: int = 5, tasks: int = 3, heads: bool = True, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, width), nn.Tanh())
        self.last = nn.Linear(width, width)
        self.heads = nn.ModuleList(nn.Linear(width, 2) for _ in range(tasks)) if heads else None
        self.double()
        randomise(self, gen)
        self.mix = torch.randn(tasks, width, generator=gen, dtype=torch.float64)
        self.x = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        self.tasks = tasks

    def losses(self, counted: bool = False) -> dict[str, Tensor]:
        out = self.last(self.trunk(self.x))
        if counted:
            out = Counted.apply(out)
        found = {}
        for t in range(self.tasks):
            if self.heads is not None:
                y = self.heads[t](torch.sin(out + t))
                found[str(t)] = (y - 0.3 * t).pow(2).mean() * (t + 1)
            else:
                found[str(t)] = (torch.sin(out) * self.mix[t]).sum(1).pow(2).mean() * (t + 1)
        return found


def grads_of(
    net: Net,
    name: str,
    mode: str,
    losses: Callable[[], dict[str, Tensor]],
    general: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> Step:
    """The weights and every parameter's ``.grad`` of one ``backward`` (``general``: no cut)."""
    weighting = mw.get(name, shared=net.last, task_specific=mode)
    weighting.allow_unreached = True  # the graph "alone" has a task that skips net.last
    with monkeypatch.context() as patch:
        if general:
            patch.setattr(plans, "shared_cut", lambda *args, **kwargs: None)
        net.zero_grad(set_to_none=True)
        weights = weighting.backward(losses())
    return weights, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def check_same(
    net: Net,
    name: str,
    mode: str,
    losses: Callable[[], dict[str, Tensor]],
    monkeypatch: pytest.MonkeyPatch,
    rtol: float = 1e-9,
) -> None:
    fast = grads_of(net, name, mode, losses, False, monkeypatch)
    general = grads_of(net, name, mode, losses, True, monkeypatch)
    assert any(k.startswith("trunk.") for k in fast[1]), "the trunk received no gradient"
    assert_same_update(fast, general, f"{name} {mode}", rtol)


@pytest.mark.parametrize("heads", [True, False], ids=["heads", "no-heads"])
@pytest.mark.parametrize("mode", ["weighted", "plain"])
@pytest.mark.parametrize("name", METHODS)
def test_same_grads_as_general_path(
    name: str, mode: str, heads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = Net(heads=heads)
    check_same(net, name, mode, net.losses, monkeypatch)


def test_cut_found() -> None:
    net = Net(heads=True)
    losses = list(net.losses().values())
    split = shared_cut(losses, list(net.last.parameters()))
    assert split is not None
    assert len(split.cut) == 1  # the input of the shared layer
    head_ids = {id(p) for p in net.heads.parameters()}  # type: ignore[union-attr]
    assert {id(t) for t in split.heads} == head_ids


@pytest.mark.parametrize("name", ["gradient_balance", "upgrad", "mgda", "pcgrad"])
def test_top_walked_once_per_task(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """T per-task passes over the losses' graph and no further one (was T + 1)."""
    net = Net(heads=True)
    Counted.calls = 0
    grads_of(net, name, "weighted", lambda: net.losses(counted=True), False, monkeypatch)
    assert Counted.calls == net.tasks
    Counted.calls = 0
    grads_of(net, name, "weighted", lambda: net.losses(counted=True), True, monkeypatch)
    assert Counted.calls == net.tasks + 1


def test_by_hand() -> None:
    """GB: shared grads = sum_t w_t g_t, trunk = backprop of sum_t w_t dL_t/dh at the cut."""
    net = Net(heads=True)
    gb = mw.GradientBalance(shared=net.last)
    weights = gb.backward(net.losses())
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    losses = net.losses()
    w = [weights[k] for k in losses]
    total = sum(wi * v for wi, v in zip(w, losses.values(), strict=True))
    expected = dict(zip([n for n, _ in net.named_parameters()],
                        torch.autograd.grad(total, list(net.parameters())), strict=True))
    for k, e in expected.items():  # GB's d is sum_t w_t g_t: the weighted total's gradient
        torch.testing.assert_close(got[k], e, rtol=1e-10, atol=1e-12, msg=k)


# ---------------------------------------------------------------- fallbacks
def tied(net: Net) -> Callable[[], dict[str, Tensor]]:
    """Head 0's bias is also used inside the trunk, below the cut."""
    def losses() -> dict[str, Tensor]:
        assert net.heads is not None
        h = net.trunk(net.x + net.heads[0].bias.sum())
        out = net.last(h)
        return {str(t): net.heads[t](torch.sin(out)).pow(2).mean() for t in range(net.tasks)}
    return losses


def nested(net: Net) -> Callable[[], dict[str, Tensor]]:
    """Task 1 also reads the shared layer's input directly: one cut node below another."""
    def losses() -> dict[str, Tensor]:
        h = net.trunk(net.x)
        out = net.last(h)
        found = {str(t): (torch.sin(out) * net.mix[t]).sum(1).pow(2).mean()
                 for t in range(net.tasks)}
        found["1"] = found["1"] + h.pow(2).mean()
        return found
    return losses


def alone(net: Net) -> Callable[[], dict[str, Tensor]]:
    """Task 2 reaches only the trunk, not the shared layer."""
    def losses() -> dict[str, Tensor]:
        h = net.trunk(net.x)
        out = net.last(h)
        found = {str(t): (torch.sin(out) * net.mix[t]).sum(1).pow(2).mean() for t in range(2)}
        found["2"] = h.pow(2).mean()
        return found
    return losses


def siblings(net: Net) -> Callable[[], dict[str, Tensor]]:
    """Task 0 also reads an earlier trunk activation: two cut edges side by side (served)."""
    def losses() -> dict[str, Tensor]:
        h1 = net.trunk[1](net.trunk[0](net.x))
        h = net.trunk[3](net.trunk[2](h1))
        out = net.last(h)
        found = {str(t): (torch.sin(out) * net.mix[t]).sum(1).pow(2).mean()
                 for t in range(net.tasks)}
        found["0"] = found["0"] + h1.pow(2).mean()
        return found
    return losses


@pytest.mark.parametrize("graph", ["tied", "nested", "alone"])
def test_fallback_graphs(graph: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(heads=True)
    losses = {"tied": tied, "nested": nested, "alone": alone}[graph](net)
    assert shared_cut(list(losses().values()), list(net.last.parameters())) is None
    for name in ["gradient_balance", "upgrad", "mgda"]:
        for mode in ["weighted", "plain"]:
            check_same(net, name, mode, losses, monkeypatch)


def test_sibling_cut_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(heads=False)
    losses = siblings(net)
    split = shared_cut(list(losses().values()), list(net.last.parameters()))
    assert split is not None and len(split.cut) == 2
    for name in ["gradient_balance", "upgrad", "mgda", "cagrad"]:
        for mode in ["weighted", "plain"]:
            check_same(net, name, mode, losses, monkeypatch)


def test_graph_size_limit() -> None:
    net = Net(heads=True)
    losses = list(net.losses().values())
    assert shared_cut(losses, list(net.last.parameters()), limit=5) is None


def test_accumulates_into_existing_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like loss.backward(): a second call adds to .grad (below and above the cut)."""
    net = Net(heads=True)
    gb = mw.GradientBalance(shared=net.last)
    net.zero_grad(set_to_none=True)
    gb.backward(net.losses())
    once = {n: p.grad.clone() for n, p in net.named_parameters()}
    gb.backward(net.losses())
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n], msg=n)


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


def test_assemble_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``assemble = False``: the general path (T + 1 walks), the same gradients."""
    net = Net(heads=True)
    results = []
    for flag in (True, False):
        gb = mw.GradientBalance(shared=net.last)
        gb.assemble = flag
        net.zero_grad(set_to_none=True)
        Counted.calls = 0
        weights = gb.backward(net.losses(counted=True))
        results.append(((weights, {n: p.grad.clone() for n, p in net.named_parameters()}),
                        Counted.calls))
    assert [calls for _, calls in results] == [net.tasks, net.tasks + 1]
    assert_same_update(results[0][0], results[1][0], "assemble")


@pytest.mark.parametrize("where", ["shared", "head"])
def test_post_accumulate_hooks_fire_without_assembly(where: str) -> None:
    """Hooks that autograd runs on accumulation fire once per step with ``assemble = False``."""
    net = Net(heads=True)
    param = net.last.weight if where == "shared" else net.heads[0].weight  # type: ignore[index]
    fired: list[Tensor] = []
    handle = param.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad.clone()))
    try:
        gb = mw.GradientBalance(shared=net.last)
        gb.assemble = False
        net.zero_grad(set_to_none=True)
        gb.backward(net.losses())
    finally:
        handle.remove()
    assert len(fired) == 1
    torch.testing.assert_close(fired[0], param.grad)
