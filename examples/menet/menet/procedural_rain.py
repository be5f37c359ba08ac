"""Procedural rain of varied density, angle, width, length, blur and haze, drawn per crop.

:mod:`menet.rain` makes two fixed kinds of rain (``light`` ≈ Rain100L, ``heavy`` ≈
Rain100H). Real rain is more varied: dense curtains of thin streaks, wide
out-of-focus drops close to the lens, and the mist of distant rain that veils the
whole scene. A model trained on Rain100L/H alone removes thin streaks but leaves
dense and mist-like rain. This module draws a new rain *scene* for every training
crop and composites it onto a clean crop:

1. **layers** -- 1 to 3 streak layers; each has a depth :math:`u \\sim U(0, 1)`
   (0: near the camera, 1: far) that sets its ranges (:class:`RainRanges`): near
   layers are long, wide, sparse and bright, far ones short, thin, dense and dim.
   All layers share a direction :math:`\\theta_0 \\sim U` (degrees from vertical)
   up to a small jitter per layer;
2. **streaks** -- drops seeded with probability ``density`` (brightness
   :math:`U(0.5, 1)`), motion-blurred by the line kernel of
   :func:`menet.rain.line_kernel` (``length``, ``width``, angle), levels
   :math:`r = \\operatorname{clip}((s - 0.05) / 0.85, 0, 1)`, then a Gaussian
   blur of standard deviation ``blur`` (defocus). Drops are seeded in a margin
   around the crop too, so streaks enter it from outside as in a real picture;
3. **screen blend** of each layer, far to near: :math:`x \\leftarrow x + \\alpha r (1 - x)`;
4. **veil** (haze / mist), with probability ``haze_probability``: the scattering
   model :math:`I = J t + A (1 - t)`, with transmission
   :math:`t(y) = t_0 + g\\,(y / H - 1/2)` (lower at the top of the crop, which is
   usually farther away) and airlight :math:`A` (grey, slightly tinted per channel).

The clean crop is the target: the network learns to remove streaks *and* the veil.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> clean = torch.full((3, 32, 32), 0.3)
>>> scene = sample_scene(g)
>>> rainy = render_rain(clean, scene, g)
>>> rainy.shape, bool(rainy.min() >= 0), bool(rainy.max() <= 1)
(torch.Size([3, 32, 32]), True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from .rain import line_kernel
from .sampling import mix_seed

__all__ = [
    "EpochConcat",
    "ProceduralRainCrops",
    "RainRanges",
    "RainScene",
    "StreakLayer",
    "render_rain",
    "sample_scene",
    "streak_map",
]

Pair = tuple[Tensor, Tensor]
Range = tuple[float, float]

#: Levels of the streak map (as :class:`menet.rain.RainParams`' defaults).
_BLACK, _WHITE = 0.05, 0.9


@dataclass(frozen=True)
class StreakLayer:
    """One layer of rain streaks (see the module docstring, steps 2-3).

    Attributes
    ----------
    density : float
        Probability that a pixel seeds a drop, in [0, 1].
    length, width : float
        Streak length and width in pixels, > 0.
    angle : float
        Direction in degrees from vertical (positive: top leans right).
    opacity : float
        Screen-blend strength in [0, 1].
    blur : float
        Standard deviation in pixels of the Gaussian blur of the layer, >= 0.
    """

    density: float
    length: float
    width: float
    angle: float
    opacity: float
    blur: float = 0.0

    def __post_init__(self) -> None:
        for name in ("density", "opacity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"streak layer {name!r} must be in [0, 1], "
                                 f"found {getattr(self, name)}")
        for name in ("length", "width"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"streak layer {name!r} must be positive, "
                                 f"found {getattr(self, name)}")
        if not (self.blur >= 0 and math.isfinite(self.blur)):
            raise ValueError(f"streak layer 'blur' must be >= 0, found {self.blur}")
        if not math.isfinite(self.angle):
            raise ValueError(f"streak layer 'angle' must be finite, found {self.angle}")


@dataclass(frozen=True)
class RainScene:
    """A rain scene: streak layers (blended in order) and an optional veil.

    Attributes
    ----------
    layers : tuple of StreakLayer
        Blended in this order (far to near).
    transmission : float
        :math:`t_0` in (0, 1]; 1 means no veil.
    gradient : float
        :math:`g`: how much more transmission the bottom row has than the top row.
    airlight : tuple of 3 floats
        Veil colour :math:`A` per RGB channel, in [0, 1].
    """

    layers: tuple[StreakLayer, ...] = ()
    transmission: float = 1.0
    gradient: float = 0.0
    airlight: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 < self.transmission <= 1.0:
            raise ValueError(f"rain scene 'transmission' must be in (0, 1], "
                             f"found {self.transmission}")
        if len(self.airlight) != 3 or not all(0.0 <= a <= 1.0 for a in self.airlight):
            raise ValueError(f"rain scene 'airlight' must be 3 values in [0, 1], "
                             f"found {self.airlight}")
        if not math.isfinite(self.gradient):
            raise ValueError(f"rain scene 'gradient' must be finite, found {self.gradient}")


@dataclass(frozen=True)
class RainRanges:
    """Where :func:`sample_scene` draws from: ``(near, far)`` ranges per layer field.

    A layer of depth ``u`` draws each field uniformly from the range whose ends
    are interpolated between the ``near`` (``u = 0``) and ``far`` (``u = 1``) ranges;
    ``density`` is drawn log-uniformly.
    """

    layers: tuple[int, int] = (1, 3)
    density: tuple[Range, Range] = ((5e-4, 4e-3), (4e-3, 3e-2))
    length: tuple[Range, Range] = ((25.0, 70.0), (4.0, 14.0))
    width: tuple[Range, Range] = ((1.2, 3.5), (0.5, 1.0))
    opacity: tuple[Range, Range] = ((0.45, 0.9), (0.12, 0.4))
    blur: tuple[Range, Range] = ((0.0, 1.5), (0.3, 1.5))
    angle: Range = (-30.0, 30.0)
    angle_jitter: float = 4.0
    haze_probability: float = 0.5
    transmission: Range = (0.45, 0.95)
    gradient: Range = (0.0, 0.3)
    airlight: Range = (0.6, 1.0)
    tint: float = 0.04

    def __post_init__(self) -> None:
        lo, hi = self.layers
        if not 0 <= lo <= hi:
            raise ValueError(f"rain ranges 'layers' must be 0 <= low <= high, found {self.layers}")
        if not 0.0 <= self.haze_probability <= 1.0:
            raise ValueError(f"rain ranges 'haze_probability' must be in [0, 1], "
                             f"found {self.haze_probability}")
        if not 0.0 < self.transmission[0] <= self.transmission[1] <= 1.0:
            raise ValueError(f"rain ranges 'transmission' must lie in (0, 1], "
                             f"found {self.transmission}")


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _at_depth(g: torch.Generator, ranges: tuple[Range, Range], u: float, log: bool = False
              ) -> float:
    (n0, n1), (f0, f1) = ranges
    low, high = n0 + u * (f0 - n0), n1 + u * (f1 - n1)
    if log:
        return math.exp(_uniform(g, math.log(low), math.log(high)))
    return _uniform(g, low, high)


def sample_scene(generator: torch.Generator, ranges: RainRanges | None = None) -> RainScene:
    """Draw a :class:`RainScene` from ``ranges`` (default :class:`RainRanges`).

    Layers are sorted far to near (the blending order).

    >>> g = torch.Generator().manual_seed(3)
    >>> s = sample_scene(g, RainRanges(layers=(2, 2), haze_probability=0.0))
    >>> len(s.layers), s.transmission
    (2, 1.0)
    """
    r = ranges if ranges is not None else RainRanges()
    g = generator
    n = int(torch.randint(r.layers[0], r.layers[1] + 1, (), generator=g))
    theta = _uniform(g, *r.angle)
    depths = sorted((float(torch.rand((), generator=g)) for _ in range(n)), reverse=True)
    layers = tuple(
        StreakLayer(
            density=min(1.0, _at_depth(g, r.density, u, log=True)),
            length=_at_depth(g, r.length, u),
            width=_at_depth(g, r.width, u),
            angle=theta + _uniform(g, -r.angle_jitter, r.angle_jitter),
            opacity=_at_depth(g, r.opacity, u),
            blur=_at_depth(g, r.blur, u),
        )
        for u in depths
    )
    if float(torch.rand((), generator=g)) >= r.haze_probability:
        return RainScene(layers)
    t0 = _uniform(g, *r.transmission)
    a = _uniform(g, *r.airlight)
    airlight = tuple(min(1.0, max(0.0, a * (1 + _uniform(g, -r.tint, r.tint)))) for _ in range(3))
    return RainScene(layers, transmission=t0, gradient=_uniform(g, *r.gradient),
                     airlight=airlight)  # type: ignore[arg-type]


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)``, reflect-padded (replicate if too small)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1))


def streak_map(height: int, width: int, layer: StreakLayer, generator: torch.Generator) -> Tensor:
    """Streak map ``r`` in [0, 1] of one layer, shape ``(1, 1, height, width)``.

    Drops are seeded on the crop plus a margin of half the kernel on every side;
    the map is the *valid* part of their convolution with the line kernel (computed
    with an FFT: the kernels reach 70 px), so streaks cross the crop's borders.

    >>> g = torch.Generator().manual_seed(0)
    >>> r = streak_map(20, 30, StreakLayer(0.01, 9.0, 1.0, 10.0, 0.8), g)
    >>> r.shape, bool(r.min() >= 0), bool(r.max() <= 1)
    (torch.Size([1, 1, 20, 30]), True, True)
    """
    if height < 1 or width < 1:
        raise ValueError(f"streak_map: sizes must be positive, found {height}x{width}")
    k = line_kernel(layer.length, layer.width, layer.angle)
    m = k.shape[-1] // 2
    hh, ww = height + 2 * m, width + 2 * m
    u = torch.rand(hh, ww, generator=generator)
    v = torch.rand(hh, ww, generator=generator)
    seeds = (u < layer.density).float() * (0.5 + 0.5 * v)
    # Circular convolution of size (hh, ww): the wrapped-around part is the first 2m
    # rows/columns; the rest is the valid linear convolution. The kernel is symmetric
    # under a half turn, so convolution and correlation agree.
    spectrum = torch.fft.rfft2(seeds) * torch.fft.rfft2(k, s=(hh, ww))
    streaks = torch.fft.irfft2(spectrum, s=(hh, ww))[2 * m :, 2 * m :]
    r = ((streaks - _BLACK) / (_WHITE - _BLACK)).clamp(0.0, 1.0)[None, None]
    return _gaussian_blur(r, layer.blur).clamp(0.0, 1.0)


def render_rain(clean: Tensor, scene: RainScene, generator: torch.Generator) -> Tensor:
    """Composite ``scene`` onto ``clean`` ``(3, H, W)`` in [0, 1] (steps 2-4 of the module).

    .. math::

        x_0 = J, \\qquad x_{i} = x_{i-1} + \\alpha_i r_i (1 - x_{i-1}), \\qquad
        I = x_n\\, t + A (1 - t)

    Parameters
    ----------
    clean : Tensor
        The clean image :math:`J`, ``(3, H, W)``.
    scene : RainScene
        Layers and veil (:func:`sample_scene`).
    generator : torch.Generator
        CPU generator the drops are drawn from (advanced by the call).

    Returns
    -------
    Tensor
        The rainy image, same shape, dtype and device as ``clean``, in [0, 1].

    Examples
    --------
    >>> J = torch.full((3, 4, 4), 0.5)
    >>> I = render_rain(J, RainScene(transmission=0.5, airlight=(1.0, 1.0, 1.0)),
    ...                 torch.Generator())
    >>> I.unique()
    tensor([0.7500])
    """
    if clean.dim() != 3 or clean.shape[0] != 3:
        raise ValueError(f"render_rain expects a (3, H, W) image, found {tuple(clean.shape)}")
    h, w = clean.shape[-2:]
    x = clean
    for layer in scene.layers:
        r = streak_map(h, w, layer, generator)[0].to(clean.device, clean.dtype)
        x = x + layer.opacity * r * (1.0 - x)
    if scene.transmission < 1.0 or scene.gradient != 0.0:
        rows = (torch.arange(h, dtype=clean.dtype, device=clean.device) + 0.5) / h - 0.5
        t = (scene.transmission + scene.gradient * rows).clamp(0.0, 1.0).view(1, h, 1)
        a = torch.tensor(scene.airlight, dtype=clean.dtype, device=clean.device).view(3, 1, 1)
        x = x * t + a * (1.0 - t)
    return x.clamp(0.0, 1.0)


class ProceduralRainCrops(Dataset[Pair]):
    """Random ``size x size`` crops of clean images, each with its own procedural rain.

    Item ``i`` is a crop of image ``i // samples_per_image`` (random position and
    flips) with a scene from :func:`sample_scene`; everything is drawn from a
    generator seeded with ``(seed, epoch, i)``, so items are reproducible and
    independent of access order; :meth:`set_epoch` draws new crops and new rain.

    Parameters
    ----------
    images : sequence of Tensor
        Clean ``(3, H, W)`` images in [0, 1], each at least ``size`` on both sides.
    size : int
        Crop side.
    samples_per_image : int
        Crops per image per epoch.
    seed : int
        Base seed.
    ranges : RainRanges, optional
        Where the scenes are drawn from.
    flips : bool
        Flip the clean crop horizontally and vertically, each with probability 1/2.

    Examples
    --------
    >>> crops = ProceduralRainCrops([torch.full((3, 40, 40), 0.2)], size=16, samples_per_image=2)
    >>> rainy, clean = crops[1]
    >>> len(crops), rainy.shape, torch.equal(crops[1][0], rainy)
    (2, torch.Size([3, 16, 16]), True)
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        size: int,
        samples_per_image: int = 1,
        seed: int = 0,
        ranges: RainRanges | None = None,
        flips: bool = True,
    ) -> None:
        if len(images) == 0:
            raise ValueError("ProceduralRainCrops needs at least one clean image")
        if size < 1:
            raise ValueError(f"crop size must be positive, found {size}")
        if samples_per_image < 1:
            raise ValueError(f"samples_per_image must be >= 1, found {samples_per_image}")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"clean image {i}: expected (3, H, W), found {tuple(img.shape)}")
            if min(img.shape[-2:]) < size:
                raise ValueError(f"clean image {i} is {img.shape[-2]}x{img.shape[-1]}, "
                                 f"smaller than the crop size {size}")
        self.images = list(images)
        self.size, self.samples_per_image, self.seed = size, samples_per_image, seed
        self.ranges = ranges if ranges is not None else RainRanges()
        self.flips = flips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops and rain of ``epoch`` (same epoch -> same items)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_image * len(self.images)

    def __getitem__(self, index: int) -> Pair:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        img = self.images[index // self.samples_per_image]
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index, 3))
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, (), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (), generator=g))
        clean = img[:, top : top + self.size, left : left + self.size]
        hflip, vflip = (torch.rand(2, generator=g) < 0.5).tolist()
        if self.flips and hflip:
            clean = clean.flip(-1)
        if self.flips and vflip:
            clean = clean.flip(-2)
        return render_rain(clean, sample_scene(g, self.ranges), g), clean


class EpochConcat(ConcatDataset[Pair]):
    """:class:`~torch.utils.data.ConcatDataset` that passes ``set_epoch`` to its parts.

    >>> a = ProceduralRainCrops([torch.rand(3, 8, 8)], size=4)
    >>> both = EpochConcat([a, a]); both.set_epoch(2)
    >>> len(both), a.epoch
    (2, 2)
    """

    def set_epoch(self, epoch: int) -> None:
        """Call ``set_epoch(epoch)`` on every part that has it."""
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)
