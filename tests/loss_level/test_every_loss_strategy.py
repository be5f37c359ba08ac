"""Every loss-level strategy of issue 6 through the same API: known values, names, training."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_grad_untouched, check_state_dict_round_trip
from torch import Tensor

import mtlweight as mw

# name -> (class, aliases, options needed for tasks ("a", "b", "c") sharing ``shared``)
Options = Callable[[Sequence[str], Sequence[Tensor]], dict[str, Any]]
METHODS: dict[str, tuple[type[mw.Weighting], tuple[str, ...], Options]] = {
    "equal": (mw.EqualWeight, ("ew", "Equal-Weight"), lambda tasks, shared: {}),
    "uncertainty": (
        mw.UncertaintyWeighting,
        ("uw", "uncertainty_weighting"),
        lambda tasks, shared: {"tasks": list(tasks)},
    ),
    "dwa": (mw.DynamicWeightAverage, ("DWA", "dynamic-weight-average"), lambda t, s: {}),
    "rlw": (mw.RandomLossWeighting, ("random",), lambda tasks, shared: {"seed": 0}),
    "gls": (mw.GeometricMean, ("geometric", "geometric_mean"), lambda tasks, shared: {}),
    "gradnorm": (mw.GradNorm, ("grad-norm",), lambda tasks, shared: {"shared": shared}),
    "imtl_l": (mw.IMTLL, ("IMTL-L", "imtll"), lambda tasks, shared: {"tasks": list(tasks)}),
}

DWA_DENOMINATOR = math.exp(0.5) + math.e

# (name, options, loss values of each call, weights of the last call, total of the last call).
# Every loss is ``value * x`` with ``x = 1`` a shared parameter, so its gradient norm is |value|.
# Values worked out by hand from each method's formula.
KNOWN: list[tuple[str, dict[str, Any], list[list[float]], list[float], float]] = [
    ("equal", {}, [[3.0, 1.0, 8.0]], [1 / 3, 1 / 3, 1 / 3], 4.0),
    ("equal", {}, [[5.0]], [1.0], 5.0),
    # w = exp(-log 2) = 1/2; total = (3 + 1 + 8) / 2 + 3 log 2
    ("uw", {"tasks": 3, "init": math.log(2)}, [[3.0, 1.0, 8.0]], [0.5] * 3, 6 + 3 * math.log(2)),
    # classification doubles the weight: 1 * 3 + 2 * 1 + 0 + 0
    ("uw", {"tasks": 2, "classification": ["1"]}, [[3.0, 1.0]], [1.0, 2.0], 5.0),
    # w = exp(log 2) = 2; total = 2 * (3 + 0.5) - 2 log 2
    ("imtl_l", {"tasks": 2, "init": math.log(2)}, [[3.0, 0.5]], [2.0, 2.0], 7 - 2 * math.log(2)),
    ("dwa", {}, [[4.0, 4.0], [2.0, 4.0]], [1.0, 1.0], 6.0),
    # rates 2/4 and 4/4 at temperature 1: w = 2 e^r / (e^0.5 + e^1)
    (
        "dwa",
        {"temperature": 1.0},
        [[4.0, 4.0], [2.0, 4.0], [1.0, 3.0]],
        [2 * math.exp(0.5) / DWA_DENOMINATOR, 2 * math.e / DWA_DENOMINATOR],
        (2 * math.exp(0.5) + 6 * math.e) / DWA_DENOMINATOR,
    ),
    # (4 * 1 * 2) ** (1/3) = 2; w_t = 2 / (3 L_t)
    ("gls", {}, [[4.0, 1.0, 2.0]], [1 / 6, 2 / 3, 1 / 3], 2.0),
    ("gls", {}, [[9.0, 1.0]], [1 / 6, 3 / 2], 3.0),
    # First call: G = (1, 3), target 2, w <- (1 + 0.1 / 2, 1 - 0.3 / 2) renormalised to sum 2.
    (
        "gradnorm",
        {"alpha": 0.0, "lr": 0.1},
        [[1.0, 3.0], [1.0, 3.0]],
        [2.1 / 1.9, 1.7 / 1.9],
        (2.1 + 3 * 1.7) / 1.9,
    ),
]


@pytest.mark.parametrize(("name", "options", "calls", "weights", "total"), KNOWN)
def test_known_values(
    name: str, options: dict[str, Any], calls: list[list[float]], weights: list[float], total: float
) -> None:
    x = torch.ones((), dtype=torch.float64, requires_grad=True)
    if name == "gradnorm":
        options = {**options, "shared": [x]}
    weighting = mw.get(name, **options).double()
    for values in calls:
        got = weighting([v * x for v in values])
    # rel 1e-7: the learnable s of UW and IMTL-L are initialised in float32.
    assert list(weighting.weights.values()) == pytest.approx(weights, rel=1e-7)
    assert got.item() == pytest.approx(total, rel=1e-7)
    got.backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None


def test_known_values_rlw() -> None:
    rlw = mw.get("rlw", seed=2024)
    rlw([torch.tensor(3.0), torch.tensor(1.0)])
    z = torch.randn(2, generator=torch.Generator().manual_seed(2024), dtype=torch.float64)
    expected = np.exp(z.numpy()) / np.exp(z.numpy()).sum()
    assert list(rlw.weights.values()) == pytest.approx(expected.tolist(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_names_and_exports(name: str) -> None:
    cls, aliases, options = METHODS[name]
    assert name in mw.available()
    assert cls.__name__ in mw.__all__ and getattr(mw, cls.__name__) is cls
    x = torch.ones(1, requires_grad=True)
    for alias in (name, *aliases):
        assert type(mw.get(alias, **options(["a", "b"], [x]))) is cls


def make(name: str, tasks: Sequence[str], shared: Sequence[Tensor]) -> mw.Weighting:
    options = METHODS[name][2]
    return mw.get(name, **options(tasks, shared))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_toy_model_trains_through_the_same_three_lines(name: str, model: TinyMultiTask) -> None:
    weighting = make(name, model.tasks, list(model.trunk.parameters()))
    optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.02)
    before = {t: v.item() for t, v in model.losses().items()}
    for _ in range(25):
        optimizer.zero_grad()
        total = weighting(model.losses())
        total.backward()
        optimizer.step()
    after = {t: v.item() for t, v in model.losses().items()}
    assert sum(after.values()) < sum(before.values()), (before, after)
    assert weighting.step == 25 and len(weighting.history) == 25


@pytest.mark.parametrize("name", sorted(METHODS))
def test_backward_method_returns_the_weights(name: str, model: TinyMultiTask) -> None:
    weighting = make(name, model.tasks, list(model.trunk.parameters()))
    weights = weighting.backward(model.losses())
    assert weights == weighting.weights and list(weights) == model.tasks
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_grad_untouched_by_the_call(name: str, model: TinyMultiTask) -> None:
    weighting = make(name, model.tasks, list(model.trunk.parameters()))
    check_grad_untouched(weighting, model.losses, list(model.parameters()))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_round_trip(name: str, model: TinyMultiTask, tmp_path: Path) -> None:
    shared = list(model.trunk.parameters())
    losses = [model.losses() for _ in range(6)]
    scale = [1.0, 0.8, 1.3, 0.5, 0.9, 0.7]

    def step(i: int) -> dict[str, Tensor]:  # losses that change from call to call
        return {t: v * scale[i] for t, v in losses[i].items()}

    check_state_dict_round_trip(lambda: make(name, model.tasks, shared), step, tmp_path)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_inputs_name_the_task(name: str) -> None:
    x = torch.ones(1, requires_grad=True)
    weighting = make(name, ["a", "b"], [x])
    good = x.sum()
    with pytest.raises(FloatingPointError, match="'b'"):
        weighting({"a": good, "b": good * math.nan})
    with pytest.raises(ValueError, match=r"'a' must be a scalar tensor; found shape \(2,\)"):
        weighting({"a": torch.ones(2), "b": good})
    with pytest.raises(TypeError, match="'b' is a float"):
        weighting({"a": good, "b": 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="single tensor"):
        weighting(torch.ones(2))
    with pytest.raises(ValueError, match="empty"):
        weighting({})
    assert weighting.step == 0 and weighting.weights == {}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_half_precision_losses(name: str) -> None:
    x = torch.ones(2, requires_grad=True)
    weighting = make(name, ["a", "b"], [x])
    losses = {"a": (3 * x).to(torch.bfloat16).sum(), "b": (x / 4).to(torch.bfloat16).sum()}
    total = weighting(losses)
    assert torch.isfinite(total) and total.dtype in (torch.bfloat16, torch.float32)
    total.backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and torch.isfinite(x.grad).all()
