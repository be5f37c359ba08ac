"""Image file I/O: any common image file <-> float32 RGB ``(3, H, W)`` tensor in [0, 1].

Reading handles greyscale (replicated to RGB), palette, alpha (composited onto
white, or dropped), 1-bit, 8-bit, 16-bit and float images; integer images map
``v -> v / (2**bits - 1)``. 16-bit greyscale PNG/TIFF and 16-bit colour TIFF are
read at full precision; 16-bit colour PNG is read by Pillow at 8-bit precision
(ample for de-raining). Writing picks the file
format from the extension and stores 8 or 16 bits per channel. Every error names
the file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["quantize", "read_bit_depth", "read_image", "write_image"]

PathLike = str | Path

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "RGB;16", "RGBA;16"}
_SIXTEEN_BIT_FORMATS = {".png", ".tif", ".tiff"}


def quantize(x: Tensor, bits: int = 8) -> Tensor:
    """Snap [0, 1] values to the ``bits``-bit grid, as saving to an image file does.

    .. math::

        q(x) = \\operatorname{round}\\big(\\operatorname{clip}(x, 0, 1)\\,(2^b - 1)\\big)
               / (2^b - 1)

    Examples
    --------
    >>> quantize(torch.tensor([0.0, 0.5, 1.2]))
    tensor([0.0000, 0.5020, 1.0000])
    """
    levels = float(2**bits - 1)
    return torch.round(x.clamp(0.0, 1.0) * levels) / levels


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as err:  # not an OSError
        raise ValueError(
            f"cannot read image {path}: it is larger than Pillow's safety limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels ({err})"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return img


def _read_16bit_tiff(path: Path) -> np.ndarray | None:
    """Full-precision 16-bit colour TIFF via imageio/tifffile (Pillow reads it as 8-bit)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import imageio.v3 as iio  # optional: only for 16-bit colour TIFF files

        arr = np.asarray(iio.imread(path))
    except Exception:  # fall back to Pillow's reading
        return None
    return arr if arr.dtype == np.uint16 and arr.ndim == 3 else None


def _png_bit_depth(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit colour PNG)."""
    h, w, c = arr.shape
    colour_type = {1: 0, 3: 2}[c]
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def read_bit_depth(path: PathLike) -> int:
    """Bits per channel of an image file: 16 for 16-bit PNG/TIFF, else 8.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> write_image(torch.rand(3, 4, 4), f, bits=16); read_bit_depth(f)
    16
    """
    path = Path(path)
    img = _open(path)
    if img.mode in _SIXTEEN_BIT_MODES:
        return 16
    png_depth = _png_bit_depth(path)
    if png_depth is not None:
        return 16 if png_depth == 16 else 8
    return 16 if _read_16bit_tiff(path) is not None else 8


def read_image(
    path: PathLike, *, alpha: Literal["composite", "drop"] = "composite"
) -> Tensor:
    """Read an image file into a float32 RGB tensor ``(3, H, W)`` in [0, 1].

    Parameters
    ----------
    path : str or Path
        Any format Pillow reads (PNG, JPEG, BMP, TIFF, GIF, WebP, ...).
    alpha : {"composite", "drop"}
        Transparent images are composited onto white (``rgb·a + (1 - a)``), or
        their alpha channel is ignored.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing or unreadable file (the message names it).

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "grey.png")
    >>> Image.new("L", (5, 2), 255).save(f)
    >>> x = read_image(f); x.shape, x.dtype, float(x.min())
    (torch.Size([3, 2, 5]), torch.float32, 1.0)
    """
    if alpha not in ("composite", "drop"):
        raise ValueError(f"alpha must be 'composite' or 'drop', found {alpha!r}")
    path = Path(path)
    img = _open(path)
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        arr16 = _read_16bit_tiff(path)
        if arr16 is not None:
            return _to_rgb(arr16, 65535.0, path, alpha)
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        return _to_rgb(np.asarray(img), 255.0, path, alpha)
    if img.mode in _SIXTEEN_BIT_MODES:
        # Mode "I" is 32-bit; PNG greyscale 16-bit also opens as "I" (values <= 65535).
        return _to_rgb(np.asarray(img), 65535.0, path, alpha)
    if img.mode == "F":
        return _to_rgb(np.asarray(img, dtype=np.float32), 1.0, path, alpha)
    try:
        rgb = np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot convert image {path} (mode {mode}) to RGB: {err}") from err
    return _to_rgb(rgb, 255.0, path, alpha)


def _to_rgb(raw: np.ndarray, scale: float, path: Path, alpha: str) -> Tensor:
    """(H, W) or (H, W, C), C in {1, 2, 3, 4} (grey, grey+alpha, RGB, RGBA) -> (3, H, W).

    Values are divided by ``scale``; the channel transpose happens on the raw
    (small) integers, before the conversion to float.
    """
    chw = raw[None] if raw.ndim == 2 else np.ascontiguousarray(raw.transpose(2, 0, 1))
    x = torch.from_numpy(chw.astype(np.float32) / np.float32(scale))
    c = x.shape[0]
    if c in (2, 4):
        colour, a = x[:-1], x[-1:]
        x = colour * a + (1.0 - a) if alpha == "composite" else colour
    elif c not in (1, 3):
        raise ValueError(f"image {path} has {c} channels; expected 1 to 4")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if scale == 1.0:  # float images may hold values outside [0, 1]
        x = x.clamp(0.0, 1.0)
    return x.contiguous()


def write_image(img: Tensor, path: PathLike, *, bits: int = 8, quality: int = 95) -> None:
    """Write a ``(3, H, W)`` (or ``(1, H, W)``) tensor in [0, 1] to ``path``.

    The format follows the extension (``.png``, ``.jpg``, ``.bmp``, ``.tif``,
    ...). Values are clipped to [0, 1] and rounded to the grid of ``bits``
    (8, or 16 for PNG/TIFF); parent folders are created.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "out.png")
    >>> x = quantize(torch.rand(3, 6, 4))
    >>> write_image(x, f); bool((read_image(f) == x).all())
    True
    """
    path = Path(path)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"write_image({path}): expected (3, H, W) or (1, H, W), "
                         f"found shape {tuple(img.shape)}")
    if bits not in (8, 16):
        raise ValueError(f"write_image({path}): bits must be 8 or 16, found {bits}")
    suffix = path.suffix.lower()
    if bits == 16 and suffix not in _SIXTEEN_BIT_FORMATS:
        raise ValueError(f"write_image({path}): 16-bit output needs .png or .tif, not {suffix!r}")
    arr = img.detach().float().cpu().clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if bits == 16:
            a16 = np.round(arr * 65535.0).astype(np.uint16)
            if suffix == ".png":
                _write_png16(path, a16)
            else:
                import imageio.v3 as iio  # optional: only for 16-bit TIFF output

                iio.imwrite(path, a16[:, :, 0] if a16.shape[2] == 1 else a16)
            return
        a8 = np.round(arr * 255.0).astype(np.uint8)
        pil = Image.fromarray(a8[:, :, 0] if a8.shape[2] == 1 else a8)
        if suffix in (".jpg", ".jpeg", ".webp"):
            pil.save(path, quality=quality)
        else:
            pil.save(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot write image {path}: {err}") from err
