"""Every gradient-level method: known values, training, degenerate inputs, state, errors.

The known values use linear losses ``L_t = theta . g_t + 1``, whose gradients are
exactly the rows ``g_t`` of a small matrix ``J``, so every expected weight below
is worked out by hand from ``J`` (the derivation is next to each entry).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from helpers import (
    TinyMultiTask,
    check_grad_untouched,
    check_history_bounded,
    check_permutation_equivariance,
    check_scale_invariance,
    check_state_dict_round_trip,
    check_total_gradient,
    check_weights,
    per_task_gradients,
)
from torch import Tensor, nn

import mtlweight as mw

Factory = Callable[..., mw.GradientAggregator]

# Every method, built on the shared parameters (``shared``) it is given.
METHODS: dict[str, Factory] = {
    "pcgrad": lambda shared, **o: mw.PCGrad(shared, **o),
    "mgda": lambda shared, **o: mw.MGDA(shared, **o),
    "mgda-l2": lambda shared, **o: mw.MGDA(shared, normalization="l2", **o),
    "mgda-loss+": lambda shared, **o: mw.MGDA(shared, normalization="loss+", **o),
    "cagrad": lambda shared, **o: mw.CAGrad(shared, **o),
    "imtl_g": lambda shared, **o: mw.IMTLG(shared, **o),
    "nash_mtl": lambda shared, **o: mw.NashMTL(shared, **o),
    "aligned_mtl": lambda shared, **o: mw.AlignedMTL(shared, **o),
}
# The methods whose weights depend only on the gradients (no random order).
DETERMINISTIC = [name for name in METHODS if name != "pcgrad"]


@pytest.fixture(params=list(METHODS))
def method(request: pytest.FixtureRequest) -> str:
    """The name of each method in :data:`METHODS`."""
    name: str = request.param
    return name


def make(name: str, shared: Any, **options: Any) -> mw.GradientAggregator:
    """Build method ``name`` on ``shared``; ``"weighted"`` unless told otherwise."""
    options.setdefault("task_specific", "weighted")
    return METHODS[name](shared, **options)


def linear(jac: list[list[float]]) -> tuple[nn.Parameter, list[Tensor]]:
    """A parameter ``theta`` and losses ``theta . g_t + 1`` with gradients the rows of ``jac``."""
    rows = torch.tensor(jac, dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(rows.shape[1], dtype=torch.float64))
    return theta, [theta @ g + 1.0 for g in rows]


# ------------------------------------------------------------ known values
class Known(NamedTuple):
    """A method, a Jacobian, and the weights (or the direction ``d``) worked out by hand."""

    make: Callable[[nn.Parameter], mw.GradientAggregator]
    jac: list[list[float]]
    weights: list[float] | None = None
    direction: list[float] | None = None


S2 = math.sqrt(2.0)
F17 = 17.0**0.25  # ||G||_F^(1/2) for G = diag(1, 4)
KNOWN: dict[str, Known] = {
    # orthogonal: nothing to project, d is the sum
    "pcgrad-orthogonal": Known(lambda p: mw.PCGrad([p]), [[1, 0], [0, 2]], [1, 1]),
    # g1.g2 = -1: g1 -> g1 + g2/2 = (.5, .5), g2 -> g2 + g1 = (0, 1); d = 2 g1 + 1.5 g2
    "pcgrad-conflict": Known(lambda p: mw.PCGrad([p]), [[1, 0], [-1, 1]], [2, 1.5], [0.5, 1.5]),
    # min w1^2 + 4 w2^2 on the simplex: w = (.8, .2)
    "mgda-orthogonal": Known(lambda p: mw.MGDA([p]), [[1, 0], [0, 2]], [0.8, 0.2]),
    # (w1 - w2)^2 + w2^2 with w1 = 1 - w2: w2 = .4
    "mgda-conflict": Known(lambda p: mw.MGDA([p]), [[1, 0], [-1, 1]], [0.6, 0.4], [0.2, 0.4]),
    # g2 = -g1: the origin is in the hull
    "mgda-opposite": Known(lambda p: mw.MGDA([p]), [[1, 2], [-1, -2]], [0.5, 0.5], [0, 0]),
    # l2 normalisation: unit vectors (1, 0), (0, 1) -> (.5, .5), applied to the raw losses
    "mgda-l2": Known(lambda p: mw.MGDA([p], normalization="l2"), [[1, 0], [0, 2]], [0.5, 0.5]),
    # loss normalisation: L = 1 for both, the same as none
    "mgda-loss": Known(lambda p: mw.MGDA([p], normalization="loss"), [[1, 0], [0, 2]], [0.8, 0.2]),
    # symmetric: w* = (.5, .5), ||g_w|| = ||g0|| = 1/sqrt2, lambda = c: (1/2 + c/2)
    "cagrad-rescale0": Known(
        lambda p: mw.CAGrad([p], c=0.5, rescale=0), [[1, 0], [0, 1]], [0.75, 0.75]
    ),
    "cagrad-rescale1": Known(
        lambda p: mw.CAGrad([p], c=0.5, rescale=1), [[1, 0], [0, 1]], [0.6, 0.6]
    ),
    "cagrad-rescale2": Known(
        lambda p: mw.CAGrad([p], c=0.5, rescale=2), [[1, 0], [0, 1]], [0.5, 0.5]
    ),
    "cagrad-c0": Known(lambda p: mw.CAGrad([p], c=0.0), [[1, 0], [-3, 1]], [0.5, 0.5]),
    # d = (a1, 2 a2) with a1 = 2 a2 and a1 + a2 = 1
    "imtl_g-orthogonal": Known(lambda p: mw.IMTLG([p]), [[1, 0], [0, 2]], [2 / 3, 1 / 3]),
    # d = (a1 - a2, a2), d.u1 = d.u2: a2 = sqrt2 - 1
    "imtl_g-conflict": Known(lambda p: mw.IMTLG([p]), [[1, 0], [-1, 1]], [2 - S2, S2 - 1]),
    # the paper's G alpha = 1/alpha on the raw G = diag(1, 4): alpha_t = 1 / ||g_t||, d = (1, 1)
    "nash-orthogonal": Known(
        lambda p: mw.NashMTL([p], max_norm=0.0), [[1, 0], [0, 2]], [1, 0.5], [1, 1]
    ),
    # max_norm = 1: d = (F17, F17) scaled to norm 1
    "nash-clipped": Known(
        lambda p: mw.NashMTL([p], max_norm=1.0), [[1, 0], [0, 2]], [1 / S2, 1 / (2 * S2)]
    ),
    # G = diag(1, 4): B = sqrt(1) diag(1, 1/2)
    "aligned-min": Known(lambda p: mw.AlignedMTL([p]), [[1, 0], [0, 2]], [1, 0.5]),
    # rmse: sigma = mean(1, 4) = 2.5, B = sqrt(2.5) diag(1, 1/2)
    "aligned-rmse": Known(
        lambda p: mw.AlignedMTL([p], scale="rmse"),
        [[1, 0], [0, 2]],
        [math.sqrt(2.5), math.sqrt(2.5) / 2],
    ),
    # lower median of (1, 4) is 1
    "aligned-median": Known(
        lambda p: mw.AlignedMTL([p], scale="median"), [[1, 0], [0, 2]], [1, 0.5]
    ),
    # identical gradients g: every method moves along g
    "pcgrad-identical": Known(lambda p: mw.PCGrad([p]), [[1, 1], [1, 1]], [1, 1], [2, 2]),
    "mgda-identical": Known(lambda p: mw.MGDA([p]), [[1, 1], [1, 1]], None, [1, 1]),
    "cagrad-identical": Known(
        lambda p: mw.CAGrad([p], c=0.5, rescale=0), [[1, 1], [1, 1]], None, [1.5, 1.5]
    ),
    "imtl_g-identical": Known(lambda p: mw.IMTLG([p]), [[1, 1], [1, 1]], [0.5, 0.5], [1, 1]),
    # G = 2 * ones: 4 a = 1 / a, a = 1/2 each
    "nash-identical": Known(
        lambda p: mw.NashMTL([p], max_norm=0.0), [[1, 1], [1, 1]], [0.5, 0.5], [1, 1]
    ),
    "aligned-identical": Known(lambda p: mw.AlignedMTL([p]), [[1, 1], [1, 1]], [1, 1], [2, 2]),
}


@pytest.mark.parametrize("task_specific", ["weighted", "plain"])
@pytest.mark.parametrize("key", list(KNOWN))
def test_known_values(key: str, task_specific: str) -> None:
    known = KNOWN[key]
    theta, losses = linear(known.jac)
    weighting = known.make(theta)
    weighting.task_specific = task_specific  # type: ignore[assignment]
    returned = weighting.backward(losses)
    weights = np.array(list(returned.values()))
    if known.weights is not None:
        np.testing.assert_allclose(weights, known.weights, rtol=1e-6, atol=1e-9)
    expected = np.asarray(known.jac, dtype=np.float64).T @ weights
    assert theta.grad is not None
    np.testing.assert_allclose(theta.grad.numpy(), expected, rtol=1e-9, atol=1e-12)
    if known.direction is not None:
        np.testing.assert_allclose(theta.grad.numpy(), known.direction, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------ toy training
def train(weighting: mw.GradientAggregator, model: TinyMultiTask, steps: int) -> list[float]:
    """``steps`` of SGD through ``weighting.backward``; the summed loss before each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        losses = model.losses()
        history.append(float(sum(v.detach() for v in losses.values())))
        weighting.backward(losses)
        optimizer.step()
    history.append(float(sum(v.detach() for v in model.losses().values())))
    return history


@pytest.mark.parametrize("task_specific", ["weighted", "plain"])
def test_toy_model_trains(method: str, task_specific: str) -> None:
    model = TinyMultiTask(seed=3)
    weighting = make(method, model.trunk, task_specific=task_specific)
    if method == "nash_mtl":
        weighting = make(method, model.trunk, task_specific=task_specific, max_norm=0.0)
    history = train(weighting, model, 15)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < history[0], history
    check_weights(weighting, model.tasks)


def test_toy_model_trains_on_a_representation(method: str) -> None:
    model = TinyMultiTask(seed=4)
    weighting = make(method, None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first = last = 0.0
    for i in range(15):
        optimizer.zero_grad()
        step = model.step()
        total = float(sum(v.detach() for v in step.losses.values()))
        first = total if i == 0 else first
        last = total
        weighting.backward(step.losses, representation=step.representation)
        optimizer.step()
    assert last < first


# ---------------------------------------------- .grad on every parameter
def test_weighted_mode_gradient_is_sum_of_weighted_task_gradients(
    method: str, model: TinyMultiTask
) -> None:
    """``__call__`` + backward: sum_t w_t grad L_t on shared and task-specific parameters."""
    check_total_gradient(make(method, model.trunk), model.losses, list(model.parameters()))


def test_plain_mode_heads_get_the_plain_gradient(method: str, model: TinyMultiTask) -> None:
    """``task_specific="plain"``: each head gets grad L_t, the trunk gets J^T w."""
    weighting = make(method, model.trunk, task_specific="plain")
    trunk = list(model.trunk.parameters())
    heads = [p for t in model.tasks for p in model.head(t).parameters()]
    per_task_trunk = per_task_gradients(model.losses, trunk)
    per_task_heads = per_task_gradients(model.losses, heads)
    weights = weighting.backward(model.losses())
    got_heads = np.concatenate([p.grad.double().reshape(-1).numpy() for p in heads])  # type: ignore[union-attr]
    np.testing.assert_allclose(got_heads, sum(per_task_heads.values()), rtol=1e-5, atol=1e-7)
    expected = sum(w * per_task_trunk[n] for n, w in weights.items())
    got_trunk = np.concatenate([p.grad.double().reshape(-1).numpy() for p in trunk])  # type: ignore[union-attr]
    np.testing.assert_allclose(got_trunk, expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------- degenerate
@pytest.mark.parametrize(
    "jac",
    [
        [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]],  # identical
        [[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]],  # one zero gradient
        [[0.0, 0.0], [0.0, 0.0]],  # all zero
        [[1.0, 2.0], [-1.0, -2.0]],  # opposite
        [[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]],  # collinear, rank 1
        [[1e-30, 0.0], [0.0, 1e30]],  # wildly different scales
    ],
    ids=["identical", "one-zero", "all-zero", "opposite", "collinear", "scales"],
)
@pytest.mark.parametrize("task_specific", ["weighted", "plain"])
def test_degenerate_gradients_give_finite_results(
    method: str, jac: list[list[float]], task_specific: str
) -> None:
    theta, losses = linear(jac)
    weighting = make(method, [theta], task_specific=task_specific)
    weights = weighting.backward(losses)
    assert all(math.isfinite(w) for w in weights.values()), weights
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all()), theta.grad


def test_a_task_that_does_not_reach_the_shared_parameters(method: str) -> None:
    model = TinyMultiTask(seed=5)
    weighting = make(method, model.trunk)
    losses = model.losses()
    losses["constant"] = model.head("pixel").bias.sum() * 0 + 1.0  # no path to the trunk
    with pytest.raises(ValueError, match=r"the loss of task 'constant' reaches none of the"):
        weighting.backward(losses)  # a silent no-op otherwise (issue 26)
    assert weighting.step == 0 and all(p.grad is None for p in model.parameters())
    weighting.allow_unreached = True  # the documented escape: its gradient counts as zero
    weights = weighting.backward(losses)
    assert all(math.isfinite(w) for w in weights.values()), weights


def test_single_task(method: str) -> None:
    theta, losses = linear([[3.0, 4.0]])
    weights = make(method, [theta]).backward(losses[:1])
    assert list(weights) == ["0"] and math.isfinite(weights["0"])
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())


# ----------------------------------------------------------- the Weighting contract
def test_grad_untouched_by_the_call(method: str, model: TinyMultiTask) -> None:
    check_grad_untouched(make(method, model.trunk), model.losses, list(model.parameters()))


def test_history_bounded(method: str, model: TinyMultiTask) -> None:
    check_history_bounded(
        lambda n: make(method, model.trunk, history_size=n), model.losses, size=2, calls=4
    )


def test_state_dict_round_trip(method: str, model: TinyMultiTask, tmp_path: Path) -> None:
    check_state_dict_round_trip(
        lambda: make(method, model.trunk), lambda i: dict(model.step_at(i).losses), tmp_path
    )


def test_state_dict_round_trip_through_backward(
    method: str, model: TinyMultiTask, tmp_path: Path
) -> None:
    """The default mode (plain for PCGrad) resumes identically too, ``.grad`` included."""
    original = METHODS[method](model.trunk)
    for i in range(3):
        original.backward(model.step_at(i).losses)
    torch.save(original.state_dict(), tmp_path / "w.pt")
    resumed = METHODS[method](model.trunk)
    resumed.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    for i in range(3, 6):
        model.zero_grad()
        expected = original.backward(model.step_at(i).losses)
        grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
        model.zero_grad()
        assert resumed.backward(model.step_at(i).losses) == expected
        for p, g in zip(model.parameters(), grads, strict=True):
            assert p.grad is not None and torch.equal(p.grad, g)


def test_permutation_equivariance(model: TinyMultiTask) -> None:
    for name in DETERMINISTIC:
        check_permutation_equivariance(
            functools.partial(make, name, model.trunk), model.losses, [2, 0, 1], atol=1e-5
        )


def test_invariant_to_scaling_every_loss(model: TinyMultiTask) -> None:
    """Scaling every loss by one factor scales every gradient: the weights do not change.

    Not for ``loss+`` normalisation (it divides by the losses) nor Nash-MTL's
    ``max_norm`` (a bound on the size of ``d``); Nash-MTL in the paper's form scales
    ``alpha`` by ``1/factor``, so its normalised variant (``normalize_gram=True``) is checked.
    """
    factories = [
        functools.partial(make, n, model.trunk)
        for n in METHODS
        if n not in ("mgda-loss+", "nash_mtl")
    ]
    factories.append(
        functools.partial(make, "nash_mtl", model.trunk, max_norm=0.0, normalize_gram=True)
    )
    for factory in factories:
        check_scale_invariance(factory, model.losses, 7.0, atol=1e-4)


def test_float64_model(method: str) -> None:
    model = TinyMultiTask(seed=1, dtype=torch.float64)
    check_total_gradient(
        make(method, model.trunk), model.losses, list(model.parameters()), rtol=1e-10, atol=1e-12
    )


def test_no_parameters_in_state(method: str, model: TinyMultiTask) -> None:
    weighting = make(method, model.trunk)
    assert list(weighting.parameters()) == []
    assert list(weighting.state_dict()) == ["_extra_state"]


# ------------------------------------------------------------------ errors
def test_needs_shared_or_representation(method: str) -> None:
    weighting = make(method, None)
    with pytest.raises(ValueError, match=r"needs the shared parameters .*representation"):
        weighting([torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_names_the_task(method: str, model: TinyMultiTask, bad: float) -> None:
    losses = model.losses()
    losses["edge"] = losses["edge"] * bad
    with pytest.raises(FloatingPointError, match=r"loss of task 'edge' is not finite"):
        make(method, model.trunk).backward(losses)


def test_non_finite_gradient_names_the_task(method: str) -> None:
    theta = nn.Parameter(torch.tensor([1.0, 0.0]))
    losses = {"pixel": theta.sum(), "edge": theta.sqrt().sum()}  # sqrt'(0) = inf, L finite
    with pytest.raises(FloatingPointError, match=r"gradient norm of task 'edge' is not finite"):
        make(method, [theta]).backward(losses)


def test_single_tensor_and_non_scalar_losses(method: str, model: TinyMultiTask) -> None:
    weighting = make(method, model.trunk)
    with pytest.raises(TypeError, match=r"found a single tensor of shape \(3,\)"):
        weighting.backward(torch.ones(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"loss of task 'b' must be a scalar"):
        weighting.backward({"a": torch.tensor(1.0), "b": torch.ones(2)})
    with pytest.raises(ValueError, match="losses is empty"):
        weighting.backward({})


def test_unknown_task_specific_is_rejected(method: str) -> None:
    with pytest.raises(ValueError, match=r"task_specific must be 'weighted' or 'plain'; found 'x'"):
        METHODS[method](None, task_specific="x")


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("pcgrad", mw.PCGrad),
        ("PCGrad", mw.PCGrad),
        ("mgda", mw.MGDA),
        ("mgda-ub", mw.MGDAUB),
        ("cagrad", mw.CAGrad),
        ("imtl_g", mw.IMTLG),
        ("imtlg", mw.IMTLG),
        ("nash_mtl", mw.NashMTL),
        ("nash", mw.NashMTL),
        ("aligned_mtl", mw.AlignedMTL),
        ("aligned-mtl", mw.AlignedMTL),
    ],
)
def test_registry(name: str, cls: type[mw.Weighting]) -> None:
    assert type(mw.get(name)) is cls


def test_registry_passes_options(model: TinyMultiTask) -> None:
    cagrad = mw.get("cagrad", shared=model.trunk, c=0.7, rescale=0)
    assert isinstance(cagrad, mw.CAGrad) and cagrad.c == 0.7 and cagrad.rescale == 0
    cagrad(model.losses())
    check_weights(cagrad, model.tasks)


def test_exported() -> None:
    for name in ["GradientAggregator", "PCGrad", "MGDA", "MGDAUB", "CAGrad", "IMTLG"]:
        assert name in mw.__all__ and hasattr(mw, name)
    assert "NashMTL" in mw.__all__ and "AlignedMTL" in mw.__all__


def test_repr(model: TinyMultiTask) -> None:
    assert repr(mw.PCGrad(model.trunk)) == "PCGrad(task_specific='plain', seed=0)"
    assert repr(mw.CAGrad(model.trunk)) == "CAGrad(task_specific='plain', c=0.4, rescale=1)"
    assert repr(mw.MGDA(tasks=["a", "b"])) == (
        "MGDA(tasks=['a', 'b'], task_specific='plain', normalization='none')"
    )
