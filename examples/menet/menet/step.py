"""One optimisation step of MENET under any :mod:`mtlweight` strategy.

The total loss of a step is

.. math::

    L = \\sum_{t \\in \\{p, e, t\\}} \\operatorname{sg}(w_t)\\, L_t

with :math:`L_p` the pixel MSE, :math:`L_e` the edge-aware loss
(:class:`mtlweight.losses.EdgeAwareLoss`), :math:`L_t` the texture-matching loss
(:class:`mtlweight.losses.TextureMatchingLoss`, 4 x 4 patches) and the weights
:math:`w_t` chosen each step by the strategy (GB, LB, fixed, ...), constants for
the backward pass (:math:`\\operatorname{sg}` = stop-gradient).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import mtlweight as mw
from mtlweight.distributed import all_reduce_mean

__all__ = ["StepResult", "mean_over_ranks", "postfix", "train_step"]


@dataclass
class StepResult:
    """What one :func:`train_step` measured: loss values, weights and the total.

    ``skipped`` is true when the losses were not finite and the step was
    skipped (``skip_nonfinite=True``); ``weights`` is then empty.
    """

    losses: dict[str, float]
    weights: dict[str, float]
    total: float
    skipped: bool = False


def train_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    loss_fns: Mapping[str, nn.Module],
    weighting: mw.Weighting,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    representation: bool = False,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    skip_nonfinite: bool = False,
    clip_grad_norm: float | None = None,
) -> StepResult:
    """One optimisation step: forward, per-task losses, weighting, backward, update.

    Parameters
    ----------
    model : nn.Module
        The network (put in train mode here); ``batch`` is ``(rainy, clean)``,
        each ``(B, 3, H, W)`` on the model's device.
    loss_fns : Mapping[str, nn.Module]
        Loss modules by task name (see :func:`menet.building.build_losses`).
    weighting : mtlweight.Weighting
        Backpropagates with ``weighting.backward(losses)``, the convention of
        every strategy; with a ``scaler``, ``scaler.scale(weighting(losses)).backward()``
        (every strategy's total backpropagates its update, scaled).
    optimizer, scheduler
        Stepped once each (the scheduler per iteration).
    representation : bool
        Pass the features (output of ``last_conv``) as ``representation=``.
    amp_dtype, scaler
        Autocast dtype (``float16``/``bfloat16``; losses in float32) and the
        gradient scaler of float16 training.
    skip_nonfinite : bool
        On a non-finite loss, skip the step instead of raising
        :class:`FloatingPointError` (which names the task): no update, the
        buffers (BatchNorm statistics) restored, the scheduler still advanced
        (the schedule stays a function of the step). Under DDP every rank
        skips together (the weighting's finiteness check is collective).
    clip_grad_norm : float, optional
        Clip the global gradient norm (after unscaling) before the update.

    Returns
    -------
    StepResult
        Unweighted losses, the weights and the total :math:`\\sum_t w_t L_t`.

    Examples
    --------
    >>> from menet.building import build_losses
    >>> from menet.model import MENET
    >>> _ = torch.manual_seed(0); net = MENET(blocks=1, channel_attention=False)
    >>> fns = build_losses(["pixel", "edge"]); w = mw.LossBalance()
    >>> opt = torch.optim.Adam(net.parameters(), 1e-3)
    >>> x = torch.rand(2, 3, 16, 16)
    >>> r = train_step(net, (x, x), fns, w, opt)
    >>> sorted(r.weights), round(sum(r.weights.values()), 6)
    (['edge', 'pixel'], 1.0)
    """
    model.train()
    buffers = [b.detach().clone() for b in model.buffers()] if skip_nonfinite else []
    losses, features = _forward(model, batch, loss_fns, amp_dtype, representation)
    optimizer.zero_grad(set_to_none=True)
    try:
        _backward(weighting, losses, features, scaler)
    except FloatingPointError:
        if not skip_nonfinite:
            raise
        return _skip(model, buffers, optimizer, scheduler, losses)
    _update(model, optimizer, scaler, clip_grad_norm)
    if scheduler is not None:
        scheduler.step()
    return StepResult(
        losses={k: float(v.detach()) for k, v in losses.items()},
        weights=weighting.weights,
        total=sum(weighting.weights[k] * float(v.detach()) for k, v in losses.items()),
    )


def _forward(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    loss_fns: Mapping[str, nn.Module],
    amp_dtype: torch.dtype | None,
    representation: bool,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The losses of the batch (in float32) and, if asked, the features."""
    rainy, clean = batch
    autocast = (
        torch.autocast(rainy.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        if representation:
            out, features = model(rainy, return_features=True)
        else:
            out, features = model(rainy), None
    out = out.float()
    return {name: fn(out, clean) for name, fn in loss_fns.items()}, features


def _backward(
    weighting: mw.Weighting,
    losses: Mapping[str, Tensor],
    features: Tensor | None,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Backpropagate the weighted losses (raises FloatingPointError on a non-finite loss)."""
    if scaler is None:
        # The one convention every strategy supports, gradient-level ones
        # (PCGrad, ...) included: it leaves the right .grad everywhere.
        weighting.backward(dict(losses), representation=features)
    else:
        scaler.scale(weighting(dict(losses), representation=features)).backward()


def _update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_grad_norm: float | None,
) -> None:
    """Clip the gradients (after unscaling) and step the optimizer (through the scaler)."""
    if scaler is not None and clip_grad_norm is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _skip(
    model: nn.Module,
    buffers: list[Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    losses: Mapping[str, Tensor],
) -> StepResult:
    """Undo a non-finite step: restore the buffers, drop the gradients, advance the schedule."""
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        with warnings.catch_warnings():  # "scheduler stepped before the optimizer": intended
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return StepResult(
        losses={k: float(v.detach()) for k, v in losses.items()},
        weights={},
        total=float("nan"),
        skipped=True,
    )


def mean_over_ranks(r: StepResult) -> StepResult:
    """``r`` with its loss values and total averaged over the processes (a collective)."""
    names = list(r.losses)
    local = torch.tensor([r.losses[k] for k in names] + [r.total], dtype=torch.float64)
    values = all_reduce_mean(local).tolist()
    losses = dict(zip(names, values[:-1], strict=True))
    return dataclasses.replace(r, losses=losses, total=values[-1])


def postfix(r: StepResult) -> str:
    """The status line under the training bar: the weights first, then the losses.

    >>> postfix(StepResult({"pixel": 0.0123, "edge": 0.5}, {"pixel": 0.9, "edge": 0.1}, 0.06))
    'weights pixel 0.90 edge 0.10 | losses pixel 0.0123 edge 0.5'
    """
    weights = " ".join(f"{n} {v:.2f}" for n, v in r.weights.items())
    losses = " ".join(f"{n} {v:.3g}" for n, v in r.losses.items())
    return f"weights {weights} | losses {losses}"
