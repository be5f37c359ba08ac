"""The backward plans: which one a graph gets, and each one against the general plan.

Every plan must give the weights and every ``.grad`` of :class:`GeneralPlan`
(``assemble = False``) on the same graph; the files ``test_plan_*.py`` test
each one on many more graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from update_paths import Step, assert_same_update

import mtlweight as mw
import mtlweight._engine.linear as linear
from mtlweight import GradientMethod
from mtlweight._engine.graph import census_of
from mtlweight._engine.linear import linear_taps

TASKS = ["a", "b", "c"]


class Scaled(nn.Module):
    """An elementwise trainable scale: a shared tensor that is no linear layer's."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, width, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Net(nn.Module):
    """stem -> trunk -> three heads; the graphs of the five plans are cut from it."""

    def __init__(self, scaled: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).double()
        layers: list[nn.Module] = [nn.Linear(6, 5), nn.Tanh()]
        if scaled:
            layers.append(Scaled(5))
        self.trunk = nn.Sequential(*layers).double()
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in TASKS).double()
        self.x = torch.randn(7, 4, dtype=torch.float64)
        self.y = torch.randn(7, len(TASKS), dtype=torch.float64)

    def losses(self) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.trunk(self.stem(self.x))
        return features, {t: ((h(features).squeeze(1) - self.y[:, i]) ** 2).mean()
                          for i, (t, h) in enumerate(zip(TASKS, self.heads, strict=True))}


#: graph -> (how the method is built and called, the plan it gets)
GRAPHS: dict[str, tuple[Callable[[Net], dict[str, Any]], bool, str]] = {
    # shared: everything under the heads (stem and trunk) -> no cut, linear layers only
    "linear-gram": (lambda n: {"shared": nn.ModuleList([n.stem, n.trunk])}, False, "linear-gram"),
    # the same with an elementwise scale in the trunk: assembled, no linear shortcut
    "assembled": (lambda n: {"shared": nn.ModuleList([n.stem, n.trunk])}, False, "assembled"),
    # shared: the trunk only -> the stem lies below a cut
    "cut": (lambda n: {"shared": n.trunk}, False, "cut"),
    # representation= the trunk's output, heads above it
    "representation": (lambda n: {}, True, "representation-assembled"),
}


def weighting(name: str, mode: str, net: Net, graph: str) -> GradientMethod:
    options, _, _ = GRAPHS[graph]
    w = mw.get(name, task_specific=mode, **options(net))
    assert isinstance(w, GradientMethod)
    return w


def step(net: Net, w: GradientMethod, representation: bool) -> tuple[str, Step]:
    """The plan ``w`` gets for this graph, then one backward: the weights and every .grad."""
    net.zero_grad(set_to_none=True)
    features, losses = net.losses()
    rep = features if representation else None
    plan = w.plan(list(losses.values()), rep, update=True).name
    net.zero_grad(set_to_none=True)
    features, losses = net.losses()
    weights = w.backward(losses, representation=features if representation else None)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return plan, (weights, grads)


METHODS = ["gb", "upgrad", "mgda", "imtl_g", "db_mtl", "graddrop"]


@pytest.mark.parametrize("mode", ["weighted", "plain"])
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_each_plan_against_the_general_plan(graph: str, name: str, mode: str) -> None:
    _, representation, expected = GRAPHS[graph]
    if representation and name == "db_mtl":
        pytest.skip("DB-MTL keeps per-coordinate state: no representation=")
    try:
        net = Net(scaled=graph == "assembled")
        fast_w = weighting(name, mode, net, graph)
    except TypeError:
        pytest.skip(f"{name} has no task_specific={mode!r}")
    general_w = weighting(name, mode, net, graph)
    general_w.assemble = False
    plan, fast = step(net, fast_w, representation)
    general_plan, general = step(net, general_w, representation)
    if expected == "linear-gram" and fast_w.needs_matrix:
        expected = "assembled"  # the shortcut never forms J: methods of G alone
    assert (plan, general_plan) == (expected, "general")
    assert_same_update(fast, general, f"{graph} {name} {mode}")


def test_batched_passes_take_the_general_plan_below_a_cut() -> None:
    """The cut passes are one per task: with batched passes the cut graph is general."""
    net = Net()
    w = weighting("gb", "weighted", net, "cut")
    w.batched = True
    assert step(net, w, False)[0] == "general"


class Renamed:
    """An ``AddmmBackward0`` node as a torch version that renamed its saved input shows it."""

    def __init__(self, node: Any) -> None:
        self.next_functions = node.next_functions
        self._saved_alpha = node._saved_alpha
        self._saved_beta = node._saved_beta


Renamed.__name__ = "AddmmBackward0"


def test_a_renamed_saved_tensor_disables_the_linear_shortcut() -> None:
    net = Net()
    _, losses = net.losses()
    shared = [*net.stem.parameters(), *net.trunk.parameters()]
    census = census_of(list(losses.values()))
    assert linear_taps(list(losses.values()), shared, census) is not None
    for key, node in list(census.nodes.items()):
        if type(node).__name__ == "AddmmBackward0":
            census.nodes[key] = Renamed(node)
    assert linear_taps(list(losses.values()), shared, census) is None


def test_an_unreadable_node_falls_back_to_the_assembled_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever reading a node raises, the step takes the assembled plan, same results."""
    def unreadable(*args: object) -> None:
        raise AttributeError("'AddmmBackward0' object has no attribute '_saved_mat1'")

    net = Net()
    expected = step(net, weighting("gb", "weighted", net, "linear-gram"), False)
    assert expected[0] == "linear-gram"
    monkeypatch.setattr(linear, "_tap", unreadable)
    plan, found = step(net, weighting("gb", "weighted", net, "linear-gram"), False)
    assert plan == "assembled"
    assert_same_update(found, expected[1], "gb without the shortcut")
