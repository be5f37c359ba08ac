"""Mixed precision: GB and LB under ``torch.autocast`` (bfloat16, CPU) and ``GradScaler``.

Tolerance. bfloat16 keeps 8 significant bits (unit roundoff 2**-9, about
2e-3). Under autocast the convolutions run in bfloat16, so each gradient norm
carries a few roundoffs of relative error; a weight ``1 - g_t / sum g`` then
moves by at most a few times 2e-3. We allow ``AUTOCAST_ATOL = 1e-2`` absolute
on each weight (the largest difference seen over 20 seeds was 4e-4).

A loss scale that is a power of two (GradScaler's default, 2**16) multiplies
every gradient exactly, so the weights with and without it agree to float32
rounding; for any other factor they agree to a few float32 roundoffs.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import Step, call, check_balanced, check_weights
from torch import Tensor, nn

import mtlweight as mw

AUTOCAST_ATOL = 1e-2
TASKS = ("pixel", "edge", "texture")


class ConvMultiTask(nn.Module):
    """A two-conv shared trunk and one conv head per task, on 2 x 3 x 8 x 8 images."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, 3, 3, padding=1) for t in TASKS})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.inputs = torch.rand(2, 3, 8, 8, generator=generator)
        self.targets = torch.rand(2, 3, 8, 8, generator=generator)

    def step(self, *, half_losses: bool = False) -> Step:
        """Fresh forward pass: pixel MSE, an L1 on horizontal differences, a pooled MSE.

        With ``half_losses`` the losses are computed in the features' dtype
        (bfloat16 under autocast) instead of being promoted to float32.
        """
        features = self.trunk(self.inputs)
        out = {t: head(features) for t, head in self.heads.items()}
        target = self.targets.to(features.dtype) if half_losses else self.targets

        def dx(z: Tensor) -> Tensor:
            return z[..., 1:] - z[..., :-1]

        losses = {
            "pixel": (out["pixel"] - target).square().mean(),
            "edge": (dx(out["edge"]) - dx(target)).abs().mean(),
            "texture": 10
            * (F.avg_pool2d(out["texture"], 4) - F.avg_pool2d(target, 4)).square().mean(),
        }
        return Step(losses, features)


Make = Callable[[ConvMultiTask], mw.Weighting]
CASES: dict[str, tuple[Make, bool]] = {
    "gb": (lambda m: mw.GradientBalance(shared=m.trunk), False),
    "gb-last-conv": (lambda m: mw.GradientBalance(shared=m.trunk[2]), False),
    "gb-representation": (lambda m: mw.GradientBalance(), True),
    "lb": (lambda m: mw.LossBalance(), False),
}


def run(
    make: Make, model: ConvMultiTask, representation: bool, *, half_losses: bool = False
) -> tuple[mw.Weighting, Tensor]:
    weighting = make(model)
    step = model.step(half_losses=half_losses)
    if not representation:
        step = Step(step.losses)
    return weighting, call(weighting, step)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("half_losses", [False, True])
def test_autocast_bfloat16_close_to_float32(case: str, seed: int, half_losses: bool) -> None:
    make, representation = CASES[case]
    model = ConvMultiTask(seed)
    reference, _ = run(make, model, representation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weighting, total = run(make, model, representation, half_losses=half_losses)
        assert model.step().representation.dtype == torch.bfloat16  # type: ignore[union-attr]
    weights = check_weights(weighting, TASKS)
    check_balanced(weights, atol=1e-5)
    for task in TASKS:
        assert weighting.weights[task] == pytest.approx(
            reference.weights[task], abs=AUTOCAST_ATOL
        ), (task, weighting.weights, reference.weights)
    assert torch.isfinite(total)
    total.backward()  # type: ignore[no-untyped-call]
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()


def test_bfloat16_losses_reach_the_strategy_as_bfloat16() -> None:
    """The half-precision path is really exercised: the losses themselves are bfloat16."""
    model = ConvMultiTask(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = model.step(half_losses=True)
    assert {v.dtype for v in step.losses.values()} == {torch.bfloat16}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("autocast", [False, True])
def test_grad_scaler_scale_leaves_weights_unchanged(case: str, autocast: bool) -> None:
    make, representation = CASES[case]
    model = ConvMultiTask(3)
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain, _ = run(make, model, representation)
        weighting = make(model)
        step = model.step()
        scaled = Step(
            {t: scaler.scale(v) for t, v in step.losses.items()},
            step.representation if representation else None,
        )
        call(weighting, scaled)
    for task in TASKS:
        assert weighting.weights[task] == pytest.approx(plain.weights[task], abs=1e-6)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("factor", [1e-3, 12345.0])
def test_constant_scale_leaves_weights_unchanged(case: str, factor: float) -> None:
    make, representation = CASES[case]
    model = ConvMultiTask(4)
    plain, _ = run(make, model, representation)
    weighting = make(model)
    step = model.step()
    call(
        weighting,
        Step(
            {t: factor * v for t, v in step.losses.items()},
            step.representation if representation else None,
        ),
    )
    for task in TASKS:
        assert weighting.weights[task] == pytest.approx(plain.weights[task], abs=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_grad_scaler_training_step(case: str) -> None:
    """``scaler.scale(total).backward(); scaler.step(opt); scaler.update()`` under autocast."""
    make, representation = CASES[case]
    model = ConvMultiTask(5)
    weighting = make(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step = model.step()
            total = call(weighting, step if representation else Step(step.losses))
        scaler.scale(total).backward()  # type: ignore[no-untyped-call]
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 2.0**16  # no inf/NaN step was skipped
    assert weighting.step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, old) for p, old in zip(model.parameters(), before, strict=True))


def test_grad_scaler_unscaled_gradient_is_weighted_sum() -> None:
    """After ``scaler.unscale_``, the gradient is sum_t w_t grad L_t of the plain losses."""
    model = ConvMultiTask(6)
    shared = list(model.trunk.parameters())
    per_task = {
        t: torch.autograd.grad(model.step().losses[t], shared) for t in TASKS
    }  # each on its own fresh graph
    gb = mw.GradientBalance(shared=model.trunk)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    total = gb(model.step().losses)
    scaler.scale(total).backward()  # type: ignore[no-untyped-call]
    scaler.unscale_(optimizer)
    for i, p in enumerate(shared):
        expected = sum(gb.weights[t] * per_task[t][i] for t in TASKS)
        assert p.grad is not None
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)
