"""Figures of the losses page, drawn at build time by matplotlib's ``plot`` directive.

``draw_sobel`` redraws the paper's Fig. 7 (the Sobel responses of a rainy and a
clean image) and ``draw_gram`` the patch Gram matrices the texture loss compares.
The clean image is a crop of scikit-image's built-in ``chelsea`` photograph (no
download); the rain comes from the MENET example's synthesiser when it is
importable, else from a simple streak overlay drawn here. Both take well under a
second.

The ``plot`` directive runs this file as ``__main__`` and then calls the named
function, so the module has no top-level drawing code.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from torch import Tensor

from mtlweight.functional import edge_aware_loss, texture_matching_loss
from mtlweight.losses import gram_matrix, sobel

CROP = (slice(20, 276), slice(120, 376))  # 256 x 256: the cat's face


def clean_image() -> Tensor:
    """A (1, 3, 256, 256) crop of skimage's ``chelsea`` in [0, 1]."""
    import skimage.data

    arr = skimage.data.chelsea()[CROP]  # type: ignore[no-untyped-call]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0


def _streaks(clean: Tensor, seed: int = 0) -> Tensor:
    """Fallback rain: sparse drops smeared along a slanted line, screen-blended."""
    g = torch.Generator().manual_seed(seed)
    _, _, h, w = clean.shape
    drops = (torch.rand(1, 1, h, w, generator=g) < 0.004).float()
    drops = drops * (0.5 + 0.5 * torch.rand(1, 1, h, w, generator=g))
    length, angle = 15, math.radians(12)
    kernel = torch.zeros(1, 1, length, length)
    for i in range(length):
        t = i - length // 2
        r, c = length // 2 + t * math.cos(angle), length // 2 + t * math.sin(angle)
        kernel[0, 0, round(r) % length, round(c) % length] = 1.0
    layer = F.conv2d(drops, kernel, padding=length // 2).clamp(0, 1)
    return (clean + 0.8 * layer * (1 - clean)).clamp(0, 1)


def rainy_image(clean: Tensor) -> Tensor:
    """Rain on ``clean``: MENET's synthesiser (light preset) if available, else :func:`_streaks`."""
    try:
        from menet.rain import synthesize_rain
    except ImportError:
        return _streaks(clean)
    rainy: Tensor = synthesize_rain(clean, preset="light", seed=0)
    return rainy


def _show(ax: Axes, image: np.ndarray, title: str, cmap: str | None = None) -> None:
    ax.imshow(image, cmap=cmap)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_sobel() -> None:
    """Fig. 7 of the paper: images and their vertical/horizontal Sobel responses."""
    clean = clean_image()
    rainy = rainy_image(clean)
    fig, axes = plt.subplots(2, 3, figsize=(8, 6.0))
    for row, (name, image) in enumerate((("rainy", rainy), ("clean", clean))):
        response = sobel(image)[0].abs().sum(0)  # (2, H, W): |S_y|, |S_x| summed over RGB
        top = float(sobel(rainy)[0].abs().sum(0).quantile(0.995))
        _show(axes[row, 0], image[0].permute(1, 2, 0).numpy(), f"({'ab'[row]}) {name} image")
        for k, direction in enumerate(("vertical (S_y)", "horizontal (S_x)")):
            _show(
                axes[row, k + 1],
                response[k].clamp(max=top).numpy(),
                f"({2 * row + k + 1}) {name}: {direction}",
                cmap="magma",
            )
    pixel = F.mse_loss(rainy, clean).item()
    edge = edge_aware_loss(rainy, clean).item()
    fig.suptitle(
        f"pixel MSE(rainy, clean) = {pixel:.4f}    edge-aware loss = {edge:.4f} "
        f"({edge / pixel:.0f} x the pixel MSE)",
        fontsize=9,
    )


def draw_gram() -> None:
    """The 48 x 48 Gram matrices of 4 x 4 patches of the clean and the rainy image."""
    clean = clean_image()
    rainy = rainy_image(clean)
    g_clean, g_rainy = gram_matrix(clean)[0], gram_matrix(rainy)[0]
    diff = (g_rainy - g_clean).abs()
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9))
    vmax = float(max(g_clean.max(), g_rainy.max()))
    for ax, (title, matrix, cmap, top) in zip(
        axes,
        (
            ("G(clean)", g_clean, "viridis", vmax),
            ("G(rainy)", g_rainy, "viridis", vmax),
            ("|G(rainy) - G(clean)|", diff, "magma", float(diff.max())),
        ),
        strict=True,
    ):
        ax.imshow(matrix.numpy(), cmap=cmap, vmin=0.0, vmax=top)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([0, 16, 32])
        ax.set_yticks([0, 16, 32])
        ax.set_xticklabels(["R", "G", "B"], fontsize=7)
        ax.set_yticklabels(["R", "G", "B"], fontsize=7)
    loss = texture_matching_loss(rainy, clean).item()
    fig.suptitle(f"texture matching loss(rainy, clean) = {loss:.2e}", fontsize=9)
