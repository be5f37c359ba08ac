"""InstanceGram: the per-sample Gram matrix and update against the explicit Jacobian."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import mtlweight as mw
from mtlweight._engine.instance import layer_gram


class Twice(nn.Module):
    """A linear layer called twice (tied weights): its calls' positions add up."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 5)
        self.out = nn.Linear(5, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))
        return out


class Sequence(nn.Module):
    """Linear layers over a sequence (N, L, d) and a 1-d convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.conv = nn.Conv1d(4, 6, 3, padding=1, stride=2, bias=False)
        self.out = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.embed(x)).transpose(1, 2)  # (N, 4, L)
        h = torch.relu(self.conv(h)).mean(2)
        out: Tensor = self.out(h)
        return out


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, dilation=2, padding=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 1))


def with_norm() -> nn.Module:  # LayerNorm: the per-sample fallback
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (4,)),
    "cnn": (cnn, (2, 6, 6)),
    "sequence": (Sequence, (7, 3)),
    "tied": (Twice, (5,)),
    "layer_norm": (with_norm, (4,)),
}


def explicit_jacobian(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(N, P): one autograd.grad per sample, independent of the hooks' formulas."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for n in range(x.shape[0]):
        loss = ((model(x[n:n + 1]) - y[n:n + 1]) ** 2).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=6, deadline=None, derandomize=True)
@given(count=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_gram_and_update_match_the_explicit_jacobian(name: str, count: int, seed: int) -> None:
    torch.manual_seed(seed)
    build, shape = MODELS[name]
    model = build().double()
    x = torch.randn(count, *shape, dtype=torch.float64)
    y = torch.randn(count, 1, dtype=torch.float64)
    jac = explicit_jacobian(model, x, y)
    path = mw.InstanceGram(model)
    losses = ((model(x) - y) ** 2).sum(1)
    gram = path.gram(losses)
    torch.testing.assert_close(gram, jac @ jac.T, rtol=1e-10, atol=1e-12)
    weights = torch.rand(count, dtype=torch.float64)
    path.combine(weights)
    update = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
    torch.testing.assert_close(update, jac.T @ weights, rtol=1e-10, atol=1e-12)
    path.remove()


@pytest.mark.parametrize("ghost", [True, False, None])
@pytest.mark.parametrize("positions", [1, 4])
def test_layer_gram_both_ways(positions: int, ghost: bool | None) -> None:
    a = torch.randn(5, positions, 3, dtype=torch.float64)
    d = torch.randn(5, positions, 2, dtype=torch.float64)
    per_sample = torch.einsum("nlq,nlp->nqp", d, a).reshape(5, -1)  # D_n^T A_n
    torch.testing.assert_close(layer_gram(a, d, ghost=ghost), per_sample @ per_sample.T)


def test_backward_is_the_weighting_of_the_explicit_gram() -> None:
    torch.manual_seed(0)
    model = mlp().double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    jac = explicit_jacobian(model, x, y)
    upgrad = mw.UPGrad(shared=model)
    expected = upgrad.gram_weights(jac @ jac.T, torch.zeros(16, dtype=torch.float64))
    path = mw.InstanceGram(model)
    weights = path.backward(((model(x) - y) ** 2).squeeze(1), upgrad)
    np.testing.assert_allclose(weights.numpy(), expected.numpy(), rtol=1e-8, atol=1e-10)
    update = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
    torch.testing.assert_close(update, jac.T @ expected, rtol=1e-8, atol=1e-10)
    assert torch.all(jac @ update >= -1e-9 * jac.norm(dim=1) * update.norm())  # no conflict


def test_adds_to_existing_gradients_and_skips_no_grad_calls() -> None:
    model = mlp()
    path = mw.InstanceGram(model)
    with torch.no_grad():
        model(torch.randn(3, 4))  # not kept
    x = torch.randn(5, 4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    losses = model(x).squeeze(1)
    path.gram(losses)
    path.combine(torch.zeros(5, dtype=torch.float64))
    assert all(p.grad is not None and torch.equal(p.grad, torch.ones_like(p))
               for p in model.parameters())


def test_rejects_losses_that_are_not_one_per_sample() -> None:
    model = mlp()
    path = mw.InstanceGram(model)
    with pytest.raises(ValueError, match="one loss per sample"):
        path.gram(model(torch.randn(3, 4)))  # (3, 1)
    path.remove()
    path = mw.InstanceGram(model)
    with pytest.raises(ValueError, match="batch of 3 samples; the losses have 2"):
        path.gram(model(torch.randn(3, 4)).squeeze(1)[:2])


def test_combine_needs_gram_first() -> None:
    with pytest.raises(RuntimeError, match="needs a call of gram"):
        mw.InstanceGram(mlp()).combine(torch.ones(2))
