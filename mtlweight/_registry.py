"""Select a strategy by name: for command lines and configuration files."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from mtlweight._base import Weighting
from mtlweight._fixed import Fixed
from mtlweight._gradient_balance import GradientBalance
from mtlweight._loss_balance import LossBalance

__all__ = ["available", "get", "register"]

_REGISTRY: dict[str, type[Weighting]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(name: str, cls: type[Weighting], *aliases: str) -> None:
    """Register ``cls`` under ``name`` (and optional ``aliases``).

    Examples
    --------
    >>> import mtlweight as mw
    >>> "gb" in mw.available()
    True
    """
    if not (isinstance(cls, type) and issubclass(cls, Weighting)):
        raise TypeError(f"{cls!r} is not a subclass of mtlweight.Weighting")
    key = _key(name)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ValueError(f"a strategy is already registered as {name!r}: {_REGISTRY[key]}")
    _REGISTRY[key] = cls
    for alias in aliases:
        _ALIASES[_key(alias)] = key


def get(
    name: str,
    *,
    shared: nn.Module | Iterable[Tensor] | None = None,
    tasks: Sequence[str] | None = None,
    **options: Any,
) -> Weighting:
    """Build the strategy registered as ``name`` with keyword ``options``.

    Names are case-insensitive and ``-``/``_`` are interchangeable; see
    :func:`available`.

    ``shared`` (the shared parameters) and ``tasks`` (the task names) are
    *context*: each is passed only to the strategies whose constructor takes
    it by name (``shared`` to GB, GradNorm and the gradient-level methods,
    ``tasks`` to the strategies with learnable per-task parameters), so one
    call site, such as a command line, can build any strategy by name.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> mw.get("lb")
    LossBalance()
    >>> mw.get("fixed", weights={"pixel": 1.0, "edge": 0.01})
    Fixed(tasks=['pixel', 'edge'])
    >>> head = torch.nn.Linear(4, 2)
    >>> [type(mw.get(n, shared=head, tasks=["a", "b"])).__name__ for n in ("gb", "lb", "uw")]
    ['GradientBalance', 'LossBalance', 'UncertaintyWeighting']
    """
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown weighting {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[key]
    takes = inspect.signature(cls).parameters
    for option, value in (("shared", shared), ("tasks", tasks)):
        if value is not None and option in takes:
            options[option] = value
    return cls(**options)


def available() -> list[str]:
    """Sorted names of the registered strategies (aliases excluded)."""
    return sorted(_REGISTRY)


register("fixed", Fixed)
register("gb", GradientBalance, "gradient_balance", "gradientbalance")
register("lb", LossBalance, "loss_balance", "lossbalance")
