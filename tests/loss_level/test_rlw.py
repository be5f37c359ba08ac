"""RandomLossWeighting (RLW): random weights on the simplex from a private, seeded generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, check_state_dict_round_trip, check_total_gradient, check_weights
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import mtlweight as mw
from mtlweight.loss_level._rlw import _log_gamma

FAST = settings(max_examples=25, deadline=None)


def losses_of(count: int) -> list[torch.Tensor]:
    return [torch.tensor(float(i + 1)) for i in range(count)]


@FAST
@given(
    st.integers(1, 8),
    st.integers(0, 2**31),
    st.sampled_from(["normal", "dirichlet"]),
    st.floats(1e-3, 20.0),
)
def test_property_on_simplex_and_reproducible(
    tasks: int, seed: int, distribution: str, concentration: float
) -> None:
    def make() -> mw.RandomLossWeighting:
        return mw.RandomLossWeighting(
            distribution,  # type: ignore[arg-type]
            concentration=concentration,
            seed=seed,
        )

    first, second = make(), make()
    for _ in range(3):
        total = first(losses_of(tasks))
        second(losses_of(tasks))
        weights = check_weights(first, [str(i) for i in range(tasks)])
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
        assert first.weights == second.weights
        np.testing.assert_allclose(
            total.item(), np.dot(weights, np.arange(1, tasks + 1)), rtol=1e-5
        )


def test_normal_is_softmax_of_the_seeded_normal_draws() -> None:
    rlw = mw.RandomLossWeighting(seed=123)
    generator = torch.Generator().manual_seed(123)
    for _ in range(3):
        rlw(losses_of(4))
        z = torch.randn(4, generator=generator, dtype=torch.float64).numpy()
        expected = np.exp(z) / np.exp(z).sum()
        np.testing.assert_allclose(list(rlw.weights.values()), expected, rtol=1e-6)


@pytest.mark.parametrize("concentration", [0.4, 1.0, 3.0])
def test_dirichlet_marginal_is_beta(concentration: float) -> None:
    """Each weight of Dirichlet(a, a, a) is Beta(a, 2a): Kolmogorov-Smirnov test on 600 draws."""
    rlw = mw.RandomLossWeighting("dirichlet", concentration=concentration, seed=7)
    draws = torch.stack([rlw.sample(3) for _ in range(600)]).numpy()
    np.testing.assert_allclose(draws.sum(axis=1), 1.0, rtol=1e-12)
    for column in draws.T:
        result = stats.kstest(column, stats.beta(concentration, 2 * concentration).cdf)
        assert result.pvalue > 1e-3, (concentration, result)


@pytest.mark.parametrize("shape", [0.3, 1.0, 2.5])
def test_gamma_sampler_matches_scipy(shape: float) -> None:
    samples = _log_gamma(shape, 800, torch.Generator().manual_seed(1)).exp().numpy()
    assert stats.kstest(samples, stats.gamma(shape).cdf).pvalue > 1e-3


def test_global_random_state_untouched_with_a_seed() -> None:
    rlw = mw.RandomLossWeighting(seed=0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    rlw(losses_of(3))
    assert torch.equal(torch.get_rng_state(), before)


def test_without_seed_follows_torch_manual_seed() -> None:
    torch.manual_seed(11)
    a = mw.RandomLossWeighting()
    torch.manual_seed(11)
    b = mw.RandomLossWeighting()
    a(losses_of(3))
    b(losses_of(3))
    assert a.seed == b.seed and a.weights == b.weights


def test_tiny_concentration_does_not_underflow() -> None:
    rlw = mw.RandomLossWeighting("dirichlet", concentration=1e-3, seed=0)
    for _ in range(20):
        rlw(losses_of(4))
        weights = np.array(list(rlw.weights.values()))
        assert np.all(np.isfinite(weights)) and weights.sum() == pytest.approx(1.0)


def test_weights_change_every_step() -> None:
    rlw = mw.RandomLossWeighting(seed=3)
    rlw(losses_of(3))
    first = rlw.weights
    rlw(losses_of(3))
    assert rlw.weights != first


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_state_round_trip_continues_the_draws(tmp_path: Path, distribution: str) -> None:
    check_state_dict_round_trip(
        lambda: mw.RandomLossWeighting(distribution, seed=42),  # type: ignore[arg-type]
        lambda i: {"a": torch.tensor(1.0 + i), "b": torch.tensor(2.0)},
        tmp_path,
    )


def test_total_gradient_on_tiny_model(model: TinyMultiTask) -> None:
    check_total_gradient(mw.RandomLossWeighting(seed=0), model.losses, list(model.parameters()))


def test_float64_losses_keep_float64_weights() -> None:
    rlw = mw.RandomLossWeighting(seed=0)
    total = rlw([torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)])
    assert total.dtype == torch.float64
    assert sum(rlw.weights.values()) == pytest.approx(1.0, abs=1e-15)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'normal' or 'dirichlet'; found 'uniform'"):
        mw.RandomLossWeighting("uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concentration"):
        mw.RandomLossWeighting("dirichlet", concentration=0.0)
    with pytest.raises(FloatingPointError, match="'1'"):
        mw.RandomLossWeighting(seed=0)([torch.tensor(1.0), torch.tensor(float("nan"))])
