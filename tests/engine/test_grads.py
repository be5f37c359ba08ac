"""TaskGrads: G, J and the combinations from the per-task gradients, without a (T, P) copy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import mtlweight as mw
from mtlweight._engine.grads import TaskGrads

SHAPES = [(3, 2), (4,), (1, 1, 1, 2)]  # three targets, 12 numbers in all


def split(jac: np.ndarray) -> TaskGrads:
    """The rows of ``jac`` (T x 12) cut into the targets of SHAPES, fresh float32 tensors."""
    grads = []
    for row in jac:
        pieces, start = [], 0
        for shape in SHAPES:
            size = int(np.prod(shape))
            pieces.append(torch.tensor(row[start : start + size], dtype=torch.float32)
                          .reshape(shape).clone())
            start += size
        grads.append(pieces)
    return TaskGrads(grads)


jacobians = st.integers(2, 5).flatmap(
    lambda t: arrays(np.float64, (t, 12), elements=st.floats(-100, 100, width=32))
)


@settings(max_examples=60, deadline=None)
@given(jacobians)
def test_gram_is_j_jt_and_its_diagonal_the_squared_norms(jac: np.ndarray) -> None:
    grads = split(jac)
    reference = jac @ jac.T
    scale = float(np.abs(jac).max() ** 2 * 12 + 1e-30)
    np.testing.assert_allclose(grads.gram().numpy(), reference, atol=1e-6 * scale)
    diagonal = grads.gram(diagonal_only=True).numpy()
    np.testing.assert_allclose(np.diag(diagonal), np.diag(reference), atol=1e-6 * scale)
    assert np.count_nonzero(diagonal - np.diag(np.diag(diagonal))) == 0


@settings(max_examples=60, deadline=None)
@given(jacobians, st.data())
def test_combine_is_jt_c_in_place_or_not(jac: np.ndarray, data: st.DataObject) -> None:
    c = data.draw(arrays(np.float64, (jac.shape[0],), elements=st.floats(-2, 2)))
    reference = jac.T @ c
    scale = float(np.abs(jac).max() * np.abs(c).sum() + 1e-30)
    for in_place in (False, True):
        grads = split(jac)
        first = [g.data_ptr() for g in grads.grads[0]]
        got = grads.combine(torch.tensor(c), in_place=in_place)
        flat = torch.cat([g.reshape(-1) for g in got]).double().numpy()
        np.testing.assert_allclose(flat, reference, atol=1e-5 * scale)
        reused = [g.data_ptr() for g in got] == first
        assert reused == in_place


def test_matrix_is_j_and_rows_stack_each_target() -> None:
    jac = np.arange(36, dtype=np.float64).reshape(3, 12)
    grads = split(jac)
    np.testing.assert_array_equal(grads.matrix().numpy(), jac)
    np.testing.assert_array_equal(grads.matrix(1, 2).numpy(), jac[:, 6:10])
    rows = grads.rows()
    assert [tuple(r.shape) for r in rows] == [(3, *s) for s in SHAPES]


def test_in_place_skips_what_it_does_not_own() -> None:
    """An expanded gradient (as autograd returns for ``w.sum()``) and wrapped rows are left
    alone: new tensors take the sums."""
    expanded = torch.ones(1).expand(4)
    grads = TaskGrads([[expanded], [torch.arange(4.0)]])
    (got,) = grads.combine(torch.tensor([2.0, 1.0]), in_place=True)
    torch.testing.assert_close(got, torch.tensor([2.0, 3.0, 4.0, 5.0]))
    torch.testing.assert_close(expanded, torch.ones(4))
    rows = torch.arange(8.0).reshape(2, 4)
    wrapped = TaskGrads.of_rows([rows])
    (got,) = wrapped.combine(torch.tensor([1.0, 1.0]), in_place=True)
    torch.testing.assert_close(got, torch.tensor([4.0, 6.0, 8.0, 10.0]))
    torch.testing.assert_close(rows, torch.arange(8.0).reshape(2, 4))


def test_half_precision_gradients_are_combined_in_float32() -> None:
    a = torch.full((3,), 1000.0, dtype=torch.bfloat16)
    b = torch.full((3,), 0.5, dtype=torch.bfloat16)
    (got,) = TaskGrads([[a], [b]]).combine(torch.tensor([1.0, 1.0]), in_place=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.full((3,), 1000.5))  # bf16 would round to 1000


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleList(nn.Conv2d(8, 1, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f = self.trunk(x)
        return f, [h(f) for h in self.heads]


def losses_of(net: Net, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    f, (a, b, c) = net(x)
    return f, {"a": a.square().mean(), "b": (b - 1).abs().mean(), "c": (c * a).mean()}


def _gradient_methods() -> list[str]:
    from mtlweight._registry import _key, _resolve

    return [n for n in mw.available() if issubclass(_resolve(_key(n)), mw.GradientMethod)]


@pytest.mark.parametrize("name", _gradient_methods())
def test_channels_last_model_gets_the_same_gradients(name: str) -> None:
    """A ``channels_last`` copy of the model gets the gradients of the contiguous one."""
    torch.manual_seed(0)
    net = Net()
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 6, 6)
    found = []
    for model in (net, nhwc):
        torch.manual_seed(1)
        weighting = mw.get(name, shared=model.trunk, tasks=["a", "b", "c"])
        features, losses = losses_of(model, x)
        representation = features if weighting.needs_representation else None
        weighting.backward(losses, representation=representation)
        found.append([p.grad for p in model.parameters()])
    for (pname, _), g, h in zip(net.named_parameters(), *found, strict=True):
        torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-7, msg=f"{name}: {pname}")


def test_assembled_gradients_are_own_tensors_of_the_parameters_size() -> None:
    """GB over the whole trunk writes each ``.grad`` as a tensor of its own: no view that would
    keep the T per-task gradients alive."""
    torch.manual_seed(0)
    net = Net()
    gb = mw.GradientBalance(shared=net.trunk)
    gb.backward(losses_of(net, torch.rand(2, 3, 6, 6))[1])
    for p in net.parameters():
        assert p.grad is not None and p.grad.shape == p.shape
        assert p.grad.untyped_storage().nbytes() == p.numel() * p.element_size()
    assert "gram" not in gb.statistics and gb.statistics["grad_norm"].shape == (3,)


def test_j_methods_hold_the_shared_gradients_once_as_views_of_j() -> None:
    """With ``matrix=`` each pass's shared gradients are copied into J and kept as its views;
    J comes back uncopied and the update is never written into it."""
    from mtlweight._engine.passes import task_pass

    torch.manual_seed(0)
    net = Net()
    _, losses = losses_of(net, torch.rand(2, 3, 6, 6))
    shared = list(net.trunk.parameters())
    heads = list(net.heads.parameters())
    found = task_pass(list(losses.values()), [*shared, *heads], keep_graph=False,
                      batched=False, matrix=len(shared))
    assert found.reached
    grads = found.grads
    jac = grads.matrix(0, len(shared))
    assert grads.matrix(0, len(shared)) is jac
    assert jac.shape == (3, sum(p.numel() for p in shared))
    for t in range(3):
        for g in grads.grads[t][: len(shared)]:
            assert g.untyped_storage().data_ptr() == jac.untyped_storage().data_ptr()
    before = jac.clone()
    pieces = grads.combine(torch.tensor([0.5, 0.25, 0.25]), 0, len(shared), in_place=True)
    torch.testing.assert_close(jac, before)  # J untouched
    expected = (torch.tensor([0.5, 0.25, 0.25]) @ before)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in pieces]), expected)


@pytest.mark.parametrize("name", ["db_mtl", "moco", "graddrop"])
def test_direction_methods_give_a_weighted_total_equal_to_backward(name: str) -> None:
    """Weighted heads and a direction: ``weighting(losses).backward()`` is ``.backward``."""
    torch.manual_seed(0)
    net = Net()
    weighting = mw.get(name, shared=net.trunk, task_specific="weighted")
    weighting.backward(losses_of(net, torch.rand(2, 3, 6, 6))[1])  # one step: a state exists
    twin = mw.get(name, shared=net.trunk, task_specific="weighted")
    twin.load_state_dict(weighting.state_dict())
    x = torch.rand(2, 3, 6, 6)
    net.zero_grad(set_to_none=True)
    weighting.backward(losses_of(net, x)[1])
    expected = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
    net.zero_grad(set_to_none=True)
    twin(losses_of(net, x)[1]).backward()
    for p, e in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)
    assert_same(twin.state_dict(), weighting.state_dict())


def assert_same(got: object, expected: object) -> None:
    """Equal nested state: tensors bit for bit, everything else by ``==``."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_same(a, b)
    else:
        assert got == expected
