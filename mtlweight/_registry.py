# ruff: noqa: E501  (one row per line in TABLE)
"""Select a strategy by name: for command lines and configuration files.

:data:`TABLE` is the one table of every built-in name: one row per strategy,
``(name, "module.Class" under mtlweight, aliases)``. A row's class is imported
the first time the name is used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from mtlweight._base import Weighting

__all__ = ["TABLE", "available", "get", "register"]

# name          class, as "module.Class" under mtlweight             aliases
TABLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fixed",        "loss_level._fixed.Fixed",                           ()),
    ("gb",           "gradient_level._gradient_balance.GradientBalance",  ("gradient_balance", "gradientbalance")),
    ("lb",           "loss_level._loss_balance.LossBalance",              ("loss_balance", "lossbalance")),
    ("equal",        "loss_level._equal.EqualWeight",                     ("ew", "equal_weight")),
    ("uncertainty",  "loss_level._uncertainty.UncertaintyWeighting",      ("uw", "uncertainty_weighting")),
    ("dwa",          "loss_level._dwa.DynamicWeightAverage",              ("dynamic_weight_average",)),
    ("rlw",          "loss_level._rlw.RandomLossWeighting",               ("random", "random_loss_weighting")),
    ("gls",          "loss_level._geometric.GeometricMean",               ("geometric", "geometric_mean")),
    ("gradnorm",     "loss_level._gradnorm.GradNorm",                     ("grad_norm",)),
    ("imtl_l",       "loss_level._imtl_l.IMTLL",                          ("imtll",)),
    ("pcgrad",       "gradient_level._pcgrad.PCGrad",                     ("pc_grad",)),
    ("mgda",         "gradient_level._mgda.MGDA",                         ()),
    ("mgda_ub",      "gradient_level._mgda.MGDAUB",                       ("mgdaub",)),
    ("cagrad",       "gradient_level._cagrad.CAGrad",                     ("ca_grad",)),
    ("imtl_g",       "gradient_level._imtl_g.IMTLG",                      ("imtlg",)),
    ("nash_mtl",     "gradient_level._nash_mtl.NashMTL",                  ("nash", "nashmtl")),
    ("aligned_mtl",  "gradient_level._aligned_mtl.AlignedMTL",            ("alignedmtl", "aligned")),
    ("upgrad",       "gradient_level._upgrad.UPGrad",                     ()),
    ("dualproj",     "gradient_level._dualproj.DualProj",                 ("dual_proj",)),
    ("config",       "gradient_level._config.ConFIG",                     ()),
    ("fairgrad",     "gradient_level._fairgrad.FairGrad",                 ("fair_grad",)),
    ("gradvac",      "gradient_level._gradvac.GradVac",                   ("grad_vac",)),
    ("sdmgrad",      "gradient_level._sdmgrad.SDMGrad",                   ()),
    ("modo",         "gradient_level._modo.MoDo",                         ()),
    ("graddrop",     "gradient_level._graddrop.GradDrop",                 ("grad_drop",)),
    ("excess_mtl",   "gradient_level._excess_mtl.ExcessMTL",              ("excessmtl",)),
    ("moco",         "gradient_level._moco.MoCo",                         ()),
    ("db_mtl",       "gradient_level._db_mtl.DBMTL",                      ("dbmtl",)),
    ("famo",         "loss_level._famo.FAMO",                             ()),
    ("stch",         "loss_level._stch.STCH",                             ()),
    # new rows go here, one line each
)

#: name -> the class, or its "module.Class" path until first used
_REGISTRY: dict[str, type[Weighting] | str] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _add(name: str, cls: type[Weighting] | str, aliases: Iterable[str]) -> None:
    key = _key(name)
    _REGISTRY[key] = cls
    for alias in aliases:
        _ALIASES[_key(alias)] = key


def _resolve(key: str) -> type[Weighting]:
    entry = _REGISTRY[key]
    if isinstance(entry, str):
        module, _, attr = entry.rpartition(".")
        cls = getattr(importlib.import_module(f"mtlweight.{module}"), attr)
        if not (isinstance(cls, type) and issubclass(cls, Weighting)):
            raise TypeError(f"registry row {key!r}: mtlweight.{entry} is not a Weighting")
        _REGISTRY[key] = entry = cls
    return entry


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
    if key in _REGISTRY and _resolve(key) is not cls:
        raise ValueError(f"a strategy is already registered as {name!r}: {_resolve(key)}")
    _add(name, cls, aliases)


def _required_options(cls: type[Weighting]) -> list[str]:
    """Names of the constructor's arguments that have no default."""
    return [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


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

    Raises
    ------
    ValueError
        For an unknown name (listing the available ones), or when a required
        option is missing (naming it, e.g. ``weights`` for ``"fixed"``).

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
    cls = _resolve(key)
    takes = inspect.signature(cls).parameters
    for option, value in (("shared", shared), ("tasks", tasks)):
        if value is not None and option in takes:
            options[option] = value
    missing = [p for p in _required_options(cls) if p not in options]
    if missing:
        hint = "; pass tasks=[...] (the task names)" if missing == ["tasks"] else ""
        raise ValueError(
            f"mw.get({name!r}) builds {cls.__name__}, which needs the option "
            f"{missing[0]!r}{hint}: mw.get({name!r}, {missing[0]}=...)"
        )
    return cls(**options)


def available() -> list[str]:
    """Sorted names of the registered strategies (aliases excluded)."""
    return sorted(_REGISTRY)


for _name, _path, _aliases in TABLE:
    _add(_name, _path, _aliases)
