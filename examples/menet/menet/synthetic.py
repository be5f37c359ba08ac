"""Synthetic training and test pairs: procedural rain on clean images shipped with scikit-image.

No download: :func:`builtin_images` reads the photographs inside the
scikit-image wheel, and :class:`SyntheticRainPairs` adds rain from
:func:`menet.rain.synthesize_rain`, seeded per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from menet.rain import RainParams, synthesize_rain

__all__ = ["SyntheticRainPairs", "builtin_images"]

Pair = tuple[Tensor, Tensor]
PairTransform = Callable[[Tensor, Tensor], Pair]


#: scikit-image images bundled in its wheel (loaded offline), all natural RGB photographs.
_BUILTIN = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "immunohistochemistry")


def builtin_images() -> list[tuple[str, Tensor]]:
    """Clean RGB photographs shipped inside scikit-image (no download), as ``(name, image)``.

    ``astronaut`` (512x512), ``chelsea`` (300x451), ``coffee`` (400x600),
    ``rocket`` (427x640), ``motorcycle`` (left stereo view, 500x741) and
    ``immunohistochemistry`` (512x512); images are ``(3, H, W)`` float32 in [0, 1].

    Examples
    --------
    >>> imgs = builtin_images()
    >>> [name for name, _ in imgs][:3], imgs[0][1].shape
    (['astronaut', 'chelsea', 'coffee'], torch.Size([3, 512, 512]))
    """
    import skimage.data  # heavy (it loads scikit-image): only when the images are wanted

    out = []
    for name in _BUILTIN:
        if name == "motorcycle":
            arr = getattr(skimage.data, "stereo_motorcycle")()[0]  # noqa: B009 (untyped)
        else:
            arr = getattr(skimage.data, name)()
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0
        out.append((name, x.contiguous()))
    return out


class SyntheticRainPairs(Dataset[Pair]):
    """(rainy, clean) pairs made by :func:`menet.rain.synthesize_rain` on clean images.

    Item ``i`` is clean image ``i % len(images)`` with rain seeded by
    ``(seed, i)``: deterministic per index and seed, and ``repeats > 1`` gives
    each image several different rain patterns.

    Parameters
    ----------
    images : sequence of Tensor or of (name, Tensor)
        Clean ``(3, H, W)`` images in [0, 1] (e.g. :func:`builtin_images`).
    preset : str or RainParams
        Rain preset (``"light"``, ``"heavy"``) or explicit parameters.
    seed : int
        Base seed.
    repeats : int
        Number of rain patterns per image.
    transform : callable, optional
        ``transform(rainy, clean) -> (rainy, clean)``.
    **rain_kwargs
        Overrides passed to :func:`~menet.rain.synthesize_rain` (``density``, ...).

    Examples
    --------
    >>> data = SyntheticRainPairs([torch.full((3, 16, 16), 0.2)], preset="light", seed=3)
    >>> rainy, clean = data[0]
    >>> bool((data[0][0] == rainy).all()), rainy.shape
    (True, torch.Size([3, 16, 16]))
    """

    def __init__(
        self,
        images: Sequence[Tensor] | Sequence[tuple[str, Tensor]],
        preset: str | RainParams = "light",
        seed: int = 0,
        repeats: int = 1,
        transform: PairTransform | None = None,
        **rain_kwargs: float | str,
    ) -> None:
        if len(images) == 0:
            raise ValueError("SyntheticRainPairs needs at least one clean image")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, found {repeats}")
        self.images: list[Tensor] = [
            img[1] if isinstance(img, tuple) else img for img in images
        ]
        self.names: list[str] = [
            img[0] if isinstance(img, tuple) else f"image-{i}" for i, img in enumerate(images)
        ]
        for name, img in zip(self.names, self.images, strict=True):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"clean image {name!r}: expected (3, H, W), found {tuple(img.shape)}"
                )
        self.preset = preset
        self.seed = seed
        self.repeats = repeats
        self.transform = transform
        self.rain_kwargs = rain_kwargs
        synthesize_rain(self.images[0][:, :1, :1].expand(3, 1, 1), preset=preset, seed=0,
                        **rain_kwargs)  # type: ignore[arg-type]  # validate parameters now

    def __len__(self) -> int:
        return self.repeats * len(self.images)

    def __getitem__(self, index: int) -> Pair:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        clean = self.images[index % len(self.images)]
        rainy = synthesize_rain(
            clean, preset=self.preset, seed=self.seed * 1_000_003 + index,
            **self.rain_kwargs,  # type: ignore[arg-type]
        )
        return self.transform(rainy, clean) if self.transform is not None else (rainy, clean)
