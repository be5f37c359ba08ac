"""mtlweight.autograd: per-task gradients and norms, without touching ``.grad``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, per_task_gradients, reference_norms, snapshot_grads
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from mtlweight.autograd import as_inputs, grad_norms, task_gradients

FAST = settings(max_examples=30, deadline=None)


def quadratic(
    seed: int, tasks: int, size: int, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, list[Tensor], np.ndarray]:
    r"""``L_t = x^T Q_t x / 2 + b_t^T x``: the gradient is ``Q_t x + b_t`` (``Q_t`` symmetric).

    Returns ``x``, the losses and the closed-form ``(T, size)`` gradients.
    """
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=size)
    a = rng.normal(size=(tasks, size, size))
    q = (a + a.transpose(0, 2, 1)) / 2
    b = rng.normal(size=(tasks, size))
    x = torch.tensor(x0, dtype=dtype, requires_grad=True)
    losses = [
        x @ torch.tensor(q[t], dtype=dtype) @ x / 2 + torch.tensor(b[t], dtype=dtype) @ x
        for t in range(tasks)
    ]
    return x, losses, q @ x0 + b


# ------------------------------------------------------------- known values
def test_doc_examples() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    torch.testing.assert_close(
        task_gradients([x.sum(), (x**2).sum()], [x]), torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    )
    y = torch.tensor([3.0, 4.0], requires_grad=True)
    norms = grad_norms([(y**2).sum() / 2, y.sum()], y)
    torch.testing.assert_close(norms, torch.tensor([5.0, 2.0**0.5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_separate_backward_on_fresh_graphs(dtype: torch.dtype) -> None:
    model = TinyMultiTask(seed=4, dtype=dtype)
    params = list(model.parameters())
    expected = per_task_gradients(model.losses, params)
    losses = list(model.losses().values())
    matrix = task_gradients(losses, params)
    norms = grad_norms(losses, params)
    assert matrix.shape == (3, sum(p.numel() for p in params))
    assert matrix.dtype == dtype and norms.dtype == dtype
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-5, 1e-7)
    np.testing.assert_allclose(
        matrix.double().numpy(), np.stack(list(expected.values())), rtol=rtol, atol=atol
    )
    np.testing.assert_allclose(
        norms.double().numpy(), reference_norms(model.losses, params), rtol=rtol, atol=atol
    )


def test_norm_is_over_all_inputs_together() -> None:
    """One norm over the concatenation, not a sum of per-tensor norms."""
    a = torch.tensor([3.0], requires_grad=True)
    b = torch.tensor([4.0], requires_grad=True)
    norms = grad_norms([(a**2 / 2 + b**2 / 2).sum()], [a, b])
    assert float(norms[0]) == pytest.approx(5.0)


def test_intermediate_tensor_as_input(model: TinyMultiTask) -> None:
    """Gradients w.r.t. the trunk's features: by hand for linear heads, s_t * 2/N * r_t a_t^T."""
    step = model.step()
    features = step.representation
    assert features is not None and not features.is_leaf
    matrix = task_gradients(list(step.losses.values()), features)
    f = features.detach().double().numpy()
    for row, t in zip(matrix, model.tasks, strict=True):
        head = model.head(t)
        a = head.weight.detach().double().numpy()[0]
        r = f @ a + float(head.bias.detach()) - model.targets[t].double().numpy()
        expected = model.scales[t] * 2 / len(r) * np.outer(r, a)
        np.testing.assert_allclose(row.double().numpy(), expected.reshape(-1), rtol=1e-5)


def test_module_generator_and_single_tensor_inputs(model: TinyMultiTask) -> None:
    losses = list(model.losses().values())
    by_module = task_gradients(losses, model.trunk)
    by_list = task_gradients(losses, list(model.trunk.parameters()))
    by_generator = task_gradients(losses, model.trunk.parameters())
    torch.testing.assert_close(by_module, by_list, rtol=0, atol=0)
    torch.testing.assert_close(by_generator, by_list, rtol=0, atol=0)
    weight_only = task_gradients(losses, model.linear.weight)
    torch.testing.assert_close(weight_only, by_list[:, : model.linear.weight.numel()])


def test_unreached_inputs_count_as_zero(model: TinyMultiTask) -> None:
    losses = model.losses()
    pixel_head = list(model.head("pixel").parameters())
    matrix = task_gradients(list(losses.values()), pixel_head)
    assert matrix[0].abs().sum() > 0
    assert torch.count_nonzero(matrix[1:]) == 0
    norms = grad_norms([losses["edge"], torch.tensor(1.0)], pixel_head)
    torch.testing.assert_close(norms, torch.zeros(2))


def test_duplicate_inputs_kept_once() -> None:
    x = torch.tensor([3.0, 4.0], requires_grad=True)
    loss = (x**2).sum() / 2
    assert task_gradients([loss], [x, x]).shape == (1, 2)
    assert float(grad_norms([loss], [x, x, x])[0]) == pytest.approx(5.0)


def test_frozen_inputs_are_skipped() -> None:
    layer = nn.Linear(2, 1)
    layer.bias.requires_grad_(False)
    out = layer(torch.ones(1, 2)).sum()
    assert task_gradients([out], layer).shape == (1, 2)
    assert len(as_inputs(layer)) == 1


# ------------------------------------------------------- .grad and the graph
def test_grad_untouched(model: TinyMultiTask) -> None:
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i)) if i % 2 else None
    before = snapshot_grads(params)
    losses = list(model.losses().values())
    task_gradients(losses, params)
    grad_norms(losses, params)
    for p, old in zip(params, before, strict=True):
        if old is None:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.equal(p.grad, old)


def test_graph_is_kept_for_a_later_backward(model: TinyMultiTask) -> None:
    losses = model.losses()
    grad_norms(list(losses.values()), model.trunk)
    task_gradients(list(losses.values()), model.trunk)
    total = sum(losses.values(), torch.tensor(0.0))
    total.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None for p in model.trunk.parameters())


def test_retain_graph_false_frees_the_graph(model: TinyMultiTask) -> None:
    losses = model.losses()
    grad_norms([losses["pixel"]], model.trunk, retain_graph=False)
    with pytest.raises(RuntimeError, match="second time"):
        losses["pixel"].backward()  # type: ignore[no-untyped-call]


def test_norms_are_detached(model: TinyMultiTask) -> None:
    norms = grad_norms(list(model.losses().values()), model.trunk)
    assert not norms.requires_grad


# ------------------------------------------------------------------- dtypes
def test_half_precision_norms_accumulate_in_float32() -> None:
    """float16 gradients of 300: their squares (9e4) overflow float16, the norm does not."""
    p = torch.ones(4, dtype=torch.float16, requires_grad=True)
    loss = (300 * p).sum()
    norms = grad_norms([loss], [p])
    assert norms.dtype == torch.float32
    assert float(norms[0]) == pytest.approx(600.0)


def test_bfloat16_inputs() -> None:
    p = torch.tensor([3.0, 4.0], dtype=torch.bfloat16, requires_grad=True)
    norms = grad_norms([(p * p.detach()).sum()], [p])
    assert norms.dtype == torch.float32 and float(norms[0]) == pytest.approx(5.0)


def test_mixed_float32_and_float64_inputs() -> None:
    a = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    loss = a.sum() * 3 + b.sum().float() * 4
    assert task_gradients([loss], [a, b]).dtype == torch.float64
    assert grad_norms([loss], [a, b]).dtype == torch.float64
    assert float(grad_norms([loss], [a, b])[0]) == pytest.approx(5.0)


# ----------------------------------------------------------------- errors
def test_non_scalar_loss_names_position() -> None:
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"task '1' must be a scalar.*\(3,\)"):
        grad_norms([x.sum(), x * 2], [x])


@pytest.mark.parametrize("bad", [[], torch.tensor(1.0)])
def test_losses_must_be_a_non_empty_sequence(bad: object) -> None:
    x = torch.ones(3, requires_grad=True)
    with pytest.raises((ValueError, TypeError), match="losses"):
        task_gradients(bad, [x])  # type: ignore[arg-type]


def test_inputs_must_require_grad() -> None:
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"none of the 1 given inputs requires grad"):
        grad_norms([x.sum()], [torch.ones(3)])


def test_inputs_must_be_tensors() -> None:
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match=r"input 1 is a float"):
        grad_norms([x.sum()], [x, 1.0])  # type: ignore[list-item]


# --------------------------------------------------------------- properties
@FAST
@given(seed=st.integers(0, 2**16), tasks=st.integers(1, 8), size=st.integers(1, 6))
def test_property_quadratic_closed_form(seed: int, tasks: int, size: int) -> None:
    x, losses, expected = quadratic(seed, tasks, size)
    matrix = task_gradients(losses, [x])
    norms = grad_norms(losses, [x])
    np.testing.assert_allclose(matrix.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm(expected, axis=1), rtol=1e-12)
    # the graph survives both calls
    (grad,) = torch.autograd.grad(sum(losses, torch.tensor(0.0, dtype=x.dtype)), [x])
    np.testing.assert_allclose(grad.numpy(), expected.sum(axis=0), rtol=1e-10, atol=1e-12)
    assert x.grad is None


@FAST
@given(seed=st.integers(0, 2**16), tasks=st.integers(1, 5), hidden=st.integers(1, 6))
def test_property_norms_are_row_norms(seed: int, tasks: int, hidden: int) -> None:
    model = TinyMultiTask([f"t{i}" for i in range(tasks)], hidden=hidden, seed=seed)
    losses = list(model.losses().values())
    matrix = task_gradients(losses, model)
    torch.testing.assert_close(grad_norms(losses, model), matrix.norm(dim=1))
