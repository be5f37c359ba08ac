"""DynamicWeightAverage (DWA): weights from the rates of change of past losses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip, check_total_gradient, check_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight as mw

FAST = settings(max_examples=25, deadline=None)
# Rates up to 100 at temperatures >= 0.5: every weight is representable (no underflow to 0).
LOSS = st.one_of(st.just(0.0), st.floats(0.1, 10.0))


def reference(losses: list[list[float]], temperature: float) -> list[np.ndarray]:
    """The weights of every step, straight from the paper's formula, in float64 numpy."""
    result = []
    for k in range(len(losses)):
        if k < 2:
            result.append(np.ones(len(losses[k])))
            continue
        older, newer = np.array(losses[k - 2]), np.array(losses[k - 1])
        rates = np.divide(newer, older, out=np.ones_like(newer), where=older > 0)
        e = np.exp(rates / temperature - np.max(rates / temperature))
        result.append(len(rates) * e / e.sum())
    return result


def run(dwa: mw.DynamicWeightAverage, losses: list[list[float]]) -> list[np.ndarray]:
    names = [f"t{i}" for i in range(len(losses[0]))]
    out = []
    for values in losses:
        dwa({n: torch.tensor(v, dtype=torch.float64) for n, v in zip(names, values, strict=True)})
        out.append(check_weights(dwa, names))
    return out


def test_hand_computed_values() -> None:
    dwa = mw.DynamicWeightAverage(temperature=1.0)
    got = run(dwa, [[4.0, 4.0], [2.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(got[0], [1, 1])
    np.testing.assert_array_equal(got[1], [1, 1])
    # rates 2/4 = 0.5 and 4/4 = 1: w = 2 e^r / (e^0.5 + e^1)
    denominator = math.exp(0.5) + math.exp(1.0)
    np.testing.assert_allclose(got[2], [2 * math.exp(0.5) / denominator, 2 * math.e / denominator])
    # rates 1/2 and 1/4
    denominator = math.exp(0.5) + math.exp(0.25)
    np.testing.assert_allclose(
        got[3], [2 * math.exp(0.5) / denominator, 2 * math.exp(0.25) / denominator]
    )


@FAST
@given(
    st.integers(1, 5).flatmap(
        lambda t: st.lists(st.lists(LOSS, min_size=t, max_size=t), min_size=1, max_size=6)
    ),
    st.floats(0.5, 10.0),
)
def test_property_matches_formula_positive_and_sums_to_t(
    losses: list[list[float]], temperature: float
) -> None:
    got = run(mw.DynamicWeightAverage(temperature), losses)
    for step, (weights, expected) in enumerate(
        zip(got, reference(losses, temperature), strict=True)
    ):
        np.testing.assert_allclose(weights, expected, rtol=1e-9, err_msg=f"step {step}")
        assert np.all(weights > 0)
        np.testing.assert_allclose(weights.sum(), len(weights), rtol=1e-12)


def test_large_temperature_gives_equal_weights() -> None:
    got = run(mw.DynamicWeightAverage(1e9), [[1.0, 5.0], [3.0, 1.0], [0.1, 2.0]])
    np.testing.assert_allclose(got[-1], [1.0, 1.0], rtol=1e-8)


def test_zero_previous_loss_gives_rate_one() -> None:
    got = run(mw.DynamicWeightAverage(1.0), [[0.0, 1.0], [3.0, 2.0], [1.0, 1.0]])
    denominator = math.exp(1.0) + math.exp(2.0)
    np.testing.assert_allclose(got[-1], [2 * math.e / denominator, 2 * math.exp(2.0) / denominator])


def test_per_epoch_uses_epoch_means_and_fixed_weights_within_an_epoch() -> None:
    dwa = mw.DynamicWeightAverage(1.0, per_epoch=True)
    epochs = [[[4.0, 2.0], [2.0, 6.0]], [[1.0, 4.0], [2.0, 4.0]], [[9.0, 9.0], [1.0, 1.0]]]
    means = [np.mean(np.array(e), axis=0).tolist() for e in epochs]  # [3, 4], [1.5, 4], [5, 5]
    for epoch in epochs[:2]:
        for values in run(dwa, epoch):
            np.testing.assert_array_equal(values, [1.0, 1.0])
        dwa.epoch_end()
    third = run(dwa, epochs[2])
    expected = reference(means, 1.0)[2]  # rates 0.5 and 1
    np.testing.assert_allclose(third[0], expected)
    np.testing.assert_allclose(third[1], expected)


def test_epoch_end_errors() -> None:
    with pytest.raises(RuntimeError, match="per_epoch=True"):
        mw.DynamicWeightAverage().epoch_end()
    dwa = mw.DynamicWeightAverage(per_epoch=True)
    with pytest.raises(RuntimeError, match="no loss seen"):
        dwa.epoch_end()


def test_task_order_may_change_between_calls() -> None:
    dwa = mw.DynamicWeightAverage(1.0)
    dwa({"a": torch.tensor(4.0), "b": torch.tensor(4.0)})
    dwa({"b": torch.tensor(4.0), "a": torch.tensor(2.0)})
    dwa({"b": torch.tensor(1.0), "a": torch.tensor(1.0)})
    assert list(dwa.weights) == ["b", "a"]
    denominator = math.exp(0.5) + math.e
    assert dwa.weights == pytest.approx(
        {"a": 2 * math.exp(0.5) / denominator, "b": 2 * math.e / denominator}
    )


def test_total_gradient_on_tiny_model(model: TinyMultiTask) -> None:
    dwa = mw.DynamicWeightAverage()
    for _ in range(3):
        model.losses()
        check_total_gradient(dwa, model.losses, list(model.parameters()))


@pytest.mark.parametrize("per_epoch", [False, True])
def test_state_round_trip(tmp_path: Path, per_epoch: bool) -> None:
    def losses(i: int) -> dict[str, torch.Tensor]:
        return {"a": torch.tensor(1.0 + i % 3), "b": torch.tensor(5.0 / (1 + i))}

    def make() -> mw.DynamicWeightAverage:
        return mw.DynamicWeightAverage(per_epoch=per_epoch)

    if not per_epoch:
        check_state_dict_round_trip(make, losses, tmp_path)
        return
    original = make()
    for i in range(5):
        original(losses(i))
        if i % 2 == 1:
            original.epoch_end()  # two full epochs and one half-done epoch
    torch.save(original.state_dict(), tmp_path / "dwa.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "dwa.pt", weights_only=True))
    for i in range(5, 9):
        assert torch.equal(resumed(losses(i)), original(losses(i)))
        assert resumed.weights == original.weights
        if i % 2 == 1:
            original.epoch_end()
            resumed.epoch_end()


def test_bad_inputs() -> None:
    for bad in [0.0, -1.0, math.inf, math.nan]:
        with pytest.raises(ValueError, match="temperature"):
            mw.DynamicWeightAverage(bad)
    dwa = mw.DynamicWeightAverage()
    with pytest.raises(ValueError, match=r"'b' is -1\.0"):
        dwa({"a": torch.tensor(1.0), "b": torch.tensor(-1.0)})
    with pytest.raises(FloatingPointError, match="'a'"):
        dwa({"a": torch.tensor(math.nan), "b": torch.tensor(1.0)})
    dwa({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="'b' is missing"):
        dwa({"a": torch.tensor(1.0), "c": torch.tensor(1.0)})
