"""Image-quality metrics for de-raining: PSNR, SSIM and BT.601 luma, batched in torch.

All functions take images of shape ``(..., C, H, W)`` on the scale of
``data_range`` and return one value per image (shape ``(...)``). For tensors in
[0, 1] either pass ``255 * x`` with the default ``data_range=255`` or pass
``data_range=1.0``: both metrics are invariant to scaling the images and
``data_range`` together. Computation is in float64 on the input's device; the
result has the input's floating dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["gaussian_window", "psnr", "rgb_to_y", "ssim"]

Reduction = Literal["none", "mean"]


def _check_pair(a: Tensor, b: Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 3:
        raise ValueError(f"{name}: expected (..., C, H, W), found shape {tuple(a.shape)}")
    if a.device != b.device:
        raise ValueError(f"{name}: images on different devices: {a.device} vs {b.device}")


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return x
    if reduction == "mean":
        return x.mean()
    raise ValueError(f"reduction must be 'none' or 'mean', found {reduction!r}")


def _out_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 studio-swing luma of RGB in [0, 1], on the 0..255 scale.

    .. math::

        Y = 16 + 65.481\\,R + 128.553\\,G + 24.966\\,B \\in [16, 235]

    (float, no rounding), the convention of MATLAB's ``rgb2ycbcr`` used by most
    de-raining papers.

    Parameters
    ----------
    x : Tensor
        Shape ``(..., 3, H, W)``, RGB in [0, 1].

    Returns
    -------
    Tensor
        Shape ``(..., 1, H, W)``.

    Examples
    --------
    >>> rgb_to_y(torch.ones(3, 1, 1)).flatten()
    tensor([235.])
    """
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (..., 3, H, W), found shape {tuple(x.shape)}")
    r, g, b = x.unbind(dim=-3)
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b).unsqueeze(-3)


def psnr(
    a: Tensor, b: Tensor, data_range: float = 255.0, reduction: Reduction = "none"
) -> Tensor:
    """Peak signal-to-noise ratio per image.

    .. math::

        \\mathrm{PSNR}(a, b) = 10 \\log_{10} \\frac{L^2}{\\tfrac{1}{N}\\sum_i (a_i - b_i)^2}

    where :math:`L` is ``data_range`` and the mean runs over the :math:`N = CHW`
    elements of one image. Identical images give ``inf``.

    Parameters
    ----------
    a, b : Tensor
        Shape ``(..., C, H, W)``, same shape, on the scale of ``data_range``.
    data_range : float
        :math:`L`, the span of valid values (255 for 8-bit images).
    reduction : {"none", "mean"}
        Per-image values (shape ``(...)``) or their mean.

    Examples
    --------
    >>> a = torch.zeros(1, 3, 4, 4); b = torch.full((1, 3, 4, 4), 25.5)
    >>> psnr(a, b)  # MSE = 25.5² -> 20·log10(255 / 25.5) = 20 dB
    tensor([20.])
    """
    _check_pair(a, b, "psnr")
    if data_range <= 0:
        raise ValueError(f"psnr: data_range must be positive, found {data_range}")
    diff = a.double() - b.double()
    mse = diff.square().mean(dim=(-3, -2, -1))
    value = 10.0 * torch.log10(float(data_range) ** 2 / mse)
    return _reduce(value.to(_out_dtype(a)), reduction)


def gaussian_window(
    size: int = 11,
    sigma: float = 1.5,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Normalised 1-D Gaussian, ``w_k ∝ exp(-k²/(2σ²))`` for ``k = -(size//2)..size//2``.

    Examples
    --------
    >>> w = gaussian_window(11, 1.5)
    >>> w.shape, round(float(w.sum()), 6)
    (torch.Size([11]), 1.0)
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_window: size must be a positive odd integer, found {size}")
    k = torch.arange(size, device=device, dtype=dtype) - size // 2
    w = torch.exp(-(k**2) / (2.0 * sigma**2))
    return w / w.sum()


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 255.0,
    reduction: Reduction = "none",
    *,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity (Wang et al. 2004), Gaussian window, per channel then averaged.

    .. math::

        \\mathrm{SSIM}(a, b) = \\frac{1}{C\\,|\\Omega|} \\sum_{c}\\sum_{p \\in \\Omega}
        \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
              {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)}

    where :math:`\\mu, \\sigma^2, \\sigma_{ab}` are local means, (population)
    variances and covariance under an ``win_size x win_size`` Gaussian window of
    std ``sigma``, :math:`C_1 = (k_1 L)^2`, :math:`C_2 = (k_2 L)^2` with
    :math:`L` = ``data_range``, and :math:`\\Omega` are the positions where the
    window lies inside the image (a border of ``(win_size-1)//2`` is excluded).
    This equals ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=L, channel_axis=...)``.

    Parameters
    ----------
    a, b : Tensor
        Shape ``(..., C, H, W)`` with ``H, W >= win_size``, on the scale of ``data_range``.
    data_range : float
        :math:`L` (255 for 8-bit images).
    reduction : {"none", "mean"}
        Per-image values (shape ``(...)``) or their mean.
    win_size, sigma, k1, k2 : int, float
        Window side (odd), Gaussian std and the stabilising constants.

    Examples
    --------
    >>> x = torch.rand(2, 3, 16, 16) * 255
    >>> ssim(x, x)
    tensor([1., 1.])
    """
    _check_pair(a, b, "ssim")
    if data_range <= 0:
        raise ValueError(f"ssim: data_range must be positive, found {data_range}")
    h, w = a.shape[-2:]
    if h < win_size or w < win_size:
        raise ValueError(f"ssim: images must be at least {win_size}x{win_size}, found {h}x{w}")
    lead = a.shape[:-3]
    c = a.shape[-3]
    x = a.double().reshape(-1, 1, h, w)
    y = b.double().reshape(-1, 1, h, w)

    g: list[float] = gaussian_window(win_size, sigma).tolist()

    def blur(t: Tensor) -> Tensor:
        # Separable 'valid' Gaussian filter as a weighted sum of shifted views: exact in
        # float64 and much faster than a float64 conv2d on the CPU.
        n = len(g)
        rows: Tensor = t[..., : t.shape[-2] - n + 1, :] * g[0]
        for k in range(1, n):
            rows.add_(t[..., k : k + rows.shape[-2], :], alpha=g[k])
        out: Tensor = rows[..., : rows.shape[-1] - n + 1] * g[0]
        for k in range(1, n):
            out.add_(rows[..., k : k + out.shape[-1]], alpha=g[k])
        return out

    stacked = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1).view(-1, 1, h, w))
    mu_x, mu_y, xx, yy, xy = stacked.view(x.shape[0], 5, *stacked.shape[-2:]).unbind(dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    value = s.mean(dim=(-2, -1)).view(*lead, c).mean(dim=-1)
    return _reduce(value.to(_out_dtype(a)), reduction)
