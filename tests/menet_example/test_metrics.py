"""PSNR, SSIM and BT.601 luma against scikit-image and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from menet.metrics import gaussian_window, psnr, rgb_to_y, ssim


def sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None = 0) -> float:
    return float(structural_similarity(  # type: ignore[no-untyped-call]
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=channel_axis,
    ))


def real_like(seed: int, h: int = 48, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A crop of a bundled photograph and a degraded copy (8-bit values as float)."""
    import skimage.data

    g = np.random.default_rng(seed)
    photo = np.asarray(skimage.data.astronaut())  # type: ignore[no-untyped-call]
    img = photo[100 + seed : 100 + seed + h, 150 : 150 + w].astype(np.float64)
    noisy = np.clip(np.round(img + g.normal(0, 12, img.shape)), 0, 255)
    return img.transpose(2, 0, 1), noisy.transpose(2, 0, 1)


def test_psnr_hand_value() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 25.5)
    torch.testing.assert_close(psnr(a, b), torch.tensor([20.0, 20.0]))
    # one pixel of 16 off by 255 in one of 3 channels: MSE = 255²/48 -> 10·log10(48)
    c = torch.zeros(3, 4, 4)
    d = c.clone()
    d[1, 2, 3] = 255
    assert float(psnr(c, d)) == pytest.approx(10 * math.log10(48), abs=1e-5)
    assert math.isinf(float(psnr(c, c)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 12), w=st.integers(1, 12))
def test_psnr_matches_skimage(seed: int, h: int, w: int) -> None:
    g = np.random.default_rng(seed)
    a = g.integers(0, 256, (3, h, w)).astype(np.float64)
    b = g.integers(0, 256, (3, h, w)).astype(np.float64)
    if np.array_equal(a, b):
        b[0, 0, 0] = 255 - b[0, 0, 0] if b[0, 0, 0] != 127.5 else 0
    expected = peak_signal_noise_ratio(a, b, data_range=255)  # type: ignore[no-untyped-call]
    got = float(psnr(torch.from_numpy(a), torch.from_numpy(b)))
    assert got == pytest.approx(expected, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 1000.0))
def test_metrics_are_invariant_to_common_rescaling(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(psnr(a, b, 1.0), psnr(a * scale, b * scale, scale))
    torch.testing.assert_close(ssim(a, b, 1.0), ssim(a * scale, b * scale, scale))


def test_psnr_batch_shapes_and_reduction() -> None:
    a = torch.rand(2, 4, 3, 5, 5) * 255
    b = torch.rand(2, 4, 3, 5, 5) * 255
    per = psnr(a, b)
    assert per.shape == (2, 4)
    torch.testing.assert_close(per[1, 2], psnr(a[1, 2], b[1, 2]))
    torch.testing.assert_close(psnr(a, b, reduction="mean"), per.mean())
    assert psnr(a[0, 0].float(), b[0, 0].float()).dtype == torch.float32


def test_gaussian_window_matches_formula() -> None:
    w = gaussian_window(11, 1.5)
    k = np.arange(-5, 6)
    ref = np.exp(-(k**2) / (2 * 1.5**2))
    np.testing.assert_allclose(w.numpy(), ref / ref.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="positive odd integer, found 4"):
        gaussian_window(4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(11, 24), w=st.integers(11, 24),
       c=st.sampled_from([1, 3]))
def test_ssim_matches_skimage_on_random_images(seed: int, h: int, w: int, c: int) -> None:
    g = np.random.default_rng(seed)
    a = g.integers(0, 256, (c, h, w)).astype(np.float64)
    b = np.clip(a + g.normal(0, 30, a.shape), 0, 255)
    expected = sk_ssim(a, b) if c == 3 else sk_ssim(a[0], b[0], channel_axis=None)
    got = float(ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()))
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_skimage_on_real_images(seed: int) -> None:
    a, b = real_like(seed)
    expected = sk_ssim(a, b)
    got = ssim(torch.from_numpy(a).float()[None], torch.from_numpy(b).float()[None])
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, abs=1e-4)
    # the Y channel too (float luma, no rounding)
    ya = rgb_to_y(torch.from_numpy(a / 255))
    yb = rgb_to_y(torch.from_numpy(b / 255))
    assert float(ssim(ya, yb)) == pytest.approx(
        sk_ssim(ya[0].numpy(), yb[0].numpy(), channel_axis=None), abs=1e-4
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_ssim_properties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, 14, 13, generator=g) * 255
    b = torch.rand(2, 3, 14, 13, generator=g) * 255
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    torch.testing.assert_close(ssim(a, b), ssim(b, a))
    assert bool((ssim(a, b) <= 1 + 1e-6).all() and (ssim(a, b) >= -1 - 1e-6).all())
    # batched == one at a time
    torch.testing.assert_close(ssim(a, b)[1], ssim(a[1], b[1]))


def test_ssim_errors() -> None:
    with pytest.raises(ValueError, match="at least 11x11, found 10x20"):
        ssim(torch.zeros(3, 10, 20), torch.zeros(3, 10, 20))
    with pytest.raises(ValueError, match=r"differ in shape: \(3, 12, 12\) vs \(3, 12, 13\)"):
        ssim(torch.zeros(3, 12, 12), torch.zeros(3, 12, 13))
    with pytest.raises(ValueError, match="data_range must be positive"):
        psnr(torch.zeros(3, 2, 2), torch.ones(3, 2, 2), data_range=0)
    with pytest.raises(ValueError, match="reduction must be"):
        psnr(torch.zeros(3, 2, 2), torch.ones(3, 2, 2), reduction="sum")  # type: ignore[arg-type]


def test_rgb_to_y_hand_values() -> None:
    colours = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    y = rgb_to_y(colours.T.reshape(3, 1, 5)).flatten()
    torch.testing.assert_close(
        y, torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rgb_to_y_matches_skimage(seed: int) -> None:
    x = np.random.default_rng(seed).random((4, 5, 3))
    expected = rgb2ycbcr(x)[..., 0]
    got = rgb_to_y(torch.from_numpy(x).permute(2, 0, 1))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-9)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        rgb_to_y(torch.zeros(4, 2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    a = torch.rand(2, 3, 20, 20) * 255
    b = torch.rand(2, 3, 20, 20) * 255
    torch.testing.assert_close(ssim(a.cuda(), b.cuda()).cpu(), ssim(a, b))
    torch.testing.assert_close(psnr(a.cuda(), b.cuda()).cpu(), psnr(a, b))
