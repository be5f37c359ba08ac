"""Which parts of the training recipe matter: an ablation at a fixed step budget.

MENET-GB (pixel + edge + texture losses, gradient balance on the last conv,
channel attention) trained on the ``train`` ids of ``rain100-split.json`` with
the same steps, batch and crops for every row; only the recipe differs:

- ``paper``: the paper's recipe: learning rate /10 at 40 % of the steps, no
  gradient clipping, texture loss as the mean over Gram entries, fan-in
  initialisation everywhere;
- ``fast``: cosine decay of the learning rate over the run, gradient-norm
  clipping at 1.0, and the last conv initialised at zero (the network starts as
  the identity); the texture loss as in ``paper``;
- ``fast-<part>``: ``fast`` with one part put back to the paper's choice
  (leave-one-out), so each row's gap to ``fast`` is what that part is worth;
- ``fast+texture_sum``: ``fast`` with the texture loss as the *sum* over Gram
  entries (2304 x the mean), the choice of a reference implementation;
- ``fast+amp``: ``fast`` under mixed precision (``--amp``: bfloat16 autocast on
  CPU, where AMX or AVX-512 BF16 makes convolutions several times faster).

Scores are on the ``test`` ids, both protocols (``standard`` = Y, full image;
``paper`` = RGB, ten 224 x 224 crops); over seeds the mean and the sample
standard deviation.

    python benchmarks/recipe.py                          # Rain100L, seeds 0 1
    python benchmarks/recipe.py --steps 3000 --patch 128 # the issue's budget
    python benchmarks/recipe.py --quick                  # smoke test

Each finished run is written to the JSON at once, and ``--resume`` reuses the
runs of the same budget found there, so an interrupted ablation continues
where it stopped. Without the data (``../shared/data`` or ``$MTLWEIGHT_DATA``)
it says so and exits with 0.
"""

from __future__ import annotations

import os

# Sleep instead of busy-waiting in OpenMP (a shared 2-core machine); before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from menet.train import TrainConfig

from _common import RESULTS, markdown_table, write_json
from _training import (
    PROTOCOLS,
    RECIPE_PARTS,
    VARIATIONS,
    default_data_root,
    mean_sd,
    recipe,
    train_and_score,
)


def rows() -> dict[str, dict[str, Any]]:
    """Row key -> TrainConfig overrides."""
    fast = recipe("fast")
    out = {"paper": recipe("paper"), "fast": fast}
    for part, (old, _) in RECIPE_PARTS.items():
        out[f"fast-{part}"] = {**fast, **old}
    for name, change in VARIATIONS.items():
        out[f"fast+{name}"] = {**fast, **change}
    return out


def run_one(key: str, overrides: dict[str, Any], seed: int, args: argparse.Namespace,
            data: Path, split: Path, runs_dir: Path) -> dict[str, Any]:
    out = runs_dir / f"{args.dataset}-{key}-s{seed}"
    config = TrainConfig(
        out=str(out), data=str(data / args.dataset), split=str(split), split_key="train",
        patches="random", patch_size=args.patch, patches_per_image=args.patches_per_image,
        batch_size=args.batch, weighting="gb", gb_shared="last_conv", variant="shallow-ca",
        device="cpu", epochs=None, steps=args.steps, seed=seed, lr=args.lr,
        progress=False, cache=True, channels_last=True, **overrides,
    )
    scored = train_and_score(config, data / args.dataset, split, crop=args.crop)
    return {"row": key, "seed": seed, "overrides": overrides, "budget": budget(args), **scored}


def budget(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in
            ("dataset", "steps", "batch", "patch", "patches_per_image", "lr", "crop")}


def table(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in rows():
        rs = [r for r in runs if r["row"] == key]
        if not rs:
            continue
        cell: dict[str, Any] = {"seeds": [r["seed"] for r in rs],
                                "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs)}
        for protocol in PROTOCOLS:
            for metric in ("output_psnr", "output_ssim", "input_psnr"):
                m, s = mean_sd([r["scores"][protocol][metric] for r in rs])
                cell[f"{protocol}_{metric}"] = {"mean": m, "sd": s, "n": len(rs)}
        out[key] = cell
    return out


def _pm(stat: dict[str, float], digits: int) -> str:
    if stat["n"] > 1 and not math.isnan(stat["sd"]):
        return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def render(payload: dict[str, Any]) -> str:
    cells, cfg = payload["table"], payload["config"]
    fast = cells.get("fast")
    head = ["row", "Y PSNR (dB)", "Y SSIM", "RGB 10-crop PSNR", "vs fast (Y dB)", "s/run"]
    body = []
    for key, cell in cells.items():
        gap = ""
        if fast is not None and key != "fast":
            a, b = cell["standard_output_psnr"], fast["standard_output_psnr"]
            noise = math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
            spread = "" if math.isnan(noise) else f" (±{2 * noise:.2f})"
            gap = f"{a['mean'] - b['mean']:+.2f}{spread}"
        body.append([key, _pm(cell["standard_output_psnr"], 2),
                     _pm(cell["standard_output_ssim"], 4), _pm(cell["paper_output_psnr"], 2),
                     gap, f"{cell['train_seconds']:.0f}"])
    first = next(iter(cells.values()), None)
    rain = "" if first is None else (
        f"Rainy input: {first['standard_input_psnr']['mean']:.2f} dB (Y), "
        f"{first['paper_input_psnr']['mean']:.2f} dB (RGB, ten crops).\n\n")
    status = "complete" if cfg.get("complete") else "PARTIAL (still running or cut short)"
    title = cfg.get("title") or "Recipe ablation"
    return (f"## {title} ({cfg['dataset']}, {cfg['steps']} steps of {cfg['batch']} x "
            f"{cfg['patch']} px crops; seeds {cfg['seeds']}; {status})\n\n"
            "MENET-GB (shallow-ca), same budget per row; `fast-<part>` is the fast recipe "
            "with that part put back to the paper's choice, `fast+texture_sum` the fast "
            "recipe with the texture loss summed over the Gram entries (2304x the mean), "
            "`fast+amp` the fast recipe in bfloat16 autocast. "
            "Scores on the test ids of `rain100-split.json`, mean ± sample sd over seeds; "
            "the last-but-one column is the difference to `fast` (± two standard errors)."
            "\n\n" + rain
            + markdown_table(head, body) + "\n\n"
            f"Machine: {payload['machine']['cpu']}, {payload['machine']['logical_cpus']} "
            f"logical CPUs, torch {payload['machine']['torch']}, {cfg['threads']} thread(s); "
            f"{cfg['notes']}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["Rain100L", "Rain100H"], default="Rain100L")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--rows", nargs="+", choices=list(rows()), default=list(rows()))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--patches-per-image", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop", type=int, default=224, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep the runs (and their checkpoints, to resume) here")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in the JSON")
    p.add_argument("--quick", action="store_true", help="2 steps, tiny crops, one seed")
    p.add_argument("--out", type=Path, default=None, help="JSON path")
    p.add_argument("--notes", default="")
    p.add_argument("--title", default="", help="heading of the Markdown (default: Recipe ablation)")
    args = p.parse_args(argv)
    data = args.data or default_data_root()
    split = data / "rain100-split.json"
    if not (split.exists() and (data / args.dataset).exists()):
        print(f"recipe benchmark skipped: data not found under {data}")
        return 0
    if args.quick:
        args.steps, args.batch, args.patch, args.crop = 2, 2, 32, 32
        args.patches_per_image, args.seeds = 1, args.seeds[:1]
    torch.set_num_threads(args.threads)
    json_path = args.out or RESULTS / "recipe.json"
    previous: list[dict[str, Any]] = []
    if args.resume and json_path.is_file():
        previous = [r for r in json.loads(json_path.read_text())["runs"]
                    if r["budget"] == budget(args)]
    runs: list[dict[str, Any]] = []
    table_rows = rows()
    with tempfile.TemporaryDirectory(prefix="mtlweight-recipe-") as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        for seed in args.seeds:
            for key in args.rows:
                done = [r for r in previous if (r["row"], r["seed"]) == (key, seed)]
                if done:
                    runs.append(done[0])
                    continue
                record = run_one(key, table_rows[key], seed, args, data, split, runs_dir)
                runs.append(record)
                s = record["scores"]["standard"]
                print(f"{key} seed {seed}: {record['train_seconds']:.0f} s; Y "
                      f"{s['output_psnr']:.2f} dB / {s['output_ssim']:.4f}", flush=True)
                _write(json_path, runs, args, final=False)
    payload = _write(json_path, runs, args, final=True)
    print(render(payload))
    return 0


def _write(json_path: Path, runs: list[dict[str, Any]], args: argparse.Namespace,
           final: bool) -> dict[str, Any]:
    config = {**budget(args), "seeds": args.seeds, "rows": args.rows, "threads": args.threads,
              "complete": final, "title": args.title,
              "notes": args.notes or "seconds are noisy on a shared machine"}
    payload: dict[str, Any] = {"config": config, "table": table(runs), "runs": runs}
    write_json("recipe", payload, json_path)
    payload["machine"] = json.loads(json_path.read_text(encoding="utf-8"))["machine"]
    json_path.with_suffix(".md").write_text(render(payload), encoding="utf-8")
    return payload


if __name__ == "__main__":
    sys.exit(main())
