"""Image file I/O: any common image file <-> float32 RGB ``(3, H, W)`` tensor in [0, 1].

Reading handles greyscale (replicated to RGB), palette, alpha (composited onto
white, or dropped), 1-bit, 8-bit, 16-bit and float images; integer images map
``v -> v / (2**bits - 1)``. 16-bit greyscale PNG/TIFF and 16-bit colour TIFF are
read at full precision; 16-bit colour PNG is read by Pillow at 8-bit precision
(ample for de-raining). A file's EXIF orientation is applied on reading, so a
phone photo is always upright. Writing picks the file format from the extension
and stores 8 or 16 bits per channel. Every error names the file.

:func:`read_photo` and :func:`write_photo` keep what de-raining must not change:
the alpha channel, a greyscale file's single channel, the EXIF (without the
orientation tag, since the pixels are now upright) and the ICC colour profile.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "Photo",
    "quantize",
    "read_bit_depth",
    "read_image",
    "read_photo",
    "write_image",
    "write_photo",
]

PathLike = str | Path

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "RGB;16", "RGBA;16"}
_SIXTEEN_BIT_FORMATS = {".png", ".tif", ".tiff"}
_METADATA_FORMATS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}
_ORIENTATION = 0x0112  # the EXIF tags: orientation, the Exif sub-IFD, its pixel width, height
_EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x8769, 0xA002, 0xA003
#: EXIF orientation -> the numpy operation that makes an (H, W, ...) array upright
#: (the same as Pillow's ``ImageOps.exif_transpose``; the tests compare them).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
#: Colour modes whose ICC profile still describes the RGB (or grey) result.
_ICC_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "I;16", "I;16B", "I;16L", "I", "F", "1"}


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
    """Full-precision 16-bit colour TIFF via tifffile (Pillow reads it as 8-bit), upright."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile  # optional: only for 16-bit colour TIFF files

        with tifffile.TiffFile(path) as tif:
            arr = np.asarray(tif.pages[0].asarray())
            tag = tif.pages[0].tags.get(_ORIENTATION)
            orientation = int(tag.value) if tag is not None else 1
    except Exception:  # fall back to Pillow's reading
        return None
    if arr.dtype != np.uint16 or arr.ndim != 3:
        return None
    upright = _UPRIGHT.get(orientation)
    return arr if upright is None else np.ascontiguousarray(upright(arr))


def _png_bit_depth(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _write_png16(
    path: Path, arr: np.ndarray, exif: bytes | None = None, icc_profile: bytes | None = None
) -> None:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit colour PNG).

    ``arr`` is ``(H, W, C)``: grey, grey + alpha, RGB or RGBA; ``exif`` and
    ``icc_profile`` become the ``eXIf`` and ``iCCP`` chunks.
    """
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    extra = b""
    if icc_profile:
        extra += chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc_profile))
    if exif:
        extra += chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
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
    raw, scale, _ = _decode(path)
    return _to_rgb(raw, scale, path, alpha)


def _decode(path: Path) -> tuple[np.ndarray, float, Image.Image]:
    """The upright pixels ``(H, W)`` or ``(H, W, C)``, their full scale, and the opened file."""
    img = _open(path)
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        arr16 = _read_16bit_tiff(path)
        if arr16 is not None:
            return arr16, 65535.0, img
    try:  # (Pillow turns TIFF files itself on loading)
        upright = img.getexif().get(_ORIENTATION, 1) in (None, 1)
        turned = img if upright else ImageOps.exif_transpose(img)  # no copy when upright
    except (ValueError, OSError, SyntaxError) as err:  # a damaged EXIF block
        raise ValueError(f"cannot read image {path}: bad EXIF orientation ({err})") from err
    if mode == "P" or mode == "PA":
        turned = turned.convert("RGBA")
    elif mode == "1":
        turned = turned.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        turned = turned.convert("RGB")
    if turned.mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(turned), 255.0, img
    if turned.mode in _SIXTEEN_BIT_MODES:
        # Mode "I" is 32-bit; PNG greyscale 16-bit also opens as "I" (values <= 65535).
        return np.asarray(turned), 65535.0, img
    if turned.mode == "F":
        return np.asarray(turned, dtype=np.float32), 1.0, img
    try:
        return np.asarray(turned.convert("RGB")), 255.0, img
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot convert image {path} (mode {mode}) to RGB: {err}") from err


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


def write_image(
    img: Tensor,
    path: PathLike,
    *,
    bits: int = 8,
    quality: int = 95,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
) -> None:
    """Write a ``(C, H, W)`` tensor in [0, 1] to ``path``: grey, grey + alpha, RGB or RGBA.

    ``C`` is 1, 2, 3 or 4 (alpha last). The format follows the extension
    (``.png``, ``.jpg``, ``.bmp``, ``.tif``, ...). Values are clipped to [0, 1]
    and rounded to the grid of ``bits`` (8, or 16 for PNG/TIFF); parent folders
    are created. ``exif`` and ``icc_profile`` (raw bytes, as Pillow gives them)
    are stored in PNG, JPEG, WebP and TIFF files.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "out.png")
    >>> x = quantize(torch.rand(3, 6, 4))
    >>> write_image(x, f); bool((read_image(f) == x).all())
    True
    """
    path = Path(path)
    if img.dim() != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"write_image({path}): expected (C, H, W) with C in 1..4, "
                         f"found shape {tuple(img.shape)}")
    if bits not in (8, 16):
        raise ValueError(f"write_image({path}): bits must be 8 or 16, found {bits}")
    suffix = path.suffix.lower()
    if bits == 16 and suffix not in _SIXTEEN_BIT_FORMATS:
        raise ValueError(f"write_image({path}): 16-bit output needs .png or .tif, not {suffix!r}")
    arr = img.detach().float().cpu().clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        k: v for k, v in (("exif", exif), ("icc_profile", icc_profile)) if v
    }
    try:
        if bits == 16:
            a16 = np.round(arr * 65535.0).astype(np.uint16)
            if suffix == ".png":
                _write_png16(path, a16, exif, icc_profile)
            else:
                import imageio.v3 as iio  # optional: only for 16-bit TIFF output

                iio.imwrite(path, a16[:, :, 0] if a16.shape[2] == 1 else a16)
            return
        a8 = np.round(arr * 255.0).astype(np.uint8)
        pil = Image.fromarray(a8[:, :, 0] if a8.shape[2] == 1 else a8)
        options = meta if suffix in _METADATA_FORMATS else {}
        if suffix in (".jpg", ".jpeg", ".webp"):
            options["quality"] = quality
        pil.save(path, **options)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot write image {path}: {err}") from err


@dataclass(frozen=True)
class Photo:
    """An image file as de-raining sees it: the colour, and what to write back with it.

    Attributes
    ----------
    rgb : Tensor
        ``(3, H, W)`` float32 in [0, 1], upright (EXIF orientation applied); a
        greyscale file's channel is replicated; transparent pixels keep their
        stored colour (not composited).
    alpha : Tensor or None
        ``(1, H, W)`` in [0, 1] for a file with transparency.
    grey : bool
        The file has one colour channel: the result is written back as greyscale.
    bits : int
        8, or 16 for a 16-bit PNG/TIFF.
    exif : bytes or None
        The file's EXIF without its orientation tag (the pixels are upright now;
        the pixel width and height it records follow).
    icc_profile : bytes or None
        The file's ICC colour profile, when it describes RGB or grey pixels.
    """

    rgb: Tensor
    alpha: Tensor | None
    grey: bool
    bits: int
    exif: bytes | None
    icc_profile: bytes | None


def read_photo(path: PathLike) -> Photo:
    """Read an image file with its alpha, channel count, bit depth, EXIF and ICC profile.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "la.png")
    >>> Image.new("LA", (5, 2), (200, 10)).save(f)
    >>> p = read_photo(f); p.rgb.shape, p.grey, round(float(p.alpha.max()) * 255)
    (torch.Size([3, 2, 5]), True, 10)
    """
    path = Path(path)
    raw, scale, img = _decode(path)
    hwc = raw[:, :, None] if raw.ndim == 2 else raw
    c = hwc.shape[2]
    pixels = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)).astype(np.float32))
    pixels = (pixels / np.float32(scale)).clamp(0.0, 1.0)
    colour, alpha = (pixels[:-1], pixels[-1:]) if c in (2, 4) else (pixels, None)
    exif = img.getexif()
    if exif.pop(_ORIENTATION, None) is not None and _EXIF_IFD in exif:
        sizes = exif.get_ifd(_EXIF_IFD)  # the pixel size the EXIF records: now upright
        for tag, value in ((_PIXEL_X, colour.shape[-1]), (_PIXEL_Y, colour.shape[-2])):
            if tag in sizes:
                sizes[tag] = value
    icc = img.info.get("icc_profile") if img.mode in _ICC_MODES else None
    bits = read_bit_depth(path) if path.suffix.lower() in _SIXTEEN_BIT_FORMATS else 8
    return Photo(
        rgb=colour.expand(3, -1, -1).contiguous(),
        alpha=alpha,
        grey=colour.shape[0] == 1,
        bits=bits,
        exif=exif.tobytes() if len(exif) else None,
        icc_profile=icc or None,
    )


def write_photo(rgb: Tensor, path: PathLike, like: Photo, *, quality: int = 95) -> None:
    """Write an RGB result ``(3, H, W)`` the way ``like`` was stored.

    A greyscale original gets one channel, the BT.601 luma
    :math:`0.299 R + 0.587 G + 0.114 B` (what Pillow's ``convert("L")`` computes);
    an original with transparency gets its alpha back; bit depth, EXIF (without
    orientation) and ICC profile are kept.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); f, g = os.path.join(d, "a.png"), os.path.join(d, "b.png")
    >>> Image.new("LA", (5, 2), (200, 10)).save(f)
    >>> p = read_photo(f); write_photo(p.rgb, g, p); Image.open(g).mode
    'LA'
    """
    if rgb.shape[0] != 3:
        raise ValueError(f"write_photo({path}): expected (3, H, W), found {tuple(rgb.shape)}")
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)
    channels = [(rgb * luma[:, None, None]).sum(0, keepdim=True) if like.grey else rgb]
    if like.alpha is not None:
        channels.append(like.alpha.to(rgb))
    write_image(torch.cat(channels), path, bits=like.bits, quality=quality,
                exif=like.exif, icc_profile=like.icc_profile)
