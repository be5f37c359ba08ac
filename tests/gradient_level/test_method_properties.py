"""Every gradient-level method on matrices, without autograd: the invariants each one claims.

A method's maths is :meth:`~mtlweight.GradientMethod.on_matrices`: this step's
combination from :math:`J` (``T x P``) and :math:`G = J J^\\top`, as ``backward``
applies it. Here it is run on random full-rank matrices (hypothesis), at the
first step of a fresh instance, and checked against what the method claims:

- ``non_conflicting``: :math:`J d \\ge 0` (no task's loss increases to first order);
- ``equivariant``: permuting the tasks permutes the weights (not for the methods
  that draw a random task order, or that project in task order by design);
- ``scale``: under :math:`J \\to c J`, ``"weights"`` keep their value (so :math:`d`
  scales with :math:`c`), ``"direction"``: :math:`d` keeps its value;
- ``non_negative`` weights and their ``total`` (when it is fixed);
- ``equal_projections``: :math:`d` has the same projection on every unit gradient.

The table is the claims, not a record of what happens to hold: each entry is
the method's documented property (its paper's theorem or its definition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

import mtlweight as mw
from mtlweight import GradientMethod
from mtlweight._registry import _resolve


@dataclass(frozen=True)
class Claims:
    non_conflicting: bool = False
    equivariant: bool = True
    scale: Literal["weights", "direction"] | None = "weights"
    non_negative: bool = True
    total: float | None = None
    equal_projections: bool = False


CLAIMS: dict[str, Claims] = {
    # min-norm point of the convex hull: w in the simplex, <g_t, d> >= |d|^2
    "mgda": Claims(non_conflicting=True, total=1.0),
    "mgda_ub": Claims(non_conflicting=True, total=1.0),
    # projections onto the dual cone of the rows
    "upgrad": Claims(non_conflicting=True),
    "dualproj": Claims(non_conflicting=True),
    # G w = w^(-1/alpha): <g_t, d> = w_t^(-1/alpha) > 0, d invariant under J -> cJ
    "nash_mtl": Claims(non_conflicting=True, scale="direction"),
    "fairgrad": Claims(non_conflicting=True, scale="direction"),
    # equal projections onto the unit gradients (ConFIG: positive by construction)
    "config": Claims(non_conflicting=True, non_negative=False, equal_projections=True),
    "imtl_g": Claims(non_negative=False, total=1.0, equal_projections=True),
    "gb": Claims(),
    "cagrad": Claims(),
    "aligned_mtl": Claims(non_negative=False),
    "db_mtl": Claims(),
    "excess_mtl": Claims(total=1.0),
    # a random task order per step (drawn from the method's own generator)
    "pcgrad": Claims(equivariant=False),
    "graddrop": Claims(equivariant=False, non_negative=False),
    # pairs adjusted in task order, as in the paper
    "gradvac": Claims(equivariant=False),
    # stochastic steps on the weights with fixed step sizes: no scale invariance
    "moco": Claims(scale=None),
    "modo": Claims(scale=None, total=1.0),
    "sdmgrad": Claims(scale=None, total=1.0),
}


def gradient_methods() -> list[str]:
    return sorted(n for n in mw.available() if issubclass(_resolve(n), GradientMethod))


def test_every_gradient_method_has_its_claims() -> None:
    assert sorted(CLAIMS) == gradient_methods()


def build(name: str, tasks: int) -> GradientMethod:
    """A fresh method with its task names fixed (as at the first call)."""
    shared = None if name == "mgda_ub" else [torch.zeros(1, requires_grad=True)]
    method = mw.get(name, shared=shared) if shared is not None else mw.get(name)
    assert isinstance(method, GradientMethod)
    method._check_tasks([str(t) for t in range(tasks)])
    return method


def run(name: str, jac: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """The weights and the update :math:`d` of a fresh method on ``jac``."""
    method = build(name, jac.shape[0])
    names = [str(t) for t in range(jac.shape[0])]
    gram = jac @ jac.T
    combination = method.on_matrices(names, jac if method.needs_matrix else None, gram, values)
    weights = combination.weights
    direction = combination.direction
    d = jac.T @ weights.to(jac) if direction is None else direction.to(jac)
    assert weights.shape == (jac.shape[0],) and bool(torch.isfinite(weights).all())
    assert d.shape == (jac.shape[1],) and bool(torch.isfinite(d).all())
    return weights, d


@st.composite
def matrices(draw: st.DrawFn) -> tuple[Tensor, Tensor, int]:
    """A well-conditioned float64 ``J`` (T x P, T <= P), positive losses, and a seed."""
    tasks = draw(st.integers(2, 5))
    width = draw(st.integers(tasks, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(tasks, width, generator=g, dtype=torch.float64)
    jac = jac * torch.exp(torch.randn(tasks, 1, generator=g, dtype=torch.float64))  # norms vary
    singular = torch.linalg.svdvals(jac)
    assume(float(singular[-1]) > 1e-2 * float(singular[0]))
    values = torch.rand(tasks, generator=g, dtype=torch.float64) + 0.1
    return jac, values, seed


def seeded_run(name: str, jac: Tensor, values: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    torch.manual_seed(seed)  # the methods' own generators are seeded from torch's
    return run(name, jac, values)


@pytest.mark.parametrize("name", sorted(CLAIMS))
@settings(max_examples=30, deadline=None)
@given(case=matrices())
def test_claimed_invariants(name: str, case: tuple[Tensor, Tensor, int]) -> None:
    jac, values, seed = case
    claims = CLAIMS[name]
    weights, d = seeded_run(name, jac, values, seed)
    scale = float(jac.norm()) * float(d.norm()) + 1e-30
    if claims.non_conflicting:
        assert bool((jac @ d >= -1e-6 * scale).all()), (jac @ d).tolist()
    if claims.non_negative:
        assert bool((weights >= -1e-9).all()), weights.tolist()
    if claims.total is not None:
        assert float(weights.sum()) == pytest.approx(claims.total, abs=1e-6)
    if claims.equal_projections:
        projections = (jac / jac.norm(dim=1, keepdim=True)) @ d
        torch.testing.assert_close(projections, projections[:1].expand_as(projections),
                                   rtol=1e-5, atol=1e-7 * scale)
    if claims.equivariant:
        perm = torch.randperm(jac.shape[0], generator=torch.Generator().manual_seed(seed))
        permuted, _ = seeded_run(name, jac[perm], values[perm], seed)
        torch.testing.assert_close(permuted, weights[perm], rtol=1e-4, atol=1e-7)
    if claims.scale is not None:
        scaled_w, scaled_d = seeded_run(name, 3.0 * jac, values, seed)
        if claims.scale == "weights":
            torch.testing.assert_close(scaled_w, weights, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scaled_d, (3.0 if claims.scale == "weights" else 1.0) * d,
                                   rtol=1e-4, atol=1e-7 * scale)


def test_the_harness_sees_a_broken_claim() -> None:
    """Equal weights conflict on some J: the non-conflict check must be able to fail."""
    jac = torch.tensor([[1.0, 0.0], [-3.0, 0.1]], dtype=torch.float64)
    d = jac.T @ torch.ones(2, dtype=torch.float64)
    assert not bool((jac @ d >= 0).all())
    weights, mgda_d = run("mgda", jac, torch.ones(2, dtype=torch.float64))
    assert bool((jac @ mgda_d >= -1e-12).all()) and float(weights.sum()) == pytest.approx(1.0)
