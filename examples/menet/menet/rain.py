"""Procedural rain: streaks synthesised on clean images, seeded and reproducible.

The recipe is the classic photo-editing one used to build Rain100L/H-like data:

1. **sparse noise** -- a pixel seeds a drop with probability ``density``; drop
   brightness ``v ~ U(0.5, 1)``;
2. **motion blur** -- the seed map is convolved with a line kernel of ``length``
   and ``width`` pixels, rotated by ``angle`` degrees from vertical (positive
   leans the top to the right); the kernel peaks at 1, so an isolated streak has
   its drop's brightness and overlapping streaks add up;
3. **levels** -- contrast stretch ``r = clip((s - black) / (white - black), 0, 1)``;
4. **blend** -- onto the image, ``screen`` (``1 - (1 - I)(1 - α r)``) or
   ``add`` (``clip(I + α r)``) with ``α = opacity`` (screen is computed as
   ``I + α r (1 - I)``, so ``α = 0`` is exactly the identity), then an optional veil
   ``(1 - haze)·I + haze·airlight`` (heavy rain's mist).

Presets ``"light"`` and ``"heavy"`` are calibrated so that the mean input PSNR
(BT.601 Y, data range 255) over :func:`menet.data.builtin_images` at their
native sizes (300 to 741 px wide) is close to Rain100L's 26.9 dB and Rain100H's
13.6 dB; streak geometry is in pixels, so PSNR barely changes with image size
(the density of streaks per pixel is size-independent).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PRESETS", "RainParams", "blend_rain", "line_kernel", "rain_layer", "synthesize_rain"]

Blend = Literal["screen", "add"]


@dataclass(frozen=True)
class RainParams:
    """Parameters of :func:`synthesize_rain` (see the module docstring for the recipe).

    Attributes
    ----------
    density : float
        Probability that a pixel seeds a drop, in [0, 1].
    length : float
        Streak length in pixels, > 0.
    angle : float
        Streak direction in degrees from vertical (positive: top leans right).
    width : float
        Streak width in pixels, > 0 (anti-aliased).
    opacity : float
        Blend strength α in [0, 1]; 0 leaves the image unchanged (if ``haze`` is 0).
    haze : float
        Veil strength in [0, 1] towards ``airlight``.
    airlight : float
        Veil brightness in [0, 1].
    black, white : float
        Levels: streak values ``<= black`` vanish, ``>= white`` saturate; ``0 <= black < white``.
    blend : {"screen", "add"}
        Blend mode.
    """

    density: float = 0.01
    length: float = 20.0
    angle: float = 10.0
    width: float = 1.0
    opacity: float = 0.8
    haze: float = 0.0
    airlight: float = 0.85
    black: float = 0.05
    white: float = 0.9
    blend: Blend = "screen"

    def __post_init__(self) -> None:
        def unit(name: str) -> None:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"rain parameter {name!r} must be in [0, 1], found {value}")

        for name in ("density", "opacity", "haze", "airlight", "black"):
            unit(name)
        for name in ("length", "width"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"rain parameter {name!r} must be positive, found {value}")
        if not math.isfinite(self.angle):
            raise ValueError(f"rain parameter 'angle' must be finite, found {self.angle}")
        if not self.black < self.white:
            raise ValueError(
                f"rain parameters 'black' < 'white' required, found {self.black} >= {self.white}"
            )
        if self.blend not in ("screen", "add"):
            raise ValueError(
                f"rain parameter 'blend' must be 'screen' or 'add', found {self.blend!r}"
            )


#: Calibrated presets: "light" ≈ Rain100L (26.9 dB Y input PSNR), "heavy" ≈ Rain100H (13.6 dB).
PRESETS: dict[str, RainParams] = {
    "light": RainParams(density=0.0012, length=30.0, angle=8.0, width=1.0, opacity=0.7),
    "heavy": RainParams(
        density=0.005, length=40.0, angle=-12.0, width=2.0, opacity=0.8, haze=0.2
    ),
}


def _params(preset: str | RainParams | None, **overrides: object) -> RainParams:
    if preset is None:
        base = PRESETS["light"]
    elif isinstance(preset, RainParams):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown rain preset {preset!r}; choose from {sorted(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(asdict(base))
    if unknown:
        raise ValueError(f"unknown rain parameter(s) {sorted(unknown)}")
    return replace(base, **given)  # type: ignore[arg-type]


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if seed is not None and generator is not None:
        raise ValueError("give either 'seed' or 'generator', not both")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


def line_kernel(length: float, width: float, angle: float) -> Tensor:
    """Anti-aliased line (streak) kernel with peak 1, shape ``(k, k)``, ``k`` odd.

    .. math::

        K(p) = \\operatorname{clip}\\big(\\tfrac{w+1}{2} - |p \\cdot n|, 0, 1\\big)\\,
               \\operatorname{clip}\\big(\\tfrac{L+1}{2} - |p \\cdot d|, 0, 1\\big)

    where :math:`p` is the pixel offset from the centre (x right, y down),
    :math:`d = (\\sin\\theta, \\cos\\theta)` the streak direction,
    :math:`n = (\\cos\\theta, -\\sin\\theta)` its normal, :math:`L, w` the length
    and width. ``angle`` is :math:`\\theta` in degrees from vertical.

    Examples
    --------
    >>> k = line_kernel(5, 1, 0)
    >>> k.shape, k[:, k.shape[1] // 2].tolist()
    (torch.Size([9, 9]), [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    """
    theta = math.radians(angle)
    half = math.ceil((length + width) / 2) + 1
    r = torch.arange(-half, half + 1, dtype=torch.float32)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    along = dx * math.sin(theta) + dy * math.cos(theta)
    across = dx * math.cos(theta) - dy * math.sin(theta)
    k = (width / 2 + 0.5 - across.abs()).clamp(0, 1) * (length / 2 + 0.5 - along.abs()).clamp(0, 1)
    return k / k.max()


def rain_layer(
    height: int,
    width: int,
    *,
    batch: int = 1,
    preset: str | RainParams | None = "light",
    density: float | None = None,
    length: float | None = None,
    angle: float | None = None,
    streak_width: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Streak map ``r`` in [0, 1] of shape ``(batch, 1, height, width)`` (steps 1-3).

    Parameters are those of :func:`synthesize_rain` (``streak_width`` is its
    ``width``). Random numbers are drawn on the CPU from ``generator`` (or a new
    one seeded with ``seed``; the global RNG if neither), so results do not depend
    on ``device``. For a fixed seed the map is pointwise non-decreasing in
    ``density``.

    Examples
    --------
    >>> r = rain_layer(32, 48, seed=0)
    >>> r.shape, bool(r.min() >= 0), bool(r.max() <= 1)
    (torch.Size([1, 1, 32, 48]), True, True)
    """
    p = _params(preset, density=density, length=length, angle=angle, width=streak_width)
    if height < 1 or width < 1 or batch < 1:
        raise ValueError(f"rain_layer: sizes must be positive, found {batch}x{height}x{width}")
    gen = _generator(seed, generator)
    u = torch.rand(batch, 1, height, width, generator=gen)
    v = torch.rand(batch, 1, height, width, generator=gen)
    seeds = (u < p.density).float() * (0.5 + 0.5 * v)
    k = line_kernel(p.length, p.width, p.angle)
    streaks = F.conv2d(seeds, k[None, None], padding=k.shape[-1] // 2)
    r = ((streaks - p.black) / (p.white - p.black)).clamp(0.0, 1.0)
    return r.to(device) if device is not None else r


def blend_rain(
    clean: Tensor, layer: Tensor, params: RainParams | str | None = None, **overrides: object
) -> Tensor:
    """Blend a streak map onto ``clean`` (step 4); shapes broadcast, result in [0, 1].

    Examples
    --------
    >>> img = torch.full((1, 3, 2, 2), 0.5); r = torch.ones(1, 1, 2, 2)
    >>> blend_rain(img, r, "light", opacity=1.0).unique()
    tensor([1.])
    """
    p = _params(params, **overrides)
    a = p.opacity * layer.to(clean.device, clean.dtype)
    out = clean + a * (1.0 - clean) if p.blend == "screen" else clean + a
    if p.haze > 0:
        out = (1.0 - p.haze) * out + p.haze * p.airlight
    return out.clamp(0.0, 1.0)


def synthesize_rain(
    clean: Tensor,
    *,
    preset: str | RainParams | None = "light",
    density: float | None = None,
    length: float | None = None,
    angle: float | None = None,
    width: float | None = None,
    opacity: float | None = None,
    haze: float | None = None,
    blend: Blend | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Add synthetic rain to ``clean`` of shape ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1].

    Parameters not given take the ``preset``'s values (:data:`PRESETS`;
    ``None`` means ``"light"``); a :class:`RainParams` may be passed as preset.
    Every image of a batch gets its own streaks. Same seed -> same output.

    Parameters
    ----------
    clean : Tensor
        Clean image(s), RGB in [0, 1].
    preset : {"light", "heavy"} or RainParams or None
        Base parameters.
    density, length, angle, width, opacity, haze, blend
        Overrides, see :class:`RainParams`.
    seed : int, optional
        Seed of a fresh CPU generator.
    generator : torch.Generator, optional
        CPU generator to draw from instead (advanced by the call).

    Returns
    -------
    Tensor
        Rainy image(s), same shape, dtype and device as ``clean``, in [0, 1].

    Examples
    --------
    >>> img = torch.full((3, 40, 40), 0.3)
    >>> rainy = synthesize_rain(img, preset="heavy", seed=1)
    >>> rainy.shape, bool((rainy >= img - 1e-6).all())
    (torch.Size([3, 40, 40]), True)
    """
    if clean.dim() not in (3, 4) or clean.shape[-3] != 3:
        raise ValueError(
            f"synthesize_rain expects (3, H, W) or (B, 3, H, W), found shape {tuple(clean.shape)}"
        )
    p = _params(
        preset, density=density, length=length, angle=angle, width=width,
        opacity=opacity, haze=haze, blend=blend,
    )
    batched = clean if clean.dim() == 4 else clean.unsqueeze(0)
    b, _, h, w = batched.shape
    layer = rain_layer(h, w, batch=b, preset=p, seed=seed, generator=generator)
    out = blend_rain(batched, layer, p)
    return out if clean.dim() == 4 else out.squeeze(0)
