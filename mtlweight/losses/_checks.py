"""Input validation and reduction shared by the image losses.

Every public function in :mod:`mtlweight.losses` calls these helpers first, so
that a bad input fails with a message saying what was expected and what was
found, before any convolution or matrix product is attempted.
"""

from __future__ import annotations

import contextlib
from typing import Literal, cast

import torch
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_image(x: object, *, name: str, loss: str) -> Tensor:
    """Check that ``x`` is a real floating-point image batch of shape (B, C, H, W).

    Parameters
    ----------
    x : object
        The value to check.
    name : str
        Argument name used in the error message, e.g. ``"pred"``.
    loss : str
        Name of the calling function, used as the message prefix.

    Returns
    -------
    Tensor
        ``x`` itself, typed as a tensor.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor or not of a real floating-point dtype.
    ValueError
        If ``x`` is not 4-D or has no channel.

    Examples
    --------
    >>> check_image(torch.zeros(2, 3, 8, 8), name="pred", loss="f").shape
    torch.Size([2, 3, 8, 8])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{loss}: expected `{name}` to be a torch.Tensor, found {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"{loss}: expected `{name}` to have a floating-point dtype "
            f"(float16, bfloat16, float32, float64), found {x.dtype}"
        )
    if x.ndim != 4:
        raise ValueError(
            f"{loss}: expected `{name}` of shape (B, C, H, W) (4-D), "
            f"found {x.ndim}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"{loss}: expected `{name}` to have at least one channel, "
            f"found shape {tuple(x.shape)} with C = 0"
        )
    return x


def check_image_pair(pred: object, target: object, *, loss: str) -> tuple[Tensor, Tensor]:
    """Check ``pred`` and ``target`` one by one, then that they match.

    They must have the same shape, dtype and device; nothing is broadcast or
    cast silently (unlike :class:`torch.nn.MSELoss`, which only warns).

    Raises
    ------
    TypeError
        As :func:`check_image`, or if the dtypes differ.
    ValueError
        As :func:`check_image`, or if the shapes or devices differ.

    Examples
    --------
    >>> p, t = check_image_pair(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4), loss="f")
    """
    p = check_image(pred, name="pred", loss=loss)
    t = check_image(target, name="target", loss=loss)
    if p.shape != t.shape:
        raise ValueError(
            f"{loss}: `pred` and `target` must have the same shape, "
            f"found pred {tuple(p.shape)} and target {tuple(t.shape)}"
        )
    if p.dtype != t.dtype:
        raise TypeError(
            f"{loss}: `pred` and `target` must have the same dtype, "
            f"found pred {p.dtype} and target {t.dtype}"
        )
    if p.device != t.device:
        raise ValueError(
            f"{loss}: `pred` and `target` must be on the same device, "
            f"found pred on {p.device} and target on {t.device}"
        )
    return p, t


def check_reduction(reduction: object, *, loss: str) -> Reduction:
    """Return ``reduction`` if it is ``'mean'``, ``'sum'`` or ``'none'``, else raise ValueError.

    Examples
    --------
    >>> check_reduction("sum", loss="f")
    'sum'
    """
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(
            f"{loss}: `reduction` must be one of 'mean', 'sum', 'none', found {reduction!r}"
        )
    return cast(Reduction, reduction)


def reduce(x: Tensor, reduction: Reduction) -> Tensor:
    """Apply ``reduction`` to ``x`` as :class:`torch.nn.MSELoss` does.

    ``'mean'`` averages every element, ``'sum'`` adds them, ``'none'`` returns
    ``x`` unchanged.

    Examples
    --------
    >>> reduce(torch.tensor([1.0, 2.0, 6.0]), "mean")
    tensor(3.)
    """
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which to compute: float32 for half-precision inputs, else ``dtype``.

    Examples
    --------
    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Context with :func:`torch.autocast` off on ``device``, so that ops keep the dtype we chose.

    Under autocast, ``conv2d`` and ``matmul`` would otherwise run in float16/bfloat16
    whatever the input dtype (a patch Gram at 0..255 overflows float16).

    Examples
    --------
    >>> with torch.autocast("cpu", dtype=torch.bfloat16), full_precision(torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    """
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know, such as "meta"
        return contextlib.nullcontext()
