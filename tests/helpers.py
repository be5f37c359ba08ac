"""Shared checks for every weighting strategy, and a tiny multi-task model.

The checks compare a strategy against computations that do not use the code
under test: per-task gradients come from separate ``.backward()`` calls on
fresh graphs, the balancing rule is re-done in numpy. They take *factories*
(callables that build a fresh forward pass on every call) so that each check
can run the model as often as it needs; a factory returns either a mapping of
task name -> scalar loss, or a :class:`Step` when the call also needs a
``representation``.

Later strategies reuse them::

    from helpers import check_weights, check_total_gradient, check_grad_untouched
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

import mtlweight as mw

__all__ = [
    "Step",
    "StepFactory",
    "TinyMultiTask",
    "balance_numpy",
    "check_balanced",
    "check_grad_untouched",
    "check_history_bounded",
    "check_permutation_equivariance",
    "check_scale_invariance",
    "check_state_dict_round_trip",
    "check_total_gradient",
    "check_weights",
    "per_task_gradients",
    "reference_norms",
    "snapshot_grads",
]


class Step(NamedTuple):
    """The arguments of one weighting call: the losses and an optional representation."""

    losses: Mapping[str, Tensor]
    representation: Tensor | None = None


StepFactory = Callable[[], "Mapping[str, Tensor] | Step"]
"""Builds a fresh forward pass (new graph) and returns its losses (or a :class:`Step`)."""


def as_step(value: Mapping[str, Tensor] | Step) -> Step:
    """Wrap a bare mapping of losses into a :class:`Step`."""
    return value if isinstance(value, Step) else Step(value)


def call(weighting: mw.Weighting, step: Mapping[str, Tensor] | Step) -> Tensor:
    """Run ``weighting`` on ``step`` (passing the representation when there is one)."""
    step = as_step(step)
    total: Tensor
    if step.representation is None:
        total = weighting(step.losses)
    else:
        total = weighting(step.losses, representation=step.representation)
    return total


# --------------------------------------------------------------------- model
class TinyMultiTask(nn.Module):
    """A shared trunk (``Linear`` + ``tanh``) and one ``Linear`` head per task.

    ``forward`` returns the trunk's features and each head's output; with
    :meth:`losses` every task gets an MSE loss on its own scale, so that the
    gradient norms of the tasks differ.
    """

    def __init__(
        self,
        tasks: Sequence[str] = ("pixel", "edge", "texture"),
        *,
        in_features: int = 4,
        hidden: int = 5,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.tasks = list(tasks)
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in self.tasks})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.7)
        self.to(dtype)
        self.inputs = torch.randn(6, in_features, generator=generator).to(dtype)
        self.targets = {
            t: torch.randn(6, generator=generator).to(dtype) * (1 + i) for i, t in enumerate(tasks)
        }
        self.scales = {t: 10.0 ** (i - 1) for i, t in enumerate(self.tasks)}

    def head(self, task: str) -> nn.Linear:
        """The head of ``task``."""
        head = self.heads[task]
        assert isinstance(head, nn.Linear)
        return head

    @property
    def linear(self) -> nn.Linear:
        """The trunk's linear layer."""
        layer = self.trunk[0]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.trunk(x)
        return features, {t: self.head(t)(features).squeeze(-1) for t in self.tasks}

    def losses(self) -> dict[str, Tensor]:
        """A fresh forward pass on the fixed batch: one scaled MSE per task."""
        return dict(self.step().losses)

    def step(self, inputs: Tensor | None = None) -> Step:
        """A fresh forward pass returning the losses and the trunk's features."""
        features, outputs = self(self.inputs if inputs is None else inputs)
        losses = {
            t: self.scales[t] * (outputs[t] - self.targets[t]).square().mean() for t in self.tasks
        }
        return Step(losses, features)

    def step_at(self, index: int) -> Step:
        """Like :meth:`step` on a batch that depends only on ``index`` (a reproducible stream)."""
        generator = torch.Generator().manual_seed(1000 + index)
        inputs = torch.randn(self.inputs.shape, generator=generator).to(self.inputs)
        return self.step(inputs)


# ------------------------------------------------------------- references
def balance_numpy(values: npt.ArrayLike) -> np.ndarray:
    """The paper's rule :math:`w_t = 1 - x_t / \\sum_j x_j` in float64 numpy (all zero: 1 - 1/T)."""
    x = np.asarray(values, dtype=np.float64)
    total = x.sum()
    if total == 0:
        return np.full_like(x, 1.0 - 1.0 / x.size)
    weights: np.ndarray = 1.0 - x / total
    return weights


def per_task_gradients(make_step: StepFactory, params: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Each task's gradient of ``params``, flattened and concatenated, in float64 numpy.

    Every task gets its own fresh graph and its own ``.backward(inputs=params)``;
    parameters a task does not reach contribute zeros. The ``.grad`` of
    ``params`` is restored afterwards.
    """
    saved = [p.grad for p in params]
    names = list(as_step(make_step()).losses)
    result: dict[str, np.ndarray] = {}
    try:
        for name in names:
            for p in params:
                p.grad = None
            loss = as_step(make_step()).losses[name]
            if loss.requires_grad:
                loss.backward(inputs=list(params))  # type: ignore[no-untyped-call]
            result[name] = np.concatenate(
                [
                    (torch.zeros_like(p) if p.grad is None else p.grad)
                    .detach()
                    .double()
                    .reshape(-1)
                    .numpy()
                    for p in params
                ]
            )
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return result


def reference_norms(make_step: StepFactory, params: Sequence[Tensor]) -> np.ndarray:
    """L2 norm of each task's gradient of ``params`` (from :func:`per_task_gradients`)."""
    return np.array([np.linalg.norm(g) for g in per_task_gradients(make_step, params).values()])


def snapshot_grads(params: Sequence[Tensor]) -> list[Tensor | None]:
    """Copies of every ``.grad`` (``None`` kept as ``None``)."""
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


# ------------------------------------------------------------------ checks
def check_weights(weighting: mw.Weighting, names: Sequence[str]) -> np.ndarray:
    """Assert ``weighting.weights`` has exactly ``names`` (in order) and finite floats.

    Returns the weights as a float64 array in the order of ``names``.
    """
    weights = weighting.weights
    assert list(weights) == list(names), f"weight keys {list(weights)} != tasks {list(names)}"
    for name, value in weights.items():
        assert isinstance(value, float), f"weight of {name!r} is a {type(value).__name__}"
        assert math.isfinite(value), f"weight of {name!r} is {value}"
    assert weighting.history[-1] == weights, "the last history entry is not the last weights"
    return np.array([weights[n] for n in names], dtype=np.float64)


def check_balanced(weights: np.ndarray, *, atol: float = 1e-5) -> None:
    """Assert every weight is in [0, 1] and the weights sum to ``T - 1``."""
    assert np.all(weights >= -atol) and np.all(weights <= 1 + atol), weights
    np.testing.assert_allclose(weights.sum(), weights.size - 1, atol=atol * weights.size)


def check_total_gradient(
    weighting: mw.Weighting,
    make_step: StepFactory,
    params: Sequence[Tensor],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-7,
) -> np.ndarray:
    """Assert the gradient of ``total`` w.r.t. ``params`` equals ``sum_t w_t grad L_t``.

    Each entry may differ by ``atol + rtol * max_p sum_t |w_t grad L_t|_p``: a
    bound relative to the size of the gradients, since float rounding (and
    cancellation within one task's gradient) is.

    The per-task gradients come from :func:`per_task_gradients` (separate
    backward passes on fresh graphs), ``w_t`` from ``weighting.weights`` after
    the call. Returns the weights (float64, in task order).
    """
    per_task = per_task_gradients(make_step, params)
    step = as_step(make_step())
    total = call(weighting, step)
    assert total.dim() == 0, f"total has shape {tuple(total.shape)}, expected a scalar"
    names = list(step.losses)
    weights = check_weights(weighting, names)
    grads = torch.autograd.grad(total, list(params), allow_unused=True)
    got = np.concatenate(
        [
            (torch.zeros_like(p) if g is None else g).detach().double().reshape(-1).numpy()
            for p, g in zip(params, grads, strict=True)
        ]
    )
    terms = np.stack([w * per_task[n] for w, n in zip(weights, names, strict=True)])
    expected = terms.sum(axis=0)
    # Float rounding, including cancellation inside one task's own gradient
    # (e.g. a sum over the batch), is relative to the size of the gradients:
    # bound every entry by rtol times the largest sum_t |w_t grad L_t|.
    bound = atol + rtol * float(np.abs(terms).sum(axis=0).max())
    error = np.abs(got - expected)
    assert np.all(error <= bound), (
        f"grad of total != sum_t w_t grad L_t: max error {error.max():.3g}, "
        f"worst entry {int(np.argmax(error - bound))}; weights {weighting.weights}"
    )
    # The total's value is sum_t w_t L_t with the reported weights.
    value = sum(w * float(step.losses[n].detach()) for w, n in zip(weights, names, strict=True))
    np.testing.assert_allclose(float(total.detach()), value, rtol=max(rtol, 1e-6), atol=atol)
    return weights


def check_grad_untouched(
    weighting: mw.Weighting,
    make_step: StepFactory,
    params: Sequence[Tensor],
    *,
    seed: int = 0,
) -> None:
    """Assert the weighting call leaves ``.grad`` as it was, and ``total.backward()`` works.

    Every other parameter gets a random ``.grad`` beforehand, the rest keep
    ``None``; after the call each ``.grad`` must be the same object with the
    same values (or still ``None``). The graph must then still be usable.
    """
    generator = torch.Generator().manual_seed(seed)
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=generator).to(p) if i % 2 == 0 else None
    before = snapshot_grads(params)
    objects = [p.grad for p in params]
    total = call(weighting, make_step())
    for i, (p, old, obj) in enumerate(zip(params, before, objects, strict=True)):
        if old is None:
            assert p.grad is None, f"parameter {i}: .grad was None and was written by the call"
        else:
            assert p.grad is obj, f"parameter {i}: .grad was replaced by the call"
            assert p.grad is not None and torch.equal(p.grad, old), (
                f"parameter {i}: .grad was modified by the call"
            )
    total.backward()  # type: ignore[no-untyped-call]  # the graph is still there
    for p in params:
        p.grad = None


def check_history_bounded(
    make_weighting: Callable[[int], mw.Weighting], make_step: StepFactory, size: int, calls: int
) -> None:
    """Assert ``history`` keeps the last ``size`` weight dicts of ``calls`` calls."""
    weighting = make_weighting(size)
    seen: list[dict[str, float]] = []
    for _ in range(calls):
        call(weighting, make_step())
        seen.append(weighting.weights)
    assert len(weighting.history) == min(size, calls)
    assert list(weighting.history) == seen[-size:]
    assert weighting.step == calls


def check_state_dict_round_trip(
    make_weighting: Callable[[], mw.Weighting],
    make_step_at: Callable[[int], Mapping[str, Tensor] | Step],
    tmp_path: Path,
    *,
    before: int = 3,
    after: int = 3,
) -> None:
    """Assert a saved and reloaded state continues exactly like the original.

    ``before`` calls on one instance, ``torch.save`` of its ``state_dict``,
    ``torch.load(weights_only=True)`` into a fresh instance; step, tasks,
    weights and history must match, and the ``after`` following calls (the
    same losses given to both) must give identical weights and totals.
    """
    original = make_weighting()
    for i in range(before):
        call(original, make_step_at(i))
    path = tmp_path / "weighting.pt"
    torch.save(original.state_dict(), path)
    resumed = make_weighting()
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.step == original.step == before
    assert resumed.tasks == original.tasks
    assert resumed.weights == original.weights
    assert list(resumed.history) == list(original.history)
    for i in range(before, before + after):
        expected = call(original, make_step_at(i))
        got = call(resumed, make_step_at(i))
        assert resumed.weights == original.weights, f"call {i}: weights differ after resuming"
        assert torch.equal(got.detach(), expected.detach()), f"call {i}: totals differ"
    assert list(resumed.history) == list(original.history)
    assert resumed.step == original.step


def _reorder(step: Step, order: Sequence[str]) -> Step:
    return Step({n: step.losses[n] for n in order}, step.representation)


def check_permutation_equivariance(
    make_weighting: Callable[[], mw.Weighting],
    make_step: StepFactory,
    permutation: Sequence[int],
    *,
    atol: float = 1e-6,
) -> None:
    """Assert permuting the task order permutes the weights (compared by task name)."""
    first = make_weighting()
    step = as_step(make_step())
    call(first, step)
    names = list(step.losses)
    order = [names[i] for i in permutation]
    second = make_weighting()
    call(second, _reorder(as_step(make_step()), order))
    assert list(second.weights) == order
    for name in names:
        assert math.isclose(first.weights[name], second.weights[name], abs_tol=atol), (
            name,
            first.weights,
            second.weights,
        )


def check_scale_invariance(
    make_weighting: Callable[[], mw.Weighting],
    make_step: StepFactory,
    factor: float,
    *,
    atol: float = 1e-5,
) -> None:
    """Assert multiplying every loss by ``factor > 0`` leaves the weights unchanged."""
    plain = make_weighting()
    call(plain, make_step())
    scaled = make_weighting()
    step = as_step(make_step())
    call(scaled, Step({n: factor * v for n, v in step.losses.items()}, step.representation))
    for name, value in plain.weights.items():
        assert math.isclose(value, scaled.weights[name], abs_tol=atol), (
            name,
            factor,
            plain.weights,
            scaled.weights,
        )
