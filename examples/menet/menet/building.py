"""The pieces of a training run, each built from plain arguments or a :class:`TrainConfig`.

- :func:`resolve_device` and :func:`build_model`: where, and which network;
- :func:`build_losses` and :func:`build_weighting`: the tasks and their weighting;
- :class:`PairSource` and :func:`build_pairs`: the one way to get ``(rainy, clean)``
  pairs (paired folders with a split or ids, or synthetic rain on built-in
  images) for training, evaluation and the demo; :func:`build_dataset` cuts
  them into training patches;
- :func:`build_optimizer`, :func:`build_scheduler` and :func:`build_amp`: the
  optimisation (the paper's Adam; a step or cosine schedule; mixed precision).

>>> fns = build_losses(["pixel", "edge"])
>>> x = torch.zeros(1, 3, 8, 8)
>>> {k: float(f(x, x)) for k, f in fns.items()}
{'pixel': 0.0, 'edge': 0.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

import mtlweight as mw
from mtlweight.losses import EdgeAwareLoss, TextureMatchingLoss

from .checkpoint import CheckpointError, load_model
from .config import LOSS_NAMES, TrainConfig
from .data import (
    PairedFolder,
    RandomCropPairs,
    SyntheticRainPairs,
    TenCropPairs,
    builtin_images,
    load_split,
)
from .model import MENET, VARIANTS
from .pretrained import bundled_weights
from .procedural_rain import EpochConcat, ProceduralRainCrops

__all__ = [
    "DeviceError",
    "PairSource",
    "build_amp",
    "build_dataset",
    "build_losses",
    "build_model",
    "build_optimizer",
    "build_pairs",
    "build_scheduler",
    "build_weighting",
    "init_weights_path",
    "native_bfloat16",
    "resolve_device",
    "select_ids",
]

Pairs = Dataset[tuple[Tensor, Tensor]]


class DeviceError(RuntimeError):
    """The requested device is not available on this machine (e.g. ``cuda`` without CUDA)."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is an error.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} requested but CUDA is not available on this machine "
            f"(PyTorch {torch.__version__}); use --device cpu or auto"
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from exc


def init_weights_path(init: str) -> Path:
    """The file of ``TrainConfig.init``: ``"bundled"`` is the shipped model."""
    return bundled_weights() if init == "bundled" else Path(init)


def _load_init(net: MENET, init: str, variant: str) -> None:
    """Copy the weights of ``init`` (file or ``"bundled"``) into ``net`` of ``variant``."""
    path = init_weights_path(init)
    source = load_model(path)  # CheckpointError names the file if it is missing or wrong
    assert isinstance(source, MENET)
    found = next(
        (n for n, (b, ca) in VARIANTS.items()
         if (b, ca) == (source.blocks, source.channel_attention)),
        "unknown",
    )
    if found != variant:
        raise CheckpointError(
            f"init weights {path} are MENET variant {found!r}, but this run trains "
            f"{variant!r}; pass --variant {found} or other weights"
        )
    net.load_state_dict(source.state_dict())  # float16 storage is copied into float32


def build_model(config: TrainConfig, device: torch.device) -> MENET:
    """The network of ``config.variant`` on ``device``.

    Initialised from ``config.init`` when given (fine-tuning), else at random
    with the last conv zeroed if ``config.zero_init_residual``. With
    ``config.channels_last`` the parameters are stored NHWC, so that every
    convolution runs in that layout (inputs may stay NCHW; checkpoints and
    exports hold the same values either way).
    """
    net = MENET.variant(config.variant)
    if config.init is not None:
        _load_init(net, config.init, config.variant)
    elif config.zero_init_residual:
        nn.init.zeros_(net.last_conv.weight)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    net.to(device, memory_format=layout)  # type: ignore[call-overload]  # (in place)
    return net


def build_losses(
    names: Sequence[str] = LOSS_NAMES, *, texture_normalize: bool = True
) -> dict[str, nn.Module]:
    """The MENET losses by name, in the given order.

    ``pixel``: mean squared error; ``edge``:
    :class:`mtlweight.losses.EdgeAwareLoss`; ``texture``:
    :class:`mtlweight.losses.TextureMatchingLoss` with 4 x 4 patches (the mean
    over Gram entries, or their sum with ``texture_normalize=False``). Each is
    a module called as ``loss(prediction, target)`` returning a scalar.
    """
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


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PairSource:
    """Where ``(rainy, clean)`` pairs come from: paired folders or synthetic rain.

    Parameters
    ----------
    data : str or sequence of str, optional
        Paired folder(s) (:class:`menet.data.PairedFolder`); several are concatenated.
    synthetic : {"light", "heavy"}, optional
        Rain preset on the built-in images instead (:func:`menet.data.builtin_images`).
    split, split_key : str, optional
        JSON split file and the key of its id list.
    ids : sequence of int, optional
        Explicit pair ids (instead of ``split``).
    images : sequence of str, optional
        Names of the built-in images (synthetic only; default all).
    rain_seed, repeats : int
        Seed of the synthetic rain and rain patterns per image.
    crop : int, optional
        Central square crop of each built-in image before the rain is added.
    cache : bool
        Keep decoded folder images in memory.
    """

    data: str | Sequence[str] | None = None
    synthetic: str | None = None
    split: str | None = None
    split_key: str = "train"
    ids: Sequence[int] | None = None
    images: Sequence[str] | None = None
    rain_seed: int = 0
    repeats: int = 1
    crop: int | None = None
    cache: bool = True

    @classmethod
    def of(cls, config: TrainConfig) -> PairSource:
        """The training pairs of ``config``."""
        return cls(
            data=config.data,
            synthetic=config.synthetic,
            split=config.split,
            split_key=config.split_key,
            ids=config.ids,
            images=config.synthetic_images,
            rain_seed=config.synthetic_seed,
            repeats=config.synthetic_repeats,
            cache=config.cache,
        )


def select_ids(split: str | None, split_key: str, ids: Sequence[int] | None) -> list[int] | None:
    """The pair ids: ``ids``, or the list under ``split_key`` in the split file, or all (None)."""
    if split is None:
        return None if ids is None else list(ids)
    table = load_split(split)
    if split_key not in table:
        raise ValueError(f"split file {split} has no key {split_key!r}; found {sorted(table)}")
    return list(table[split_key])


def _center_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., top : top + size, left : left + size]


def build_pairs(source: PairSource) -> Pairs:
    """The ``(rainy, clean)`` pairs of ``source``: ``(3, H, W)`` float tensors in [0, 1].

    >>> pairs = build_pairs(PairSource(synthetic="light", images=["chelsea"], crop=32))
    >>> len(pairs), tuple(pairs[0][0].shape)
    (1, (3, 32, 32))
    """
    if (source.data is None) == (source.synthetic is None):
        raise ValueError("give exactly one data source: a paired folder or synthetic rain")
    if source.synthetic is not None:
        images = builtin_images()
        if source.images is not None:
            known = [name for name, _ in images]
            missing = [n for n in source.images if n not in known]
            if missing:
                raise ValueError(f"unknown built-in image {missing[0]!r}; available: {known}")
            images = [(n, x) for n, x in images if n in source.images]
        if source.crop is not None:
            images = [(n, _center_crop(x, source.crop)) for n, x in images]
        return SyntheticRainPairs(
            images, preset=source.synthetic, seed=source.rain_seed, repeats=source.repeats
        )
    assert source.data is not None
    roots = [source.data] if isinstance(source.data, str) else list(source.data)
    ids = select_ids(source.split, source.split_key, source.ids)
    # A folder given k times is sampled k times as often; it is read (and cached) once.
    opened: dict[Path, PairedFolder] = {}
    folders = []
    for root in roots:
        key = Path(root).resolve()
        if key not in opened:
            opened[key] = PairedFolder(root, ids=ids, cache=source.cache)
        folders.append(opened[key])
    return folders[0] if len(folders) == 1 else ConcatDataset(folders)


def build_dataset(config: TrainConfig) -> Pairs:
    """The training patches of ``config``: pairs -> ten crops or random crops.

    Returns a map-style dataset of ``(rainy, clean)`` float tensors
    ``(3, P, P)`` in [0, 1].
    """
    pairs: Pairs | list[tuple[Tensor, Tensor]] = build_pairs(PairSource.of(config))
    if config.synthetic is not None:
        # Rain is synthesised once, not per crop: a handful of images fits in memory.
        pairs = [pairs[i] for i in range(len(pairs))]  # type: ignore[arg-type]
    if config.patches == "tencrop":
        return TenCropPairs(pairs, size=config.patch_size)
    crops = RandomCropPairs(
        pairs,
        size=config.patch_size,
        flips=True,
        samples_per_image=config.patches_per_image,
        seed=config.seed,
    )
    if not config.procedural_rain:
        return crops
    first = pairs.datasets[0] if isinstance(pairs, ConcatDataset) else pairs
    clean = [first[i][1] for i in range(len(first))]  # type: ignore[arg-type]
    rain = ProceduralRainCrops(clean, size=config.patch_size, seed=config.seed,
                               samples_per_image=config.procedural_rain * config.patches_per_image)
    return EpochConcat([crops, rain])


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(net: nn.Module, weighting: mw.Weighting, lr: float) -> torch.optim.Adam:
    """Adam (0.9, 0.999, 1e-8) over the network and the weighting's learnable parameters."""
    params: list[dict[str, Any]] = [{"params": list(net.parameters())}]
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        params.append({"params": extra})
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped every iteration: cosine decay to 0, or /10 once at ``lr_milestone``."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    milestone = max(1, round(config.lr_milestone * total_steps))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [milestone], gamma=0.1)


def build_amp(
    config: TrainConfig, device: torch.device
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and gradient scaler: float16 + scaler on CUDA, bfloat16 on CPU, or none."""
    if not config.amp:
        return None, None
    if device.type == "cuda":
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN reports it.

    Where it does, ``--amp`` (bfloat16 autocast) trains MENET about 1.7-2.5x faster at
    the same scores (``benchmarks/results/recipe-amp.md``); elsewhere bfloat16 is emulated
    and slower.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
