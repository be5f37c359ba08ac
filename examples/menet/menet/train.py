"""Train MENET with any :mod:`mtlweight` strategy: plain functions over a config.

The recipe follows the paper and its code (``REFERENCE-FACTS.md``): Adam
(β = 0.9, 0.999, ε = 1e-8), learning rate 1e-3 divided by 10 once, at 40 % of
training (the original's "x0.1 at epoch 40 of 100"), batches of 20 patches,
ten 224 x 224 crops per image. The total loss of a step is

.. math::

    L = \\sum_{t \\in \\{p, e, t\\}} \\operatorname{sg}(w_t)\\, L_t

with :math:`L_p` the pixel MSE, :math:`L_e` the edge-aware loss
(:class:`mtlweight.losses.EdgeAwareLoss`), :math:`L_t` the texture-matching loss
(:class:`mtlweight.losses.TextureMatchingLoss`, 4 x 4 patches) and the weights
:math:`w_t` chosen each step by the strategy (GB, LB, fixed, ...).

Reproducibility: the model is initialised from ``seed``; the order of the
patches in epoch ``e`` is a permutation drawn from ``(seed, e)``, and the
DataLoader's worker seeds come from ``(seed, e)`` too, so a run resumed at an
epoch boundary replays exactly the batches of an uninterrupted run. A
checkpoint (model, optimizer, scheduler, weighting, AMP scaler, every global
RNG state, step, epoch, config) is written atomically after every epoch.

>>> cfg = TrainConfig(synthetic="light", steps=1, patch_size=32, batch_size=2)
>>> cfg.variant, cfg.weighting, cfg.losses
('shallow-ca', 'gb', ('pixel', 'edge', 'texture'))
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

import mtlweight as mw

from .checkpoint import (
    capture_rng_state,
    export_weights,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import ShardedEpochSampler, barrier, on_rank0
from .distributed import cleanup as dist_cleanup
from .distributed import setup as dist_setup
from .model import MENET, VARIANTS

__all__ = [
    "LOSS_NAMES",
    "EpochSampler",
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "build_dataset",
    "build_losses",
    "build_weighting",
    "resolve_device",
    "train",
    "train_step",
]

#: Loss names understood by :func:`build_losses`.
LOSS_NAMES = ("pixel", "edge", "texture")

#: Config fields that may change between a run and its ``--resume`` (they do
#: not change the computation).
_RESUME_MUTABLE = frozenset(
    {"out", "resume", "workers", "device", "progress", "cache", "compile", "skip_nonfinite"}
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint).

    Parameters
    ----------
    out : str
        Output directory: ``last.ckpt``, ``log.csv``, ``model.safetensors``,
        ``model.json``, ``config.json`` and the plots.
    data : str or list of str, optional
        A paired folder (see :class:`menet.data.PairedFolder`), or several,
        whose pairs are used together (``split``/``ids`` select the same ids
        in each, as with Rain100L and Rain100H).
    split, split_key : str
        JSON split file and the key of its id list (e.g. ``"train"``).
    ids : list of int, optional
        Explicit pair ids (instead of ``split``).
    synthetic : {"light", "heavy"}, optional
        Train on the built-in clean images with synthetic rain instead of ``data``.
    synthetic_images : list of str, optional
        Names of the built-in images to use (default: all of them); the demo
        holds some out for evaluation.
    synthetic_seed, synthetic_repeats : int
        Seed of the synthetic rain, and rain patterns per image.
    patches : {"tencrop", "random"}
        Ten fixed crops per image (the paper), or random crops.
    patch_size : int
        Side of the square patches (paper: 224).
    patches_per_image : int
        Random crops per image per epoch (``patches="random"`` only).
    batch_size : int
        Patches per step (paper: 20). Under ``torchrun`` this is the global
        batch: each of the ``N`` processes takes ``batch_size / N`` of them.
    losses : tuple of str
        Subset of :data:`LOSS_NAMES`, in order.
    weighting : str
        Any name of :func:`mtlweight.available` (``"gb"``, ``"lb"``, ``"fixed"``, ...).
    weights : dict, optional
        Weights of ``weighting="fixed"`` by loss name (missing ones default to 1).
    gb_shared : {"last_conv", "all", "representation"}
        What gradient-based strategies take norms over: the final conv's
        parameters (the original), every model parameter, or the output of the
        final conv (``representation=features``).
    weighting_options : dict
        Extra keyword options for the strategy's constructor.
    variant : str
        Key of :data:`menet.model.VARIANTS`.
    zero_init_residual : bool
        Initialise ``model.last_conv`` to zero, so the network starts as the
        identity (output = input) and training only has to learn the rain
        layer. Not in the paper (which uses fan-in scaling everywhere); it
        makes short runs beat the input PSNR much sooner.
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    amp : bool
        Mixed precision: float16 autocast with a gradient scaler on CUDA,
        bfloat16 autocast (no scaler) on CPU.
    epochs, steps : int, optional
        Training length; ``steps`` (optimizer steps) wins when both are set.
    seed : int
        Seed of initialisation, data order and crops.
    lr : float
        Initial learning rate (paper: 1e-3).
    lr_milestone : float
        Fraction of the total steps after which the rate is divided by 10
        (``lr_schedule="step"``).
    lr_schedule : {"step", "cosine"}
        One division by 10 at ``lr_milestone`` (the paper), or cosine decay
        from ``lr`` to 0 over the run, stepped every iteration.
    clip_grad_norm : float, optional
        Clip the global gradient norm of the model's parameters to this value
        before each optimizer step (not in the paper).
    texture_normalize : bool
        Texture loss as the mean over Gram entries (``True``, the library's
        default) or their sum (``False``, :math:`(CK^2)^2 = 2304` times larger);
        see :func:`mtlweight.functional.texture_matching_loss`.
    workers : int
        DataLoader worker processes.
    resume : bool
        Continue from ``<out>/last.ckpt``.
    dry_run : bool
        Run a single step (still writes the outputs).
    progress : bool
        Show a tqdm progress bar.
    cache : bool
        Keep decoded images in memory (passed to the datasets).
    compile : str, optional
        Compile the model with ``torch.compile(backend=compile)`` (e.g.
        ``"inductor"``, or ``"aot_eager"`` where no C++ compiler is present);
        the weighting runs eagerly on its outputs. Not with
        ``gb_shared="representation"`` (the features would be an output of the
        same graph as the prediction, and no loss would reach them).
    skip_nonfinite : bool
        Skip a step whose losses are not finite (no update; BatchNorm
        statistics restored), count it and go on, instead of stopping with
        :class:`FloatingPointError` naming the step and the task.
    clip_grad_norm : float, optional
        Clip the global norm of the model's gradients to this value before the
        optimizer step (after unscaling, with a ``scaler``).
    """

    out: str = "runs/menet"
    data: str | list[str] | None = None
    split: str | None = None
    split_key: str = "train"
    ids: list[int] | None = None
    synthetic: str | None = None
    synthetic_images: list[str] | None = None
    synthetic_seed: int = 0
    synthetic_repeats: int = 1
    patches: str = "tencrop"
    patch_size: int = 224
    patches_per_image: int = 10
    batch_size: int = 20
    losses: tuple[str, ...] = LOSS_NAMES
    weighting: str = "gb"
    weights: dict[str, float] | None = None
    gb_shared: str = "last_conv"
    weighting_options: dict[str, Any] = field(default_factory=dict)
    variant: str = "shallow-ca"
    zero_init_residual: bool = False
    device: str = "auto"
    amp: bool = False
    epochs: int | None = 100
    steps: int | None = None
    seed: int = 0
    lr: float = 1e-3
    lr_milestone: float = 0.4
    lr_schedule: str = "step"
    clip_grad_norm: float | None = None
    texture_normalize: bool = True
    workers: int = 0
    resume: bool = False
    dry_run: bool = False
    progress: bool = True
    cache: bool = True
    compile: str | None = None
    skip_nonfinite: bool = False

    def __post_init__(self) -> None:
        self.losses = tuple(self.losses)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option."""
        if isinstance(self.data, list | tuple):
            if not self.data:
                raise ValueError("data: give at least one folder")
            self.data = self.data[0] if len(self.data) == 1 else [str(d) for d in self.data]
        if (self.data is None) == (self.synthetic is None):
            raise ValueError("give exactly one data source: data=DIR or synthetic='light'|'heavy'")
        if self.synthetic is not None and self.synthetic not in ("light", "heavy"):
            raise ValueError(f"synthetic must be 'light' or 'heavy'; found {self.synthetic!r}")
        if self.split is not None and self.ids is not None:
            raise ValueError("give either split (with split_key) or ids, not both")
        if self.patches not in ("tencrop", "random"):
            raise ValueError(f"patches must be 'tencrop' or 'random'; found {self.patches!r}")
        for name, value in (
            ("patch_size", self.patch_size),
            ("batch_size", self.batch_size),
            ("patches_per_image", self.patches_per_image),
            ("synthetic_repeats", self.synthetic_repeats),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; found {value}")
        if self.patch_size % 4:
            raise ValueError(
                f"patch_size must be a multiple of 4 (texture loss uses 4x4 patches); "
                f"found {self.patch_size}"
            )
        if not self.losses:
            raise ValueError("at least one loss is needed")
        unknown = [n for n in self.losses if n not in LOSS_NAMES]
        if unknown or len(set(self.losses)) != len(self.losses):
            raise ValueError(
                f"losses must be distinct names from {LOSS_NAMES}; found {list(self.losses)}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose from {sorted(VARIANTS)}")
        if self.gb_shared not in ("last_conv", "all", "representation"):
            raise ValueError(
                "gb_shared must be 'last_conv', 'all' or 'representation'; "
                f"found {self.gb_shared!r}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; found {self.device!r}")
        if self.steps is None and self.epochs is None:
            raise ValueError("give epochs or steps")
        if (self.steps is not None and self.steps < 1) or (
            self.epochs is not None and self.epochs < 1
        ):
            raise ValueError(f"epochs/steps must be >= 1; found {self.epochs}/{self.steps}")
        if not 0.0 < self.lr:
            raise ValueError(f"lr must be positive; found {self.lr}")
        if not 0.0 <= self.lr_milestone <= 1.0:
            raise ValueError(f"lr_milestone must be in [0, 1]; found {self.lr_milestone}")
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine'; found {self.lr_schedule!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive; found {self.clip_grad_norm}")
        if self.compile is not None and self.gb_shared == "representation":
            raise ValueError(
                "compile cannot be combined with gb_shared='representation': the features "
                "and the prediction would be outputs of one compiled graph, so no loss reaches "
                "the features; use gb_shared='last_conv' or 'all'"
            )
        if self.weights is not None:
            extra = [n for n in self.weights if n not in self.losses]
            if extra:
                raise ValueError(
                    f"weights name loss {extra[0]!r}, which is not among losses {list(self.losses)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (JSON- and weights-only-safe)."""
        d = dataclasses.asdict(self)
        d["losses"] = list(self.losses)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**dict(d))


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


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``interrupted`` is true when training stopped on ``KeyboardInterrupt``; the
    last complete checkpoint is then ``checkpoint`` (or ``None`` if no epoch
    finished).
    """

    model: nn.Module
    out: Path
    step: int
    epoch: int
    total_steps: int
    last: StepResult | None
    checkpoint: Path | None
    weights_file: Path | None
    log: Path
    plots: list[Path]
    interrupted: bool = False
    seconds: float = 0.0
    skipped_steps: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- building blocks


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is an error.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def build_losses(
    names: Sequence[str] = LOSS_NAMES, *, texture_normalize: bool = True
) -> dict[str, nn.Module]:
    """The MENET losses by name, in the given order.

    ``pixel``: mean squared error; ``edge``:
    :class:`mtlweight.losses.EdgeAwareLoss`; ``texture``:
    :class:`mtlweight.losses.TextureMatchingLoss` with 4 x 4 patches. Each is a
    module called as ``loss(prediction, target)`` returning a scalar.

    >>> fns = build_losses(["pixel", "edge"])
    >>> x = torch.zeros(1, 3, 8, 8)
    >>> {k: float(f(x, x)) for k, f in fns.items()}
    {'pixel': 0.0, 'edge': 0.0}
    """
    from mtlweight.losses import EdgeAwareLoss, TextureMatchingLoss

    factories: dict[str, Callable[[], nn.Module]] = {
        "pixel": nn.MSELoss,
        "edge": EdgeAwareLoss,
        "texture": lambda: TextureMatchingLoss(patch_size=4, normalize=texture_normalize),
    }
    out: dict[str, nn.Module] = {}
    for name in names:
        if name not in factories:
            raise ValueError(f"unknown loss {name!r}; choose from {LOSS_NAMES}")
        out[name] = factories[name]()
    return out


def build_weighting(
    name: str,
    model: MENET,
    losses: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    gb_shared: str = "last_conv",
    options: Mapping[str, Any] | None = None,
) -> mw.Weighting:
    """Build an :mod:`mtlweight` strategy by registry name for ``model``.

    Strategies whose constructor takes ``tasks`` (those with learnable per-task
    parameters) get the loss names; those that take ``shared`` (GB and other
    gradient-based ones) get ``model.last_conv`` (``gb_shared="last_conv"``, the original),
    the whole ``model`` (``"all"``) or nothing (``"representation"``: the
    training step then passes ``representation=features``). ``"fixed"`` gets
    ``weights`` by loss name, 1.0 for the losses not mentioned.

    >>> w = build_weighting("fixed", MENET(blocks=1), ["pixel", "edge"], weights={"edge": 0.01})
    >>> w({"pixel": torch.tensor(1.0), "edge": torch.tensor(1.0)})
    tensor(1.0100)
    """
    opts: dict[str, Any] = dict(options or {})
    key = name.strip().lower().replace("-", "_")
    if key == "fixed":
        given = dict(weights or {})
        opts.setdefault("weights", {n: float(given.get(n, 1.0)) for n in losses})
        return mw.get(name, **opts)
    if weights:
        raise ValueError(f"weights are only used by weighting='fixed', not {name!r}")
    shared: nn.Module | None = {
        "last_conv": model.last_conv,
        "all": model,
        "representation": None,
    }[gb_shared]
    # The registry passes ``shared`` and ``tasks`` only to strategies that take them.
    return mw.get(name, shared=shared, tasks=list(losses), **opts)


def build_dataset(config: TrainConfig) -> Dataset[tuple[Tensor, Tensor]]:
    """The training patches of ``config``: pairs -> ten crops or random crops.

    Returns a map-style dataset of ``(rainy, clean)`` float tensors
    ``(3, P, P)`` in [0, 1].
    """
    from . import data as mdata

    pairs: Dataset[tuple[Tensor, Tensor]] | list[tuple[Tensor, Tensor]]
    if config.synthetic is not None:
        images = mdata.builtin_images()
        if config.synthetic_images is not None:
            known = [name for name, _ in images]
            missing = [n for n in config.synthetic_images if n not in known]
            if missing:
                raise ValueError(f"unknown built-in image {missing[0]!r}; available: {known}")
            images = [(n, x) for n, x in images if n in config.synthetic_images]
        synthetic = mdata.SyntheticRainPairs(
            images,
            preset=config.synthetic,
            seed=config.synthetic_seed,
            repeats=config.synthetic_repeats,
        )
        # Rain is synthesised once, not per crop: a handful of images fits in memory.
        pairs = [synthetic[i] for i in range(len(synthetic))]
    else:
        assert config.data is not None
        roots = [config.data] if isinstance(config.data, str) else list(config.data)
        ids = config.ids
        if config.split is not None:
            split = mdata.load_split(config.split)
            if config.split_key not in split:
                raise ValueError(
                    f"split file {config.split} has no key {config.split_key!r}; "
                    f"found {sorted(split)}"
                )
            ids = list(split[config.split_key])
        folders = [mdata.PairedFolder(r, ids=ids, cache=config.cache) for r in roots]
        pairs = folders[0] if len(folders) == 1 else ConcatDataset(folders)
    if config.patches == "tencrop":
        return mdata.TenCropPairs(pairs, size=config.patch_size)
    return mdata.RandomCropPairs(
        pairs,
        size=config.patch_size,
        flips=True,
        samples_per_image=config.patches_per_image,
        seed=config.seed,
    )


def _mix(*values: int) -> int:
    """Deterministic 63-bit seed from integers (SplitMix64-style mixing)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h ^= (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class EpochSampler(Sampler[int]):
    """Shuffle ``n`` indices with a permutation that depends only on ``(seed, epoch)``.

    Call :meth:`set_epoch` before iterating. A resumed run thus replays the
    same order as an uninterrupted one, whatever happened before.

    >>> s = EpochSampler(5, seed=0); s.set_epoch(3); a = list(s)
    >>> s.set_epoch(3); a == list(s), sorted(a)
    (True, [0, 1, 2, 3, 4])
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 1))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _seed_worker(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a DataLoader worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ----------------------------------------------------------------------------- one step


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
        The network (put in train mode here).
    batch : (Tensor, Tensor)
        ``(rainy, clean)`` of shape ``(B, 3, H, W)`` on the model's device.
    loss_fns : Mapping[str, nn.Module]
        Loss modules by task name (see :func:`build_losses`).
    weighting : mtlweight.Weighting
        Backpropagates the losses with ``weighting.backward(losses)``, the
        convention of every strategy (loss- and gradient-level); with a
        ``scaler``, ``scaler.scale(weighting(losses)).backward()`` instead,
        which the gradient-level methods in ``task_specific="plain"`` mode
        (PCGrad's default) cannot do.
    optimizer, scheduler
        Stepped once each (the scheduler per iteration).
    representation : bool
        Pass the model's features (output of ``last_conv``) as
        ``representation=`` to the weighting.
    amp_dtype : torch.dtype, optional
        Autocast dtype (``float16``/``bfloat16``); losses are computed in float32.
    scaler : torch.amp.GradScaler, optional
        Gradient scaler for float16 training.
    skip_nonfinite : bool
        When a loss is not finite, skip the step instead of raising: no
        backward, no optimizer step, the model's buffers (BatchNorm running
        statistics) restored to their values before the forward pass; the
        scheduler still advances, so the schedule stays a function of the
        step number. Under DDP every rank skips together (the weighting's
        finiteness check is collective).

    Returns
    -------
    StepResult
        Unweighted loss values, the weights used and the weighted total
        :math:`\\sum_t w_t L_t`.

    Raises
    ------
    FloatingPointError
        A loss is not finite (the message names the task) and
        ``skip_nonfinite`` is false.

    Examples
    --------
    >>> _ = torch.manual_seed(0); net = MENET(blocks=1, channel_attention=False)
    >>> fns = build_losses(["pixel", "edge"]); w = mw.LossBalance()
    >>> opt = torch.optim.Adam(net.parameters(), 1e-3)
    >>> x = torch.rand(2, 3, 16, 16)
    >>> r = train_step(net, (x, x), fns, w, opt)
    >>> sorted(r.weights), round(sum(r.weights.values()), 6)
    (['edge', 'pixel'], 1.0)
    """
    rainy, clean = batch
    model.train()
    buffers = [b.detach().clone() for b in model.buffers()] if skip_nonfinite else []
    device_type = rainy.device.type
    autocast = (
        torch.autocast(device_type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        if representation:
            out, features = model(rainy, return_features=True)
        else:
            out, features = model(rainy), None
    out = out.float()
    losses = {name: fn(out, clean) for name, fn in loss_fns.items()}
    optimizer.zero_grad(set_to_none=True)
    try:
        if scaler is None:
            # The one convention every strategy supports, gradient-level ones
            # (PCGrad, ...) included: it leaves the right .grad everywhere.
            weighting.backward(losses, representation=features)
        else:
            scaled = scaler.scale(weighting(losses, representation=features))
    except FloatingPointError:
        if not skip_nonfinite:
            raise
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
    if scaler is not None:
        scaled.backward()
        if clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return StepResult(
        losses={k: float(v.detach()) for k, v in losses.items()},
        weights=weighting.weights,
        total=sum(weighting.weights[k] * float(v.detach()) for k, v in losses.items()),
    )


# ----------------------------------------------------------------------------- the log


class _CsvLog:
    """Per-step CSV log; on resume, rows after the checkpoint's step are dropped.

    With ``skipped=True`` a last column ``skipped`` counts the steps skipped so
    far (non-finite losses); a skipped step itself gets no row, so the log
    stays plottable. Rows kept from before a resume are matched by column name.
    """

    def __init__(
        self, path: Path, losses: Sequence[str], resume_step: int | None, skipped: bool = False
    ) -> None:
        self.path = path
        self.columns = (
            ["step", "epoch", "lr"]
            + [f"loss_{n}" for n in losses]
            + [f"weight_{n}" for n in losses]
            + ["total", "time"]
            + (["skipped"] if skipped else [])
        )
        kept: list[list[str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if rows and set(rows[0]) - {"skipped"} == set(self.columns) - {"skipped"}:
                index = {name: j for j, name in enumerate(rows[0])}
                kept = [
                    [r[index[c]] if c in index else "0" for c in self.columns]
                    for r in rows[1:]
                    if r and int(r[0]) <= resume_step
                ]
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        self._writer.writerows(kept)
        self._file.flush()

    def write(
        self, step: int, epoch: int, lr: float, r: StepResult, seconds: float, skipped: int = 0
    ) -> None:
        names = list(r.losses)
        self._writer.writerow(
            [step, epoch, f"{lr:.6g}"]
            + [f"{r.losses[n]:.6g}" for n in names]
            + [f"{r.weights.get(n, float('nan')):.6g}" for n in names]
            + [f"{r.total:.6g}", f"{seconds:.3f}"]
            + ([str(skipped)] if self.columns[-1] == "skipped" else [])
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- training


def _check_resume_config(stored: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    # A checkpoint written before a field existed ran with that field's default.
    defaults = TrainConfig.__dataclass_fields__
    stored = {
        k: stored.get(k, defaults[k].default) if k in defaults else stored.get(k) for k in current
    }
    diffs = [
        f"{k}: checkpoint {stored.get(k)!r} vs now {current[k]!r}"
        for k in current
        if k not in _RESUME_MUTABLE and stored.get(k) != current[k]
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the run was started with different settings "
            f"({'; '.join(diffs)}); use the original options or a new --out"
        )


def _postfix(r: StepResult) -> str:
    parts = [f"{n}={v:.3g}" for n, v in r.losses.items()]
    parts += [f"w_{n}={v:.2f}" for n, v in r.weights.items()]
    return " ".join(parts)


def train(
    config: TrainConfig, *, on_epoch_end: Callable[[int, int], None] | None = None
) -> TrainResult:
    """Train MENET as configured; checkpoint every epoch; export the weights.

    Parameters
    ----------
    config : TrainConfig
        The run. With ``config.resume`` the run continues from
        ``<out>/last.ckpt`` (the settings must match the stored ones).
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, step)`` after each checkpoint (used
        by tests to simulate crashes).

    Returns
    -------
    TrainResult
        The trained model (eval mode), paths of the outputs, and whether the
        run was interrupted by ``KeyboardInterrupt`` (the last complete
        checkpoint is kept; resume with ``resume=True``).

    Raises
    ------
    FloatingPointError
        A loss is not finite (the message names the step and the task),
        unless ``config.skip_nonfinite``.
    menet.checkpoint.CheckpointError
        The checkpoint to resume from is unreadable, or one cannot be
        written (full disk, read-only folder: the message names the file, and
        the previous checkpoint is left intact).

    Notes
    -----
    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) every process
    calls this function: it joins the process group (gloo on CPU, NCCL on
    CUDA, GPU ``LOCAL_RANK``), wraps the model in
    :class:`~torch.nn.parallel.DistributedDataParallel` and trains on its share
    of each batch (:class:`menet.distributed.ShardedEpochSampler`;
    ``batch_size`` is the global batch and must be a multiple of the number of
    processes). Only rank 0 prints, logs, plots and writes checkpoints and
    weights; the others wait for each write and fail with it. Checkpoints
    hold the unwrapped model, so a run resumes on any number of processes.
    """
    device = resolve_device(config.device)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = dist_setup(device)
    if ctx.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    try:
        result = _train(config, device, ctx.rank, ctx.world_size, on_epoch_end)
        # Leave together: a rank that exits while another still talks to gloo
        # can abort ("terminate called without an active exception").
        barrier()
        return result
    finally:
        if ctx.enabled and owns_group:
            dist_cleanup()


def _train(
    config: TrainConfig,
    device: torch.device,
    rank: int,
    world_size: int,
    on_epoch_end: Callable[[int, int], None] | None,
) -> TrainResult:
    """The body of :func:`train` on one process (rank ``rank`` of ``world_size``)."""
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    from .plots import plot_training_log

    config.validate()
    main = rank == 0
    out = Path(config.out)
    ckpt_path = out / "last.ckpt"
    on_rank0(lambda: _prepare_out(out), f"preparing the output folder {out}")

    ckpt: dict[str, Any] | None = None
    if config.resume:
        ckpt = load_checkpoint(ckpt_path)
        _check_resume_config(ckpt["config"], config, ckpt_path)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    net = MENET.variant(config.variant)
    if config.zero_init_residual:
        nn.init.zeros_(net.last_conv.weight)
    net = net.to(device)
    built = build_losses(config.losses, texture_normalize=config.texture_normalize)
    loss_fns = {n: f.to(device) for n, f in built.items()}
    weighting = build_weighting(
        config.weighting,
        net,
        config.losses,
        weights=config.weights,
        gb_shared=config.gb_shared,
        options=config.weighting_options,
    ).to(device)
    representation = config.gb_shared == "representation" or weighting.needs_representation
    if ckpt is not None:  # before DDP, which broadcasts rank 0's parameters anyway
        net.load_state_dict(ckpt["model"])
    model: nn.Module = net
    restore = contextlib.ExitStack()  # global settings changed while training only
    if world_size > 1:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile is not None:
        model = torch.compile(model, backend=config.compile)  # type: ignore[assignment]

    dataset = build_dataset(config)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the training set is empty")
    sampler = ShardedEpochSampler(n, config.seed, config.batch_size, rank, world_size)
    steps_per_epoch = sampler.steps_per_epoch
    if config.dry_run:
        total_steps = 1
    elif config.steps is not None:
        total_steps = config.steps
    else:
        assert config.epochs is not None
        total_steps = config.epochs * steps_per_epoch

    loader_gen = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=False,
        generator=loader_gen,
        worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda",
    )

    params: list[dict[str, Any]] = [{"params": list(net.parameters())}]
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        params.append({"params": extra})
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        milestone = max(1, round(config.lr_milestone * total_steps))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [milestone], gamma=0.1)

    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    if config.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        if device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")

    step = epoch = 0
    elapsed = 0.0
    skipped: list[int] = []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        weighting.load_state_dict(ckpt["weighting"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        step, epoch, elapsed = int(ckpt["step"]), int(ckpt["epoch"]), float(ckpt["elapsed"])
        skipped = [int(k) for k in ckpt.get("skipped_steps", [])]

    log: _CsvLog | None = None
    if main:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        log = _CsvLog(
            out / "log.csv",
            config.losses,
            step if ckpt is not None else None,
            skipped=config.skip_nonfinite or bool(skipped),
        )
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (config.progress and main),
        desc=f"menet {config.variant} {config.weighting}",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    last: StepResult | None = None
    saved: Path | None = ckpt_path if ckpt is not None else None
    interrupted = False
    start = time.perf_counter() - elapsed

    def checkpoint() -> None:
        nonlocal saved
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "weighting": weighting.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": capture_rng_state(),
            "step": step,
            "epoch": epoch,
            "total_steps": total_steps,
            "elapsed": time.perf_counter() - start,
            "config": config.to_dict(),
            "skipped_steps": list(skipped),
            "world_size": world_size,
        }
        if log is not None:
            log.flush()
        on_rank0(lambda: save_checkpoint(ckpt_path, state), f"writing checkpoint {ckpt_path}")
        saved = ckpt_path

    try:
        if config.compile is not None:
            # GB differentiates the compiled graph once per task (retain_graph), so
            # AOTAutograd must not donate (free) the saved activations after the first
            # backward; restored in ``finally``.
            import torch._functorch.config as functorch_config

            restore.enter_context(functorch_config.patch(donated_buffer=False))
        while step < total_steps:
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):  # new random crops each epoch
                dataset.set_epoch(epoch)
            loader_gen.manual_seed(_mix(config.seed, epoch, 2))
            for batch in loader:
                rainy = batch[0].to(device, non_blocking=True)
                clean = batch[1].to(device, non_blocking=True)
                lr = optimizer.param_groups[0]["lr"]
                try:
                    result = train_step(
                        model,
                        (rainy, clean),
                        loss_fns,
                        weighting,
                        optimizer,
                        scheduler,
                        representation=representation,
                        amp_dtype=amp_dtype,
                        scaler=scaler,
                        skip_nonfinite=config.skip_nonfinite,
                        clip_grad_norm=config.clip_grad_norm,
                    )
                except FloatingPointError as exc:
                    raise FloatingPointError(
                        f"step {step + 1} (epoch {epoch + 1}): {exc}; the last checkpoint is "
                        f"{saved or 'not written yet'}. Use --skip-nonfinite "
                        f"(TrainConfig.skip_nonfinite) to skip such steps"
                    ) from exc
                step += 1
                if result.skipped:
                    skipped.append(step)
                    bad = [k for k, v in result.losses.items() if not math.isfinite(v)]
                    if main:
                        tqdm.write(
                            f"menet train: step {step} skipped: loss {', '.join(bad) or '?'} "
                            f"not finite ({len(skipped)} skipped so far)",
                            file=sys.stderr,
                        )
                else:
                    if world_size > 1:  # log the losses of the whole (global) batch
                        result = _mean_over_ranks(result)
                    last = result
                    if log is not None:
                        log.write(step, epoch, lr, last, time.perf_counter() - start, len(skipped))
                bar.update(1)
                bar.set_postfix_str(_postfix(result), refresh=False)
                if step >= total_steps:
                    break
            epoch += 1
            checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(epoch, step)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        restore.close()
        bar.close()
        if log is not None:
            log.close()

    net.eval()
    weights_file: Path | None = None
    plots: list[Path] = []
    if not interrupted:

        def finish() -> tuple[Path, list[Path]]:
            written = export_weights(
                net,
                out / "model.safetensors",
                config.variant,
                weighting=config.weighting,
                losses=list(config.losses),
                steps=step,
                epochs=epoch,
                seed=config.seed,
                skipped_steps=len(skipped),
            )
            return written, plot_training_log(out / "log.csv", out)

        done = on_rank0(finish, f"exporting the weights to {out}")
        if done is not None:
            weights_file, plots = done
    return TrainResult(
        model=net,
        out=out,
        step=step,
        epoch=epoch,
        total_steps=total_steps,
        last=last,
        checkpoint=saved,
        weights_file=weights_file,
        log=out / "log.csv",
        plots=plots,
        interrupted=interrupted,
        seconds=time.perf_counter() - start,
        skipped_steps=list(skipped),
    )


def _mean_over_ranks(r: StepResult) -> StepResult:
    """``r`` with its loss values and total averaged over the processes (a collective)."""
    from mtlweight.distributed import all_reduce_mean

    names = list(r.losses)
    local = torch.tensor([r.losses[k] for k in names] + [r.total], dtype=torch.float64)
    values = all_reduce_mean(local).tolist()
    losses = dict(zip(names, values[:-1], strict=True))
    return dataclasses.replace(r, losses=losses, total=values[-1])


def _prepare_out(out: Path) -> None:
    """Create the output folder, check it is writable and remove stale temporary files."""
    from .checkpoint import CheckpointWriteError

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".menet-write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        message = (
            f"output folder {out} is not writable ({exc.strerror or exc}); choose another --out"
        )
        if exc.errno is None:
            raise CheckpointWriteError(message) from exc
        raise CheckpointWriteError(exc.errno, message) from exc
    remove_stale_temporaries(out)
