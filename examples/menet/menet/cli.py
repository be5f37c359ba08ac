"""Command line: ``python -m menet {train,evaluate,derain,demo} ...``.

Every subcommand turns its arguments into plain values (a
:class:`~menet.config.TrainConfig`, a :class:`~menet.building.PairSource`, ...)
and calls library functions (:func:`menet.train.train`,
:func:`menet.evaluate.evaluate_pairs`, :func:`menet.derain.derain_files`,
:func:`menet.demo.run_demo`); :func:`main` parses ``argv`` and returns an exit
code, so it can be called from tests and scripts. Nothing is parsed at import.
:func:`build_parser` (from :mod:`menet.parser`) returns the whole parser.

>>> main(["--version"]) == 0  # doctest: +ELLIPSIS
menet ...
True
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ._threads import configure_threads
from .building import (
    DeviceError,
    PairSource,
    build_pairs,
    init_weights_path,
    native_bfloat16,
    resolve_device,
)
from .checkpoint import CheckpointError, load_checkpoint, load_model
from .config import DEFAULT_RECIPE, RECIPES, TrainConfig
from .demo import run_demo
from .derain import collect_inputs, derain_files, derain_image
from .distributed import context
from .ensemble import Ensemble, FlipEnsemble, with_ensemble
from .evaluate import (
    evaluate_pairs,
    plot_psnr_histogram,
    plot_ssim_box,
    save_grid,
    summarize,
    write_csv,
)
from .images import quantize
from .metrics import psnr, rgb_to_y
from .outputs import RUN_FILES, ensure_out_dir, refuse_existing
from .parser import TRAIN_DEFAULTS, build_parser
from .pretrained import bundled_weights, describe_weights
from .train import TrainResult, train

__all__ = ["build_parser", "main"]

# ----------------------------------------------------------------------------- commands


def _fail(command: str, message: object, code: int = 2) -> int:
    print(f"menet {command}: {message}", file=sys.stderr)
    return code


def train_config(given: dict[str, Any]) -> TrainConfig:
    """The config of ``menet train``: recipe (or resumed config) < explicit options.

    Without ``--resume`` the options not given take the values of ``--recipe``
    (default :data:`~menet.config.DEFAULT_RECIPE`), then the dataclass
    defaults; with ``--resume`` those stored in ``<out>/last.ckpt`` (plus the
    recipe only when ``--recipe`` is given).
    """
    given = dict(given)
    recipe = given.pop("recipe", None)
    base: dict[str, Any] = {}
    if given.get("resume"):
        out = Path(given.get("out", TRAIN_DEFAULTS["out"]))
        base = dict(load_checkpoint(out / "last.ckpt")["config"])
    else:
        recipe = recipe or DEFAULT_RECIPE
        base["channels_last"] = True  # faster, same results up to rounding; new runs only
    if recipe is not None:
        base.update(RECIPES[recipe])
    merged = {**base, **given}
    if merged.get("data") is None and merged.get("synthetic") is None:
        raise ValueError(
            "give a data source: --data DIR (with --split/--ids) or --synthetic light|heavy"
        )
    return TrainConfig(**merged)


def _cmd_train(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k not in ("command", "force")}
    try:
        config = train_config(given)
    except CheckpointError as exc:
        return _fail("train", f"cannot resume: {exc}")
    except (TypeError, ValueError) as exc:
        return _fail("train", exc)
    if not config.resume and not getattr(args, "force", False):
        taken = refuse_existing(
            [Path(config.out) / name for name in RUN_FILES], "file",
            f"{config.out} holds a run: continue it with --resume, or pass --force to start "
            "over and replace it",
        )
        if taken:
            return _fail("train", taken)
    try:
        ensure_out_dir(config.out)
    except OSError as exc:
        return _fail("train", exc)
    tip = amp_tip(config)
    if tip and context().is_main:
        print(tip, file=sys.stderr)
    if config.init is not None and not config.resume and context().is_main:
        try:
            print(f"init: {describe_weights(init_weights_path(config.init))}", file=sys.stderr)
        except CheckpointError as exc:  # --init bundled where the package lacks it
            return _fail("train", exc)
    try:
        result = train(config)
    except (ValueError, OSError, CheckpointError, DeviceError, FloatingPointError) as exc:
        # OSError: unreadable data, or a full/read-only output folder (the message names
        # the file); FloatingPointError: a NaN/inf loss (the message names step and task);
        # DeviceError: --device cuda without CUDA.
        return _fail("train", exc)
    if not context().is_main:  # under torchrun, rank 0 reports for every process
        return 130 if result.interrupted else 0
    if result.interrupted:
        print(_interrupted_message(result, config), file=sys.stderr)
        return 130
    if result.already_finished:
        print(f"the run in {config.out} had already finished (step {result.step} of "
              f"{result.total_steps}): nothing to train\nweights: {result.weights_file}")
        return 0
    print(_trained_message(result))
    return 0


def amp_tip(config: TrainConfig) -> str | None:
    """A hint to pass ``--amp`` when training in float32 on a CPU with native bfloat16."""
    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if config.amp or not on_cpu or not native_bfloat16():
        return None
    return (
        "menet train: tip: this CPU computes bfloat16 natively (AVX-512 BF16 / AMX); --amp "
        "trains about twice as fast with the same scores (benchmarks/results/recipe-amp.md)"
    )


def _interrupted_message(result: TrainResult, config: TrainConfig) -> str:
    head = f"\nmenet train: interrupted at step {result.step}/{result.total_steps}; "
    if result.checkpoint is None:
        return head + (
            "no checkpoint was written yet, so there is nothing to resume: "
            "run the same command again without --resume"
        )
    return head + (
        f"the checkpoint {result.checkpoint} holds step {result.checkpoint_step}.\n"
        f"Resume with: python -m menet train --out {config.out} --resume"
    )


def _trained_message(result: TrainResult) -> str:
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
    head = f"trained {result.step} steps ({result.epoch} epochs) in {result.seconds:.0f} s"
    if result.resumed_from is not None:
        head += (
            f" over all sittings; this sitting resumed from step {result.resumed_from} and "
            f"trained steps {result.resumed_from + 1}-{result.step} in "
            f"{result.sitting_seconds:.0f} s"
        )
    return f"{head}{losses}\nweights: {result.weights_file}\nlog: {result.log}{skipped}"


def _load_weights(weights: str | None, device: Any, ensemble: Ensemble = "none") -> nn.Module:
    """The model of ``--weights``, or the bundled one, wrapped in ``--ensemble``.

    Says on stderr which weights are used, and the self-ensemble when there is one.
    """
    path = Path(weights) if weights is not None else bundled_weights()
    model = load_model(path, device=device)
    print(f"weights: {describe_weights(path)}", file=sys.stderr)
    if ensemble != "none":
        print(f"self-ensemble: {ensemble} ({FlipEnsemble.passes(ensemble)} passes per image)",
              file=sys.stderr)
    return with_ensemble(model, ensemble)


def _evaluate_source(args: argparse.Namespace) -> PairSource:
    return PairSource(
        data=args.data,
        synthetic=args.synthetic,
        split=args.split,
        split_key=args.split_key,
        ids=args.ids,
        images=args.images,
        rain_seed=args.rain_seed,
        cache=False,
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    try:
        if out is not None:
            ensure_out_dir(out)
            names = ("summary.json", "grid.png", "scores-paper.csv", "scores-standard.csv")
            taken = None if args.force else refuse_existing(
                [out / n for n in names], "result", "pass --force to replace them")
            if taken:
                return _fail("evaluate", taken)
        device = resolve_device(args.device)
        model = (None if args.input_only
                 else _load_weights(args.weights, device, args.ensemble))
        dataset = build_pairs(_evaluate_source(args))
    except (CheckpointError, DeviceError, OSError, ValueError) as exc:
        return _fail("evaluate", exc)
    protocols: list[Literal["paper", "standard"]] = (
        ["paper", "standard"] if args.protocol == "both" else [args.protocol]
    )
    report: dict[str, dict[str, float]] = {}
    try:
        for protocol in protocols:
            records = evaluate_pairs(
                model, dataset, protocol, device, args.batch_size, progress=True
            )
            report[protocol] = summarize(records)
            print(_score_line(protocol, report[protocol], with_model=model is not None))
            if out is not None:
                write_csv(records, out / f"scores-{protocol}.csv")
                plot_psnr_histogram(records, out / f"psnr-{protocol}.png")
                plot_ssim_box(records, out / f"ssim-{protocol}.png")
    except ValueError as exc:
        return _fail("evaluate", exc)
    if out is not None:
        (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
        if model is not None:
            rows, labels = _grid_rows(model, dataset)
            save_grid(rows, out / "grid.png", row_labels=labels)
        print(f"wrote scores, plots and summary.json to {out}")
    return 0


def _grid_rows(
    model: nn.Module, dataset: Any, count: int = 3
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], list[str]]:
    """The first ``count`` pairs as (rainy, de-rained, clean), labelled by name and Y PSNR."""
    names = getattr(dataset, "names", None)
    rows, labels = [], []
    for i in range(min(count, len(dataset))):
        rainy, clean = dataset[i]
        derained = derain_image(model, rainy)
        before, after = (float(psnr(rgb_to_y(x[None]), rgb_to_y(clean[None]))[0])
                         for x in (quantize(rainy), quantize(derained)))
        name = names[i] if names is not None and i < len(names) else f"pair {i + 1}"
        rows.append((rainy, derained, clean))
        labels.append(f"{name}\n{before:.1f} -> {after:.1f} dB (Y)")
    return rows, labels


def _score_line(protocol: str, s: dict[str, float], with_model: bool) -> str:
    described = {
        "paper": "paper protocol (RGB, ten 224x224 crops)",
        "standard": "standard protocol (Y channel, full image)",
    }
    line = (
        f"{described[protocol]}, {int(s['count'])} images: input PSNR "
        f"{s['input_psnr']:.2f} dB / SSIM {s['input_ssim']:.4f}"
    )
    if with_model:
        line += (
            f" -> model PSNR {s['output_psnr']:.2f} dB / SSIM {s['output_ssim']:.4f} "
            f"({s['psnr_gain']:+.2f} dB)"
        )
    return line


def _cmd_derain(args: argparse.Namespace) -> int:
    if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile):
        return _fail(
            "derain",
            f"need --tile >= 0 and 0 <= --overlap < --tile; found "
            f"--tile {args.tile} --overlap {args.overlap}",
        )
    empty = [p for p in args.inputs if Path(p).is_dir() and not collect_inputs([p])]
    if empty:
        return _fail("derain", f"no images (.png, .jpg, ...) in folder {empty[0]}")
    out = Path(args.out)
    targets = [(src, out / rel) for src, rel in collect_inputs(args.inputs)]
    taken = None if args.force or args.skip_existing else refuse_existing(
        [dst for src, dst in targets if not (src.exists() and src.resolve() == dst.resolve())],
        "result", "pass --force to replace them or --skip-existing to keep them")
    if taken:
        return _fail("derain", taken)
    try:
        ensure_out_dir(out)
        model = _load_weights(args.weights, resolve_device(args.device), args.ensemble)
    except (CheckpointError, DeviceError, OSError, ValueError) as exc:
        return _fail("derain", exc)
    report = derain_files(
        model,
        args.inputs,
        out,
        tile=args.tile or None,
        overlap=args.overlap,
        quality=args.quality,
        progress=args.progress,
        existing="overwrite" if args.force else "skip" if args.skip_existing else "fail",
    )
    kept = f" ({len(report.skipped)} kept: already there)" if report.skipped else ""
    print(f"de-rained {len(report.written)} image(s) into {args.out}{kept}")
    if report.failed:
        print(f"menet derain: {len(report.failed)} file(s) failed:", file=sys.stderr)
        for src, _ in report.failed:
            print(f"  {src}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        result = run_demo(
            out=args.out,
            quick=args.quick,
            steps=args.steps,
            weighting=args.weighting,
            seed=args.seed,
            device=args.device,
            progress=args.progress,
        )
    except (ValueError, DeviceError) as exc:  # unknown strategy, --steps 0, no CUDA, ...
        return _fail("demo", exc)
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
    configure_threads()
    commands = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "derain": _cmd_derain,
        "demo": _cmd_demo,
    }
    return commands[args.command](args)
