"""MENET: multi-task learning enhanced single-image de-raining, built on ``mtlweight``.

Pixel convention (every tool in this package)
---------------------------------------------
Images are ``float32`` RGB tensors in ``[0, 1]``, shape ``(3, H, W)`` or
``(B, 3, H, W)``; 8-bit files map ``v -> v / 255`` exactly.

Scores are those of 8-bit images with data range 255: :mod:`menet.evaluate`
quantises model outputs to the 8-bit grid (``round(x·255)``, as a saved PNG) and
scores ``x·255`` (RGB) or BT.601 studio-swing luma ``Y ∈ [16, 235]``
(:func:`menet.metrics.rgb_to_y`, float, no rounding) with ``data_range=255``.
The metric functions themselves take images on the scale of ``data_range``
(PSNR and SSIM are unchanged when images and ``data_range`` are scaled together,
so ``psnr(a, b, data_range=1.0) == psnr(255·a, 255·b)``).
"""

from menet.data import (
    PairedFolder,
    RandomCropPairs,
    SyntheticRainPairs,
    TenCropPairs,
    builtin_images,
    load_split,
    ten_crop,
    ten_crops,
)
from menet.evaluate import (
    ImageRecord,
    evaluate_pairs,
    plot_psnr_histogram,
    plot_ssim_box,
    save_grid,
    summarize,
    write_csv,
)
from menet.images import quantize, read_bit_depth, read_image, write_image
from menet.metrics import psnr, rgb_to_y, ssim
from menet.model import MENET, VARIANTS, depth_to_space, pad_to_multiple, space_to_depth
from menet.rain import PRESETS, RainParams, rain_layer, synthesize_rain

__version__ = "0.1.0"

__all__ = [
    "MENET",
    "PRESETS",
    "VARIANTS",
    "ImageRecord",
    "PairedFolder",
    "RainParams",
    "RandomCropPairs",
    "SyntheticRainPairs",
    "TenCropPairs",
    "builtin_images",
    "depth_to_space",
    "evaluate_pairs",
    "load_split",
    "pad_to_multiple",
    "plot_psnr_histogram",
    "plot_ssim_box",
    "psnr",
    "quantize",
    "rain_layer",
    "read_bit_depth",
    "read_image",
    "rgb_to_y",
    "save_grid",
    "space_to_depth",
    "ssim",
    "summarize",
    "synthesize_rain",
    "ten_crop",
    "ten_crops",
    "write_csv",
    "write_image",
]
# Part 2 (training / CLI / checkpoints / tiled de-raining / demo): its public names
# are added below this line by the lead.
