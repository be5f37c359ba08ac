"""UncertaintyWeighting (UW): learnable log-variances, against closed-form gradients."""

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
    uw = mw.UncertaintyWeighting(["depth", "segmentation"], classification=["segmentation"])
    total = uw({"depth": torch.tensor(3.0), "segmentation": torch.tensor(1.0)})
    assert total.item() == 5.0  # 1 * 3 + 0 + 2 * 1 + 0
    assert uw.weights == {"depth": 1.0, "segmentation": 2.0}
    total.backward()  # type: ignore[no-untyped-call]
    assert uw.s.grad is not None
    assert uw.s.grad.tolist() == [-2.0, -1.0]


@FAST
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1e3), st.floats(-5.0, 5.0), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_property_total_and_gradients_match_closed_form(
    tasks: list[tuple[float, float, bool]],
) -> None:
    """L = sum c e^{-s} L + s;  dL/ds_t = 1 - c_t e^{-s_t} L_t;  dL/dL_t = c_t e^{-s_t}."""
    names = [f"t{i}" for i in range(len(tasks))]
    uw = mw.UncertaintyWeighting(
        names, classification=[n for n, (_, _, cls) in zip(names, tasks, strict=True) if cls]
    ).double()
    with torch.no_grad():
        uw.s.copy_(torch.tensor([s for _, s, _ in tasks], dtype=torch.float64))
    losses = {
        n: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for n, (v, _, _) in zip(names, tasks, strict=True)
    }
    total = uw(losses)
    c = np.array([2.0 if cls else 1.0 for _, _, cls in tasks])
    s = np.array([s for _, s, _ in tasks])
    value = np.array([v for v, _, _ in tasks])
    np.testing.assert_allclose(total.item(), np.sum(c * np.exp(-s) * value + s), rtol=1e-10)
    np.testing.assert_allclose(check_weights(uw, names), c * np.exp(-s), rtol=1e-12)
    total.backward()  # type: ignore[no-untyped-call]
    assert uw.s.grad is not None
    np.testing.assert_allclose(
        uw.s.grad.numpy(), 1 - c * np.exp(-s) * value, rtol=1e-10, atol=1e-12
    )
    for n, weight in zip(names, c * np.exp(-s), strict=True):
        grad = losses[n].grad
        assert grad is not None
        np.testing.assert_allclose(grad.item(), weight, rtol=1e-12)


@FAST
@given(st.floats(1e-3, 1e3), st.floats(-4.0, 4.0), st.booleans())
def test_property_twice_the_papers_objective(loss: float, s: float, classification: bool) -> None:
    """Kendall et al. eq. 7: 1/(2 sigma^2) L + log sigma (regression), 1/sigma^2 L + log sigma."""
    uw = mw.UncertaintyWeighting(1, classification=["0"] if classification else []).double()
    with torch.no_grad():
        uw.s.fill_(s)
    sigma2 = math.exp(s)
    paper = (1 if classification else 0.5) / sigma2 * loss + math.log(math.sqrt(sigma2))
    got = uw([torch.tensor(loss, dtype=torch.float64)]).item()
    assert got == pytest.approx(2 * paper, rel=1e-10, abs=1e-12)


def test_optimizer_drives_s_to_log_of_the_loss() -> None:
    """With fixed losses the minimiser is s_t = log(c_t L_t)."""
    uw = mw.UncertaintyWeighting(["a", "b"], classification=["b"])
    optimizer = torch.optim.Adam(uw.parameters(), lr=0.1)
    for _ in range(400):
        optimizer.zero_grad()
        uw({"a": torch.tensor(4.0), "b": torch.tensor(0.25)}).backward()
        optimizer.step()
    np.testing.assert_allclose(uw.s.detach().numpy(), [math.log(4.0), math.log(0.5)], atol=1e-2)
    assert uw.weights == pytest.approx({"a": 0.25, "b": 4.0}, rel=2e-2)  # 1 / L_t


def test_model_gradient_is_weighted_sum(model: TinyMultiTask) -> None:
    uw = mw.UncertaintyWeighting(model.tasks)
    params = list(model.parameters())
    np.testing.assert_allclose(check_total_gradient(uw, model.losses, params), 1.0)
    check_grad_untouched(mw.UncertaintyWeighting(model.tasks), model.losses, params)


def test_trains_with_the_model(model: TinyMultiTask) -> None:
    uw = mw.UncertaintyWeighting(model.tasks)
    optimizer = torch.optim.SGD([*model.parameters(), *uw.parameters()], lr=0.05)
    first = sum(v.item() for v in model.losses().values())
    for _ in range(30):
        optimizer.zero_grad()
        uw(model.losses()).backward()
        optimizer.step()
    assert sum(v.item() for v in model.losses().values()) < first
    assert uw.s.grad is not None and not torch.equal(uw.s.detach(), torch.zeros(3))


def test_tasks_by_count_and_dict_order() -> None:
    uw = mw.UncertaintyWeighting(2, init=math.log(2.0))
    assert uw.tasks == ["0", "1"]
    uw([torch.tensor(1.0), torch.tensor(2.0)])
    assert uw.weights == pytest.approx({"0": 0.5, "1": 0.5})
    named = mw.UncertaintyWeighting(["a", "b"], classification="b")
    with torch.no_grad():
        named.s.copy_(torch.tensor([0.0, math.log(4.0)]))
    total = named({"b": torch.tensor(2.0), "a": torch.tensor(3.0)})
    assert list(named.weights) == ["b", "a"]
    assert named.weights == pytest.approx({"b": 0.5, "a": 1.0})
    assert total.item() == pytest.approx(0.5 * 2 + math.log(4.0) + 3.0)


def test_state_round_trip_with_weights_only(tmp_path: Path) -> None:
    uw = mw.UncertaintyWeighting(["a", "b"], classification=["a"])
    optimizer = torch.optim.SGD(uw.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        uw({"a": torch.tensor(2.0), "b": torch.tensor(5.0)}).backward()
        optimizer.step()
    torch.save(uw.state_dict(), tmp_path / "uw.pt")
    resumed = mw.UncertaintyWeighting(["a", "b"], classification=["a"])
    resumed.load_state_dict(torch.load(tmp_path / "uw.pt", weights_only=True))
    assert torch.equal(resumed.s, uw.s)
    assert resumed.step == 3 and list(resumed.history) == list(uw.history)
    losses = {"a": torch.tensor(1.5), "b": torch.tensor(0.5)}
    assert torch.equal(resumed(losses), uw(losses))
    assert "s" in dict(uw.named_parameters())


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="task names"):
        mw.UncertaintyWeighting("pixel")
    with pytest.raises(TypeError, match="task names"):
        mw.UncertaintyWeighting(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one task"):
        mw.UncertaintyWeighting([])
    with pytest.raises(ValueError, match="'seg' is not one of the tasks"):
        mw.UncertaintyWeighting(["depth"], classification=["seg"])
    with pytest.raises(ValueError, match="unique"):
        mw.UncertaintyWeighting(["a", "a"])


def test_bad_losses_name_the_task() -> None:
    uw = mw.UncertaintyWeighting(["a", "b"])
    with pytest.raises(ValueError, match="'b' is missing"):
        uw({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="unknown task 'c'"):
        uw({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(1.0)})
    with pytest.raises(FloatingPointError, match="'b'"):
        uw({"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match="'a'"):
        uw({"a": torch.ones(3), "b": torch.tensor(1.0)})
    assert uw.step == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_losses_on_another_device_are_rejected() -> None:
    uw = mw.UncertaintyWeighting(1)
    with pytest.raises(ValueError, match="move the weighting"):
        uw([torch.tensor(1.0, device="cuda")])


def test_gradient_of_s_goes_through_statistic() -> None:
    """The one place reduced across processes: under DDP every rank gets the mean gradient."""
    uw = mw.UncertaintyWeighting(["a", "b"])
    uw({"a": torch.tensor(3.0), "b": torch.tensor(0.5)}).backward()
    assert uw.s.grad is not None
    torch.testing.assert_close(uw.statistics["s_grad"], uw.s.grad)
    torch.testing.assert_close(uw.statistics["loss"], torch.tensor([3.0, 0.5]))
