"""Tests of mtlweight.losses.TextureMatchingLoss, texture_matching_loss and gram_matrix."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight.functional as MF
from mtlweight.losses import TextureMatchingLoss, gram_matrix, texture_matching_loss

SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)
small = st.integers(1, 3)
patch_sizes = st.integers(1, 4)


def rand(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)


def gram_loop(image: np.ndarray, k: int) -> np.ndarray:
    """Gram matrix of one (C, H, W) image by explicit loops over its K x K patches."""
    channels, height, width = image.shape
    n = channels * k * k
    gram = np.zeros((n, n))
    patches = 0
    for top in range(0, height, k):
        for left in range(0, width, k):
            column = np.empty(n)
            for c in range(channels):
                for u in range(k):
                    for v in range(k):
                        column[(c * k + u) * k + v] = image[c, top + u, left + v]
            gram += np.outer(column, column)
            patches += 1
    assert patches == height * width // k**2
    return gram / patches


def loss_direct(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Per-image loss: squared Frobenius distance of the Gram matrices over (C K^2)^2."""
    n = pred.shape[1] * k * k
    return np.array(
        [
            ((gram_loop(p, k) - gram_loop(t, k)) ** 2).sum() / n**2
            for p, t in zip(pred, target, strict=True)
        ]
    )


def tiles(x: torch.Tensor, k: int) -> torch.Tensor:
    """All K x K patches of a batch, one flattened (C K^2) patch per row."""
    return (
        torch.nn.functional.unfold(x, k, stride=k).transpose(1, 2).reshape(-1, x.shape[1] * k * k)
    )


def shuffle_patches(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Move whole K x K patches of each image to random places (the same for all channels)."""
    b, c, h, w = x.shape
    rows, cols = h // k, w // k
    tiles = x.reshape(b, c, rows, k, cols, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, k, k)
    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(rows * cols, generator=generator) for _ in range(b)])
    tiles = torch.stack([tiles[i][:, order[i]] for i in range(b)])
    return tiles.reshape(b, c, rows, cols, k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


# --- Gram matrix -----------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, b=small, c=small, k=patch_sizes, rows=small, cols=small)
def test_gram_matches_loops(seed: int, b: int, c: int, k: int, rows: int, cols: int) -> None:
    x = rand(seed, b, c, rows * k, cols * k)
    gram = gram_matrix(x, k)
    assert gram.shape == (b, c * k * k, c * k * k)
    for i in range(b):
        np.testing.assert_allclose(gram[i].numpy(), gram_loop(x[i].numpy(), k), atol=1e-12)
    torch.testing.assert_close(gram, gram.transpose(1, 2))


def test_gram_hand_computed() -> None:
    # One 1x2x2 image = one patch p = (1, 2, 3, 4): G = p p^T.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    p = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(gram_matrix(x, 2)[0], torch.outer(p, p))
    # patch_size=1: G is the C x C matrix of channel second moments, x x^T / HW.
    y = rand(3, 1, 3, 4, 6)
    flat = y[0].reshape(3, -1)
    torch.testing.assert_close(gram_matrix(y, 1)[0], flat @ flat.T / 24)


@SETTINGS
@given(seed=seeds, k=patch_sizes, rows=small, cols=small)
def test_gram_is_size_independent(seed: int, k: int, rows: int, cols: int) -> None:
    # The 1/M normalisation: tiling an image 2 x 3 times repeats every patch 6 times.
    x = rand(seed, 1, 2, rows * k, cols * k)
    torch.testing.assert_close(gram_matrix(x.repeat(1, 1, 2, 3), k), gram_matrix(x, k))


# --- loss values -----------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, b=small, c=small, k=patch_sizes, rows=small, cols=small)
def test_loss_matches_direct_formula(
    seed: int, b: int, c: int, k: int, rows: int, cols: int
) -> None:
    pred, target = rand(seed, b, c, rows * k, cols * k), rand(seed + 1, b, c, rows * k, cols * k)
    per_image = loss_direct(pred.numpy(), target.numpy(), k)
    out = texture_matching_loss(pred, target, k, "none")
    np.testing.assert_allclose(out.numpy(), per_image, rtol=1e-10, atol=1e-15)
    assert texture_matching_loss(pred, target, k, "sum").item() == pytest.approx(per_image.sum())
    assert texture_matching_loss(pred, target, k).item() == pytest.approx(per_image.mean())


def test_loss_hand_computed() -> None:
    # One patch each: p = (1, 2, 3, 4) against zeros. ||p p^T||_F^2 = ||p||^4 = 30^2,
    # over (C K^2)^2 = 16 entries.
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    loss = texture_matching_loss(pred, torch.zeros_like(pred), patch_size=2)
    assert loss.item() == pytest.approx(900.0 / 16)
    unnormalised = texture_matching_loss(pred, torch.zeros_like(pred), 2, normalize=False)
    assert unnormalised.item() == pytest.approx(900.0)


@SETTINGS
@given(seed=seeds, b=small, c=small, k=patch_sizes, rows=small, cols=small)
def test_unnormalised_is_entry_count_times_normalised(
    seed: int, b: int, c: int, k: int, rows: int, cols: int
) -> None:
    pred, target = rand(seed, b, c, rows * k, cols * k), rand(seed + 1, b, c, rows * k, cols * k)
    mean = texture_matching_loss(pred, target, k, "none")
    total = texture_matching_loss(pred, target, k, "none", normalize=False)
    torch.testing.assert_close(total, mean * (c * k * k) ** 2, rtol=1e-10, atol=1e-14)
    module = TextureMatchingLoss(k, "none", normalize=False)
    torch.testing.assert_close(module(pred, target), total)
    assert "normalize=False" in repr(module)


def test_normalize_must_be_bool() -> None:
    with pytest.raises(TypeError, match="`normalize` must be a bool"):
        TextureMatchingLoss(normalize=1)  # type: ignore[arg-type]


@SETTINGS
@given(seed=seeds, b=small, c=small, k=patch_sizes, rows=small, cols=small)
def test_loss_zero_for_identical(seed: int, b: int, c: int, k: int, rows: int, cols: int) -> None:
    x = rand(seed, b, c, rows * k, cols * k)
    assert texture_matching_loss(x, x.clone(), k, "sum").item() == 0.0


@SETTINGS
@given(seed=seeds, b=small, k=patch_sizes, rows=small, cols=small)
def test_loss_invariant_to_patch_shuffling(seed: int, b: int, k: int, rows: int, cols: int) -> None:
    pred, target = rand(seed, b, 3, rows * k, cols * k), rand(seed + 1, b, 3, rows * k, cols * k)
    shuffled = shuffle_patches(pred, k, seed)
    assert sorted(map(tuple, tiles(shuffled, k).tolist())) == sorted(
        map(tuple, tiles(pred, k).tolist())
    )
    expected = texture_matching_loss(pred, target, k, "none")
    torch.testing.assert_close(texture_matching_loss(shuffled, target, k, "none"), expected)
    assert texture_matching_loss(shuffled, pred, k).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_not_invariant_to_shuffling_inside_patches() -> None:
    # Control for the property above: moving pixels within a patch changes the Gram.
    x = rand(0, 1, 1, 4, 4)
    inside = x.reshape(1, 1, 2, 2, 2, 2).transpose(3, 5).reshape(1, 1, 4, 4)
    assert not torch.equal(tiles(inside, 2), tiles(x, 2))
    assert texture_matching_loss(inside, x, 2).item() > 1e-6


@SETTINGS
@given(seed=seeds, k=patch_sizes, s=st.floats(-4, 4))
def test_loss_symmetric_and_quartic(seed: int, k: int, s: float) -> None:
    a, b = rand(seed, 2, 3, 2 * k, 3 * k), rand(seed + 1, 2, 3, 2 * k, 3 * k)
    torch.testing.assert_close(texture_matching_loss(a, b, k), texture_matching_loss(b, a, k))
    scaled = texture_matching_loss(s * a, s * b, k)
    torch.testing.assert_close(scaled, s**4 * texture_matching_loss(a, b, k))


@SETTINGS
@given(seed=seeds, k=patch_sizes)
def test_loss_in_unit_interval_for_unit_images(seed: int, k: int) -> None:
    # The documented scale: inputs in [0, 1] give a per-image loss in [0, 1], and the
    # extreme pair (all zeros, all ones) reaches 1.
    a, b = rand(seed, 3, 3, 2 * k, 2 * k), rand(seed + 1, 3, 3, 2 * k, 2 * k)
    per_image = texture_matching_loss(a, b, k, "none")
    assert bool(((per_image >= 0) & (per_image <= 1)).all())
    ones = torch.ones(1, 3, 2 * k, 2 * k)
    assert texture_matching_loss(0 * ones, ones, k).item() == pytest.approx(1.0)


# --- reductions, module, gradients ------------------------------------------------------------


@pytest.mark.parametrize(("reduction", "shape"), [("mean", ()), ("sum", ()), ("none", (3,))])
def test_output_shape_and_module_equals_function(
    reduction: str, shape: tuple[int, ...], device: torch.device
) -> None:
    pred, target = rand(0, 3, 2, 8, 4).to(device), rand(1, 3, 2, 8, 4).to(device)
    module = TextureMatchingLoss(patch_size=2, reduction=reduction).to(device)
    out = module(pred, target)
    assert out.shape == shape
    assert out.device == pred.device
    torch.testing.assert_close(out, texture_matching_loss(pred, target, 2, reduction))
    torch.testing.assert_close(
        out, MF.texture_matching_loss(pred, target, patch_size=2, reduction=reduction)
    )
    assert repr(module) == f"TextureMatchingLoss(patch_size=2, reduction={reduction!r})"


def test_module_has_no_state() -> None:
    module = TextureMatchingLoss()
    assert list(module.parameters()) == []
    assert list(module.buffers()) == []
    assert module.state_dict() == {}
    assert module.patch_size == 4
    assert module.reduction == "mean"


def test_gradcheck_float64() -> None:
    pred = rand(0, 2, 2, 4, 4).requires_grad_()
    target = rand(1, 2, 2, 4, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: texture_matching_loss(p, t, 2), (pred, target))
    assert torch.autograd.gradcheck(
        lambda p, t: texture_matching_loss(p, t, 2, "none"), (pred, target)
    )
    assert torch.autograd.gradcheck(lambda x: gram_matrix(x, 2), (pred,))


def test_gradient_reaches_pred() -> None:
    pred = rand(0, 2, 3, 8, 8, dtype=torch.float32).requires_grad_()
    target = rand(1, 2, 3, 8, 8, dtype=torch.float32)
    TextureMatchingLoss()(pred, target).backward()
    assert pred.grad is not None
    assert pred.grad.abs().sum() > 0
    assert target.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    pred, target = rand(0, 2, 3, 8, 8), rand(1, 2, 3, 8, 8)
    reference = texture_matching_loss(pred, target)
    out = texture_matching_loss(pred.to(dtype), target.to(dtype))
    assert out.dtype == dtype
    assert gram_matrix(pred.to(dtype)).dtype == dtype
    # half-precision inputs are rounded, then computed in float32
    rtol = 1e-5 if dtype in (torch.float32, torch.float64) else 0.1
    torch.testing.assert_close(out.double(), reference, rtol=rtol, atol=0.0)


def test_autocast_does_not_lower_precision() -> None:
    # At 0..255 an unnormalised patch Gram would overflow float16; bfloat16 would lose digits.
    pred = 255 * rand(0, 2, 3, 8, 8, dtype=torch.float32)
    target = 255 * rand(1, 2, 3, 8, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, gram = texture_matching_loss(pred, target), gram_matrix(pred)
    assert out.dtype == gram.dtype == torch.float32
    torch.testing.assert_close(out, texture_matching_loss(pred, target))
    torch.testing.assert_close(gram, gram_matrix(pred))


# --- errors ----------------------------------------------------------------------------------

X = torch.zeros(2, 3, 8, 8)
TILE = "cannot be tiled by non-overlapping"
ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    # (call, exception, exact substring of the message)
    (
        lambda: texture_matching_loss(X[:, :, :6], X[:, :, :6]),
        ValueError,
        f"texture_matching_loss: an image of size (H, W) = (6, 8) {TILE} 4x4 patches (K = 4)",
    ),
    (
        lambda: texture_matching_loss(X, X, patch_size=3),
        ValueError,
        f"(H, W) = (8, 8) {TILE} 3x3 patches (K = 3)",
    ),
    (
        lambda: gram_matrix(X[..., :2, :], 4),
        ValueError,
        f"gram_matrix: an image of size (H, W) = (2, 8) {TILE} 4x4 patches",
    ),
    (
        lambda: texture_matching_loss(X, X, patch_size=0),
        ValueError,
        "`patch_size` must be a positive int, found 0",
    ),
    (
        lambda: TextureMatchingLoss(patch_size=-2),
        ValueError,
        "TextureMatchingLoss: `patch_size` must be a positive int, found -2",
    ),
    (
        lambda: TextureMatchingLoss(patch_size=4.0),  # type: ignore[arg-type]
        TypeError,
        "TextureMatchingLoss: `patch_size` must be an int, found float",
    ),
    (
        lambda: gram_matrix(X, True),
        TypeError,
        "gram_matrix: `patch_size` must be an int, found bool",
    ),
    (
        lambda: TextureMatchingLoss(reduction="batchmean"),
        ValueError,
        "`reduction` must be one of 'mean', 'sum', 'none', found 'batchmean'",
    ),
    (
        lambda: texture_matching_loss(X, X[:1]),
        ValueError,
        "texture_matching_loss: `pred` and `target` must have the same shape, "
        "found pred (2, 3, 8, 8) and target (1, 3, 8, 8)",
    ),
    (
        lambda: texture_matching_loss(X.flatten(2), X.flatten(2)),
        ValueError,
        "`pred` of shape (B, C, H, W) (4-D), found 3-D shape (2, 3, 64)",
    ),
    (
        lambda: texture_matching_loss(X.bfloat16(), X),
        TypeError,
        "same dtype, found pred torch.bfloat16 and target torch.float32",
    ),
    (
        lambda: texture_matching_loss(X, X.to("meta")),
        ValueError,
        "same device, found pred on cpu and target on meta",
    ),
    (
        lambda: gram_matrix(X.to(torch.uint8)),
        TypeError,
        "gram_matrix: expected `x` to have a floating-point dtype",
    ),
    (
        lambda: texture_matching_loss(X[:, :0], X[:, :0]),
        ValueError,
        "expected `pred` to have at least one channel, found shape (2, 0, 8, 8) with C = 0",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_error_messages(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()
