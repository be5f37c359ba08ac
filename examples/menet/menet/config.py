"""What defines a training run: :class:`TrainConfig`, validated once, and the named recipes.

A :class:`TrainConfig` is stored in every checkpoint (:meth:`TrainConfig.to_dict`);
its field names and defaults are those of the first release, so a checkpoint
written by any earlier version resumes identically. The dataclass defaults are
the paper's recipe; :data:`RECIPES` names complete recipes that the command
line applies before the options given explicitly:

- ``paper``: Adam, learning rate /10 once at 40 % of the steps (MultiStepLR), no
  gradient clipping, texture loss as the mean over Gram entries, fan-in
  initialisation everywhere, ten 224 x 224 crops per image, batches of 20;
- ``fast`` (the command line's default, for CPU budgets): cosine decay of the
  learning rate over the run, gradient-norm clipping at 1.0, texture loss as the
  mean over Gram entries (as in ``paper``: the sum, which a reference
  implementation uses, scored 0.37-0.60 dB lower in ``benchmarks/recipe.py``),
  the last conv initialised at zero, random 128 x 128 crops, batches of 16.

>>> cfg = TrainConfig(synthetic="light", steps=1, patch_size=32, batch_size=2)
>>> cfg.variant, cfg.weighting, cfg.losses
('shallow-ca', 'gb', ('pixel', 'edge', 'texture'))
>>> TrainConfig(synthetic="light", **RECIPES["fast"]).lr_schedule
'cosine'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import VARIANTS

__all__ = [
    "DEFAULT_RECIPE",
    "GB_SHARED",
    "LOSS_NAMES",
    "RECIPES",
    "RESUME_MUTABLE",
    "TrainConfig",
    "check_resume",
]

#: Loss names understood by :func:`menet.building.build_losses`.
LOSS_NAMES = ("pixel", "edge", "texture")

#: What gradient-based strategies take norms over (see ``TrainConfig.gb_shared``).
GB_SHARED = ("last_conv", "all", "representation")

#: Config fields that may change between a run and its ``--resume`` (they do
#: not change the computation).
RESUME_MUTABLE = frozenset(
    {"out", "resume", "workers", "device", "progress", "cache", "compile", "skip_nonfinite",
     "channels_last"}
)

#: Named training recipes: :class:`TrainConfig` fields by recipe name.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "lr_schedule": "step",
        "lr_milestone": 0.4,
        "clip_grad_norm": None,
        "texture_normalize": True,
        "zero_init_residual": False,
        "patches": "tencrop",
        "patch_size": 224,
        "batch_size": 20,
    },
    "fast": {
        "lr_schedule": "cosine",
        "clip_grad_norm": 1.0,
        "texture_normalize": True,
        "zero_init_residual": True,
        "patches": "random",
        "patch_size": 128,
        "batch_size": 16,
    },
}

#: The recipe of ``python -m menet train`` when ``--recipe`` is not given.
DEFAULT_RECIPE = "fast"


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
    procedural_rain : int
        Add crops of the clean images of the first ``data`` folder with procedural
        rain of varied density, angle, width, length, blur and haze
        (:class:`menet.procedural_rain.ProceduralRainCrops`), drawn anew every
        epoch, ``procedural_rain`` times as many as one folder gives (so with
        ``data`` = 16 x Rain100L + Rain100H and ``procedural_rain=2``, 2 of every
        19 crops); 0 (the default) adds none. Random crops only.
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
    init : str, optional
        Start from these weights instead of a random initialisation (fine-tuning):
        a ``.safetensors`` export, a training checkpoint ``*.ckpt`` (read with
        ``weights_only=True``), or ``"bundled"`` for the pretrained model shipped
        with the package. The file's variant must be ``variant``; the optimizer,
        schedule and weighting start fresh. Not re-applied on ``resume``.
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
        Clip the global norm of the model's gradients to this value before the
        optimizer step (after unscaling, with a scaler); not in the paper.
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
    channels_last : bool
        Store the model ``channels_last`` (NHWC): every convolution then runs in
        that layout, 1.4x faster per step on two CPU cores (0.48 against 0.66 s
        for 16 x 3 x 128² forward and backward), with the same results up to
        rounding. ``python -m menet train`` turns it on for new runs; the
        default ``False`` keeps resuming a run of an earlier version identical.
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
    init: str | None = None
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
    channels_last: bool = False
    procedural_rain: int = 0

    def __post_init__(self) -> None:
        self.losses = tuple(self.losses)
        if isinstance(self.data, list | tuple):
            if not self.data:
                raise ValueError("data: give at least one folder")
            self.data = self.data[0] if len(self.data) == 1 else [str(d) for d in self.data]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option (run at construction)."""
        self._validate_data()
        self._validate_training()

    def _validate_data(self) -> None:
        if (self.data is None) == (self.synthetic is None):
            raise ValueError("give exactly one data source: data=DIR or synthetic='light'|'heavy'")
        if self.synthetic is not None and self.synthetic not in ("light", "heavy"):
            raise ValueError(f"synthetic must be 'light' or 'heavy'; found {self.synthetic!r}")
        if self.split is not None and self.ids is not None:
            raise ValueError("give either split (with split_key) or ids, not both")
        if self.patches not in ("tencrop", "random"):
            raise ValueError(f"patches must be 'tencrop' or 'random'; found {self.patches!r}")
        for name in ("patch_size", "batch_size", "patches_per_image", "synthetic_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; found {getattr(self, name)}")
        if self.procedural_rain < 0:
            raise ValueError(f"procedural_rain must be >= 0; found {self.procedural_rain}")
        if self.procedural_rain and (self.data is None or self.patches != "random"):
            raise ValueError("procedural_rain needs paired folders (data=...) and random crops "
                             "(patches='random'): it rains on their clean images")
        if self.patch_size % 4:
            raise ValueError(
                f"patch_size must be a multiple of 4 (texture loss uses 4x4 patches); "
                f"found {self.patch_size}"
            )

    def _validate_training(self) -> None:
        if not self.losses:
            raise ValueError("at least one loss is needed")
        if any(n not in LOSS_NAMES for n in self.losses) or len(set(self.losses)) != len(
            self.losses
        ):
            raise ValueError(
                f"losses must be distinct names from {LOSS_NAMES}; found {list(self.losses)}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose from {sorted(VARIANTS)}")
        if self.init is not None and not self.init.strip():
            raise ValueError("init: give a weights file (.safetensors or .ckpt) or 'bundled'")
        if self.gb_shared not in GB_SHARED:
            raise ValueError(f"gb_shared must be one of {GB_SHARED}; found {self.gb_shared!r}")
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
        extra = [n for n in self.weights or {} if n not in self.losses]
        if extra:
            raise ValueError(
                f"weights name loss {extra[0]!r}, which is not among losses {list(self.losses)}"
            )

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the run: 1 for a dry run, ``steps``, or ``epochs`` epochs.

        >>> TrainConfig(synthetic="light", epochs=3).total_steps(10)
        30
        """
        if self.dry_run:
            return 1
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None  # validate() guarantees one of them
        return self.epochs * steps_per_epoch

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


def check_resume(stored: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """Raise ``ValueError`` if ``config`` differs from the checkpoint's ``stored`` config.

    Only :data:`RESUME_MUTABLE` fields may differ. A checkpoint written before
    a field existed ran with that field's dataclass default.
    """
    current = config.to_dict()
    defaults = TrainConfig.__dataclass_fields__
    diffs = [
        f"{k}: checkpoint {stored.get(k, defaults[k].default)!r} vs now {v!r}"
        for k, v in current.items()
        if k not in RESUME_MUTABLE and stored.get(k, defaults[k].default) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the run was started with different settings "
            f"({'; '.join(diffs)}); use the original options or a new --out"
        )
