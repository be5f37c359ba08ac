"""State-dict round trip for gradient-level methods that only work through ``.backward``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

import mtlweight as mw

__all__ = ["check_backward_round_trip", "jacobian_stream"]


def jacobian_stream(seed: int, count: int, width: int) -> Callable[[int], NDArray[np.float64]]:
    """Step ``k`` -> a reproducible ``(count, width)`` Jacobian (rows over 2 decades)."""

    def at(step: int) -> NDArray[np.float64]:
        rng = np.random.default_rng([seed, step])
        jac: NDArray[np.float64] = rng.normal(size=(count, width))
        return jac * 10.0 ** rng.uniform(-1.0, 1.0, size=(count, 1))

    return at


def check_backward_round_trip(
    make: Callable[[list[nn.Parameter]], mw.Weighting],
    jac_at: Callable[[int], NDArray[np.float64]],
    tmp_path: Path,
    *,
    before: int = 3,
    after: int = 3,
) -> None:
    """``before`` backward calls, save/load the ``state_dict`` into a fresh instance; the next
    ``after`` calls must give identical weights and directions (``theta.grad``)."""
    width = jac_at(0).shape[1]
    thetas = [nn.Parameter(torch.zeros(width, dtype=torch.float64)) for _ in range(2)]
    original = make([thetas[0]])

    def run(weighting: mw.Weighting, theta: nn.Parameter, step: int) -> torch.Tensor:
        theta.grad = None
        jac = jac_at(step)
        weighting.backward({f"t{i}": theta @ torch.from_numpy(row) for i, row in enumerate(jac)})
        assert theta.grad is not None
        return theta.grad.clone()

    for step in range(before):
        run(original, thetas[0], step)
    path = tmp_path / "state.pt"
    torch.save(original.state_dict(), path)
    resumed = make([thetas[1]])
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.step == original.step == before
    assert resumed.weights == original.weights
    for step in range(before, before + after):
        expected = run(original, thetas[0], step)
        got = run(resumed, thetas[1], step)
        assert resumed.weights == original.weights, f"step {step}: weights differ after resuming"
        assert torch.equal(got, expected), f"step {step}: directions differ after resuming"
