"""Procedural rain of varied scenes (``menet.procedural_rain``) and its place in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import make_pairs, tiny_config

from menet.building import build_dataset
from menet.config import TrainConfig
from menet.parser import build_parser
from menet.procedural_rain import (
    EpochConcat,
    ProceduralRainCrops,
    RainRanges,
    RainScene,
    StreakLayer,
    render_rain,
    sample_scene,
    streak_map,
)
from menet.rain import line_kernel

SEEDS = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(seed: int, h: int = 24, w: int = 20) -> torch.Tensor:
    return torch.rand(3, h, w, generator=gen(seed))


# ----------------------------------------------------------------------------- streaks


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, density=st.floats(0.0, 0.1), length=st.floats(1.0, 30.0),
       width=st.floats(0.5, 3.0), angle=st.floats(-40.0, 40.0))
def test_streak_map_is_the_valid_part_of_a_direct_convolution(
    seed: int, density: float, length: float, width: float, angle: float
) -> None:
    """The FFT path equals conv2d (no padding) of the same seeds, then levels."""
    h, w = 13, 17
    layer = StreakLayer(density, length, width, angle, opacity=0.5)
    r = streak_map(h, w, layer, gen(seed))
    k = line_kernel(length, width, angle)
    m = k.shape[-1] // 2
    g = gen(seed)  # the same draws, in the same order
    u = torch.rand(h + 2 * m, w + 2 * m, generator=g)
    v = torch.rand(h + 2 * m, w + 2 * m, generator=g)
    seeds = ((u < density).float() * (0.5 + 0.5 * v))[None, None].double()
    direct = F.conv2d(seeds, k.double()[None, None])  # valid part only
    expected = ((direct - 0.05) / 0.85).clamp(0, 1).float()
    assert r.shape == (1, 1, h, w)
    torch.testing.assert_close(r, expected, atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, low=st.floats(0.0, 0.05), extra=st.floats(0.0, 0.05))
def test_a_denser_layer_has_at_least_the_same_streaks(seed: int, low: float, extra: float) -> None:
    """For the same draws, the seeds of density d are a subset of those of d' > d."""
    sparse = streak_map(20, 20, StreakLayer(low, 9.0, 1.5, 5.0, 0.7), gen(seed))
    dense = streak_map(20, 20, StreakLayer(low + extra, 9.0, 1.5, 5.0, 0.7), gen(seed))
    assert bool((dense >= sparse - 1e-5).all())


def test_streaks_enter_the_crop_from_outside() -> None:
    """A single drop just above the crop still paints a streak into its top rows."""
    layer = StreakLayer(1e-3, 21.0, 1.0, 0.0, 0.8)
    hits = [float(streak_map(8, 8, layer, gen(s))[0, 0, 0].sum()) for s in range(400)]
    assert max(hits) > 0  # seeds in the margin above reach row 0 (the crop has 64 pixels)


def test_blur_spreads_a_streak_but_keeps_its_mass() -> None:
    sharp = streak_map(40, 40, StreakLayer(0.004, 15.0, 1.0, 0.0, 0.7, blur=0.0), gen(5))
    soft = streak_map(40, 40, StreakLayer(0.004, 15.0, 1.0, 0.0, 0.7, blur=1.5), gen(5))
    assert float(soft.max()) < float(sharp.max())
    assert (soft > 0).sum() > (sharp > 0).sum()
    assert float(soft.sum()) == pytest.approx(float(sharp.sum()), rel=0.1)  # reflect padding


# ----------------------------------------------------------------------------- composite


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, t=st.floats(0.05, 1.0), g=st.floats(-0.5, 0.5), a=st.floats(0.0, 1.0))
def test_the_veil_is_the_scattering_model(seed: int, t: float, g: float, a: float) -> None:
    """No streaks: I = J t(y) + A (1 - t(y)), t(y) = clip(t0 + g ((y + 1/2) / H - 1/2))."""
    clean = image(seed % 1000)
    h = clean.shape[1]
    out = render_rain(clean, RainScene((), transmission=t, gradient=g, airlight=(a, a / 2, 1.0)),
                      gen(seed))
    for y in (0, h // 2, h - 1):
        ty = min(1.0, max(0.0, t + g * ((y + 0.5) / h - 0.5)))
        for c, ac in enumerate((a, a / 2, 1.0)):
            expected = clean[c, y] * ty + ac * (1 - ty)
            torch.testing.assert_close(out[c, y], expected, atol=1e-6, rtol=0)


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS)
def test_streaks_alone_only_brighten_and_a_scene_is_reproducible(seed: int) -> None:
    clean = image(seed % 1000, 32, 32)
    scene = sample_scene(gen(seed), RainRanges(haze_probability=0.0))
    rainy = render_rain(clean, scene, gen(seed + 1))
    assert scene.transmission == 1.0 and 1 <= len(scene.layers) <= 3
    assert bool((rainy >= clean - 1e-6).all()) and float(rainy.max()) <= 1.0
    assert torch.equal(rainy, render_rain(clean, scene, gen(seed + 1)))


def test_one_screen_layer_is_the_screen_formula() -> None:
    """x + alpha r (1 - x) with the layer's own streak map, drawn from the same generator."""
    clean = image(1, 30, 30)
    layer = StreakLayer(0.01, 12.0, 2.0, -10.0, opacity=0.6, blur=0.7)
    r = streak_map(30, 30, layer, gen(9))[0]
    out = render_rain(clean, RainScene((layer,)), gen(9))
    torch.testing.assert_close(out, clean + 0.6 * r * (1 - clean))


def test_scenes_cover_the_ranges_near_and_far() -> None:
    """Over many draws: 1-3 layers, about half veiled, far layers thin and dense, near wide."""
    scenes = [sample_scene(gen(s)) for s in range(300)]
    counts = {n: sum(len(s.layers) == n for s in scenes) for n in (1, 2, 3)}
    assert all(c > 60 for c in counts.values()), counts
    veiled = sum(s.transmission < 1 for s in scenes)
    assert 100 < veiled < 200
    layers = [layer for s in scenes for layer in s.layers]
    thin = [la for la in layers if la.width < 1.0]
    wide = [la for la in layers if la.width > 2.5]
    assert thin and wide
    def mean_density(group: list[StreakLayer]) -> float:
        return sum(la.density for la in group) / len(group)

    assert mean_density(thin) > 2 * mean_density(wide)
    assert all(-34 <= la.angle <= 34 for la in layers)
    assert all(0.5 <= la.width <= 3.5 for la in layers)
    assert all(0.0 <= a <= 1.0 for s in scenes for a in s.airlight)


def test_scene_and_layer_values_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match="density"):
        StreakLayer(1.5, 10.0, 1.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="blur"):
        StreakLayer(0.1, 10.0, 1.0, 0.0, 0.5, blur=-1.0)
    with pytest.raises(ValueError, match="transmission"):
        RainScene(transmission=0.0)
    with pytest.raises(ValueError, match="layers"):
        RainRanges(layers=(3, 1))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        render_rain(torch.rand(1, 3, 8, 8), RainScene(), gen(0))


# ----------------------------------------------------------------------------- crops


def test_crops_are_reproducible_per_epoch_and_new_each_epoch() -> None:
    images = [image(i, 40, 36) for i in range(2)]
    crops = ProceduralRainCrops(images, size=16, samples_per_image=3, seed=4)
    assert len(crops) == 6
    first = [crops[i] for i in range(6)]
    again = ProceduralRainCrops(images, size=16, samples_per_image=3, seed=4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(first, (again[i] for i in range(6)), strict=True))
    crops.set_epoch(1)
    assert not all(torch.equal(a[0], crops[i][0]) for i, a in enumerate(first))


def test_the_target_is_a_crop_of_its_own_clean_image() -> None:
    images = [image(i, 30, 26) for i in range(2)]
    crops = ProceduralRainCrops(images, size=12, samples_per_image=2, seed=1)
    for i in range(len(crops)):
        _, clean = crops[i]
        src = images[i // 2]
        views = [src, src.flip(-1), src.flip(-2), src.flip(-1).flip(-2)]
        found = any(torch.equal(v[:, y : y + 12, x : x + 12], clean)
                    for v in views for y in range(30 - 11) for x in range(26 - 11))
        assert found, f"crop {i} is not a window of image {i // 2}"


def test_crops_refuse_small_or_misshaped_images_by_index() -> None:
    with pytest.raises(ValueError, match="clean image 1 is 8x40, smaller than the crop size 16"):
        ProceduralRainCrops([image(0, 40, 40), image(1, 8, 40)], size=16)
    with pytest.raises(ValueError, match=r"clean image 0: expected \(3, H, W\)"):
        ProceduralRainCrops([torch.rand(1, 20, 20)], size=8)
    with pytest.raises(IndexError):
        ProceduralRainCrops([image(0, 20, 20)], size=8)[1]


def test_epoch_concat_passes_the_epoch_on() -> None:
    a = ProceduralRainCrops([image(0, 20, 20)], size=8)
    b = ProceduralRainCrops([image(1, 20, 20)], size=8)
    both = EpochConcat([a, b])
    both.set_epoch(5)
    assert (a.epoch, b.epoch, len(both)) == (5, 5, 2)


# ----------------------------------------------------------------------------- the training mix


def test_procedural_rain_adds_k_folders_worth_of_rained_clean_crops(tmp_path: Path) -> None:
    from menet.data import RandomCropPairs

    data = make_pairs(tmp_path / "L", n=3)
    plain = build_dataset(tiny_config(data, tmp_path / "o"))
    mixed = build_dataset(tiny_config(data, tmp_path / "o", procedural_rain=2))
    assert isinstance(plain, RandomCropPairs) and isinstance(mixed, EpochConcat)
    n = len(plain)
    assert n == 3 * 2 and len(mixed) == n + 2 * 3 * 2
    for i in range(n):  # the folder's crops are unchanged
        assert all(torch.equal(x, y) for x, y in zip(plain[i], mixed[i], strict=True))
    rainy, clean = mixed[n]
    assert rainy.shape == clean.shape == (3, 32, 32) and not torch.equal(rainy, clean)
    mixed.set_epoch(1)
    assert not torch.equal(mixed[n][0], rainy)


def test_the_option_reaches_the_config_and_is_checked() -> None:
    args = build_parser().parse_args(["train", "--data", "d", "--procedural-rain", "3"])
    assert args.procedural_rain == 3
    with pytest.raises(ValueError, match="procedural_rain must be >= 0"):
        TrainConfig(data="d", patches="random", procedural_rain=-1)
    with pytest.raises(ValueError, match="procedural_rain needs paired folders"):
        TrainConfig(synthetic="light", patches="random", procedural_rain=1)
    with pytest.raises(ValueError, match="random crops"):
        TrainConfig(data="d", patches="tencrop", procedural_rain=1)


class _CrashError(Exception):
    pass


@pytest.mark.slow
def test_a_run_with_procedural_rain_resumes_as_if_uninterrupted(tmp_path: Path) -> None:
    """The rain is a function of (seed, epoch, index): a resumed run sees the same crops."""
    from test_train import assert_same_state, state_tensors

    from menet.train import train

    def crash_after_first_epoch(epoch: int, step: int) -> None:
        if epoch == 1:
            raise _CrashError

    data = make_pairs(tmp_path / "L", n=2)
    straight = train(tiny_config(data, tmp_path / "a", procedural_rain=1))
    with pytest.raises(_CrashError):
        train(tiny_config(data, tmp_path / "b", procedural_rain=1),
              on_epoch_end=crash_after_first_epoch)
    resumed = train(tiny_config(data, tmp_path / "b", procedural_rain=1, resume=True))
    assert resumed.step == straight.step == 2 * (2 * 2 + 2 * 2) // 2
    assert_same_state(state_tensors(straight.model), state_tensors(resumed.model))
