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
