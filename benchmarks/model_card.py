"""Model card of the bundled pretrained MENET: pack it, score it, write the card.

Takes a finished training run (``python -m menet train ... --out RUN``), packs
its ``model.safetensors`` as the float16 file shipped in the ``menet`` package
(:func:`menet.pretrained.pack_weights`), scores *the packed file* on the
``test`` ids of Rain100L and Rain100H under both protocols, and writes:

- the JSON card next to the shipped weights (``menet-rain100.json``: data,
  recipe, steps, wall time, scores, the command that reproduces it), which
  ``menet derain``/``menet evaluate`` print from;
- ``benchmarks/results/model_card.md`` (included by the docs' model card page);
- ``docs/_static/menet/bundled_examples.jpg``: rainy | derained | clean on
  built-in images with synthetic light and heavy rain (no benchmark image is
  copied into the repository).

A run fine-tuned with ``--init`` from another run's ``model.safetensors`` is
carded with the runs behind it (:func:`run_stages`): steps and wall time are
summed, and the card gives one command per run.

    python benchmarks/model_card.py --run runs/bundled
    python benchmarks/model_card.py --run runs/bundled --score-only   # re-score the shipped file

Without the data (``../shared/data`` or ``$MTLWEIGHT_DATA``) it says so and exits 0.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from menet.checkpoint import load_model
from menet.data import PairedFolder, SyntheticRainPairs, builtin_images, load_split
from menet.ensemble import ENSEMBLES, Ensemble, FlipEnsemble, with_ensemble
from menet.evaluate import evaluate_pairs, save_grid, summarize
from menet.pretrained import BUNDLED, pack_weights

from _common import RESULTS, machine, markdown_table
from _training import PROTOCOLS, REPO, default_data_root

SETS = ("Rain100L", "Rain100H")
FIGURE = REPO / "docs" / "_static" / "menet" / "bundled_examples.jpg"
#: The issue's targets (test ids, Y, full image).
TARGETS = {"Rain100L": 35.7, "Rain100H": 26.0}


def reproduce_command(config: dict[str, Any], out: str = "RUN", init: str | None = None) -> str:
    """The ``python -m menet train`` command line of a stored training config.

    ``init`` replaces the config's ``--init`` (a previous stage's output folder
    instead of the path it had on the machine that trained it).
    """
    parts = ["python -m menet train", "--data", *map(portable, data_paths(config)),
             "--split", portable(config["split"]),
             "--split-key", config["split_key"], "--recipe", "fast",
             "--patches", config["patches"], "--patch-size", str(config["patch_size"]),
             "--patches-per-image", str(config["patches_per_image"]),
             "--batch-size", str(config["batch_size"]), "--steps", str(config["steps"]),
             "--lr", f"{config['lr']:g}", "--weighting", config["weighting"],
             "--seed", str(config["seed"])]
    # The recipe's fields spelled out: the command stays right when a recipe changes.
    parts += ["--lr-schedule", config["lr_schedule"],
              "--texture-mean" if config["texture_normalize"] else "--texture-sum",
              "--zero-init-residual" if config["zero_init_residual"] else
              "--no-zero-init-residual"]
    if config.get("clip_grad_norm") is not None:
        parts += ["--clip-grad-norm", f"{config['clip_grad_norm']:g}"]
    if config.get("amp"):
        parts.append("--amp")
    if config.get("procedural_rain"):
        parts += ["--procedural-rain", str(config["procedural_rain"])]
    init = init if init is not None else config.get("init")
    if init is not None:
        parts += ["--init", init]
    return " ".join([*parts, "--out", out])


def run_stages(run: Path) -> list[Path]:
    """The training runs behind ``run``, first to last.

    A run started with ``--init`` from another run's ``model.safetensors`` or
    ``last.ckpt`` (a folder with ``config.json`` and ``log.csv``) follows that
    run; an init file that is not a run's (``bundled``, a download) ends the chain.
    """
    chain = [run]
    while True:
        init = json.loads((chain[0] / "config.json").read_text()).get("init")
        parent = Path(init).parent if init not in (None, "bundled") else None
        if (parent is None or parent.resolve() in {c.resolve() for c in chain}
                or not all((parent / f).is_file() for f in ("config.json", "log.csv"))):
            return chain
        chain.insert(0, parent)


def stage_commands(configs: list[dict[str, Any]]) -> list[str]:
    """One command per stage; each later stage starts from the previous stage's export."""
    outs = [f"RUN{i + 1}" for i in range(len(configs) - 1)] + ["RUN"]  # the card reads RUN
    return [reproduce_command(c, out=o, init=None if i == 0 else f"{outs[i - 1]}/model.safetensors")
            for i, (c, o) in enumerate(zip(configs, outs, strict=True))]


def portable(path: str) -> str:
    """``path`` as the card's commands write it: relative to the repository root
    when it is an absolute path beside the repository (``../shared/data/...``);
    any other path unchanged. The path is normalised lexically, never resolved: a
    ``../shared`` that is a symlink stays ``../shared``."""
    p = Path(os.path.normpath(path))
    if p.is_absolute() and p.is_relative_to(REPO.parent):
        return os.path.relpath(p, REPO)
    return path


def data_paths(config: dict[str, Any]) -> list[str]:
    """A config's ``data`` folders as a list (in order, repeats kept)."""
    return config["data"] if isinstance(config["data"], list) else [config["data"]]


def data_names(config: dict[str, Any]) -> list[str]:
    """The folder names of a config's ``data`` (in order, repeats kept)."""
    return [Path(d).name for d in data_paths(config)]


def describe_stage(run: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Steps, wall time, data, learning rate and init of one training run."""
    with open(run / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {"steps": int(last["step"]), "wall_seconds": float(last["time"]),
            "data": data_names(config), "lr": config["lr"], "init": config.get("init"),
            "procedural_rain": config.get("procedural_rain", 0)}


def after_bundled(stored: dict[str, Any], stages: list[dict[str, Any]], commands: list[str],
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Stages and commands of a chain whose first run started from the bundled model
    (``--init bundled``): the bundled card's own (``stored``) go first.

    The bundled model's last command writes ``RUNk`` instead of ``RUN`` and the
    first new run starts from ``RUNk/model.safetensors``; without a stored chain
    (an older card) nothing changes; a stored card that already ends with these
    stages (``--score-only`` after shipping) is returned as it is.
    """
    before = stored.get("training", {}).get("stages")
    if stages[0].get("init") != "bundled" or not before:
        return stages, commands
    if before[-len(stages):] == stages:
        return before, stored["command"].splitlines()
    old = stored["command"].splitlines()
    k = len(old)
    last = old[-1].removesuffix("--out RUN")
    if last == old[-1]:
        raise ValueError(f"the bundled card's last command does not end in '--out RUN': {last}")
    old[-1] = f"{last}--out RUN{k}"
    first = commands[0].replace("--init bundled ", f"--init RUN{k}/model.safetensors ")
    return [*stored["training"]["stages"], *stages], [*old, first, *commands[1:]]


def score(weights: Path, data: Path, split: Path, ensembles: Sequence[Ensemble] = ("none",),
          ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Scores of the file on each set's test ids, both protocols, for each ``--ensemble`` mode.

    The weights are loaded once and each set's test pairs decoded once for all modes.
    Returns ``{mode: {set: {protocol: summary}}}``.
    """
    base = load_model(weights, device="cpu")
    models = {mode: with_ensemble(base, mode) for mode in ensembles}
    test_ids = load_split(split)["test"]
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {mode: {} for mode in ensembles}
    for name in SETS:
        pairs = PairedFolder(data / name, ids=test_ids, cache=True)
        for mode, model in models.items():
            out[mode][name] = {p: summarize(evaluate_pairs(model, pairs, p, batch_size=4,
                                                           progress=False)) for p in PROTOCOLS}
            s = out[mode][name]["standard"]
            print(f"{name}{'' if mode == 'none' else f' (--ensemble {mode})'}: "
                  f"Y {s['input_psnr']:.2f} -> {s['output_psnr']:.2f} dB, SSIM "
                  f"{s['input_ssim']:.4f} -> {s['output_ssim']:.4f}", flush=True)
    return out


def figure(weights: Path, path: Path) -> None:
    """Rainy | derained | clean on the built-in images with synthetic rain of both presets.

    The benchmark images stay out of the repository, so the figure uses the
    package's own clean images (scikit-image samples) with procedural rain.
    """
    model = load_model(weights, device="cpu").eval()
    images = builtin_images()[:2]
    triples, labels = [], []
    for preset in ("light", "heavy"):
        pairs = SyntheticRainPairs(images, preset=preset, seed=7)
        for i in range(len(pairs)):
            rainy, clean = pairs[i]
            with torch.no_grad():
                derained = model(rainy[None])[0].clamp(0, 1)
            triples.append((rainy, derained, clean))
            labels.append(f"{images[i][0]}, {preset} rain")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(triples, path, row_labels=labels)
    if path.suffix.lower() in (".jpg", ".jpeg"):  # the docs keep committed images < 200 KB
        with Image.open(path) as image:
            small = image.convert("RGB")
        small.thumbnail((760, 1000))
        small.save(path, quality=75, optimize=True)


def stages_text(stages: list[dict[str, Any]]) -> str:
    """For a card of several runs: what each did (empty for one run)."""
    if len(stages) < 2:
        return ""

    def data(names: list[str]) -> str:  # a folder given k times is sampled k times as often
        counts = {n: names.count(n) for n in dict.fromkeys(names)}
        return " + ".join(n if k == 1 else f"{k}x {n}" for n, k in counts.items())

    def rain(k: int) -> str:
        return f" + {k}x procedural rain" if k else ""

    parts = [f"{s['steps']} steps on {data(s['data'])}{rain(s.get('procedural_rain', 0))} "
             f"at lr {s['lr']:g}" for s in stages]
    return (f"in {len(stages)} runs, each after the first starting from the previous one's "
            f"weights (`--init`): {'; then '.join(parts)}; ")


def score_rows(card: dict[str, Any]) -> list[list[str]]:
    """One table row per (set, protocol, inference): one pass, then the flip self-ensemble."""
    rows = []
    runs = [("one pass", card["scores"])]
    if card.get("ensemble_scores"):
        runs.append((f"`--ensemble {card['ensemble']}`", card["ensemble_scores"]))
    for inference, scores in runs:
        for name in SETS:
            for protocol in ("standard", "paper"):
                s = scores[name][protocol]
                target = f"≥ {TARGETS[name]} dB" if protocol == "standard" else ""
                if target:
                    target += " (met)" if s["output_psnr"] >= TARGETS[name] else " (NOT met)"
                rows.append([name, "Y, full image" if protocol == "standard" else
                             "RGB, ten 224 px crops", inference,
                             f"{s['input_psnr']:.2f} / {s['input_ssim']:.4f}",
                             f"{s['output_psnr']:.2f} / {s['output_ssim']:.4f}", target])
    return rows


def procedural_text(training: dict[str, Any]) -> str:
    """What the card says about procedural rain in the mix (empty without it)."""
    if not any(s.get("procedural_rain") for s in training.get("stages", [])):
        return ""
    return ("(from the run that adds it on, also their clean images with procedural rain of "
            "varied density, angle, width, blur and haze, `--procedural-rain`, new every "
            "epoch) ")


def render(card: dict[str, Any]) -> str:
    head = ["test set (28 ids)", "protocol", "inference", "input PSNR / SSIM",
            "output PSNR / SSIM", "target"]
    t = card["training"]
    ensemble = card.get("ensemble", "none")
    return "\n".join([
        "## Bundled model: scores",
        "",
        markdown_table(head, score_rows(card)),
        "",
        *([f"`--ensemble {ensemble}` is the flip self-ensemble of `menet derain` and "
           f"`menet evaluate` (`menet.FlipEnsemble`): the mean of the outputs for the "
           f"input and its mirror images, {FlipEnsemble.passes(ensemble)} forward passes "
           "per image; same weights.", ""] if card.get("ensemble_scores") else []),
        f"Trained with the project's own CLI on the {t['train_images']} `train` ids of "
        "`rain100-split.json` in Rain100L **and** Rain100H together "
        f"{procedural_text(t)}"
        f"({t['steps']} steps of {t['batch_size']} random {t['patch_size']} px crops, "
        f"{t['weighting'].upper()} weighting, recipe `fast`, texture loss as the "
        f"{'mean' if t['texture_normalize'] else 'sum'} over Gram entries"
        f"{', bfloat16 autocast (--amp)' if t.get('amp') else ''}), "
        f"{stages_text(t.get('stages', []))}"
        f"{t['wall_seconds'] / 60:.0f} min wall time on {card['machine']['cpu']} "
        f"({card['machine']['logical_cpus']} logical CPUs, shared with other jobs). "
        f"Stored as float16 safetensors ({card['file_bytes'] / 2**20:.2f} MiB); scores are "
        "of that shipped file.",
        "",
        *([f"Note: {card['note']}", ""] if card.get("note") else []),
        "Reproduce:",
        "",
        "```bash",
        card["command"],
        "python benchmarks/model_card.py --run RUN",
        "```",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="the finished training run folder")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--weights", type=Path, default=BUNDLED, help="where to write the packed file")
    p.add_argument("--score-only", action="store_true", help="do not re-pack, score the file")
    p.add_argument("--figure", type=Path, default=FIGURE, help="rainy | derained | clean grid")
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--markdown", type=Path, default=RESULTS / "model_card.md")
    p.add_argument("--ensemble", choices=ENSEMBLES, default="flips",
                   help="also score this flip self-ensemble ('none': one pass only; default flips)")
    p.add_argument("--note", default="",
                   help="a remark for the card (e.g. pauses inside the wall time)")
    args = p.parse_args(argv)
    data = args.data or default_data_root()
    split = data / "rain100-split.json"
    if not all(x.exists() for x in (split, *(data / s for s in SETS))):
        print(f"model card skipped: data not found under {data}")
        return 0
    stages = run_stages(args.run)
    configs = [json.loads((r / "config.json").read_text()) for r in stages]
    config = configs[-1]
    pack_card = args.weights.with_suffix(".json")
    stored = json.loads(pack_card.read_text()) if pack_card.is_file() else {}
    described, commands = after_bundled(
        stored, [describe_stage(r, c) for r, c in zip(stages, configs, strict=True)],
        stage_commands(configs))
    training = {
        "data": data_names(config),
        "split": "rain100-split.json (train ids)", "train_images": len(load_split(split)["train"]),
        "steps": sum(d["steps"] for d in described),
        "wall_seconds": sum(d["wall_seconds"] for d in described),
        "stages": described,
        **{k: config[k] for k in ("patch_size", "batch_size", "patches", "weighting", "gb_shared",
                                  "variant", "lr", "lr_schedule", "clip_grad_norm",
                                  "texture_normalize", "zero_init_residual", "seed", "losses")},
        "amp": bool(config.get("amp", False)),
    }
    card: dict[str, Any] = {
        "description": "MENET shallow-ca trained on Rain100L + Rain100H train ids"
                       + (" and procedural rain" if procedural_text(training) else "")
                       + " (fast recipe"
                       + ("" if config["texture_normalize"] else ", texture loss summed")
                       + (", bfloat16 autocast" if config.get("amp") else "") + ")",
        "data": training["data"], "steps": training["steps"], "weighting": config["weighting"],
        "training": training, "command": "\n".join(commands),
        "machine": machine(),
        "note": args.note,
    }
    if not args.score_only:
        pack_weights(args.run / "model.safetensors", args.weights, card)
    card["file_bytes"] = args.weights.stat().st_size
    scores = score(args.weights, data, split, list(dict.fromkeys(("none", args.ensemble))))
    card["scores"] = scores["none"]
    card["ensemble"] = args.ensemble
    card["ensemble_scores"] = None if args.ensemble == "none" else scores[args.ensemble]
    stored = json.loads(pack_card.read_text()) if pack_card.is_file() else {}
    pack_card.write_text(json.dumps({**stored, **card}, indent=2, sort_keys=True) + "\n")
    args.markdown.write_text(render(card), encoding="utf-8")
    if not args.no_figure:
        figure(args.weights, args.figure)
    print(f"wrote {args.weights}, {pack_card}, {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
