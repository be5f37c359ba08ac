"""What the passes differentiate: the inputs given by the user, resolved at each step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from mtlweight.distributed import all_reduce_mean, is_distributed


def as_inputs(inputs: nn.Module | Tensor | Iterable[Tensor]) -> list[Tensor]:
    """Turn a module, a tensor or an iterable of tensors into a list of inputs.

    Only tensors that require grad are kept; a module contributes its trainable
    parameters. Duplicates (tied weights) are kept once.

    Raises
    ------
    ValueError
        If nothing that requires grad is left.

    Examples
    --------
    >>> import torch
    >>> len(as_inputs(torch.nn.Linear(2, 3)))
    2
    """
    candidates = _candidates(inputs)
    for i, t in enumerate(candidates):
        if not isinstance(t, Tensor):
            raise TypeError(f"input {i} is a {type(t).__name__}, expected a torch.Tensor")
    result = _trainable(candidates)
    if not result:
        raise ValueError(
            f"none of the {len(candidates)} given inputs requires grad: pass trainable parameters "
            "or a tensor that is part of the autograd graph"
        )
    return result


def _candidates(inputs: nn.Module | Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(inputs, nn.Module):
        return list(inputs.parameters())
    return [inputs] if isinstance(inputs, Tensor) else list(inputs)


def _trainable(candidates: Sequence[Tensor]) -> list[Tensor]:
    """The candidates that require grad now, each once (tied weights), in order."""
    seen: set[int] = set()
    result = []
    for t in candidates:
        if t.requires_grad and id(t) not in seen:
            seen.add(id(t))
            result.append(t)
    return result


class SharedInputs:
    """The shared parameters, resolved at every step.

    A module contributes the parameters that require grad *now*, so freezing
    or unfreezing a layer after the strategy is built just works; an iterable
    of tensors is kept as given and filtered the same way at each step.
    ``None`` means that every call passes ``representation=``.
    """

    def __init__(self, source: nn.Module | Iterable[Tensor] | None) -> None:
        self.module: nn.Module | None = None
        self.tensors: list[Tensor] | None = None
        if isinstance(source, nn.Module):
            self.module = source
        elif source is not None:
            tensors = _candidates(source)
            as_inputs(tensors)  # type checks; raises if none requires grad
            self.tensors = tensors  # all of them: a frozen one may be unfrozen later

    @property
    def given(self) -> bool:
        return self.module is not None or self.tensors is not None

    def resolve(self, strategy: str, representation: Tensor | None = None) -> list[Tensor]:
        """The tensors to differentiate at this step: ``representation``, else the shared ones.

        The shared tensors are those that require grad now (tied weights once).
        """
        if representation is not None:
            return as_inputs(representation)
        source = self.module if self.module is not None else self.tensors
        if source is None:
            raise ValueError(
                f"{strategy} needs the shared parameters ({strategy}(shared=...)) or a shared "
                f"tensor (weighting(losses, representation=features))"
            )
        candidates = _candidates(source)
        result = _trainable(candidates)
        if not result:
            raise ValueError(
                f"{strategy}: none of the {len(candidates)} shared parameters requires grad at "
                "this step (all frozen?): unfreeze one or pass representation="
            )
        return result


def describe(inputs: Sequence[Tensor], representation: bool) -> str:
    """Name the differentiated tensors in an error message."""
    if representation:
        t = inputs[0]
        return f"the representation= tensor (shape {tuple(t.shape)}, {t.dtype})"
    shapes = [tuple(t.shape) for t in inputs[:4]]
    more = ", ..." if len(inputs) > 4 else ""
    return f"the {len(inputs)} shared parameters (shapes {str(shapes)[1:-1]}{more})"


def require_reached(
    owner: str, reached: bool, inputs: Sequence[Tensor], per_sample: bool, *, sync: bool
) -> None:
    """Raise ``ValueError`` naming the representation if no loss reached it (on any rank).

    Shared parameters that no loss reaches are not an error: their task
    gradients are zero, as documented for every method (GB: weights 1 - 1/T).
    """
    if not per_sample:
        return
    if sync and is_distributed():  # every rank raises together
        reached = not bool(all_reduce_mean(torch.tensor([float(not reached)])).item() > 0)
    if not reached:
        raise ValueError(
            f"{owner}: no loss reaches {describe(inputs, per_sample)}, so "
            "every task gradient would be zero. Pass the tensor the losses are computed from "
            "(not a detached copy or an extra output of a compiled graph)"
        )
