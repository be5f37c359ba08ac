"""De-rain image files with a trained MENET, tile by tile for large photos.

A photo larger than ``tile`` pixels on a side is cut into overlapping
``tile x tile`` windows, each is run through the network on its own, and the
outputs are blended with a separable weight that ramps smoothly across each
overlap (a raised-cosine / Hann ramp, or a linear one):

.. math::

    \\hat B(p) = \\frac{\\sum_k w_k(p)\\, f(O_k)(p)}{\\sum_k w_k(p)}, \\qquad
    w_k(p) = r_k(p_y)\\, r_k(p_x)

where :math:`O_k` is tile :math:`k` of the input, :math:`f` the network and
:math:`r_k` equals 1 inside the tile, falls from 1 to 0 across each overlap
with a neighbour (:math:`\\sin^2` for Hann) and is 1 up to the image border.
Adjacent ramps sum to 1, so a model that acts on each pixel independently is
reproduced exactly, and memory stays bounded by one tile.

MENET in eval mode is translation-equivariant (BatchNorm uses its running
statistics) except within its receptive field of a tile edge, where the tile
sees padding instead of the neighbouring pixels, and except for channel
attention, whose global average pool summarises the whole tile. The blend
gives those tile-edge pixels a weight near zero, so no seam is visible; the
tests bound the difference between tiled and untiled output.

>>> x = torch.rand(1, 3, 40, 50)
>>> bool(torch.equal(apply_tiled(lambda t: t * 2, x, tile=16, overlap=4), x * 2))
True
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .images import read_photo, write_photo
from .model import pad_to_multiple

__all__ = [
    "IMAGE_SUFFIXES",
    "DerainReport",
    "apply_tiled",
    "collect_inputs",
    "count_tiles",
    "derain_files",
    "derain_image",
    "tile_spans",
]

#: Tile alignment: MENET's total downsampling (channel attention works at 1/16).
_ALIGN = 16

#: File extensions treated as images when a folder is given.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def tile_spans(size: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    r"""Start/stop of evenly spread tiles covering ``[0, size)``, overlapping by >= ``overlap``.

    With side :math:`S`, tile :math:`T` and overlap :math:`v`, the smallest
    :math:`n \ge \lceil (S - v) / (T - v) \rceil` is used whose starts
    :math:`a \cdot \operatorname{round}(k (S - T) / ((n - 1) a))` (multiples of
    ``align`` :math:`a`, the last one :math:`S - T`) keep every overlap
    :math:`\ge v`. A side no longer than the tile gives one span.

    >>> tile_spans(100, 40, 10)
    [(0, 40), (30, 70), (60, 100)]
    >>> tile_spans(30, 40, 10)
    [(0, 30)]
    >>> tile_spans(96, 48, 16, align=16)
    [(0, 48), (32, 80), (48, 96)]
    """
    if tile < 1 or overlap < 0 or overlap >= tile or align < 1:
        raise ValueError(
            f"need tile >= 1, 0 <= overlap < tile and align >= 1; found tile={tile}, "
            f"overlap={overlap}, align={align}"
        )
    if size <= tile:
        return [(0, size)]
    if tile - overlap < align:
        raise ValueError(
            f"tiles must advance by at least align={align} pixels: need tile - overlap >= "
            f"{align}; found tile={tile}, overlap={overlap}"
        )
    n = math.ceil((size - overlap) / (tile - overlap))
    while True:
        starts = [align * round(k * (size - tile) / ((n - 1) * align)) for k in range(n)]
        starts[-1] = size - tile
        starts = sorted(set(starts))
        if all(b - a <= tile - overlap for a, b in itertools.pairwise(starts)):
            return [(s, s + tile) for s in starts]
        n += 1


def _ramp(length: int, kind: str, *, dtype: torch.dtype) -> Tensor:
    """Rising ramp over ``length`` samples, at sample centres, strictly inside (0, 1)."""
    t = (torch.arange(length, dtype=dtype) + 0.5) / length
    if kind == "hann":
        return torch.sin(0.5 * math.pi * t) ** 2
    if kind == "linear":
        return t
    raise ValueError(f"window must be 'hann' or 'linear'; found {kind!r}")


def _window_1d(spans: list[tuple[int, int]], k: int, kind: str, dtype: torch.dtype) -> Tensor:
    """Blend weights of tile ``k`` along one axis: ramps on the sides shared with neighbours."""
    start, stop = spans[k]
    w = torch.ones(stop - start, dtype=dtype)
    if k > 0:
        ov = spans[k - 1][1] - start
        w[:ov] = _ramp(ov, kind, dtype=dtype)
    if k + 1 < len(spans):
        ov = stop - spans[k + 1][0]
        w[stop - start - ov :] = w[stop - start - ov :] * _ramp(ov, kind, dtype=dtype).flip(0)
    return w


def apply_tiled(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    *,
    tile: int = 512,
    overlap: int = 32,
    window: str = "hann",
    align: int = 1,
    on_tile: Callable[[], object] | None = None,
) -> Tensor:
    """Apply an image-to-image ``fn`` tile by tile and blend the tiles seamlessly.

    Parameters
    ----------
    fn : callable
        Maps ``(B, C, h, w)`` to ``(B, C', h, w)`` (same spatial size).
    image : Tensor
        ``(B, C, H, W)``.
    tile : int
        Tile side in pixels (tiles are ``min(tile, H) x min(tile, W)``).
    overlap : int
        Minimum overlap between neighbouring tiles; the blend ramps across it.
    window : {"hann", "linear"}
        Shape of the ramp.
    align : int
        Tile starts are multiples of ``align`` (a network that downsamples by
        ``align`` is translation-equivariant only for such shifts).
    on_tile : callable, optional
        Called after each tile (e.g. to advance a progress bar).

    Returns
    -------
    Tensor
        ``(B, C', H, W)`` in ``image``'s dtype and device. Blending is done in
        float64, so a pointwise ``fn`` is reproduced exactly.
    """
    if image.dim() != 4:
        raise ValueError(f"apply_tiled expects (B, C, H, W); found shape {tuple(image.shape)}")
    _, _, h, w = image.shape
    ys, xs = tile_spans(h, tile, overlap, align), tile_spans(w, tile, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        whole = fn(image)
        if on_tile is not None:
            on_tile()
        return whole
    acc: Tensor | None = None
    norm = torch.zeros(h, w, dtype=torch.float64, device=image.device)
    wy = [_window_1d(ys, i, window, torch.float64).to(image.device) for i in range(len(ys))]
    wx = [_window_1d(xs, j, window, torch.float64).to(image.device) for j in range(len(xs))]
    for i, (y0, y1) in enumerate(ys):
        for j, (x0, x1) in enumerate(xs):
            out = fn(image[:, :, y0:y1, x0:x1])
            if out.shape[-2:] != (y1 - y0, x1 - x0):
                raise ValueError(
                    f"apply_tiled: fn changed the tile size from {(y1 - y0, x1 - x0)} to "
                    f"{tuple(out.shape[-2:])}"
                )
            if acc is None:
                acc = torch.zeros(
                    out.shape[0], out.shape[1], h, w, dtype=torch.float64, device=image.device
                )
            weight = wy[i][:, None] * wx[j][None, :]
            acc[:, :, y0:y1, x0:x1] += out.double() * weight
            norm[y0:y1, x0:x1] += weight
            if on_tile is not None:
                on_tile()
    assert acc is not None
    return (acc / norm).to(image.dtype)


def derain_image(
    model: nn.Module,
    image: Tensor,
    *,
    tile: int | None = 512,
    overlap: int = 64,
    window: str = "hann",
    on_tile: Callable[[], object] | None = None,
) -> Tensor:
    """De-rain one image ``(3, H, W)`` or a batch ``(B, 3, H, W)`` in [0, 1].

    Runs ``model`` in eval mode without gradients on the model's device, in
    tiles of ``tile`` pixels (``None`` or 0: the whole image at once), and
    returns the result on ``image``'s device with ``image``'s shape.
    ``on_tile`` is called after each tile (:func:`count_tiles` of them).

    The image is first reflect-padded to multiples of 16 exactly as
    :class:`~menet.model.MENET` pads it itself, and tiles start at multiples of
    16 (``tile`` is rounded down to one): MENET downsamples by 4 (16 in channel
    attention), so it is translation-equivariant only for such shifts, and the
    tiles at the bottom/right border then see the same padding as the whole image.

    >>> from menet.model import MENET
    >>> net = MENET(blocks=1).eval()
    >>> derain_image(net, torch.rand(3, 40, 24), tile=32, overlap=8).shape
    torch.Size([3, 40, 24])
    """
    single = image.dim() == 3
    x = image[None] if single else image
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"derain_image expects (3, H, W) or (B, 3, H, W); found {tuple(image.shape)}"
        )
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = x.device

    def run(t: Tensor) -> Tensor:
        y: Tensor = model(t.to(device))
        return y.to(x.device).float()

    with torch.inference_mode():
        h, w = x.shape[-2:]
        if tile and max(h, w) > tile:
            side = max(_ALIGN, tile - tile % _ALIGN)
            if not 0 <= overlap <= side - _ALIGN:
                raise ValueError(
                    f"overlap must be in [0, tile - {_ALIGN}]; found overlap={overlap}, "
                    f"tile={side} (tile rounded down to a multiple of {_ALIGN})"
                )
            padded = pad_to_multiple(x, _ALIGN)
            y = apply_tiled(run, padded, tile=side, overlap=overlap, window=window, align=_ALIGN,
                            on_tile=on_tile)
            y = y[..., :h, :w]
        else:
            y = run(x)
            if on_tile is not None:
                on_tile()
    return y[0] if single else y


def count_tiles(h: int, w: int, tile: int | None = 512, overlap: int = 64) -> int:
    """How many tiles :func:`derain_image` runs for an ``h x w`` image.

    >>> count_tiles(300, 200, tile=None), count_tiles(1000, 700, tile=512, overlap=64)
    (1, 6)
    """
    if not tile or max(h, w) <= tile:
        return 1
    side = max(_ALIGN, tile - tile % _ALIGN)
    ph, pw = (-(-n // _ALIGN) * _ALIGN for n in (h, w))
    return len(tile_spans(ph, side, overlap, _ALIGN)) * len(tile_spans(pw, side, overlap, _ALIGN))


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """Expand files and folders into ``(input file, output path relative to out dir)``.

    A file keeps its name; a folder contributes its image files (recursively,
    by :data:`IMAGE_SUFFIXES`) at their path relative to the folder. Paths that
    don't exist are kept, so that :func:`derain_files` reports them.
    """
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            pairs += [(f, f.relative_to(p)) for f in files]
        else:
            pairs.append((p, Path(p.name)))
    return pairs


#: What :func:`derain_files` does with a result that already exists.
Existing = Literal["fail", "skip", "overwrite"]


@dataclass
class DerainReport:
    """Files written, skipped (results already there) and failed (with the reason)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed


def _image_size(path: Path) -> tuple[int, int]:
    """``(h, w)`` from the file's header (no decoding); ``(1, 1)`` when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # reported when the file is really read
        return 1, 1


def derain_files(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    tile: int | None = 512,
    overlap: int = 64,
    quality: int = 95,
    stderr: TextIO | None = None,
    progress: bool = False,
    existing: Existing = "fail",
) -> DerainReport:
    """De-rain image files and folders into ``out_dir``, same size, format and metadata.

    PNG stays PNG (16-bit PNG/TIFF stay 16-bit), JPEG stays JPEG (``quality``),
    and so on by extension. Photos are de-rained upright (EXIF orientation
    applied) and written upright with their other EXIF and ICC profile; a
    greyscale file is written back as greyscale, and a transparent one gets
    its alpha channel back (the colour is de-rained, the alpha kept).
    A file that can't be read or written is reported by name on ``stderr``
    and skipped; the others are still processed. A result that already exists
    fails (``existing="fail"``), is kept (``"skip"``) or is replaced
    (``"overwrite"``). The progress bar counts tiles, so it moves within a
    large image.

    Returns
    -------
    DerainReport
        ``written`` and ``skipped`` output paths and ``failed`` ``(input, reason)`` pairs.
    """
    if existing not in ("fail", "skip", "overwrite"):
        raise ValueError(f"existing must be 'fail', 'skip' or 'overwrite'; found {existing!r}")
    err = stderr if stderr is not None else sys.stderr
    out = Path(out_dir)
    report = DerainReport()
    jobs = collect_inputs(inputs)
    tiles = [count_tiles(*_image_size(src), tile, overlap) if progress else 1 for src, _ in jobs]
    bar = tqdm(total=sum(tiles), disable=not progress, desc="derain", unit="tile",
               file=sys.stderr, dynamic_ncols=True)
    targets: dict[Path, Path] = {}
    with bar:
        for (src, rel), n in zip(jobs, tiles, strict=True):
            dst = out / rel
            done = bar.n
            bar.set_postfix_str(src.name, refresh=False)
            try:
                if dst in targets:
                    raise ValueError(f"output {dst} would overwrite the result of {targets[dst]}")
                if dst.exists() and src.exists() and dst.resolve() == src.resolve():
                    raise ValueError(f"output {dst} is the input file itself; choose another --out")
                if dst.exists() and existing == "skip":
                    report.skipped.append(dst)
                    bar.update(n)
                    continue
                if dst.exists() and existing == "fail":
                    raise ValueError(
                        f"output {dst} already exists (--force replaces it, --skip-existing "
                        "keeps it)"
                    )
                photo = read_photo(src)
                result = derain_image(model, photo.rgb, tile=tile, overlap=overlap,
                                      on_tile=lambda: bar.update(1))
                write_photo(result, dst, photo, quality=quality)
            except (OSError, ValueError, RuntimeError) as exc:
                message = str(exc) if str(src) in str(exc) else f"{src}: {exc}"
                report.failed.append((src, message))
                tqdm.write(f"menet derain: failed: {message}", file=err)
                continue
            finally:
                bar.update(max(0, done + n - bar.n))  # a file's tiles, however it ended
            targets[dst] = src
            report.written.append(dst)
    return report
