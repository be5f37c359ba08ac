"""Select a strategy by name: for command lines and configuration files.

:data:`TABLE` is the one table of every built-in name: one row per strategy,
``(name, "module.Class" under mtlweight, aliases)``, with at most one alias (a
common abbreviation). A strategy is also found by its class name, in any case,
with or without underscores (``GradientBalance``, ``gradient_balance``). A row's
class is imported the first time the name is used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from mtlweight._base import Weighting

# name          class, as "module.Class" under mtlweight             aliases
TABLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fixed",        "loss_level._fixed.Fixed",                           ()),
    ("gb",           "gradient_level._gradient_balance.GradientBalance",  ()),
    ("lb",           "loss_level._loss_balance.LossBalance",              ()),
    ("equal",        "loss_level._equal.EqualWeight",                     ("ew",)),
    ("uncertainty",  "loss_level._uncertainty.UncertaintyWeighting",      ("uw",)),
    ("dwa",          "loss_level._dwa.DynamicWeightAverage",              ()),
    ("rlw",          "loss_level._rlw.RandomLossWeighting",               ("random",)),
    ("gls",          "loss_level._geometric.GeometricMean",               ("geometric",)),
    ("gradnorm",     "loss_level._gradnorm.GradNorm",                     ()),
    ("imtl_l",       "loss_level._imtl_l.IMTLL",                          ()),
    ("pcgrad",       "gradient_level._pcgrad.PCGrad",                     ()),
    ("mgda",         "gradient_level._mgda.MGDA",                         ()),
    ("mgda_ub",      "gradient_level._mgda.MGDAUB",                       ()),
    ("cagrad",       "gradient_level._cagrad.CAGrad",                     ()),
    ("imtl_g",       "gradient_level._imtl_g.IMTLG",                      ()),
    ("nash_mtl",     "gradient_level._nash_mtl.NashMTL",                  ("nash",)),
    ("aligned_mtl",  "gradient_level._aligned_mtl.AlignedMTL",            ("aligned",)),
    ("upgrad",       "gradient_level._upgrad.UPGrad",                     ()),
    ("dualproj",     "gradient_level._dualproj.DualProj",                 ()),
    ("config",       "gradient_level._config.ConFIG",                     ()),
    ("fairgrad",     "gradient_level._fairgrad.FairGrad",                 ()),
    ("gradvac",      "gradient_level._gradvac.GradVac",                   ()),
    ("sdmgrad",      "gradient_level._sdmgrad.SDMGrad",                   ()),
    ("modo",         "gradient_level._modo.MoDo",                         ()),
    ("graddrop",     "gradient_level._graddrop.GradDrop",                 ()),
    ("excess_mtl",   "gradient_level._excess_mtl.ExcessMTL",              ()),
    ("moco",         "gradient_level._moco.MoCo",                         ()),
    ("db_mtl",       "gradient_level._db_mtl.DBMTL",                      ()),
    ("famo",         "loss_level._famo.FAMO",                             ()),
    ("stch",         "loss_level._stch.STCH",                             ()),
    # new rows go here, one line each
)

#: name -> the class, or its "module.Class" path until first used
_REGISTRY: dict[str, type[Weighting] | str] = {}
_ALIASES: dict[str, str] = {}
#: class name, lower case without underscores -> name
_CLASS_NAMES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _add(name: str, cls: type[Weighting] | str, aliases: Iterable[str]) -> None:
    key = _key(name)
    _REGISTRY[key] = cls
    for alias in aliases:
        _ALIASES[_key(alias)] = key
    class_name = cls.rpartition(".")[2] if isinstance(cls, str) else cls.__name__
    _CLASS_NAMES.setdefault(class_name.lower(), key)


def _lookup(name: str) -> str | None:
    """The registered name that ``name`` stands for (itself, an alias, a class name)."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return key
    return _CLASS_NAMES.get(key.replace("_", ""))


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


def _options(cls: type[Weighting]) -> list[str]:
    """The keyword options of the constructor, and of those it passes ``**kwargs`` to."""
    found: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        found += [p.name for p in parameters if p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(found))


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
    *context*: each is passed only to the strategies that declare it in
    :attr:`~mtlweight.Weighting.context_options` (``shared``: GB, GradNorm and
    the gradient-level methods; ``tasks``: the strategies with learnable per-task
    parameters), so one call site, such as a command line, can build any
    strategy by name.

    Raises
    ------
    ValueError
        For an unknown name (listing the available ones), or a missing
        required option (naming the class and the option, e.g. ``weights`` for
        ``"fixed"``).
    TypeError
        For an option the strategy does not take (naming the class and its options).

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
    key = _lookup(name)
    if key is None:
        raise ValueError(f"unknown weighting {name!r}; available: {', '.join(available())}")
    cls = _resolve(key)
    for option, value in (("shared", shared), ("tasks", tasks)):
        if value is not None and option in cls.context_options:
            options[option] = value
    accepted = _options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:  # a TypeError, as from the constructor, but naming the class
        raise TypeError(
            f"mw.get({name!r}) builds {cls.__name__}, which takes no option {unknown[0]!r}; "
            f"its options: {', '.join(accepted)}"
        )
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
