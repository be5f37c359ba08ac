"""Rain the Rain100 sets do not have: models scored on procedural dense rain and mist.

Real rain is denser and mistier than Rain100L/H (issue 27). No real photo has a
clean reference, so this benchmark measures the closest thing that has one:
procedural rain (:mod:`menet.procedural_rain`) composited onto the clean images
of the ``test`` ids (backgrounds no model saw in training), in three kinds, one
fixed scene per image and kind:

- ``dense``: 2 or 3 streak layers, no veil (curtains of streaks near and far);
- ``mist``: 1 or 2 streak layers and always a veil ``I = J t + A (1 - t)``;
- ``mixed``: the training distribution (1 to 3 layers, veiled half the time).

For each model (``--models NAME=FILE ...``, default the bundled one) it reports
Y PSNR / SSIM on the full image (one pass) for those and for the Rain100L and
Rain100H test ids themselves (the targets), and draws
``benchmarks/results/real_rain.png``: rainy | each model | clean on the
package's built-in images (scikit-image samples) with heavy procedural rain of
both kinds; no benchmark image and no real photo is copied into the repository.

    python benchmarks/real_rain.py --models \
        before=old.safetensors after=examples/menet/menet/weights/menet-rain100.safetensors
    python benchmarks/real_rain.py --quick --data DIR --out /tmp/real_rain.json

Without the data (``../shared/data`` or ``$MTLWEIGHT_DATA``) it says so and exits 0.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from menet.checkpoint import load_model
from menet.data import PairedFolder, builtin_images, load_split
from menet.evaluate import evaluate_pairs, save_grid, summarize
from menet.pretrained import BUNDLED
from menet.procedural_rain import RainRanges, render_rain, sample_scene
from menet.sampling import mix_seed

from _common import RESULTS, markdown_table, write_json
from _training import REPO, default_data_root

SETS = ("Rain100L", "Rain100H")
#: The scene distributions scored (see the module docstring).
KINDS: dict[str, RainRanges] = {
    "dense": RainRanges(layers=(2, 3), haze_probability=0.0),
    "mist": RainRanges(layers=(1, 2), haze_probability=1.0),
    "mixed": RainRanges(),
}
#: Issue 27's floors for a new bundled model (Y, full image, one pass, test ids).
TARGETS = {"Rain100L": 35.8, "Rain100H": 26.7}


def procedural_pairs(cleans: list[Tensor], kind: str, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """One fixed procedural scene of ``kind`` per clean image: ``(rainy, clean)`` pairs.

    The rainy image is rounded to 8 bits, as a stored photo would be.
    """
    pairs = []
    for i, clean in enumerate(cleans):
        g = torch.Generator().manual_seed(mix_seed(seed, i, list(KINDS).index(kind)))
        rainy = render_rain(clean, sample_scene(g, KINDS[kind]), g)
        pairs.append(((rainy * 255).round() / 255, clean))
    return pairs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it, else its file name only."""
    full = path.resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else path.name


def score_model(weights: Path, sets: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Y PSNR / SSIM (full image, one pass) of one weights file on every set."""
    model = load_model(weights, device="cpu")
    out = {}
    for name, pairs in sets.items():
        out[name] = summarize(evaluate_pairs(model, pairs, "standard", progress=False))
        s = out[name]
        print(f"  {name}: Y {s['input_psnr']:.2f} -> {s['output_psnr']:.2f} dB, "
              f"SSIM {s['input_ssim']:.4f} -> {s['output_ssim']:.4f}", flush=True)
    return out


def figure(models: dict[str, Path], path: Path, size: int = 256) -> None:
    """Rainy | each model | clean: two built-in images, heavy dense rain and heavy mist."""
    nets = {name: load_model(w, device="cpu").eval() for name, w in models.items()}
    heavy = {
        "dense": RainRanges(layers=(3, 3), haze_probability=0.0,
                            density=((3e-3, 5e-3), (2e-2, 3e-2)), opacity=((0.7, 0.9), (0.3, 0.4))),
        "mist": RainRanges(layers=(2, 2), haze_probability=1.0, transmission=(0.45, 0.55),
                           gradient=(0.2, 0.3)),
    }
    rows, labels = [], []
    for (name, image), (kind, ranges) in zip(builtin_images()[1:3], heavy.items(), strict=True):
        h, w = image.shape[-2:]
        clean = image[:, (h - size) // 2 : (h + size) // 2, (w - size) // 2 : (w + size) // 2]
        g = torch.Generator().manual_seed(11)
        rainy = (render_rain(clean, sample_scene(g, ranges), g) * 255).round() / 255
        with torch.no_grad():
            outs = [net(rainy[None])[0].clamp(0, 1) for net in nets.values()]
        rows.append((rainy, *outs, clean))
        labels.append(f"{name}, heavy {kind}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(rows, path, titles=("rainy", *nets, "clean"), row_labels=labels)
    with Image.open(path) as im:  # committed figures stay small
        small = im.convert("RGB")
    small.thumbnail((1000, 1000))
    small.save(path, optimize=True)


def render(result: dict[str, Any]) -> str:
    """The Markdown table: one row per set, one column per model."""
    names = list(result["models"])
    head = ["test set (Y, full image, one pass)", "input PSNR / SSIM",
            *[f"{n}: PSNR / SSIM" for n in names]]
    rows = []
    for s in result["sets"]:
        first = result["scores"][names[0]][s]
        cells = []
        for n in names:
            o = result["scores"][n][s]
            verdict = ""
            if s in TARGETS:
                met = "met" if o["output_psnr"] >= TARGETS[s] else "NOT met"
                verdict = f" (≥ {TARGETS[s]} {met})"
            cells.append(f"{o['output_psnr']:.2f} / {o['output_ssim']:.4f}{verdict}")
        label = s if s in SETS else f"procedural {s} on {result['clean_source']}"
        rows.append([label, f"{first['input_psnr']:.2f} / {first['input_ssim']:.4f}", *cells])
    files = "; ".join(f"`{n}`: `{m['file']}` (sha256 {m['sha256'][:12]})"
                      for n, m in result["models"].items())
    return "\n".join([
        "## Procedural dense rain and mist",
        "",
        markdown_table(head, rows),
        "",
        f"{result['images']} test images each (the `test` ids of `rain100-split.json`, "
        "backgrounds unseen in training). Procedural rain (`menet.procedural_rain`): `dense` = 2-3 "
        "streak layers, no veil; `mist` = 1-2 layers under a veil I = J t + A (1 - t); "
        "`mixed` = the training distribution of `menet train --procedural-rain`; one fixed "
        "scene per image and kind, rounded to 8 bits. Models: " + files + ".",
        "",
        "Figure `real_rain.png` beside this file: rainy | each model | clean on two built-in "
        "images (scikit-image samples) under heavy procedural dense rain and heavy mist.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", metavar="NAME=FILE", default=[f"bundled={BUNDLED}"],
                   help="weights to compare (.safetensors or .ckpt), each named")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "real_rain.json",
                   help="JSON path; the Markdown and the PNG go beside it")
    p.add_argument("--seed", type=int, default=0, help="seed of the procedural scenes")
    p.add_argument("--quick", action="store_true", help="two test images, no Rain100H")
    args = p.parse_args(argv)
    models: dict[str, Path] = {}
    for item in args.models:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            p.error(f"--models: give NAME=FILE, found {item!r}")
        if not Path(file).is_file():
            p.error(f"--models: {name}: no file {file}")
        models[name] = Path(file)
    data = args.data or default_data_root()
    split = data / "rain100-split.json"
    sets_here = [s for s in SETS if (data / s).is_dir()]
    if not split.is_file() or "Rain100L" not in sets_here:
        print(f"real_rain skipped: data not found under {data}")
        return 0
    ids = load_split(split)["test"][: 2 if args.quick else None]
    folders = {s: PairedFolder(data / s, ids=ids, cache=True)
               for s in sets_here[: 1 if args.quick else None]}
    cleans = [folders["Rain100L"][i][1] for i in range(len(folders["Rain100L"]))]
    sets: dict[str, Any] = dict(folders)
    for kind in KINDS:
        sets[kind] = procedural_pairs(cleans, kind, args.seed)
    scores = {}
    for name, weights in models.items():
        print(f"{name} ({weights}):", flush=True)
        scores[name] = score_model(weights, sets)
    result = {
        "models": {n: {"file": shown(w), "sha256": sha256(w)} for n, w in models.items()},
        "sets": list(sets), "images": len(ids), "seed": args.seed,
        "clean_source": "the Rain100L clean test images",
        "kinds": {k: repr(r) for k, r in KINDS.items()},
        "scores": scores,
    }
    write_json("real_rain", result, args.out)
    args.out.with_suffix(".md").write_text(render(result), encoding="utf-8")
    figure(models, args.out.with_suffix(".png"), size=64 if args.quick else 256)
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
