"""IMTLL: the loss part of IMTL, against closed-form gradients and the uncertainty form."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_grad_untouched, check_total_gradient, check_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight as mw

FAST = settings(max_examples=25, deadline=None)


def test_doc_values() -> None:
    imtl = mw.IMTLL(["pixel", "edge"], init=math.log(2.0))
    total = imtl({"pixel": torch.tensor(3.0), "edge": torch.tensor(0.5)})
    assert total.item() == pytest.approx(2 * 3.5 - 2 * math.log(2.0))
    assert imtl.weights == pytest.approx({"pixel": 2.0, "edge": 2.0})


@FAST
@given(st.lists(st.tuples(st.floats(0.0, 1e3), st.floats(-5.0, 5.0)), min_size=1, max_size=6))
def test_property_total_and_gradients_match_closed_form(tasks: list[tuple[float, float]]) -> None:
    """L = sum e^{s} L - s;  dL/ds_t = e^{s_t} L_t - 1;  dL/dL_t = e^{s_t}."""
    imtl = mw.IMTLL(len(tasks)).double()
    s = np.array([s for _, s in tasks])
    value = np.array([v for v, _ in tasks])
    with torch.no_grad():
        imtl.s.copy_(torch.from_numpy(s))
    losses = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in value]
    total = imtl(losses)
    np.testing.assert_allclose(total.item(), np.sum(np.exp(s) * value - s), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(check_weights(imtl, imtl.tasks or []), np.exp(s), rtol=1e-12)
    total.backward()  # type: ignore[no-untyped-call]
    assert imtl.s.grad is not None
    np.testing.assert_allclose(imtl.s.grad.numpy(), np.exp(s) * value - 1, rtol=1e-10, atol=1e-12)
    for loss, weight in zip(losses, np.exp(s), strict=True):
        assert loss.grad is not None
        np.testing.assert_allclose(loss.grad.item(), weight, rtol=1e-12)


@FAST
@given(st.lists(st.tuples(st.floats(0.0, 1e3), st.floats(-5.0, 5.0)), min_size=1, max_size=6))
def test_property_equals_uncertainty_with_negated_s(tasks: list[tuple[float, float]]) -> None:
    imtl, uw = mw.IMTLL(len(tasks)).double(), mw.UncertaintyWeighting(len(tasks)).double()
    with torch.no_grad():
        imtl.s.copy_(torch.tensor([s for _, s in tasks], dtype=torch.float64))
        uw.s.copy_(-imtl.s)
    losses = [torch.tensor(v, dtype=torch.float64) for v, _ in tasks]
    torch.testing.assert_close(imtl(losses), uw(losses))
    assert imtl.weights == pytest.approx(uw.weights, rel=1e-12)


def test_optimizer_drives_scaled_losses_to_one() -> None:
    imtl = mw.IMTLL(["a", "b"])
    optimizer = torch.optim.Adam(imtl.parameters(), lr=0.1)
    for _ in range(400):
        optimizer.zero_grad()
        imtl({"a": torch.tensor(4.0), "b": torch.tensor(0.01)}).backward()
        optimizer.step()
    assert imtl.weights == pytest.approx({"a": 0.25, "b": 100.0}, rel=2e-2)


def test_on_tiny_model(model: TinyMultiTask) -> None:
    params = list(model.parameters())
    np.testing.assert_allclose(check_total_gradient(mw.IMTLL(model.tasks), model.losses, params), 1)
    check_grad_untouched(mw.IMTLL(model.tasks), model.losses, params)
    imtl = mw.IMTLL(model.tasks)
    optimizer = torch.optim.SGD([*model.parameters(), *imtl.parameters()], lr=0.02)
    first = sum(v.item() for v in model.losses().values())
    for _ in range(30):
        optimizer.zero_grad()
        imtl(model.losses()).backward()
        optimizer.step()
    assert sum(v.item() for v in model.losses().values()) < first


def test_state_round_trip_with_weights_only(tmp_path: Path) -> None:
    imtl = mw.IMTLL(["a", "b"], init=0.3)
    imtl({"a": torch.tensor(2.0), "b": torch.tensor(5.0)})
    torch.save(imtl.state_dict(), tmp_path / "imtl.pt")
    resumed = mw.IMTLL(["a", "b"])
    resumed.load_state_dict(torch.load(tmp_path / "imtl.pt", weights_only=True))
    assert torch.equal(resumed.s, imtl.s) and resumed.step == 1
    losses = {"b": torch.tensor(1.5), "a": torch.tensor(0.5)}
    assert torch.equal(resumed(losses), imtl(losses))
    assert resumed.weights == imtl.weights


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="IMTLL needs the task names"):
        mw.IMTLL(2.5)  # type: ignore[arg-type]
    imtl = mw.IMTLL(["a", "b"])
    with pytest.raises(FloatingPointError, match="'a'"):
        imtl({"a": torch.tensor(float("inf")), "b": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="'b' is missing"):
        imtl({"a": torch.tensor(1.0)})
