"""Tests of mtlweight.losses.EdgeAwareLoss, edge_aware_loss, sobel and sobel_kernels."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight.functional as MF
from mtlweight.losses import EdgeAwareLoss, edge_aware_loss, sobel, sobel_kernels

SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(2, 9)
small = st.integers(1, 3)

S_Y = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])


def rand(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)


def sobel_loop(image: np.ndarray) -> np.ndarray:
    """Sobel responses (2, H, W) of one (H, W) plane by explicit loops, reflect borders."""
    height, width = image.shape

    def mirror(i: int, n: int) -> int:  # reflect without repeating the edge: -1 -> 1, n -> n - 2
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = np.zeros((2, height, width))
    for k, kernel in enumerate((S_Y, S_Y.T)):
        for i in range(height):
            for j in range(width):
                for u in range(3):
                    for v in range(3):
                        pixel = image[mirror(i + u - 1, height), mirror(j + v - 1, width)]
                        out[k, i, j] += kernel[u, v] * pixel
    return out


# --- kernels -------------------------------------------------------------------------------


def test_sobel_kernels_values_and_options() -> None:
    kernels = sobel_kernels(dtype=torch.float64)
    assert kernels.shape == (2, 3, 3)
    assert kernels.dtype == torch.float64
    np.testing.assert_array_equal(kernels[0].numpy(), S_Y)
    np.testing.assert_array_equal(kernels[1].numpy(), S_Y.T)
    assert torch.equal(kernels.sum(dim=(1, 2)), torch.zeros(2, dtype=torch.float64))
    assert sobel_kernels().dtype == torch.get_default_dtype()
    assert sobel_kernels(device="meta").device.type == "meta"
    with pytest.raises(TypeError):
        sobel_kernels("cpu")  # type: ignore[misc]  # device and dtype are keyword-only


# --- sobel responses -----------------------------------------------------------------------


def test_sobel_hand_computed_3x3() -> None:
    # x[i, j] = 3i + j + 1. Reflect padding mirrors row 1 onto rows -1 and 3, so the
    # vertical derivative vanishes on the border rows and is (1+2+1) * (7-1) = 24 inside;
    # likewise the horizontal one is 4 * (3-1) = 8 in the middle column only.
    x = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    out = sobel(x)
    assert out.shape == (1, 1, 2, 3, 3)
    expected_y = [[0.0, 0.0, 0.0], [24.0, 24.0, 24.0], [0.0, 0.0, 0.0]]
    expected_x = [[0.0, 8.0, 0.0]] * 3
    np.testing.assert_array_equal(out[0, 0, 0].numpy(), expected_y)
    np.testing.assert_array_equal(out[0, 0, 1].numpy(), expected_x)
    np.testing.assert_allclose(sobel_loop(x[0, 0].numpy()), out[0, 0].numpy())


def test_sobel_step_edge_at_border() -> None:
    # First column bright: with reflect padding column -1 mirrors column 1 (dark), so the
    # border column itself has zero horizontal response and column 1 sees -(1+2+1).
    # Zero padding would give nonzero vertical responses at the corners; replicate
    # padding would give -4 in column 0.
    x = torch.zeros(1, 1, 4, 5, dtype=torch.float64)
    x[..., 0] = 1.0
    out = sobel(x)[0, 0]
    expected_x = np.zeros((4, 5))
    expected_x[:, 1] = -4.0
    np.testing.assert_array_equal(out[1].numpy(), expected_x)
    np.testing.assert_array_equal(out[0].numpy(), np.zeros((4, 5)))


@SETTINGS
@given(c=small, h=sizes, w=sizes, value=st.floats(-5, 5))
def test_sobel_constant_image_is_zero_everywhere(c: int, h: int, w: int, value: float) -> None:
    # Zero padding would light up the borders; reflect padding keeps them flat.
    x = torch.full((2, c, h, w), value, dtype=torch.float64)
    zeros = torch.zeros(2, c, 2, h, w, dtype=torch.float64)
    torch.testing.assert_close(sobel(x), zeros, atol=1e-13, rtol=0.0)


@SETTINGS
@given(seed=seeds, h=sizes, w=sizes)
def test_sobel_matches_loops_and_scipy_mirror(seed: int, h: int, w: int) -> None:
    x = rand(seed, 1, 1, h, w)
    out = sobel(x)[0, 0].numpy()
    plane = x[0, 0].numpy()
    np.testing.assert_allclose(out, sobel_loop(plane), atol=1e-12)
    # scipy correlates with [-1, 0, 1] along `axis` and [1, 2, 1] across it; its 'mirror'
    # mode is torch's 'reflect' (d c b | a b c d | c b a).
    reference = [scipy.ndimage.sobel(plane, axis=axis, mode="mirror") for axis in (0, 1)]
    np.testing.assert_allclose(out, np.stack(reference), atol=1e-12)
    np.testing.assert_array_equal(
        np.pad(plane, 1, mode="reflect"),
        F.pad(x, (1, 1, 1, 1), mode="reflect")[0, 0].numpy(),
    )


@SETTINGS
@given(seed=seeds, b=small, c=st.integers(1, 5), h=sizes, w=sizes)
def test_sobel_is_depthwise(seed: int, b: int, c: int, h: int, w: int) -> None:
    x = rand(seed, b, c, h, w)
    per_plane = torch.stack([sobel(x[:, i : i + 1])[:, 0] for i in range(c)], dim=1)
    torch.testing.assert_close(sobel(x), per_plane)


def test_sobel_non_contiguous_input() -> None:
    x = rand(0, 2, 3, 5, 6)
    torch.testing.assert_close(sobel(x.transpose(2, 3)), sobel(x.transpose(2, 3).contiguous()))


# --- loss values ---------------------------------------------------------------------------


def test_loss_hand_computed_3x3() -> None:
    # Responses of the 3x3 ramp (see above) against a flat prediction:
    # three entries of 24 and three of 8 among 2 * 3 * 3 = 18.
    x = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    loss = edge_aware_loss(torch.zeros_like(x), x)
    assert loss.item() == pytest.approx((3 * 24**2 + 3 * 8**2) / 18)
    assert edge_aware_loss(torch.zeros_like(x), x, "sum").item() == pytest.approx(1920.0)


@SETTINGS
@given(seed=seeds, b=small, c=st.integers(1, 4), h=sizes, w=sizes)
def test_loss_is_mse_between_responses(seed: int, b: int, c: int, h: int, w: int) -> None:
    pred, target = rand(seed, b, c, h, w), rand(seed + 1, b, c, h, w)
    for reduction in ("mean", "sum", "none"):
        expected = F.mse_loss(sobel(pred), sobel(target), reduction=reduction)
        torch.testing.assert_close(edge_aware_loss(pred, target, reduction), expected)


@SETTINGS
@given(seed=seeds, b=small, c=st.integers(1, 5), h=sizes, w=sizes)
def test_loss_zero_for_identical_images(seed: int, b: int, c: int, h: int, w: int) -> None:
    x = rand(seed, b, c, h, w)
    assert edge_aware_loss(x, x).item() == 0.0
    assert EdgeAwareLoss("sum")(x, x.clone()).item() == 0.0


@SETTINGS
@given(seed=seeds, h=sizes, w=sizes, s=st.floats(-3, 3))
def test_loss_symmetric_and_quadratic(seed: int, h: int, w: int, s: float) -> None:
    a, b = rand(seed, 2, 3, h, w), rand(seed + 1, 2, 3, h, w)
    torch.testing.assert_close(edge_aware_loss(a, b), edge_aware_loss(b, a))
    torch.testing.assert_close(edge_aware_loss(s * a, s * b), s**2 * edge_aware_loss(a, b))


# --- reductions, module, gradients ---------------------------------------------------------


@pytest.mark.parametrize(
    ("reduction", "shape"), [("mean", ()), ("sum", ()), ("none", (2, 3, 2, 5, 4))]
)
def test_output_shape_and_module_equals_function(
    reduction: str, shape: tuple[int, ...], device: torch.device
) -> None:
    pred, target = rand(0, 2, 3, 5, 4).to(device), rand(1, 2, 3, 5, 4).to(device)
    module = EdgeAwareLoss(reduction).to(device)
    out = module(pred, target)
    assert out.shape == shape
    assert out.device == pred.device
    torch.testing.assert_close(out, edge_aware_loss(pred, target, reduction))
    torch.testing.assert_close(out, MF.edge_aware_loss(pred, target, reduction=reduction))
    assert repr(module) == f"EdgeAwareLoss(reduction={reduction!r})"


def test_gradcheck_float64() -> None:
    pred = rand(0, 2, 2, 3, 4).requires_grad_()
    target = rand(1, 2, 2, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(edge_aware_loss, (pred, target))
    assert torch.autograd.gradcheck(lambda p, t: edge_aware_loss(p, t, "none"), (pred, target))
    assert torch.autograd.gradcheck(sobel, (pred,))


def test_gradient_reaches_pred_only_through_loss() -> None:
    pred = rand(0, 1, 3, 6, 6, dtype=torch.float32).requires_grad_()
    target = rand(1, 1, 3, 6, 6, dtype=torch.float32)
    EdgeAwareLoss()(pred, target).backward()
    assert pred.grad is not None
    assert pred.grad.abs().sum() > 0
    assert target.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    pred, target = rand(0, 2, 3, 6, 6), rand(1, 2, 3, 6, 6)
    reference = edge_aware_loss(pred, target)
    out = edge_aware_loss(pred.to(dtype), target.to(dtype))
    assert out.dtype == dtype
    assert sobel(pred.to(dtype)).dtype == dtype
    # half-precision inputs are rounded, then computed in float32
    rtol = 1e-6 if dtype in (torch.float32, torch.float64) else 5e-2
    torch.testing.assert_close(out.double(), reference, rtol=rtol, atol=0.0)


def test_autocast_does_not_lower_precision() -> None:
    pred = 255 * rand(0, 2, 3, 16, 16, dtype=torch.float32)
    target = 255 * rand(1, 2, 3, 16, 16, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, responses = edge_aware_loss(pred, target), sobel(pred)
    assert out.dtype == responses.dtype == torch.float32
    torch.testing.assert_close(out, edge_aware_loss(pred, target))
    torch.testing.assert_close(responses, sobel(pred))


def test_module_buffer_is_non_persistent_constant() -> None:
    module = EdgeAwareLoss()
    assert list(module.parameters()) == []
    assert module.state_dict() == {}
    assert [name for name, _ in module.named_buffers()] == ["kernels"]
    assert not module.kernels.requires_grad
    torch.testing.assert_close(module.kernels, sobel_kernels())
    module.to(torch.float64)
    assert module.kernels.dtype == torch.float64
    # a float64 module still serves float32 inputs: kernels are cast to the input
    x = rand(0, 1, 3, 4, 4, dtype=torch.float32)
    assert module(x, x.flip(-1)).dtype == torch.float32
    module.load_state_dict({})  # strict load of an empty checkpoint works


# --- errors --------------------------------------------------------------------------------


X = torch.zeros(1, 3, 4, 4)
ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    # (call, exception, exact substring of the message)
    (
        lambda: edge_aware_loss(np.zeros((1, 3, 4, 4)), X),  # type: ignore[arg-type]
        TypeError,
        "edge_aware_loss: expected `pred` to be a torch.Tensor, found ndarray",
    ),
    (
        lambda: edge_aware_loss(X, X.long()),
        TypeError,
        "`target` to have a floating-point dtype (float16, bfloat16, float32, float64), "
        "found torch.int64",
    ),
    (
        lambda: edge_aware_loss(X[0], X[0]),
        ValueError,
        "`pred` of shape (B, C, H, W) (4-D), found 3-D shape (3, 4, 4)",
    ),
    (
        lambda: edge_aware_loss(X, X[:, :1]),
        ValueError,
        "same shape, found pred (1, 3, 4, 4) and target (1, 1, 4, 4)",
    ),
    (
        lambda: edge_aware_loss(X, X.double()),
        TypeError,
        "same dtype, found pred torch.float32 and target torch.float64",
    ),
    (
        lambda: edge_aware_loss(X, X.to("meta")),
        ValueError,
        "same device, found pred on cpu and target on meta",
    ),
    (
        lambda: edge_aware_loss(X, X, reduction="avg"),
        ValueError,
        "edge_aware_loss: `reduction` must be one of 'mean', 'sum', 'none', found 'avg'",
    ),
    (
        lambda: EdgeAwareLoss(None),  # type: ignore[arg-type]
        ValueError,
        "EdgeAwareLoss: `reduction` must be one of 'mean', 'sum', 'none', found None",
    ),
    (
        lambda: edge_aware_loss(X[..., :1, :], X[..., :1, :]),
        ValueError,
        "edge_aware_loss: reflect padding of 1 needs H >= 2 and W >= 2, found (H, W) = (1, 4)",
    ),
    (
        lambda: sobel(X[..., :1]),
        ValueError,
        "sobel: reflect padding of 1 needs H >= 2 and W >= 2, found (H, W) = (4, 1)",
    ),
    (
        lambda: sobel([X]),  # type: ignore[arg-type]
        TypeError,
        "sobel: expected `x` to be a torch.Tensor, found list",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_error_messages(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()
