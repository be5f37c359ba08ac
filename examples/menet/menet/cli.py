"""Command line: ``python -m menet {train,evaluate,derain,demo} ...``.

Every subcommand is a thin layer over plain functions (:func:`menet.train.train`,
:func:`menet.evaluate.evaluate_pairs`, :func:`menet.derain.derain_files`,
:func:`menet.demo.run_demo`); :func:`main` parses ``argv`` and returns an exit
code, so it can be called from tests and scripts. Nothing is parsed at import.

>>> main(["--version"]) == 0  # doctest: +ELLIPSIS
menet ...
True
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = ["build_parser", "main"]

_EPILOG_TRAIN = """\
examples:
  python -m menet train --synthetic light --patch-size 64 --batch-size 8 --steps 500 --out runs/syn
  python -m menet train --data ../shared/data/Rain100L --split ../shared/data/rain100-split.json \\
      --split-key train --weighting gb --out runs/rain100l
  python -m menet train --out runs/rain100l --resume      # continue an interrupted run
"""


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


# ----------------------------------------------------------------------------- parsers


def _add_train(sub: Any) -> None:
    from .train import TrainConfig

    d = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p = sub.add_parser(
        "train",
        help="train MENET on a paired folder or on synthetic rain",
        description=(
            "Train MENET with per-step multi-task loss weighting from mtlweight. "
            "Writes <out>/last.ckpt after every epoch (atomically), log.csv, "
            "model.safetensors + model.json, and loss/weight plots. Options not "
            "given take their defaults, or with --resume the values stored in the checkpoint."
        ),
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        metavar="DIR",
        nargs="+",
        help="paired folder(s) (rain/, norain/ or pairs.csv); several are used together",
    )
    src.add_argument(
        "--synthetic", choices=["light", "heavy"], help="synthetic rain on the built-in images"
    )
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--split", metavar="JSON", help="split file with id lists")
    sel.add_argument("--ids", type=_ids, metavar="LIST", help="pair ids, e.g. 1,2,10-20")
    g.add_argument("--split-key", help=f"key of the split file (default {d['split_key']})")
    g.add_argument(
        "--patches", choices=["tencrop", "random"], help=f"patching (default {d['patches']})"
    )
    g.add_argument("--patch-size", type=int, help=f"patch side (default {d['patch_size']})")
    g.add_argument(
        "--patches-per-image",
        type=int,
        help=f"random crops per image per epoch (default {d['patches_per_image']})",
    )
    g.add_argument("--batch-size", type=int, help=f"patches per step (default {d['batch_size']})")
    g.add_argument("--workers", type=int, help=f"DataLoader workers (default {d['workers']})")
    g.add_argument(
        "--no-cache", dest="cache", action="store_false", help="don't keep decoded images in memory"
    )

    g = p.add_argument_group("losses and weighting")
    g.add_argument(
        "--losses",
        type=_losses,
        help="comma-separated subset of pixel,edge,texture (default all three)",
    )
    g.add_argument(
        "--weighting",
        help=f"mtlweight strategy by name, e.g. gb, lb, fixed (default {d['weighting']})",
    )
    g.add_argument(
        "--weights",
        type=_weights,
        metavar="NAME=W,...",
        help="fixed weights, e.g. pixel=1,edge=0.01",
    )
    g.add_argument(
        "--gb-shared",
        choices=["last_conv", "all", "representation"],
        help=f"what gradient norms are taken over (default {d['gb_shared']})",
    )
    g.add_argument(
        "--weighting-options",
        type=lambda s: _parse_kv(s, "--weighting-options"),
        metavar="K=V,...",
        help="extra constructor options of the strategy",
    )

    g = p.add_argument_group("model and optimisation")
    g.add_argument(
        "--variant",
        choices=["shallow", "shallow-ca", "deep-ca"],
        help=f"network (default {d['variant']})",
    )
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help=f"training epochs (default {d['epochs']})")
    length.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    g.add_argument(
        "--lr", type=float, help=f"initial learning rate, /10 at 40%% (default {d['lr']})"
    )
    g.add_argument(
        "--lr-schedule",
        choices=["step", "cosine"],
        help=f"/10 at 40%% of the steps, or cosine decay to 0 (default {d['lr_schedule']})",
    )
    g.add_argument(
        "--clip-grad-norm",
        type=float,
        metavar="MAX",
        help="clip the global gradient norm to MAX before each step (default: no clipping)",
    )
    g.add_argument(
        "--texture-sum",
        dest="texture_normalize",
        action="store_false",
        help="texture loss as the sum over Gram entries, not their mean (2304x larger)",
    )
    g.add_argument(
        "--zero-init-residual",
        action="store_true",
        help="start the last conv at zero, so the network starts as the identity",
    )
    g.add_argument("--seed", type=int, help=f"random seed (default {d['seed']})")
    g.add_argument(
        "--device", help="auto, cpu or cuda[:N] (default auto: CUDA when available)"
    )
    g.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: float16 + GradScaler on CUDA, bfloat16 autocast on CPU",
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

    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help=f"output directory (default {d['out']})")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.ckpt")
    g.add_argument("--dry-run", action="store_true", help="run a single step")
    g.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model (or the rainy input) with PSNR/SSIM",
        description=(
            "Evaluate de-raining on a paired folder or synthetic rain. 'paper' protocol: RGB, "
            "ten 224x224 crops per image; 'standard': Y channel (BT.601), full image. Writes "
            "per-image CSV, a PSNR histogram, an SSIM box plot and an example grid into --out."
        ),
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", metavar="FILE", help="model.safetensors or a .ckpt")
    model.add_argument(
        "--input-only", action="store_true", help="score the rainy input itself (no model)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="paired folder")
    src.add_argument("--synthetic", choices=["light", "heavy"], help="synthetic rain")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--split", metavar="JSON", help="split file with id lists")
    sel.add_argument("--ids", type=_ids, metavar="LIST", help="pair ids, e.g. 1,2,10-20")
    p.add_argument("--split-key", default="test", help="key of the split file (default test)")
    p.add_argument(
        "--images", type=lambda s: s.split(","), help="built-in image names (with --synthetic)"
    )
    p.add_argument("--rain-seed", type=int, default=1, help="synthetic rain seed (default 1)")
    p.add_argument(
        "--protocol",
        choices=["paper", "standard", "both"],
        default="both",
        help="scoring protocol (default both)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--batch-size", type=int, default=10, help="images/crops per batch (default 10)")
    p.add_argument("--out", metavar="DIR", help="write CSV, plots and a grid here")


def _add_derain(sub: Any) -> None:
    p = sub.add_parser(
        "derain",
        help="de-rain image files or folders",
        description=(
            "De-rain images with a trained model. Outputs keep the input's size and format "
            "(PNG->PNG, JPEG->JPEG quality --quality). Large images are processed in "
            "overlapping tiles blended with a smooth ramp. Unreadable files are reported and "
            "skipped; the exit code is 1 if any failed."
        ),
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("--weights", required=True, metavar="FILE", help="model.safetensors or a .ckpt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tile", type=int, default=512, help="tile side, 0 = whole image (default 512)")
    p.add_argument(
        "--overlap",
        type=int,
        default=64,
        help="tile overlap in pixels, blended with a Hann ramp (default 64)",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
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
            "before/after grid plus training plots in --out."
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
    from importlib import metadata

    try:
        return metadata.version("menet")
    except metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("menet"), "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    """The ``menet`` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m menet",
        description="MENET single-image de-raining with multi-task loss weighting (mtlweight).",
    )
    parser.add_argument("--version", action="version", version=f"menet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_derain(sub)
    _add_demo(sub)
    return parser


# ----------------------------------------------------------------------------- commands


def _cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_checkpoint
    from .train import TrainConfig, train

    given = {k: v for k, v in vars(args).items() if k != "command"}
    base: dict[str, Any] = {}
    if given.get("resume"):
        out = Path(given.get("out", TrainConfig.__dataclass_fields__["out"].default))
        try:
            base = dict(load_checkpoint(out / "last.ckpt")["config"])
        except CheckpointError as exc:
            print(f"menet train: cannot resume: {exc}", file=sys.stderr)
            return 2
    if "steps" in given:
        given.setdefault("epochs", None)
    if "epochs" in given:
        given.setdefault("steps", None)
    if "data" in given:
        given.setdefault("synthetic", None)
    if "synthetic" in given:
        given.setdefault("data", None)
    if "ids" in given:
        given.setdefault("split", None)
    if "split" in given:
        given.setdefault("ids", None)
    merged = {**base, **given}
    if "data" not in merged and "synthetic" not in merged:
        print(
            "menet train: give a data source: --data DIR (with --split/--ids) or "
            "--synthetic light|heavy",
            file=sys.stderr,
        )
        return 2
    try:
        config = TrainConfig(**merged)
    except (TypeError, ValueError) as exc:
        print(f"menet train: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(config)
    except (ValueError, OSError, CheckpointError, FloatingPointError) as exc:
        # OSError: unreadable data, or a full/read-only output folder (the message names
        # the file); FloatingPointError: a NaN/inf loss (the message names step and task).
        print(f"menet train: {exc}", file=sys.stderr)
        return 2
    from .distributed import context

    if not context().is_main:  # under torchrun, rank 0 reports for every process
        return 130 if result.interrupted else 0
    if result.interrupted:
        where = (
            f"the last complete checkpoint is {result.checkpoint}"
            if result.checkpoint
            else "no epoch had finished, so there is no checkpoint yet"
        )
        print(
            f"\nmenet train: interrupted at step {result.step}/{result.total_steps}; {where}.\n"
            f"Resume with: python -m menet train --out {config.out} --resume",
            file=sys.stderr,
        )
        return 130
    losses = "" if result.last is None else "; last losses: " + " ".join(
        f"{k}={v:.4g}" for k, v in result.last.losses.items()
    )
    skipped = ""
    if result.skipped_steps:
        shown = ", ".join(map(str, result.skipped_steps[:10]))
        more = ", ..." if len(result.skipped_steps) > 10 else ""
        skipped = (
            f"\nskipped {len(result.skipped_steps)} step(s) with non-finite losses: {shown}{more}"
        )
    print(
        f"trained {result.step} steps ({result.epoch} epochs) in {result.seconds:.0f} s"
        f"{losses}\nweights: {result.weights_file}\nlog: {result.log}{skipped}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .checkpoint import CheckpointError, load_model
    from .data import PairedFolder, SyntheticRainPairs, builtin_images, load_split
    from .derain import derain_image
    from .evaluate import (
        evaluate_pairs,
        plot_psnr_histogram,
        plot_ssim_box,
        save_grid,
        summarize,
        write_csv,
    )
    from .train import resolve_device

    try:
        device = resolve_device(args.device)
        model = None if args.input_only else load_model(args.weights, device=device)
        if args.synthetic is not None:
            images = builtin_images()
            if args.images:
                known = [n for n, _ in images]
                unknown = [n for n in args.images if n not in known]
                if unknown:
                    raise ValueError(f"unknown built-in image {unknown[0]!r}; available: {known}")
                images = [(n, x) for n, x in images if n in args.images]
            dataset: Any = SyntheticRainPairs(images, preset=args.synthetic, seed=args.rain_seed)
        else:
            ids = args.ids
            if args.split is not None:
                split = load_split(args.split)
                if args.split_key not in split:
                    raise ValueError(
                        f"split file {args.split} has no key {args.split_key!r}; "
                        f"found {sorted(split)}"
                    )
                ids = split[args.split_key]
            dataset = PairedFolder(args.data, ids=ids, cache=False)
    except (CheckpointError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"menet evaluate: {exc}", file=sys.stderr)
        return 2

    protocols: list[Literal["paper", "standard"]] = (
        ["paper", "standard"] if args.protocol == "both" else [args.protocol]
    )
    described = {
        "paper": "paper protocol (RGB, ten 224x224 crops)",
        "standard": "standard protocol (Y channel, full image)",
    }
    out = Path(args.out) if args.out else None
    report: dict[str, dict[str, float]] = {}
    try:
        for protocol in protocols:
            records = evaluate_pairs(
                model, dataset, protocol, device, args.batch_size, progress=True
            )
            s = summarize(records)
            report[protocol] = s
            what = "rainy input" if model is None else "model"
            line = (
                f"{described[protocol]}, {int(s['count'])} images: input PSNR "
                f"{s['input_psnr']:.2f} dB / SSIM {s['input_ssim']:.4f}"
            )
            if model is not None:
                line += (
                    f" -> {what} PSNR {s['output_psnr']:.2f} dB / SSIM {s['output_ssim']:.4f} "
                    f"({s['psnr_gain']:+.2f} dB)"
                )
            print(line)
            if out is not None:
                write_csv(records, out / f"scores-{protocol}.csv")
                plot_psnr_histogram(records, out / f"psnr-{protocol}.png")
                plot_ssim_box(records, out / f"ssim-{protocol}.png")
    except ValueError as exc:
        print(f"menet evaluate: {exc}", file=sys.stderr)
        return 2
    if out is not None:
        (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
        if model is not None:
            rows = [dataset[i] for i in range(min(3, len(dataset)))]
            save_grid([(r, derain_image(model, r), c) for r, c in rows], out / "grid.png")
        print(f"wrote scores, plots and summary.json to {out}")
    return 0


def _cmd_derain(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_model
    from .derain import derain_files
    from .train import resolve_device

    try:
        device = resolve_device(args.device)
        model = load_model(args.weights, device=device)
    except (CheckpointError, RuntimeError, ValueError) as exc:
        print(f"menet derain: {exc}", file=sys.stderr)
        return 2
    if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile):
        print(
            f"menet derain: need --tile >= 0 and 0 <= --overlap < --tile; found "
            f"--tile {args.tile} --overlap {args.overlap}",
            file=sys.stderr,
        )
        return 2
    report = derain_files(
        model,
        args.inputs,
        args.out,
        tile=args.tile or None,
        overlap=args.overlap,
        quality=args.quality,
        progress=args.progress,
    )
    print(f"de-rained {len(report.written)} image(s) into {args.out}")
    if report.failed:
        print(f"menet derain: {len(report.failed)} file(s) failed:", file=sys.stderr)
        for src, _ in report.failed:
            print(f"  {src}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        out=args.out,
        quick=args.quick,
        steps=args.steps,
        weighting=args.weighting,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
    )
    return 0 if result.gain_db > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``menet`` command line on ``argv`` (default ``sys.argv[1:]``); return the exit code.

    ``--help`` and usage errors return argparse's exit codes (0 and 2) instead
    of raising :class:`SystemExit`.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    commands = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "derain": _cmd_derain,
        "demo": _cmd_demo,
    }
    return commands[args.command](args)
