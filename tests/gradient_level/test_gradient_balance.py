"""GradientBalance (GB): weights against closed-form gradients and separate backward passes."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import (
    Step,
    TinyMultiTask,
    balance_numpy,
    check_balanced,
    check_grad_untouched,
    check_permutation_equivariance,
    check_scale_invariance,
    check_total_gradient,
    check_weights,
    per_task_gradients,
    reference_norms,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import mtlweight as mw

FAST = settings(max_examples=30, deadline=None)


class LinearProblem:
    r"""``T`` tasks sharing one linear map, with gradients known in closed form.

    .. math::

        z = X W^\top, \qquad L_t = c_t \frac{1}{N} \lVert z h_t - y_t \rVert^2

    so that :math:`\partial L_t / \partial W = \frac{2 c_t}{N} h_t (X^\top r_t)^\top`
    and :math:`\partial L_t / \partial z = \frac{2 c_t}{N} r_t h_t^\top` with the
    residual :math:`r_t = z h_t - y_t`. The heads :math:`h_t` are constants.
    """

    def __init__(
        self, tasks: int, seed: int, *, dtype: torch.dtype = torch.float64, n: int = 5
    ) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 3))
        self.w0 = rng.normal(size=(4, 3))
        self.h = rng.normal(size=(tasks, 4))
        self.y = rng.normal(size=(tasks, n))
        self.c = 10.0 ** rng.uniform(-2, 2, size=tasks)
        self.names = [f"task{t}" for t in range(tasks)]
        self.dtype = dtype
        self.weight = nn.Parameter(torch.tensor(self.w0, dtype=dtype))

    def step(self) -> Step:
        """Fresh graph: the losses and the representation ``z``."""
        x = torch.tensor(self.x, dtype=self.dtype)
        z = x @ self.weight.T
        losses = {
            name: float(self.c[t])
            * (
                z @ torch.tensor(self.h[t], dtype=self.dtype)
                - torch.tensor(self.y[t], dtype=self.dtype)
            )
            .square()
            .mean()
            for t, name in enumerate(self.names)
        }
        return Step(losses, z)

    def losses(self) -> dict[str, Tensor]:
        return dict(self.step().losses)

    def _residuals(self) -> np.ndarray:
        w = self.weight.detach().double().numpy()
        residuals: np.ndarray = (self.x @ w.T) @ self.h.T - self.y.T  # (N, T)
        return residuals

    def weight_gradients(self) -> np.ndarray:
        """``(T, 4*3)``: each task's gradient w.r.t. ``W``, flattened."""
        r, n = self._residuals(), self.x.shape[0]
        return np.stack(
            [
                (2 * self.c[t] / n * np.outer(self.h[t], self.x.T @ r[:, t])).reshape(-1)
                for t in range(len(self.names))
            ]
        )

    def representation_gradients(self) -> np.ndarray:
        """``(T, N*4)``: each task's gradient w.r.t. ``z``, flattened."""
        r, n = self._residuals(), self.x.shape[0]
        return np.stack(
            [
                (2 * self.c[t] / n * np.outer(r[:, t], self.h[t])).reshape(-1)
                for t in range(len(self.names))
            ]
        )


# ------------------------------------------------------------- known values
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_match_closed_form_gradients(dtype: torch.dtype) -> None:
    problem = LinearProblem(3, seed=1, dtype=dtype)
    gb = mw.GradientBalance(shared=[problem.weight])
    gb(problem.losses())
    norms = np.linalg.norm(problem.weight_gradients(), axis=1)
    expected = balance_numpy(norms)
    got = check_weights(gb, problem.names)
    np.testing.assert_allclose(got, expected, rtol=1e-12 if dtype == torch.float64 else 2e-6)
    np.testing.assert_allclose(
        gb.statistics["grad_norm"].double().numpy(),
        norms,
        rtol=1e-12 if dtype == torch.float64 else 2e-6,
    )


def test_total_gradient_is_weighted_sum_of_closed_form_gradients() -> None:
    problem = LinearProblem(4, seed=2)
    gb = mw.GradientBalance(shared=[problem.weight])
    total = gb(problem.losses())
    weights = check_weights(gb, problem.names)
    (grad,) = torch.autograd.grad(total, [problem.weight])
    expected = weights @ problem.weight_gradients()
    np.testing.assert_allclose(grad.reshape(-1).numpy(), expected, rtol=1e-12, atol=1e-14)


def test_representation_norms_match_closed_form() -> None:
    problem = LinearProblem(3, seed=3)
    gb = mw.GradientBalance()  # no shared parameters: representation only
    step = problem.step()
    total = gb(step.losses, representation=step.representation)
    norms = np.linalg.norm(problem.representation_gradients(), axis=1)
    np.testing.assert_allclose(check_weights(gb, problem.names), balance_numpy(norms), rtol=1e-12)
    # total still backpropagates to W as sum_t w_t dL_t/dW
    (grad,) = torch.autograd.grad(total, [problem.weight])
    expected = check_weights(gb, problem.names) @ problem.weight_gradients()
    np.testing.assert_allclose(grad.reshape(-1).numpy(), expected, rtol=1e-12, atol=1e-14)


def test_representation_overrides_shared_parameters() -> None:
    problem = LinearProblem(3, seed=4)
    gb = mw.GradientBalance(shared=[problem.weight])
    step = problem.step()
    gb(step.losses, representation=step.representation)
    norms = np.linalg.norm(problem.representation_gradients(), axis=1)
    np.testing.assert_allclose(check_weights(gb, problem.names), balance_numpy(norms), rtol=1e-12)


def test_representation_on_tiny_model_by_hand(model: TinyMultiTask) -> None:
    """Linear heads: dL_t/dfeatures = s_t * 2/N * r_t a_t^T, with a_t the head's weight row."""
    gb = mw.GradientBalance()
    step = model.step()
    gb(step.losses, representation=step.representation)
    features = step.representation.detach().double().numpy()  # type: ignore[union-attr]
    norms = []
    for t in model.tasks:
        head = model.head(t)
        a = head.weight.detach().double().numpy()[0]
        b = float(head.bias.detach())
        r = features @ a + b - model.targets[t].double().numpy()
        grad = model.scales[t] * 2 / len(r) * np.outer(r, a)
        norms.append(np.linalg.norm(grad))
    np.testing.assert_allclose(check_weights(gb, model.tasks), balance_numpy(norms), rtol=2e-6)


def test_weights_match_separate_backward_on_tiny_model(
    model: TinyMultiTask, shared: list[Tensor]
) -> None:
    gb = mw.GradientBalance(shared=model.trunk)
    weights = check_total_gradient(gb, model.losses, shared)
    norms = reference_norms(model.losses, shared)
    np.testing.assert_allclose(weights, balance_numpy(norms), rtol=2e-6)
    check_balanced(weights)


def test_total_gradient_with_representation(model: TinyMultiTask, shared: list[Tensor]) -> None:
    gb = mw.GradientBalance()
    check_total_gradient(gb, model.step, shared)


def test_total_gradient_reaches_task_heads(model: TinyMultiTask) -> None:
    """Parameters outside ``shared`` get w_t * grad L_t as well (only task t reaches its head)."""
    gb = mw.GradientBalance(shared=model.trunk)
    check_total_gradient(gb, model.losses, list(model.parameters()))


def test_doc_example_values() -> None:
    head = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        head.weight.fill_(1.0)
    y = head(torch.tensor([[2.0]])).sum()
    gb = mw.GradientBalance(shared=head)
    total = gb({"a": y, "b": 3 * y})
    assert gb.weights == {"a": 0.75, "b": 0.25}
    assert float(total.detach()) == pytest.approx(0.75 * 2 + 0.25 * 6)


# ------------------------------------------------------- how `shared` is given
def test_module_iterable_and_generator_agree(model: TinyMultiTask) -> None:
    results = []
    for shared in (model.trunk, list(model.trunk.parameters()), model.trunk.parameters()):
        gb = mw.GradientBalance(shared=shared)
        gb(model.losses())
        results.append(gb.weights)
    assert results[0] == results[1] == results[2]


def test_frozen_parameters_are_ignored(model: TinyMultiTask) -> None:
    """A module's frozen parameters are not shared parameters."""
    trunk = model.trunk[0]
    assert isinstance(trunk, nn.Linear)
    trunk.bias.requires_grad_(False)
    gb = mw.GradientBalance(shared=model.trunk)
    gb(model.losses())
    norms = reference_norms(model.losses, [trunk.weight])
    np.testing.assert_allclose(check_weights(gb, model.tasks), balance_numpy(norms), rtol=2e-6)


def test_tied_parameters_counted_once(model: TinyMultiTask) -> None:
    trunk = model.trunk[0]
    assert isinstance(trunk, nn.Linear)
    once = mw.GradientBalance(shared=[trunk.weight, trunk.bias])
    twice = mw.GradientBalance(shared=[trunk.weight, trunk.weight, trunk.bias, trunk.bias])
    once(model.losses())
    twice(model.losses())
    assert once.weights == twice.weights
    # counted twice, the weight's gradient would weigh more than the bias's: a different answer
    grads = per_task_gradients(model.losses, [trunk.weight, trunk.weight, trunk.bias])
    doubled = balance_numpy([np.linalg.norm(g) for g in grads.values()])
    assert not np.allclose(check_weights(once, model.tasks), doubled, rtol=1e-4)


def test_tied_module_weights_counted_once() -> None:
    """Two layers sharing one weight: the norm is over the single tensor."""
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    b.weight = a.weight
    shared = nn.Sequential(a, b)
    x = torch.randn(4, 3)

    def losses() -> dict[str, Tensor]:
        out = shared(x)
        return {"sum": out.sum(), "square": out.square().mean(), "first": out[:, 0].mean()}

    gb = mw.GradientBalance(shared=shared)
    gb(losses())
    norms = reference_norms(losses, [a.weight])
    np.testing.assert_allclose(check_weights(gb, list(losses())), balance_numpy(norms), rtol=2e-6)


# ------------------------------------------------------------ special cases
def test_task_not_reaching_shared_gets_zero_norm(model: TinyMultiTask) -> None:
    losses = model.losses()
    losses["head_only"] = model.head("pixel").weight.square().sum()  # needs no trunk
    losses["constant"] = torch.tensor(2.5)  # needs nothing at all
    gb = mw.GradientBalance(shared=model.trunk)
    with pytest.raises(ValueError, match=r"tasks 'head_only', 'constant' reach"):
        gb(losses)
    gb.allow_unreached = True
    gb(losses)
    weights = gb.weights
    assert weights["head_only"] == 1.0
    assert weights["constant"] == 1.0
    np.testing.assert_allclose(float(gb.statistics["grad_norm"][3]), 0.0)
    norms = [
        np.linalg.norm(g)
        for g in per_task_gradients(model.losses, list(model.trunk.parameters())).values()
    ]
    np.testing.assert_allclose([weights[t] for t in model.tasks], balance_numpy(norms), rtol=2e-6)


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_all_zero_norms_give_equal_weights(tasks: int) -> None:
    shared = nn.Parameter(torch.ones(3))
    other = nn.Parameter(torch.ones(2))
    losses = [(other * (t + 1)).square().sum() for t in range(tasks)]  # none reaches `shared`
    gb = mw.GradientBalance(shared=[shared])
    with pytest.raises(ValueError, match="GradientBalance: no loss reaches the 1 shared"):
        gb(losses)
    gb.allow_unreached = True
    total = gb(losses)
    assert gb.weights == pytest.approx({str(t): 1 - 1 / tasks for t in range(tasks)})
    total.backward()  # type: ignore[no-untyped-call]
    assert other.grad is not None and shared.grad is None


def test_zero_gradient_at_optimum_gives_equal_weights() -> None:
    """Every loss at its minimum: all gradients are exactly zero."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    gb = mw.GradientBalance(shared=[w])
    gb({"a": (w - torch.tensor([1.0, -2.0])).square().sum(), "b": (w[0] - 1).square()})
    assert gb.weights == {"a": 0.5, "b": 0.5}


def test_list_and_tuple_losses_named_by_position(model: TinyMultiTask) -> None:
    gb = mw.GradientBalance(shared=model.trunk)
    gb(list(model.losses().values()))
    assert list(gb.weights) == ["0", "1", "2"]
    as_dict = gb.weights
    gb(tuple(model.losses().values()))
    assert gb.weights == as_dict


def test_float64_model() -> None:
    model = TinyMultiTask(seed=3, dtype=torch.float64)
    shared = list(model.trunk.parameters())
    gb = mw.GradientBalance(shared=model.trunk)
    weights = check_total_gradient(gb, model.losses, shared, rtol=1e-12, atol=1e-14)
    norms = reference_norms(model.losses, shared)
    np.testing.assert_allclose(weights, balance_numpy(norms), rtol=1e-12)
    assert gb.statistics["grad_norm"].dtype == torch.float64


def test_backward_method_accumulates_weighted_gradient(
    model: TinyMultiTask, shared: list[Tensor]
) -> None:
    per_task = per_task_gradients(model.losses, shared)
    gb = mw.GradientBalance(shared=model.trunk)
    weights = gb.backward(model.losses())
    assert weights == gb.weights
    got = np.concatenate([p.grad.double().reshape(-1).numpy() for p in shared])  # type: ignore[union-attr]
    expected = sum(weights[t] * per_task[t] for t in model.tasks)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_grad_untouched_and_graph_kept(model: TinyMultiTask) -> None:
    gb = mw.GradientBalance(shared=model.trunk)
    check_grad_untouched(gb, model.losses, list(model.parameters()))
    check_grad_untouched(mw.GradientBalance(), model.step, list(model.parameters()))


# ----------------------------------------------------------------- errors
def test_single_task_is_rejected_with_reason(model: TinyMultiTask) -> None:
    gb = mw.GradientBalance(shared=model.trunk)
    with pytest.raises(ValueError, match=r"at least 2 tasks.*single task.*found 1"):
        gb({"pixel": model.losses()["pixel"]})


def test_needs_shared_or_representation(model: TinyMultiTask) -> None:
    with pytest.raises(ValueError, match=r"shared.*representation"):
        mw.GradientBalance()(model.losses())


def test_representation_must_require_grad(model: TinyMultiTask) -> None:
    with pytest.raises(ValueError, match="requires grad"):
        mw.GradientBalance()(model.losses(), representation=torch.ones(3))


def test_shared_without_trainable_parameters_is_rejected() -> None:
    with pytest.raises(ValueError, match="requires grad"):
        mw.GradientBalance(shared=[torch.ones(3)])


def test_non_scalar_loss_names_task(model: TinyMultiTask) -> None:
    losses = model.losses()
    losses["edge"] = losses["edge"].reshape(1).expand(3)
    with pytest.raises(ValueError, match=r"task 'edge'.*scalar.*\(3,\)"):
        mw.GradientBalance(shared=model.trunk)(losses)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_names_task(model: TinyMultiTask, bad: float) -> None:
    losses = model.losses()
    losses["texture"] = losses["texture"] * bad
    with pytest.raises(FloatingPointError, match=r"loss of task 'texture' is not finite"):
        mw.GradientBalance(shared=model.trunk)(losses)


@pytest.mark.parametrize(
    ("make_bad", "value"),
    [
        (lambda p: p.sqrt().sum(), "inf"),  # d sqrt(p)/dp = inf at p = 0
        (lambda p: p.abs().pow(0.5).sum(), "nan"),  # inf * sign(0) = nan
    ],
    ids=["inf-gradient", "nan-gradient"],
)
def test_non_finite_gradient_names_task(make_bad: Callable[[Tensor], Tensor], value: str) -> None:
    p = nn.Parameter(torch.zeros(3))
    bad = make_bad(p)
    assert math.isfinite(float(bad.detach()))  # the loss itself is fine
    gb = mw.GradientBalance(shared=[p])
    with pytest.raises(
        FloatingPointError, match=rf"gradient norm of task 'bad' is not finite \({value}\)"
    ):
        gb({"good": (p + 1).square().sum(), "bad": bad})
    assert gb.step == 0 and gb.weights == {}


def test_parameter_containing_inf_names_task() -> None:
    """An inf in a shared parameter, behind a saturating function: finite loss, NaN gradient."""
    p = nn.Parameter(torch.tensor([1.0, math.inf]))
    bad = torch.tanh(p[0] * p[1])  # tanh(inf) = 1; d/dp0 = (1 - 1) * inf = nan
    assert float(bad.detach()) == 1.0
    gb = mw.GradientBalance(shared=[p])
    with pytest.raises(
        FloatingPointError, match=r"gradient norm of task '1' is not finite \(nan\)"
    ):
        gb([p[0].square(), bad])


# --------------------------------------------------------------- properties
@FAST
@given(tasks=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_property_weights_in_unit_interval_and_sum(tasks: int, seed: int) -> None:
    problem = LinearProblem(tasks, seed, dtype=torch.float32)
    gb = mw.GradientBalance(shared=[problem.weight])
    gb(problem.losses())
    weights = check_weights(gb, problem.names)
    check_balanced(weights)
    norms = np.linalg.norm(problem.weight_gradients(), axis=1)
    np.testing.assert_allclose(weights, balance_numpy(norms), atol=1e-5)


@FAST
@given(
    tasks=st.integers(2, 8),
    seed=st.integers(0, 2**16),
    factor=st.floats(1e-3, 1e4),
    representation=st.booleans(),
)
def test_property_scale_invariance(
    tasks: int, seed: int, factor: float, representation: bool
) -> None:
    problem = LinearProblem(tasks, seed, dtype=torch.float32)
    if representation:
        check_scale_invariance(mw.GradientBalance, problem.step, factor)
    else:
        check_scale_invariance(
            lambda: mw.GradientBalance(shared=[problem.weight]), problem.losses, factor
        )


@FAST
@given(data=st.data(), tasks=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_property_permutation_equivariance(data: st.DataObject, tasks: int, seed: int) -> None:
    problem = LinearProblem(tasks, seed, dtype=torch.float32)
    permutation = data.draw(st.permutations(range(tasks)))
    check_permutation_equivariance(
        lambda: mw.GradientBalance(shared=[problem.weight]), problem.losses, permutation
    )


@FAST
@given(tasks=st.integers(2, 5), seed=st.integers(0, 2**16), hidden=st.integers(1, 6))
def test_property_random_models_total_gradient_and_grad_untouched(
    tasks: int, seed: int, hidden: int
) -> None:
    model = TinyMultiTask([f"t{i}" for i in range(tasks)], hidden=hidden, seed=seed)
    shared = list(model.trunk.parameters())
    weights = check_total_gradient(mw.GradientBalance(shared=model.trunk), model.losses, shared)
    check_balanced(weights)
    check_grad_untouched(
        mw.GradientBalance(shared=model.trunk), model.losses, list(model.parameters())
    )
