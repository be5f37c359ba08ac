"""The ``menet`` argument parser: :func:`build_parser` (the docs render it).

Options of ``train`` default to ``argparse.SUPPRESS``: only the options given
reach :func:`menet.cli.train_config`, which lays them over the recipe (or the
resumed run's stored config). Members of a mutually exclusive group that set
different fields (``--steps``/``--epochs``, ``--data``/``--synthetic``,
``--split``/``--ids``) clear each other's field, so a resumed run's ``epochs``
does not survive a new ``--steps``.

>>> args = build_parser().parse_args(["train", "--synthetic", "light", "--steps", "3"])
>>> args.steps, args.epochs, args.data
(3, None, None)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import DEFAULT_RECIPE, GB_SHARED, RECIPES, TrainConfig
from .ensemble import ENSEMBLES
from .model import VARIANTS

__all__ = ["TRAIN_DEFAULTS", "build_parser"]

_EPILOG_TRAIN = """\
examples:
  python -m menet train --synthetic light --patch-size 64 --batch-size 8 --steps 500 --out runs/syn
  python -m menet train --data ../shared/data/Rain100L --split ../shared/data/rain100-split.json \\
      --split-key train --steps 3000 --out runs/rain100l          # the fast recipe
  python -m menet train --recipe paper --data ../shared/data/Rain100L --out runs/paper
  python -m menet train --out runs/rain100l --resume      # continue an interrupted run
"""

#: The dataclass defaults of TrainConfig, by field name.
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _parse_kv(text: str, what: str) -> dict[str, Any]:
    """``"a=1,b=0.01"`` -> ``{"a": 1, "b": 0.01}`` (int, float, bool or str values)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{what}: expected NAME=VALUE, found {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        out[key] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _weights(text: str) -> dict[str, float]:
    parsed = _parse_kv(text, "--weights")
    try:
        return {k: float(v) for k, v in parsed.items()}
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--weights values must be numbers: {text!r}") from exc


def _ids(text: str) -> list[int]:
    """``"1,2,5-7"`` -> ``[1, 2, 5, 6, 7]``."""
    ids: list[int] = []
    try:
        for part in filter(None, (s.strip() for s in text.split(","))):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                ids += list(range(lo, hi + 1))
            else:
                ids.append(int(part))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--ids: expected e.g. 1,2,5-9; found {text!r}") from exc
    return ids


def _losses(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


class _Exclusive(argparse.Action):
    """Store the value and set the other members of its mutually exclusive group to ``None``.

    With ``argument_default=SUPPRESS`` only given options reach the config, so
    ``--steps 9`` must also say ``epochs=None`` (else the default or the
    resumed run's ``epochs`` would be kept next to it).
    """

    def __init__(self, *args: Any, clears: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clears = tuple(clears)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        for other in self.clears:
            setattr(namespace, other, None)


def _pair(group: Any, first: dict[str, Any], second: dict[str, Any]) -> None:
    """Two mutually exclusive options (``flag``, ``dest``, ...), each clearing the other's dest."""
    one, two = dict(first), dict(second)
    flag_one, flag_two = one.pop("flag"), two.pop("flag")
    group.add_argument(flag_one, action=_Exclusive, clears=[two["dest"]], **one)
    group.add_argument(flag_two, action=_Exclusive, clears=[one["dest"]], **two)


def _default(name: str) -> str:
    """Help text of a default: ``"fast: 128, paper: 224"`` for a recipe's field, else its value."""
    if name in RECIPES[DEFAULT_RECIPE]:
        return ", ".join(f"{r}: {RECIPES[r].get(name, TRAIN_DEFAULTS[name])}" for r in RECIPES)
    return f"default {TRAIN_DEFAULTS[name]}"


# ----------------------------------------------------------------------------- parsers


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train MENET on a paired folder or on synthetic rain",
        description=(
            "Train MENET with per-step multi-task loss weighting from mtlweight. "
            "Writes <out>/last.ckpt after every epoch and on Ctrl-C (atomically), log.csv, "
            "model.safetensors + model.json, and loss/weight plots. Options not given take "
            f"the values of --recipe (default {DEFAULT_RECIPE}), or with --resume the values "
            "stored in the checkpoint."
        ),
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help=f"named training recipe; explicit options override it (default {DEFAULT_RECIPE}; "
        "paper: step schedule /10 at 40%%, no clipping, normalised texture loss, ten 224 px "
        "crops, batch 20; fast: cosine schedule, clipping at 1, texture mean, zero-init "
        "residual, random 128 px crops, batch 16)",
    )
    _add_train_data(p.add_argument_group("data"))
    _add_train_losses(p.add_argument_group("losses and weighting"))
    _add_train_model(p.add_argument_group("model and optimisation"))
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help=f"output directory ({_default('out')})")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.ckpt")
    g.add_argument(
        "--force", action="store_true",
        help="start a new run in an --out that already holds one, replacing it",
    )
    g.add_argument("--dry-run", action="store_true", help="run a single step")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_train_data(g: Any) -> None:
    _pair(
        g.add_mutually_exclusive_group(),
        {"flag": "--data", "dest": "data", "metavar": "DIR", "nargs": "+",
         "help": "paired folder(s) (rain/, norain/ or pairs.csv); several are used together"},
        {"flag": "--synthetic", "dest": "synthetic", "choices": ["light", "heavy"],
         "help": "synthetic rain on the built-in images"},
    )
    _pair(
        g.add_mutually_exclusive_group(),
        {"flag": "--split", "dest": "split", "metavar": "JSON", "help": "split file with id lists"},
        {"flag": "--ids", "dest": "ids", "type": _ids, "metavar": "LIST",
         "help": "pair ids, e.g. 1,2,10-20"},
    )
    g.add_argument("--split-key", help=f"key of the split file ({_default('split_key')})")
    g.add_argument(
        "--patches", choices=["tencrop", "random"], help=f"patching ({_default('patches')})"
    )
    g.add_argument("--patch-size", type=int, help=f"patch side ({_default('patch_size')})")
    g.add_argument(
        "--patches-per-image",
        type=int,
        help=f"random crops per image per epoch ({_default('patches_per_image')})",
    )
    g.add_argument(
        "--batch-size", type=int, help=f"patches per step ({_default('batch_size')})"
    )
    g.add_argument(
        "--procedural-rain", type=int, metavar="K",
        help="add crops of the first folder's clean images with procedural rain (varied "
        "density, angle, width, blur, haze; new every epoch), K times as many as one folder "
        f"gives ({_default('procedural_rain')})",
    )
    g.add_argument(
        "--workers", type=int, help=f"DataLoader workers ({_default('workers')})"
    )
    g.add_argument(
        "--no-cache", dest="cache", action="store_false", help="don't keep decoded images in memory"
    )


def _add_train_losses(g: Any) -> None:
    g.add_argument(
        "--losses",
        type=_losses,
        help="comma-separated subset of pixel,edge,texture (default all three)",
    )
    g.add_argument(
        "--weighting",
        help=f"mtlweight strategy by name, e.g. gb, lb, fixed ({_default('weighting')})",
    )
    g.add_argument(
        "--weights", type=_weights, metavar="NAME=W,...",
        help="fixed weights, e.g. pixel=1,edge=0.01",
    )
    g.add_argument(
        "--gb-shared",
        choices=list(GB_SHARED),
        help=f"what gradient norms are taken over ({_default('gb_shared')})",
    )
    g.add_argument(
        "--weighting-options",
        type=lambda s: _parse_kv(s, "--weighting-options"),
        metavar="K=V,...",
        help="extra constructor options of the strategy",
    )


def _add_train_model(g: Any) -> None:
    g.add_argument(
        "--variant", choices=sorted(VARIANTS), help=f"network ({_default('variant')})"
    )
    _pair(
        g.add_mutually_exclusive_group(),
        {"flag": "--epochs", "dest": "epochs", "type": int,
         "help": f"training epochs ({_default('epochs')})"},
        {"flag": "--steps", "dest": "steps", "type": int,
         "help": "optimizer steps (instead of --epochs)"},
    )
    g.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="fine-tune: start from these weights (.safetensors, .ckpt, or 'bundled' for the "
        "shipped model) instead of a random initialisation",
    )
    g.add_argument("--lr", type=float, help=f"initial learning rate ({_default('lr')})")
    g.add_argument(
        "--lr-schedule",
        choices=["step", "cosine"],
        help=f"/10 at 40%% of the steps, or cosine decay to 0 ({_default('lr_schedule')})",
    )
    g.add_argument(
        "--clip-grad-norm",
        type=float,
        metavar="MAX",
        help=f"clip the global gradient norm to MAX ({_default('clip_grad_norm')})",
    )
    _switch(g, "texture_normalize",
            ("--texture-mean", "texture loss as the mean over Gram entries (both recipes)"),
            ("--texture-sum", "texture loss as the sum over Gram entries (2304x the mean)"))
    _switch(g, "zero_init_residual",
            ("--zero-init-residual",
             "start the last conv at zero, so the network starts as the identity (fast)"),
            ("--no-zero-init-residual", "fan-in initialisation everywhere (paper)"))
    g.add_argument("--seed", type=int, help=f"random seed ({_default('seed')})")
    g.add_argument("--device", help="auto, cpu or cuda[:N] (default auto: CUDA when available)")
    g.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: float16 + GradScaler on CUDA, bfloat16 autocast on CPU "
        "(about twice as fast on CPUs with AVX-512 BF16 / AMX, same scores)",
    )
    g.add_argument(
        "--compile",
        metavar="BACKEND",
        help="torch.compile the model with this backend (e.g. inductor, aot_eager)",
    )
    g.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip steps whose losses are NaN/inf instead of stopping",
    )
    _switch(g, "channels_last",
            ("--channels-last",
             "store the model NHWC: 1.4x faster convolutions on CPU (default for new runs)"),
            ("--no-channels-last",
             "keep the model NCHW (the default when resuming a run of an earlier version)"))


def _switch(
    group: argparse._ArgumentGroup, dest: str, on: tuple[str, str], off: tuple[str, str]
) -> None:
    """Two mutually exclusive flags that set ``dest`` to ``True`` / ``False``: (flag, help)."""
    pair = group.add_mutually_exclusive_group()
    pair.add_argument(on[0], dest=dest, action="store_true", help=on[1])
    pair.add_argument(off[0], dest=dest, action="store_false", help=off[1])


def _add_source(p: argparse.ArgumentParser, split_key: str) -> None:
    """The data options of ``evaluate``: a paired folder or synthetic rain, ids or a split."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="paired folder")
    src.add_argument("--synthetic", choices=["light", "heavy"], help="synthetic rain")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--split", metavar="JSON", help="split file with id lists")
    sel.add_argument("--ids", type=_ids, metavar="LIST", help="pair ids, e.g. 1,2,10-20")
    p.add_argument(
        "--split-key", default=split_key, help=f"key of the split file (default {split_key})"
    )
    p.add_argument(
        "--images", type=lambda s: s.split(","), help="built-in image names (with --synthetic)"
    )
    p.add_argument("--rain-seed", type=int, default=1, help="synthetic rain seed (default 1)")


def _add_ensemble(p: argparse.ArgumentParser) -> None:
    """``--ensemble`` of ``evaluate`` and ``derain``."""
    p.add_argument(
        "--ensemble",
        choices=list(ENSEMBLES),
        default="none",
        help="flip self-ensemble: average the outputs for mirrored inputs; 'flips' = identity, "
        "horizontal, vertical and both (4x the time), 'hflip' = 2x (default none)",
    )


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model (or the rainy input) with PSNR/SSIM",
        description=(
            "Evaluate de-raining on a paired folder or synthetic rain. 'paper' protocol: RGB, "
            "ten 224x224 crops per image; 'standard': Y channel (BT.601), full image. Writes "
            "per-image CSV, a PSNR histogram, an SSIM box plot and an example grid into --out. "
            "Without --weights the bundled pretrained model is scored."
        ),
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--weights", metavar="FILE", help="model.safetensors or a .ckpt (default: bundled model)"
    )
    model.add_argument(
        "--input-only", action="store_true", help="score the rainy input itself (no model)"
    )
    _add_source(p, split_key="test")
    p.add_argument(
        "--protocol",
        choices=["paper", "standard", "both"],
        default="both",
        help="scoring protocol (default both)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--batch-size", type=int, default=10, help="images/crops per batch (default 10)")
    _add_ensemble(p)
    p.add_argument("--out", metavar="DIR", help="write CSV, plots and a grid here")
    p.add_argument("--force", action="store_true", help="replace results already in --out")


def _add_derain(sub: Any) -> None:
    p = sub.add_parser(
        "derain",
        help="de-rain image files or folders",
        description=(
            "De-rain images with a trained model (default: the bundled pretrained model). "
            "Outputs keep the input's size and format (PNG->PNG, JPEG->JPEG quality --quality). "
            "Large images are processed in overlapping tiles blended with a smooth ramp. "
            "Photos are de-rained upright (EXIF orientation) and keep their EXIF, colour "
            "profile, transparency and greyscale. Results already in --out are never "
            "replaced without --force. "
            "Unreadable files are reported and skipped; the exit code is 1 if any failed."
        ),
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument(
        "--weights", metavar="FILE", help="model.safetensors or a .ckpt (default: bundled model)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true", help="replace results already in --out")
    existing.add_argument(
        "--skip-existing", action="store_true",
        help="keep results already in --out and de-rain only the other images",
    )
    p.add_argument("--tile", type=int, default=512, help="tile side, 0 = whole image (default 512)")
    p.add_argument(
        "--overlap",
        type=int,
        default=64,
        help="tile overlap in pixels, blended with a Hann ramp (default 64)",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    _add_ensemble(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="synthesise rain, train briefly on CPU, evaluate, write images and plots",
        description=(
            "End-to-end demo needing no data download: light synthetic rain on scikit-image's "
            "built-in pictures, a few minutes of CPU training of MENET shallow-ca with GB "
            "weighting of pixel+edge+texture losses, evaluation on held-out images, and a "
            "before/after grid plus training plots in --out. The demo's model is a quick "
            "check of the pipeline, not a model for real photos (use 'derain')."
        ),
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--quick", action="store_true", help="a ~30 s version (for tests)")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--weighting", default="gb", help="mtlweight strategy (default gb)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    try:
        return metadata.version("menet")
    except metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("menet"), "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    """The ``menet`` argument parser with its four subcommands."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    parser = argparse.ArgumentParser(
        prog="menet" if invoked == "menet" else "python -m menet",  # the console script
        description="MENET single-image de-raining with multi-task loss weighting (mtlweight).",
    )
    parser.add_argument("--version", action="version", version=f"menet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_derain(sub)
    _add_demo(sub)
    return parser
