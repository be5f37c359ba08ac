"""The Weighting base class: what every strategy shares.

The behaviour is checked on each built-in strategy (``STRATEGIES``) and on a
minimal subclass, so that the contract holds for strategies written later.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from helpers import (
    Step,
    TinyMultiTask,
    call,
    check_grad_untouched,
    check_history_bounded,
    check_state_dict_round_trip,
    check_weights,
)
from torch import Tensor, nn

import mtlweight as mw
import mtlweight._base as mw_base

# Builds a strategy for a model; keyword options go to its constructor (history_size).
Factory = Callable[..., mw.Weighting]


class Case(NamedTuple):
    """A strategy factory, and whether its calls pass ``representation=``."""

    make: Factory
    representation: bool = False

    def step(self, model: TinyMultiTask) -> Callable[[], Step]:
        """A factory of fresh steps of ``model`` for this case."""
        return lambda: self.step_at(model)(-1)

    def step_at(self, model: TinyMultiTask) -> Callable[[int], Step]:
        """A reproducible stream of steps of ``model`` for this case."""

        def at(index: int) -> Step:
            step = model.step() if index < 0 else model.step_at(index)
            return step if self.representation else Step(step.losses)

        return at


STRATEGIES: dict[str, Case] = {
    "fixed": Case(lambda m, **o: mw.Fixed({"pixel": 1.0, "edge": 1e-2, "texture": 0.3}, **o)),
    "fixed-by-position": Case(lambda m, **o: mw.Fixed([1.0, 1e-2, 0.3], **o)),
    "lb": Case(lambda m, **o: mw.LossBalance(**o)),
    "lb-representation": Case(lambda m, **o: mw.LossBalance(**o), representation=True),
    "gb": Case(lambda m, **o: mw.GradientBalance(shared=m.trunk, **o)),
    "gb-representation": Case(lambda m, **o: mw.GradientBalance(**o), representation=True),
}


@pytest.fixture(params=list(STRATEGIES))
def case(request: pytest.FixtureRequest) -> Case:
    """Each built-in strategy (and how it is called)."""
    return STRATEGIES[request.param]


class Equal(mw.Weighting):
    """A minimal strategy: every weight 1; records what the base class passes in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: dict[str, Any] = {}

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        self.seen = {
            "names": names,
            "losses": losses,
            "values": values,
            "representation": representation,
        }
        return torch.ones_like(values)


class Stateful(Equal, mw_base.Stateful):
    pass


class AtLeastThree(Equal):
    min_tasks = 3
    _why_min_tasks = "it compares three tasks"


# ---------------------------------------------------------- every strategy
def test_weights_keys_history_and_step(case: Case, model: TinyMultiTask) -> None:
    weighting = case.make(model)
    assert weighting.weights == {} and len(weighting.history) == 0 and weighting.step == 0
    total = call(weighting, case.step(model)())
    assert isinstance(total, Tensor) and total.dim() == 0 and total.requires_grad
    check_weights(weighting, model.tasks)
    assert weighting.step == 1


@pytest.mark.parametrize(("size", "calls"), [(1, 4), (3, 5), (10, 4)])
def test_history_bounded(case: Case, model: TinyMultiTask, size: int, calls: int) -> None:
    check_history_bounded(lambda n: case.make(model, history_size=n), case.step(model), size, calls)


def test_state_dict_round_trip(case: Case, model: TinyMultiTask, tmp_path: Path) -> None:
    check_state_dict_round_trip(lambda: case.make(model), case.step_at(model), tmp_path)


def test_state_dict_round_trip_of_a_fresh_instance(
    case: Case, model: TinyMultiTask, tmp_path: Path
) -> None:
    check_state_dict_round_trip(lambda: case.make(model), case.step_at(model), tmp_path, before=0)


def test_state_dict_history_longer_than_new_bound(model: TinyMultiTask) -> None:
    """Loading into a smaller ``history_size`` keeps the most recent entries."""
    long = mw.LossBalance(history_size=5)
    for i in range(5):
        call(long, model.step_at(i))
    short = mw.LossBalance(history_size=2)
    short.load_state_dict(long.state_dict())
    assert list(short.history) == list(long.history)[-2:]
    call(short, model.step_at(5))
    assert len(short.history) == 2


def test_state_dict_inside_a_model(model: TinyMultiTask, tmp_path: Path) -> None:
    """A weighting registered as a submodule is saved and restored with its model."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyMultiTask(seed=0)
            self.weighting = mw.LossBalance()

    original = Wrapper()
    for i in range(3):
        call(original.weighting, original.net.step_at(i))
    assert "weighting._extra_state" in original.state_dict()
    torch.save(original.state_dict(), tmp_path / "model.pt")
    resumed = Wrapper()
    resumed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert resumed.weighting.step == 3
    assert list(resumed.weighting.history) == list(original.weighting.history)


def test_load_state_dict_rejects_foreign_state() -> None:
    with pytest.raises(ValueError, match=r"LossBalance: the state to load is not a weighting"):
        mw.LossBalance().load_state_dict({"_extra_state": {"step": 1}})


def test_grad_untouched(case: Case, model: TinyMultiTask) -> None:
    check_grad_untouched(case.make(model), case.step(model), list(model.parameters()))


def test_backward_method_accumulates_like_loss_backward(case: Case, model: TinyMultiTask) -> None:
    weighting = case.make(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    step = case.step(model)()
    returned = weighting.backward(step.losses, representation=step.representation)
    assert returned == weighting.weights
    # the same call through __call__ on a fresh graph, on top of ones
    reference = case.make(model)
    expected = torch.autograd.grad(call(reference, case.step(model)()), list(model.parameters()))
    for p, g in zip(model.parameters(), expected, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, g + 1)


def test_to_float64_and_device(case: Case, model: TinyMultiTask) -> None:
    weighting = case.make(model)
    call(weighting, case.step(model)())
    before = weighting.weights
    assert weighting.to(torch.float64) is weighting
    assert weighting.to("cpu") is weighting
    assert weighting.weights == before and weighting.step == 1
    call(weighting, case.step(model)())
    assert weighting.weights == pytest.approx(before, abs=1e-6)


def test_float64_model_end_to_end(case: Case) -> None:
    model = TinyMultiTask(seed=1, dtype=torch.float64)
    weighting = case.make(model).to(torch.float64)
    total = call(weighting, case.step(model)())
    assert total.dtype == torch.float64
    check_weights(weighting, model.tasks)


def test_forward_hooks_fire(case: Case, model: TinyMultiTask) -> None:
    weighting = case.make(model)
    seen: dict[str, Any] = {}

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["losses"] = args[0]
        seen["representation"] = kwargs.get("representation")

    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        seen["output"] = output
        seen["weights"] = module.weights  # type: ignore[operator]

    weighting.register_forward_pre_hook(pre_hook, with_kwargs=True)
    weighting.register_forward_hook(hook)
    step = case.step(model)()
    total = call(weighting, step)
    assert seen["output"] is total
    assert seen["losses"] is step.losses
    assert seen["representation"] is step.representation
    assert seen["weights"] == weighting.weights


def test_fixed_weights_stay_exact_after_to_float64() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 0.01}).to(torch.float64)
    fixed({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0)})
    assert fixed.weights == {"pixel": 1.0, "edge": 0.01}


def test_fixed_weights_survive_half_precision_model() -> None:
    model = nn.Module()
    model.weighting = mw.Fixed({"pixel": 1.0, "edge": 0.01})
    model.half()
    model.weighting({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0)})
    assert model.weighting.weights == {"pixel": 1.0, "edge": 0.01}


def test_repr(model: TinyMultiTask) -> None:
    assert repr(mw.LossBalance()) == "LossBalance()"
    assert repr(mw.LossBalance(tasks=["a", "b"])) == "LossBalance(tasks=['a', 'b'])"
    assert repr(mw.GradientBalance(shared=model.trunk)) == "GradientBalance()"
    assert repr(mw.Fixed({"pixel": 1.0, "edge": 0.01})) == "Fixed(tasks=['pixel', 'edge'])"
    assert repr(mw.Fixed([1.0, 2.0])) == "Fixed()"


def test_is_an_abstract_module() -> None:
    assert issubclass(mw.Weighting, nn.Module)
    with pytest.raises(TypeError, match="abstract"):
        mw.Weighting()  # type: ignore[abstract]


def test_has_no_parameters(case: Case, model: TinyMultiTask) -> None:
    """The shared parameters belong to the user's model, not to the weighting."""
    weighting = case.make(model)
    assert list(weighting.parameters()) == []
    assert all(k == "_extra_state" for k in weighting.state_dict())


# ------------------------------------------------------- known values
class Known(NamedTuple):
    """One row of the table of known values.

    Task ``t`` has the loss ``value_t + slope_t . (p - 1)`` for a shared
    parameter ``p = 1`` of size 2: its value is ``value_t`` and its gradient
    ``slope_t`` (norm ``|slope_t|``), so every strategy's answer is hand-computable.
    """

    make: Callable[[Tensor], mw.Weighting]
    values: list[float]
    slopes: list[tuple[float, float]]
    expected: list[float]


KNOWN: dict[str, Known] = {
    # Later strategies add their rows here.
    "fixed": Known(lambda p: mw.Fixed([1.0, 0.01]), [2.0, 100.0], [(1, 0), (0, 1)], [1.0, 0.01]),
    "lb-2": Known(lambda p: mw.LossBalance(), [3.0, 1.0], [(1, 0), (0, 1)], [0.25, 0.75]),
    "lb-3": Known(lambda p: mw.LossBalance(), [1.0, 2.0, 5.0], [(0, 0)] * 3, [7 / 8, 6 / 8, 3 / 8]),
    "lb-zero": Known(lambda p: mw.LossBalance(), [0.0, 0.0], [(1, 0), (0, 1)], [0.5, 0.5]),
    "gb-2": Known(
        lambda p: mw.GradientBalance(shared=[p]), [5.0, 1.0], [(1, 0), (3, 0)], [0.75, 0.25]
    ),
    "gb-3": Known(
        lambda p: mw.GradientBalance(shared=[p]),
        [1.0, 1.0, 1.0],
        [(3, 4), (6, 8), (0, 0)],  # norms 5, 10, 0
        [2 / 3, 1 / 3, 1.0],
    ),
    "gb-zero": Known(
        lambda p: mw.GradientBalance(shared=[p]), [1.0, 2.0, 3.0], [(0, 0)] * 3, [2 / 3] * 3
    ),
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_values(name: str) -> None:
    row = KNOWN[name]
    p = nn.Parameter(torch.ones(2))
    losses = [
        v + torch.tensor(s, dtype=torch.float32) @ (p - 1)
        for v, s in zip(row.values, row.slopes, strict=True)
    ]
    weighting = row.make(p)
    total = weighting(losses)
    names = [str(i) for i in range(len(losses))]
    assert check_weights(weighting, names).tolist() == pytest.approx(row.expected, abs=1e-6)
    expected_total = sum(w * v for w, v in zip(row.expected, row.values, strict=True))
    assert float(total.detach()) == pytest.approx(expected_total, rel=1e-6)
    (grad,) = torch.autograd.grad(total, [p])
    expected_grad = sum(
        w * torch.tensor(s, dtype=torch.float32)
        for w, s in zip(row.expected, row.slopes, strict=True)
    )
    torch.testing.assert_close(grad, expected_grad)


# ------------------------------------------------------ the base contract
def test_compute_weights_receives_checked_inputs() -> None:
    equal = Equal()
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64)  # shape (1,) is accepted as a scalar
    rep = torch.ones(2, requires_grad=True)
    total = equal({"a": a, "b": b}, representation=rep)
    assert equal.seen["names"] == ["a", "b"]
    assert equal.seen["losses"][0] is a and equal.seen["losses"][1] is b
    torch.testing.assert_close(equal.seen["values"], torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert not equal.seen["values"].requires_grad
    assert equal.seen["representation"] is rep
    assert total.shape == () and float(total.detach()) == 5.0


def test_values_are_float32_for_half_precision_losses() -> None:
    equal = Equal()
    equal([torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(2.0, dtype=torch.float16)])
    assert equal.seen["values"].dtype == torch.float32


def test_weights_property_is_a_copy() -> None:
    equal = Equal()
    equal([torch.tensor(1.0), torch.tensor(2.0)])
    equal.weights["0"] = 42.0
    assert equal.weights == {"0": 1.0, "1": 1.0}


def test_min_tasks_error_says_why() -> None:
    with pytest.raises(ValueError, match=r"AtLeastThree needs at least 3 tasks: it compares"):
        AtLeastThree()([torch.tensor(1.0), torch.tensor(1.0)])


def test_stateful_strategy_fixes_tasks_at_first_call() -> None:
    stateful = Stateful()
    stateful({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0)})
    assert stateful.tasks == ["pixel", "edge"]
    with pytest.raises(ValueError, match=r"task 'edge' is missing"):
        stateful({"pixel": torch.tensor(1.0), "texture": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"unknown task 'texture'"):
        stateful(
            {"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0), "texture": torch.tensor(1.0)}
        )
    assert stateful.step == 1


def test_stateful_tasks_survive_state_dict() -> None:
    stateful = Stateful()
    stateful({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0)})
    resumed = Stateful()
    resumed.load_state_dict(stateful.state_dict())
    with pytest.raises(ValueError, match=r"task 'edge' is missing"):
        resumed({"pixel": torch.tensor(1.0), "other": torch.tensor(1.0)})


def test_configured_tasks_are_enforced() -> None:
    lb = mw.LossBalance(tasks=["pixel", "edge"])
    with pytest.raises(ValueError, match=r"task 'edge' is missing"):
        lb({"pixel": torch.tensor(1.0), "texture": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"unknown task 'texture'"):
        lb({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0), "texture": torch.tensor(1.0)})
    lb({"edge": torch.tensor(1.0), "pixel": torch.tensor(3.0)})  # any order
    assert lb.weights == {"edge": 0.75, "pixel": 0.25}


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match=r"history_size must be >= 1; found 0"):
        mw.LossBalance(history_size=0)
    with pytest.raises(ValueError, match=r"task names must be unique"):
        mw.LossBalance(tasks=["a", "a"])


# ------------------------------------------------------------ loss inputs
def test_list_and_tuple_losses_are_named_by_position() -> None:
    equal = Equal()
    equal([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)])
    assert list(equal.weights) == ["0", "1", "2"]
    equal((torch.tensor(1.0), torch.tensor(2.0)))
    assert list(equal.weights) == ["0", "1"]


def test_non_string_keys_become_strings() -> None:
    equal = Equal()
    equal({0: torch.tensor(1.0), "b": torch.tensor(2.0)})  # type: ignore[dict-item]
    assert list(equal.weights) == ["0", "b"]


def test_single_tensor_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"found a single tensor of shape \(3,\)"):
        Equal()(torch.ones(3))


@pytest.mark.parametrize("empty", [{}, []])
def test_empty_losses(empty: Any) -> None:
    with pytest.raises(ValueError, match="losses is empty"):
        Equal()(empty)


def test_non_tensor_loss_names_task() -> None:
    with pytest.raises(TypeError, match=r"loss of task 'edge' is a float"):
        Equal()({"pixel": torch.tensor(1.0), "edge": 2.0})  # type: ignore[dict-item]


def test_wrong_container_type() -> None:
    with pytest.raises(TypeError, match="found set"):
        Equal()({torch.tensor(1.0)})  # type: ignore[arg-type]


def test_integer_loss_names_task() -> None:
    with pytest.raises(ValueError, match=r"loss of task 'n' must be floating point"):
        Equal()({"n": torch.tensor(3)})


def test_non_scalar_loss_names_task_and_shape() -> None:
    with pytest.raises(ValueError, match=r"loss of task 'b' must be a scalar.*\(1, 1\)"):
        Equal()({"a": torch.tensor(1.0), "b": torch.ones(1, 1)})


def test_losses_on_different_devices() -> None:
    with pytest.raises(ValueError, match=r"one device.*a: cpu, b: meta"):
        Equal()({"a": torch.tensor(1.0), "b": torch.tensor(1.0, device="meta")})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_names_task_before_computing(bad: float) -> None:
    equal = Equal()
    with pytest.raises(FloatingPointError, match=r"loss of task 'b' is not finite"):
        equal({"a": torch.tensor(1.0), "b": torch.tensor(bad)})
    assert equal.seen == {} and equal.step == 0


def test_statistic_without_distributed_is_identity() -> None:
    equal = Equal()
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    got = equal.statistic("loss", value)
    assert not got.requires_grad
    torch.testing.assert_close(got, value.detach())
    assert equal.statistics["loss"] is got


def test_step_namedtuple_is_accepted_by_call(model: TinyMultiTask) -> None:
    """The helper used across the suite passes ``representation`` only when given."""
    lb = mw.LossBalance()
    call(lb, Step(model.losses()))
    call(lb, model.losses())
    assert lb.step == 2


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (lambda: mw.LossBalance(), lambda: mw.DynamicWeightAverage()),
        (lambda: mw.DynamicWeightAverage(), lambda: mw.LossBalance()),
        (lambda: mw.LossBalance(), lambda: mw.GeometricMean()),
        (
            lambda: mw.MGDA([nn.Parameter(torch.ones(2))]),
            lambda: mw.NashMTL([nn.Parameter(torch.ones(2))]),
        ),
    ],
)
def test_a_foreign_state_is_refused_naming_both_classes(source: Any, target: Any) -> None:
    """Before: LossBalance's state loaded silently into DWA."""
    saved, loading = source(), target()
    with pytest.raises(
        ValueError,
        match=rf"{type(loading).__name__}.load_state_dict: the state "
        rf"was saved by {type(saved).__name__}, not by {type(loading).__name__}",
    ):
        loading.load_state_dict(saved.state_dict())


def test_a_state_without_the_strategy_name_still_loads() -> None:
    """Checkpoints written before the name was saved keep loading."""
    state = mw.LossBalance().state_dict()
    state["_extra_state"].pop("strategy")
    mw.LossBalance().load_state_dict(state)
