"""The one validation helper used at the top of every public function.

Every error names what was expected and what was found: the task, the shape,
the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlweight.distributed import all_reduce_mean

Losses = Mapping[str, Tensor] | Sequence[Tensor]


def task_names(count: int) -> list[str]:
    """Names given to tasks passed as a sequence: ``"0"``, ``"1"``, ..."""
    return [str(i) for i in range(count)]


def normalise_losses(losses: Losses) -> tuple[list[str], list[Tensor]]:
    """Split ``losses`` into task names and scalar tensors, checking each one.

    A mapping keeps its keys (in insertion order); a sequence gets the names
    ``"0"``, ``"1"``, ...
    """
    if isinstance(losses, Tensor):
        raise TypeError(
            "losses must be a dict of task name -> scalar tensor, or a list/tuple of scalar "
            f"tensors; found a single tensor of shape {tuple(losses.shape)}"
        )
    if isinstance(losses, Mapping):
        names = [str(k) for k in losses.keys()]
        values = list(losses.values())
        if len(set(names)) != len(names):
            keys = list(losses.keys())
            twins = [k for k in keys if names.count(str(k)) > 1]
            raise ValueError(
                f"the task names {', '.join(map(repr, twins))} are the same as strings "
                f"({str(twins[0])!r}): give the losses distinct names"
            )
    elif isinstance(losses, Sequence):
        values = list(losses)
        names = task_names(len(values))
    else:
        raise TypeError(
            "losses must be a dict of task name -> scalar tensor, or a list/tuple of scalar "
            f"tensors; found {type(losses).__name__}"
        )
    if not values:
        raise ValueError("losses is empty: give at least one task")
    for name, value in zip(names, values, strict=True):
        # the usual case in as few calls as possible (every step pays for this check)
        if not (isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point()):
            check_scalar(name, value)
    device = values[0].device
    if len(values) > 1 and any(v.device != device for v in values[1:]):
        found = ", ".join(f"{n}: {v.device}" for n, v in zip(names, values, strict=True))
        raise ValueError(f"all losses must be on one device; found {found}")
    return names, values


def check_scalar(name: str, value: object) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``value`` is a scalar floating tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"loss of task {name!r} is a {type(value).__name__}, expected a tensor")
    if value.numel() != 1 or value.dim() > 1:
        raise ValueError(
            f"loss of task {name!r} must be a scalar tensor; found shape {tuple(value.shape)} "
            "(reduce it, e.g. with .mean(), before weighting)"
        )
    if not value.is_floating_point():
        raise ValueError(f"loss of task {name!r} must be floating point; found {value.dtype}")


def check_scalar_losses(losses: Sequence[Tensor]) -> None:
    """Check a sequence of losses, naming tasks by position."""
    if isinstance(losses, Tensor) or not isinstance(losses, Sequence):
        raise TypeError(f"losses must be a list/tuple of scalar tensors; found {type(losses)}")
    if not losses:
        raise ValueError("losses is empty: give at least one task")
    for i, value in enumerate(losses):
        check_scalar(str(i), value)


def check_finite(names: Sequence[str], values: Tensor, what: str) -> None:
    """Raise ``FloatingPointError`` naming the first task whose value is NaN or infinite.

    ``values`` is a 1-D tensor with one entry per task. One device sync.
    """
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = [names[i] for i in (~finite).nonzero().flatten().tolist()]
    shown = {names[i]: float(values[i]) for i in (~finite).nonzero().flatten().tolist()}
    raise FloatingPointError(
        f"{what} of task {bad[0]!r} is not finite ({shown[bad[0]]}); all non-finite: {shown}"
    )


def check_min_tasks(names: Sequence[str], minimum: int, strategy: str, why: str = "") -> None:
    """Raise ``ValueError`` if fewer than ``minimum`` tasks are given."""
    if len(names) < minimum:
        reason = f": {why}" if why else ""
        raise ValueError(
            f"{strategy} needs at least {minimum} tasks{reason}; found {len(names)} "
            f"({list(names)})"
        )


def check_non_negative(names: Sequence[str], values: Tensor, strategy: str) -> None:
    """Raise ``ValueError`` naming the first task whose loss is negative."""
    negative = values < 0
    if bool(negative.any()):
        i = int(negative.nonzero()[0])
        raise ValueError(
            f"{strategy} needs non-negative losses; loss of task {names[i]!r} is "
            f"{float(values[i])}"
        )


NO_VALUES = torch.empty(0)  # the values of a CPU call to a strategy that does not read them


def loss_values(names: list[str], values: list[Tensor], *, needed: bool, synced: bool) -> Tensor:
    """The detached losses, checked finite (on every process when ``synced``).

    Stacked in float32 (float64 if any loss is). :data:`NO_VALUES` when they are
    not ``needed`` (a strategy that does not read them), the call is on the CPU,
    every loss is finite and ``synced`` is false.
    """
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
    if values[0].is_cpu:
        # CPU: read the values (no kernel, no sync to wait for) and check them in Python;
        # a few tensor ops cost more than the rest of a Fixed step's bookkeeping
        floats = [v.item() for v in values]
        finite = all(math.isfinite(f) for f in floats)
        if not needed and finite and not synced:
            return NO_VALUES
        detached = torch.tensor(floats, dtype=dtype)
    else:  # one stacked tensor and one sync, not one per task
        detached = torch.stack([v.detach().reshape(()).to(dtype) for v in values])
        finite = False  # checked below
    if synced:
        check_finite_everywhere(names, detached)
    if not finite:
        check_finite(names, detached, "loss")
    return detached


def check_finite_everywhere(names: Sequence[str], detached: Tensor) -> None:
    """Raise on every rank if a loss is not finite on any rank (no rank left hanging).

    A non-finite loss on one process would make it raise while the others
    wait in the next collective; one small all-reduce of the flags first
    lets every process raise together.
    """
    bad = all_reduce_mean((~torch.isfinite(detached)).to(torch.float32))
    if bool(bad.any()) and bool(torch.isfinite(detached).all()):
        task = names[int(bad.nonzero()[0])]
        raise FloatingPointError(
            f"loss of task {task!r} is not finite on another process (this one is finite)"
        )
