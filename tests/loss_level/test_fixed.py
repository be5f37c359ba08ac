"""Fixed: hand-chosen weights by name or by position; errors name the task."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    TinyMultiTask,
    check_grad_untouched,
    check_permutation_equivariance,
    check_total_gradient,
    check_weights,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight as mw


def test_dict_weights_by_hand() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2})
    total = fixed({"pixel": torch.tensor(2.0), "edge": torch.tensor(100.0)})
    assert float(total) == pytest.approx(2.0 + 1.0)
    assert fixed.weights == {"pixel": 1.0, "edge": 0.01}  # exactly what was given


def test_dict_weights_follow_names_not_order() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2})
    total = fixed({"edge": torch.tensor(100.0), "pixel": torch.tensor(2.0)})
    assert fixed.weights == {"edge": 0.01, "pixel": 1.0}
    assert float(total) == pytest.approx(3.0)


def test_sequence_weights_by_position() -> None:
    fixed = mw.Fixed([0.5, 2.0, 0.0])
    total = fixed({"a": torch.tensor(4.0), "b": torch.tensor(1.0), "c": torch.tensor(7.0)})
    assert fixed.weights == {"a": 0.5, "b": 2.0, "c": 0.0}
    assert float(total) == pytest.approx(4.0)
    fixed([torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0)])
    assert fixed.weights == {"0": 0.5, "1": 2.0, "2": 0.0}


def test_tuple_and_integer_weights() -> None:
    fixed = mw.Fixed((1, 3))
    fixed((torch.tensor(1.0), torch.tensor(1.0)))
    assert fixed.weights == {"0": 1.0, "1": 3.0}
    assert all(isinstance(w, float) for w in fixed.weights.values())


def test_single_task_is_allowed() -> None:
    fixed = mw.Fixed({"pixel": 2.0})
    assert float(fixed({"pixel": torch.tensor(3.0)})) == 6.0


def test_negative_and_large_weights_are_kept() -> None:
    fixed = mw.Fixed([-1.0, 1e6])
    fixed([torch.tensor(1.0), torch.tensor(1.0)])
    assert fixed.weights == {"0": -1.0, "1": 1e6}


def test_total_gradient(model: TinyMultiTask) -> None:
    weights = {"pixel": 1.0, "edge": 1e-2, "texture": 0.3}
    fixed = mw.Fixed(weights)
    got = check_total_gradient(fixed, model.losses, list(model.parameters()))
    assert got.tolist() == list(weights.values())


def test_float64_losses_keep_float64_total() -> None:
    fixed = mw.Fixed([0.1, 0.2])
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    total = fixed([a, 3 * a])
    assert total.dtype == torch.float64
    (grad,) = torch.autograd.grad(total, [a])
    assert float(grad) == pytest.approx(0.1 + 0.6, rel=1e-15)


def test_grad_untouched(model: TinyMultiTask) -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2, "texture": 0.3})
    check_grad_untouched(fixed, model.losses, list(model.parameters()))


def test_history_and_weights_keys(model: TinyMultiTask) -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2, "texture": 0.3})
    fixed(model.losses())
    fixed(model.losses())
    check_weights(fixed, model.tasks)
    assert len(fixed.history) == 2 and fixed.step == 2


def test_weights_are_not_in_state_dict() -> None:
    """The weights are configuration: the constructor gives them, not the checkpoint."""
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2})
    assert list(fixed.state_dict()) == ["_extra_state"]


# ----------------------------------------------------------------- errors
def test_missing_task_names_task() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2})
    with pytest.raises(ValueError, match=r"task 'edge' is missing"):
        fixed({"pixel": torch.tensor(1.0)})


def test_unknown_task_names_task() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2})
    with pytest.raises(ValueError, match=r"unknown task 'texture'"):
        fixed({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0), "texture": torch.tensor(1.0)})


def test_list_losses_against_dict_weights_name_the_task() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 1e-2})
    with pytest.raises(ValueError, match=r"task 'pixel' is missing.*\['0', '1'\]"):
        fixed([torch.tensor(1.0), torch.tensor(1.0)])


@pytest.mark.parametrize("count", [1, 3])
def test_count_mismatch_by_position(count: int) -> None:
    fixed = mw.Fixed([1.0, 2.0])
    with pytest.raises(ValueError, match=rf"2 weights by position.*{count} losses"):
        fixed([torch.tensor(1.0)] * count)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_names_task(bad: float) -> None:
    with pytest.raises(ValueError, match=r"weight of task 'edge' must be finite"):
        mw.Fixed({"pixel": 1.0, "edge": bad})
    with pytest.raises(ValueError, match=r"weight of task '1' must be finite"):
        mw.Fixed([1.0, bad])


def test_empty_weights() -> None:
    with pytest.raises(ValueError, match="at least one weight"):
        mw.Fixed({})


@pytest.mark.parametrize("bad", ["pixel", 1.0, None])
def test_weights_type(bad: object) -> None:
    with pytest.raises(TypeError, match="dict or a sequence"):
        mw.Fixed(bad)  # type: ignore[arg-type]


def test_non_numeric_weight() -> None:
    with pytest.raises((TypeError, ValueError)):
        mw.Fixed({"pixel": "heavy"})  # type: ignore[dict-item]


def test_non_finite_loss_names_task() -> None:
    fixed = mw.Fixed({"pixel": 1.0, "edge": 0.0})
    with pytest.raises(FloatingPointError, match=r"loss of task 'edge' is not finite"):
        fixed({"pixel": torch.tensor(1.0), "edge": torch.tensor(math.nan)})


def test_non_scalar_loss_names_task() -> None:
    with pytest.raises(ValueError, match=r"task '1' must be a scalar"):
        mw.Fixed([1.0, 1.0])([torch.tensor(1.0), torch.ones(3)])


@pytest.mark.parametrize("permutation", [[2, 0, 1], [1, 0, 2], [0, 1, 2]])
def test_permutation_equivariance_by_name(model: TinyMultiTask, permutation: list[int]) -> None:
    check_permutation_equivariance(
        lambda: mw.Fixed({"pixel": 1.0, "edge": 1e-2, "texture": 0.3}), model.losses, permutation
    )


def test_cpu_call_builds_no_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed reads no loss value: a CPU call hands compute_weights an empty tensor (no ops)."""
    fixed = mw.Fixed({"a": 2.0, "b": 0.5})
    seen: list[torch.Tensor] = []
    real = mw.Fixed.compute_weights

    def spy(self: mw.Fixed, names: list[str], losses: list[torch.Tensor],
            values: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.append(values)
        return real(self, names, losses, values)

    monkeypatch.setattr(mw.Fixed, "compute_weights", spy)
    a = torch.tensor(3.0, requires_grad=True)
    total = fixed({"a": a * 1.0, "b": a * 4.0})
    assert seen[0].numel() == 0
    assert float(total.detach()) == pytest.approx(2.0 * 3.0 + 0.5 * 12.0)
    assert fixed.weights == {"a": 2.0, "b": 0.5}


# --------------------------------------------------------------- the CPU fast path
# Fixed.forward checks the losses through their total (one .item()); these tests hold it
# to what the general path (Weighting.forward) does with the same call.

_finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
_weight = st.sampled_from([0.0, 1.0, 0.5, 1e-2, 3.0, -2.0])


@settings(max_examples=60, deadline=None)
@given(values=st.lists(_finite, min_size=1, max_size=5), data=st.data())
def test_fast_path_matches_general_path(values: list[float], data: st.DataObject) -> None:
    weights = data.draw(st.lists(_weight, min_size=len(values), max_size=len(values)))
    names = [f"t{i}" for i in range(len(values))]
    order = data.draw(st.permutations(names))
    given_weights = dict(zip(names, weights, strict=True))
    fast, general = mw.Fixed(given_weights), mw.Fixed(given_weights)
    for _ in range(2):  # the second call reads the cached weights
        losses = {n: torch.tensor(values[names.index(n)]) for n in order}
        total = fast(losses)
        expected = mw.Weighting.forward(general, losses)
        assert torch.equal(total, expected)
        assert fast.weights == general.weights and list(fast.weights) == order
    assert fast.step == general.step == 2
    assert list(fast.history) == list(general.history)
    assert fast.history[0] is not fast.history[1]  # one dict per step, as the general path


@settings(max_examples=60, deadline=None)
@given(values=st.lists(_finite, min_size=2, max_size=5), data=st.data())
def test_fast_path_names_the_non_finite_task(values: list[float], data: st.DataObject) -> None:
    bad_at = data.draw(st.integers(0, len(values) - 1))
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    weights = data.draw(st.lists(_weight, min_size=len(values), max_size=len(values)))
    warm = data.draw(st.booleans())  # a first, finite call: the names' order is then known
    fixed = mw.Fixed({f"t{i}": w for i, w in enumerate(weights)})
    if warm:
        fixed({f"t{i}": torch.tensor(v) for i, v in enumerate(values)})
    values[bad_at] = bad
    with pytest.raises(FloatingPointError, match=rf"loss of task 't{bad_at}' is not finite"):
        fixed({f"t{i}": torch.tensor(v) for i, v in enumerate(values)})
    assert fixed.step == len(fixed.history) == int(warm)  # the refusal records nothing


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.ones(2), ValueError, r"task 'b' must be a scalar tensor; found shape \(2,\)"),
        (torch.tensor(2), ValueError, r"task 'b' must be floating point; found torch.int64"),
        (2.0, TypeError, r"task 'b' is a float, expected a tensor"),
        (torch.tensor([2.0]), None, ""),  # shape (1,) is a scalar, as on the general path
    ],
)
def test_known_order_still_checks_each_loss(bad: object, error: type[Exception] | None,
                                            match: str) -> None:
    fixed = mw.Fixed({"a": 1.0, "b": 0.5})
    fixed({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})  # the order is now known
    if error is None:
        assert float(fixed({"a": torch.tensor(1.0), "b": bad})) == 2.0  # type: ignore[dict-item]
        return
    with pytest.raises(error, match=match):
        fixed({"a": torch.tensor(1.0), "b": bad})  # type: ignore[dict-item]
    assert fixed.step == 1


def test_known_order_does_not_admit_other_names() -> None:
    fixed = mw.Fixed({"a": 1.0, "b": 0.5})
    fixed({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    with pytest.raises(ValueError, match=r"task 'b' is missing.*found \['a', 'c'\]"):
        fixed({"a": torch.tensor(1.0), "c": torch.tensor(2.0)})
    with pytest.raises(ValueError, match=r"task 'b' is missing"):
        fixed({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"unknown task 'c'"):
        fixed({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(2.0)})


def test_fast_path_opposite_infinities() -> None:
    """+inf and -inf make a NaN total: the first of them is named."""
    fixed = mw.Fixed([1.0, 1.0, 1.0])
    with pytest.raises(FloatingPointError, match=r"task '1' is not finite.*'2': -inf"):
        fixed([torch.tensor(1.0), torch.tensor(math.inf), torch.tensor(-math.inf)])


def test_fast_path_overflowing_sum_passes_as_the_general_path() -> None:
    """Finite losses whose sum overflows: no loss is at fault, and neither path raises."""
    big = torch.tensor(3e38)
    fast, general = mw.Fixed([1.0, 1.0]), mw.Fixed([1.0, 1.0])
    assert math.isinf(float(fast([big, big]))) and math.isinf(float(mw.Weighting.forward(
        general, [big, big])))


def test_fast_path_reads_one_value_when_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    """One .item() per call (the total), not one per task."""
    calls: list[int] = []
    real = torch.Tensor.item

    def counted(self: torch.Tensor) -> object:
        calls.append(1)
        return real(self)

    fixed = mw.Fixed({"a": 1.0, "b": 2.0, "c": 0.5})
    losses = {k: torch.tensor(float(i + 1), requires_grad=True) for i, k in enumerate("abc")}
    monkeypatch.setattr(torch.Tensor, "item", counted)
    fixed(losses)
    fixed(losses)
    assert len(calls) == 2


def test_fast_path_gradient_and_backward() -> None:
    a = torch.tensor(2.0, requires_grad=True)
    fixed = mw.Fixed({"x": 3.0, "y": 1.0})
    assert fixed.backward({"x": a * a, "y": 5.0 * a}) == {"x": 3.0, "y": 1.0}
    assert a.grad is not None and float(a.grad) == pytest.approx(3.0 * 2 * 2.0 + 5.0)
