"""Selecting a strategy by name: mw.get, mw.available, mw.register."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import TinyMultiTask
from torch import Tensor

import mtlweight as mw
import mtlweight._registry as registry


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register names without leaking them into the other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


class Equal(mw.Weighting):
    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        return torch.ones_like(values)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("gb", mw.GradientBalance),
        ("GB", mw.GradientBalance),
        (" gb ", mw.GradientBalance),
        ("gradient_balance", mw.GradientBalance),
        ("Gradient-Balance", mw.GradientBalance),
        ("GradientBalance", mw.GradientBalance),
        ("lb", mw.LossBalance),
        ("LB", mw.LossBalance),
        ("loss-balance", mw.LossBalance),
        ("LossBalance", mw.LossBalance),
    ],
)
def test_get_by_name_alias_and_case(name: str, cls: type[mw.Weighting]) -> None:
    assert type(mw.get(name)) is cls


def test_get_passes_options(model: TinyMultiTask) -> None:
    gb = mw.get("gb", shared=model.trunk, history_size=2)
    assert isinstance(gb, mw.GradientBalance) and gb.history_size == 2
    gb(model.losses())
    direct = mw.GradientBalance(shared=model.trunk)
    direct(model.losses())
    assert gb.weights == direct.weights
    fixed = mw.get("Fixed", weights={"pixel": 1.0, "edge": 0.01})
    assert isinstance(fixed, mw.Fixed) and fixed.tasks == ["pixel", "edge"]


@pytest.mark.parametrize(
    ("name", "option"), [("fixed", "weights"), ("uncertainty", "tasks"), ("imtl_l", "tasks")]
)
def test_a_missing_option_is_named(name: str, option: str) -> None:
    """It used to be the constructor's bare TypeError (missing positional argument)."""
    with pytest.raises(ValueError, match=rf"mw.get\('{name}'\) builds \w+, which needs the option "
                       rf"'{option}'.*{option}=\.\.\."):
        mw.get(name)


def test_the_table_has_one_row_per_name_and_no_alias_twice() -> None:
    names = [row[0] for row in registry.TABLE]
    aliases = [a for row in registry.TABLE for a in row[2]]
    assert len(set(names)) == len(names)
    assert len(set(aliases)) == len(aliases) and not set(aliases) & set(names)
    for name, path, _ in registry.TABLE:
        assert registry._resolve(name).__name__ == path.rpartition(".")[2]


def test_get_returns_a_new_instance_each_time() -> None:
    assert mw.get("lb") is not mw.get("lb")


def test_unknown_name_lists_available_names() -> None:
    with pytest.raises(ValueError, match=r"unknown weighting 'nope'; available: ") as info:
        mw.get("nope")
    for name in mw.available():
        assert name in str(info.value)


def test_bad_options_fail_like_the_constructor() -> None:
    with pytest.raises(TypeError, match=r"builds LossBalance, which takes no option "
                       r"'not_an_option'; its options: tasks, history_size, sync"):
        mw.get("lb", not_an_option=1)


#: Every name that resolved before the table kept one alias per strategy: the others are
#: class names, which resolve by rule.
OLD_ALIASES = {
    "gradient_balance": "gb", "gradientbalance": "gb", "loss_balance": "lb", "lossbalance": "lb",
    "ew": "equal", "equal_weight": "equal", "uw": "uncertainty",
    "uncertainty_weighting": "uncertainty", "dynamic_weight_average": "dwa", "random": "rlw",
    "random_loss_weighting": "rlw", "geometric": "gls", "geometric_mean": "gls",
    "grad_norm": "gradnorm", "imtll": "imtl_l", "pc_grad": "pcgrad", "mgdaub": "mgda_ub",
    "ca_grad": "cagrad", "imtlg": "imtl_g", "nash": "nash_mtl", "nashmtl": "nash_mtl",
    "alignedmtl": "aligned_mtl", "aligned": "aligned_mtl", "dual_proj": "dualproj",
    "fair_grad": "fairgrad", "grad_vac": "gradvac", "grad_drop": "graddrop",
    "excessmtl": "excess_mtl", "dbmtl": "db_mtl",
}


@pytest.mark.parametrize(("old", "name"), sorted(OLD_ALIASES.items()))
def test_every_old_alias_still_resolves(old: str, name: str) -> None:
    assert registry._lookup(old) == name
    assert registry._lookup(old.upper()) == name


def test_one_alias_at_most_and_every_class_name_resolves() -> None:
    assert all(len(row[2]) <= 1 for row in registry.TABLE)
    for name in mw.available():
        cls = registry._resolve(name)
        assert registry._lookup(cls.__name__) == name, cls.__name__


def test_context_goes_where_it_is_declared(model: TinyMultiTask) -> None:
    """shared= and tasks= reach exactly the classes that declare them."""
    for name in mw.available():
        cls = registry._resolve(name)
        taken = set(inspect.signature(cls).parameters)
        assert set(cls.context_options) == {"shared", "tasks"} & taken, name
    uw = mw.get("uw", shared=model.trunk, tasks=["a", "b"])
    assert uw.tasks == ["a", "b"]
    gb = mw.get("gb", shared=model.trunk, tasks=["a", "b"])
    assert isinstance(gb, mw.GradientBalance) and gb.tasks is None
    assert gb.shared.module is model.trunk


def test_available_contents() -> None:
    names = mw.available()
    assert {"fixed", "gb", "lb"} <= set(names)
    assert names == sorted(names) and len(names) == len(set(names))
    # aliases are not listed
    assert not {"gradient_balance", "loss_balance", "gradientbalance"} & set(names)
    # every listed name resolves to a Weighting subclass
    assert all(issubclass(registry._resolve(n), mw.Weighting) for n in names)


@pytest.mark.usefixtures("clean_registry")
def test_register_a_new_strategy_with_aliases() -> None:
    mw.register("Equal-Weights", Equal, "ew_test", "ALL-ONES")
    assert "equal_weights" in mw.available()
    assert "ew_test" not in mw.available()
    for name in ("equal_weights", "EQUAL-WEIGHTS", "ew-test", "all_ones"):
        assert type(mw.get(name)) is Equal
    mw.register("equal_weights", Equal)  # registering the same class again is harmless


@pytest.mark.usefixtures("clean_registry")
def test_register_rejects_a_name_taken_by_another_class() -> None:
    with pytest.raises(ValueError, match=r"already registered as 'GB'"):
        mw.register("GB", Equal)
    assert mw.get("gb").__class__ is mw.GradientBalance


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize("bad", [int, "lb", mw.LossBalance(), torch.nn.Linear])
def test_register_type_check(bad: object) -> None:
    with pytest.raises(TypeError, match=r"is not a subclass of mtlweight.Weighting"):
        mw.register("bad", bad)  # type: ignore[arg-type]
    assert "bad" not in mw.available()


@pytest.mark.parametrize("name", [n for n in mw.available() if n != "fixed"])
def test_every_strategy_builds_from_context(name: str) -> None:
    """One call site builds any strategy by name: ``shared`` and ``tasks`` go where they fit."""
    head = torch.nn.Linear(3, 2)
    weighting = mw.get(name, shared=head, tasks=["a", "b"])
    assert isinstance(weighting, mw.Weighting)
    if "shared" in inspect.signature(type(weighting)).parameters:
        resolved = weighting.shared.resolve(name)  # type: ignore[attr-defined]
        assert resolved == list(head.parameters())

