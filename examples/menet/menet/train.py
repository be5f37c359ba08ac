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
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

import mtlweight as mw

from .checkpoint import (
    capture_rng_state,
    export_weights,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
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
_RESUME_MUTABLE = frozenset({"out", "resume", "workers", "device", "progress", "cache"})


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint).

    Parameters
    ----------
    out : str
        Output directory: ``last.ckpt``, ``log.csv``, ``model.safetensors``,
        ``model.json``, ``config.json`` and the plots.
    data : str, optional
        A paired folder (see :class:`menet.data.PairedFolder`).
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
        Patches per step (paper: 20).
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
        Fraction of the total steps after which the rate is divided by 10.
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
    """

    out: str = "runs/menet"
    data: str | None = None
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
    workers: int = 0
    resume: bool = False
    dry_run: bool = False
    progress: bool = True
    cache: bool = True

    def __post_init__(self) -> None:
        self.losses = tuple(self.losses)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option."""
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
                f"gb_shared must be 'last_conv', 'all' or 'representation'; found {self.gb_shared!r}"
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
    """What one :func:`train_step` measured: loss values, weights and the total."""

    losses: dict[str, float]
    weights: dict[str, float]
    total: float


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


def build_losses(names: Sequence[str] = LOSS_NAMES) -> dict[str, nn.Module]:
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
        "texture": lambda: TextureMatchingLoss(patch_size=4),
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

    Strategies whose constructor takes ``shared`` (GB and other gradient-based
    ones) get ``model.last_conv`` (``gb_shared="last_conv"``, the original),
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
    try:
        return mw.get(name, shared=shared, **opts)
    except TypeError as exc:  # the strategy has no notion of shared parameters
        if "shared" not in str(exc):
            raise
    return mw.get(name, **opts)


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
        ids = config.ids
        if config.split is not None:
            split = mdata.load_split(config.split)
            if config.split_key not in split:
                raise ValueError(
                    f"split file {config.split} has no key {config.split_key!r}; "
                    f"found {sorted(split)}"
                )
            ids = list(split[config.split_key])
        pairs = mdata.PairedFolder(config.data, ids=ids, cache=config.cache)
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
        Turns the losses into the total :math:`\\sum_t \\operatorname{sg}(w_t) L_t`.
    optimizer, scheduler
        Stepped once each (the scheduler per iteration).
    representation : bool
        Pass the model's features (output of ``last_conv``) as
        ``representation=`` to the weighting.
    amp_dtype : torch.dtype, optional
        Autocast dtype (``float16``/``bfloat16``); losses are computed in float32.
    scaler : torch.amp.GradScaler, optional
        Gradient scaler for float16 training.

    Returns
    -------
    StepResult
        Unweighted loss values, the weights used and the weighted total.

    Examples
    --------
    >>> torch.manual_seed(0); net = MENET(blocks=1, channel_attention=False)
    >>> fns = build_losses(["pixel", "edge"]); w = mw.LossBalance()
    >>> opt = torch.optim.Adam(net.parameters(), 1e-3)
    >>> x = torch.rand(2, 3, 16, 16)
    >>> r = train_step(net, (x, x), fns, w, opt)
    >>> sorted(r.weights), round(sum(r.weights.values()), 6)
    (['edge', 'pixel'], 1.0)
    """
    rainy, clean = batch
    model.train()
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
    total = weighting(losses, representation=features)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return StepResult(
        losses={k: float(v.detach()) for k, v in losses.items()},
        weights=weighting.weights,
        total=float(total.detach()),
    )


# ----------------------------------------------------------------------------- the log


class _CsvLog:
    """Per-step CSV log; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, losses: Sequence[str], resume_step: int | None) -> None:
        self.path = path
        self.columns = (
            ["step", "epoch", "lr"]
            + [f"loss_{n}" for n in losses]
            + [f"weight_{n}" for n in losses]
            + ["total", "time"]
        )
        kept: list[list[str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == self.columns:
                kept = [r for r in rows[1:] if r and int(r[0]) <= resume_step]
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        self._writer.writerows(kept)
        self._file.flush()

    def write(self, step: int, epoch: int, lr: float, r: StepResult, seconds: float) -> None:
        names = list(r.losses)
        self._writer.writerow(
            [step, epoch, f"{lr:.6g}"]
            + [f"{r.losses[n]:.6g}" for n in names]
            + [f"{r.weights.get(n, float('nan')):.6g}" for n in names]
            + [f"{r.total:.6g}", f"{seconds:.3f}"]
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- training


def _check_resume_config(stored: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
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


def train(config: TrainConfig, *, on_epoch_end: Callable[[int, int], None] | None = None) -> TrainResult:
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
    """
    from tqdm import tqdm

    from .plots import plot_training_log

    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "last.ckpt"
    device = resolve_device(config.device)

    ckpt: dict[str, Any] | None = None
    if config.resume:
        ckpt = load_checkpoint(ckpt_path)
        _check_resume_config(ckpt["config"], config, ckpt_path)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    model = MENET.variant(config.variant)
    if config.zero_init_residual:
        nn.init.zeros_(model.last_conv.weight)
    model = model.to(device)
    loss_fns = {n: f.to(device) for n, f in build_losses(config.losses).items()}
    weighting = build_weighting(
        config.weighting,
        model,
        config.losses,
        weights=config.weights,
        gb_shared=config.gb_shared,
        options=config.weighting_options,
    ).to(device)
    representation = config.gb_shared == "representation"

    dataset = build_dataset(config)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the training set is empty")
    drop_last = n >= config.batch_size
    steps_per_epoch = n // config.batch_size if drop_last else 1
    if config.dry_run:
        total_steps = 1
    elif config.steps is not None:
        total_steps = config.steps
    else:
        assert config.epochs is not None
        total_steps = config.epochs * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)

    sampler = EpochSampler(n, config.seed)
    loader_gen = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=drop_last,
        generator=loader_gen,
        worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda",
    )

    params: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        params.append({"params": extra})
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
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
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        weighting.load_state_dict(ckpt["weighting"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        step, epoch, elapsed = int(ckpt["step"]), int(ckpt["epoch"]), float(ckpt["elapsed"])

    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log = _CsvLog(out / "log.csv", config.losses, step if ckpt is not None else None)
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not config.progress,
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
            "model": model.state_dict(),
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
        }
        log.flush()
        save_checkpoint(ckpt_path, state)
        saved = ckpt_path

    try:
        while step < total_steps:
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):  # new random crops each epoch
                dataset.set_epoch(epoch)
            loader_gen.manual_seed(_mix(config.seed, epoch, 2))
            for batch in loader:
                rainy = batch[0].to(device, non_blocking=True)
                clean = batch[1].to(device, non_blocking=True)
                lr = optimizer.param_groups[0]["lr"]
                last = train_step(
                    model,
                    (rainy, clean),
                    loss_fns,
                    weighting,
                    optimizer,
                    scheduler,
                    representation=representation,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                )
                step += 1
                log.write(step, epoch, lr, last, time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix_str(_postfix(last), refresh=False)
                if step >= total_steps:
                    break
            epoch += 1
            checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(epoch, step)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        log.close()

    model.eval()
    weights_file: Path | None = None
    plots: list[Path] = []
    if not interrupted:
        weights_file = export_weights(
            model,
            out / "model.safetensors",
            config.variant,
            weighting=config.weighting,
            losses=list(config.losses),
            steps=step,
            epochs=epoch,
            seed=config.seed,
        )
        plots = plot_training_log(out / "log.csv", out)
    return TrainResult(
        model=model,
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
    )
