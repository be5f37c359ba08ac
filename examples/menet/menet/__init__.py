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

Threads: importing ``menet`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already
set) before torch loads, so that idle OpenMP threads sleep instead of spinning
on a shared machine (:mod:`menet._threads`).
"""

# First, before anything imports torch: the OpenMP wait policy is read when torch loads.
from menet import _threads  # noqa: F401  (sorted first: "_" < letters)
from menet.building import PairSource, build_losses, build_pairs, build_weighting
from menet.checkpoint import (
    CheckpointError,
    export_weights,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from menet.config import RECIPES, TrainConfig
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
from menet.demo import run_demo
from menet.derain import apply_tiled, derain_files, derain_image
from menet.ensemble import FlipEnsemble, with_ensemble
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
from menet.plots import plot_training_log
from menet.rain import PRESETS, RainParams, rain_layer, synthesize_rain
from menet.step import train_step

__version__ = "0.1.0"

__all__ = [
    "MENET",
    "PRESETS",
    "RECIPES",
    "VARIANTS",
    "CheckpointError",
    "FlipEnsemble",
    "ImageRecord",
    "PairSource",
    "PairedFolder",
    "RainParams",
    "RandomCropPairs",
    "SyntheticRainPairs",
    "TenCropPairs",
    "TrainConfig",
    "apply_tiled",
    "build_losses",
    "build_pairs",
    "build_weighting",
    "builtin_images",
    "depth_to_space",
    "derain_files",
    "derain_image",
    "evaluate_pairs",
    "export_weights",
    "load_checkpoint",
    "load_model",
    "load_split",
    "pad_to_multiple",
    "plot_psnr_histogram",
    "plot_ssim_box",
    "plot_training_log",
    "psnr",
    "quantize",
    "rain_layer",
    "read_bit_depth",
    "read_image",
    "rgb_to_y",
    "run_demo",
    "save_checkpoint",
    "save_grid",
    "space_to_depth",
    "ssim",
    "summarize",
    "synthesize_rain",
    "ten_crop",
    "ten_crops",
    "train_step",
    "with_ensemble",
    "write_csv",
    "write_image",
]
