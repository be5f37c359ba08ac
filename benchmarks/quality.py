"""Quality under a fixed budget: Table I of the MENET paper at small scale.

Four rows of the paper's ablation (Table I), each trained with the same budget
(optimizer steps; the seconds are reported), on the ``train`` ids of
``rain100-split.json`` and evaluated on its ``test`` ids under both protocols:

- ``lp``: :math:`L_p` only, no channel attention (the baseline);
- ``lp_le_fixed``: :math:`L_p + 10^{-2} L_e`, fixed weights, no attention;
- ``gb_ca``: :math:`L_p + L_e + L_t`, gradient balance on the last convolution,
  with channel attention (MENET-GB);
- ``lb_ca``: :math:`L_p + L_e + L_t`, loss balance, with channel attention (MENET-LB).

Protocols: ``paper`` = RGB, PSNR/SSIM over the ten 224x224 crops of each image;
``standard`` = Y (BT.601) channel of the full image (see :mod:`menet.evaluate`).
Scores are means over the test images; over seeds we report the mean and the
sample standard deviation.

    python benchmarks/quality.py                      # Rain100L, seeds 0 1 2, the fast recipe
    python benchmarks/quality.py --datasets L H       # and Rain100H
    python benchmarks/quality.py --recipe paper       # the paper's schedule and losses
    python benchmarks/quality.py --quick --data DIR   # tiny settings, for a smoke test

The default budget is one where the Lp baseline beats the rainy input by at
least 5 dB (Y, Rain100L): below that, differences between the rows say little
about the paper's claims (the report checks it). Every row uses the same
training recipe (``--recipe``: ``fast`` by default, see ``recipe.py``). Runs
are kept under ``--runs-dir`` (default ``runs/quality`` in the repository) and
an interrupted run resumes from its last checkpoint when the benchmark is
started again with the same options (plus ``--resume`` to reuse the finished
runs recorded in the JSON).

The data folder is ``../shared/data`` beside the repository (``$MTLWEIGHT_DATA``
or ``--data`` override it); without it the script says so and exits with 0.
These figures are not the paper's: the paper trains on RainTrainL/H (200 / 1800
pairs, 100 epochs); here 72 training images and a budget of minutes. Compare the
rows with each other; the paper's column shows the direction it reports.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads make a shared 2-core machine several times slower
# (each parallel region waits for descheduled spinners); sleep instead. Must be
# set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from menet.data import load_split
from menet.train import TrainConfig

from _common import RESULTS, machine, markdown_table, write_docs_results, write_json
from _training import PROTOCOLS, REPO, default_data_root, mean_sd, recipe, train_and_score

DATASETS = {"L": "Rain100L", "H": "Rain100H"}


@dataclass(frozen=True)
class Row:
    """One row of Table I: what is trained, and the paper's figures for it."""

    key: str
    label: str
    losses: tuple[str, ...]
    weighting: str
    variant: str
    weights: dict[str, float] | None = None
    marks: tuple[str, ...] = ()
    #: paper's (SSIM, PSNR) on Rain100L and Rain100H (Table I, paper protocol).
    paper: dict[str, tuple[float, float]] = field(default_factory=dict)


ROWS = (
    Row("lp", "Lp only (baseline)", ("pixel",), "fixed", "shallow", {"pixel": 1.0},
        ("Lp",), {"Rain100L": (0.9506, 33.5484), "Rain100H": (0.8146, 27.5016)}),
    Row("lp_le_fixed", "Lp + 1e-2 Le (fixed)", ("pixel", "edge"), "fixed", "shallow",
        {"pixel": 1.0, "edge": 1e-2}, ("Lp", "Le", "Fixed"),
        {"Rain100L": (0.9508, 33.5116), "Rain100H": (0.8200, 27.6132)}),
    Row("gb_ca", "Lp + Le + Lt, GB, CA (MENET-GB)", ("pixel", "edge", "texture"), "gb",
        "shallow-ca", None, ("Lp", "Le", "Lt", "GB", "CA"),
        {"Rain100L": (0.9554, 34.1852), "Rain100H": (0.8524, 28.1457)}),
    Row("lb_ca", "Lp + Le + Lt, LB, CA (MENET-LB)", ("pixel", "edge", "texture"), "lb",
        "shallow-ca", None, ("Lp", "Le", "Lt", "LB", "CA"),
        {"Rain100L": (0.9548, 34.0846), "Rain100H": (0.8534, 28.1572)}),
)
COMPONENTS = ("Lp", "Le", "Lt", "Fixed", "GB", "LB", "CA")

#: Comparisons the paper draws from Table I: (row, against, what the paper says).
CLAIMS = (
    ("gb_ca", "lp", "MENET-GB beats the Lp baseline"),
    ("lb_ca", "lp", "MENET-LB beats the Lp baseline"),
    ("lp_le_fixed", "lp", "a fixed-weight edge loss changes little over the baseline"),
    ("gb_ca", "lb_ca", "GB beats LB on Rain100L, LB beats GB on Rain100H"),
)


@dataclass
class Budget:
    """The training budget and the evaluation settings shared by every run."""

    steps: int
    batch: int
    patch: int
    patches_per_image: int
    lr: float
    crop: int
    threads: int
    recipe: str = "paper"

    def key(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("steps", "batch", "patch", "patches_per_image", "lr", "crop", "recipe")}


def run_one(row: Row, dataset: str, seed: int, budget: Budget, data_root: Path,
            split_path: Path, runs_dir: Path) -> dict[str, Any]:
    """Train ``row`` on ``dataset`` with ``seed`` (resuming its checkpoint); evaluate."""
    tag = "-".join(f"{k}{v}" for k, v in budget.key().items() if k != "crop")
    out = runs_dir / tag / f"{dataset}-{row.key}-s{seed}"
    config = TrainConfig(
        out=str(out), data=str(data_root / dataset), split=str(split_path), split_key="train",
        patches="random", patch_size=budget.patch, patches_per_image=budget.patches_per_image,
        batch_size=budget.batch, losses=row.losses, weighting=row.weighting,
        weights=row.weights, gb_shared="last_conv", variant=row.variant, device="cpu",
        epochs=None, steps=budget.steps, seed=seed, lr=budget.lr, lr_milestone=0.4,
        progress=False, cache=True, channels_last=True, **recipe(budget.recipe),
    )
    scored = train_and_score(config, data_root / dataset, split_path, crop=budget.crop)
    return {"dataset": dataset, "row": row.key, "seed": seed, "budget": budget.key(), **scored}


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {row: {protocol_metric: (mean, sd, n), seconds...}}}`` over seeds."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        table.setdefault(r["dataset"], {}).setdefault(r["row"], {"runs": []})["runs"].append(r)
    for rows in table.values():
        for cell in rows.values():
            rs = cell.pop("runs")
            cell["seeds"] = [r["seed"] for r in rs]
            for protocol in PROTOCOLS:
                for metric in ("output_psnr", "output_ssim", "input_psnr", "input_ssim"):
                    m, s = mean_sd([r["scores"][protocol][metric] for r in rs])
                    cell[f"{protocol}_{metric}"] = {"mean": m, "sd": s, "n": len(rs)}
            cell["train_seconds"] = statistics.fmean(r["train_seconds"] for r in rs)
            cell["eval_seconds"] = statistics.fmean(r["eval_seconds"] for r in rs)
            cell["steps"] = rs[0]["steps"]
    return table


def _fmt(stat: dict[str, float], digits: int) -> str:
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def verdicts(table: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per claim of the paper: our difference, its noise, agreement."""
    lines = []
    by_key = {r.key: r for r in ROWS}
    for dataset, rows in table.items():
        for a, b, claim in CLAIMS:
            if a not in rows or b not in rows:
                continue
            pa, pb = by_key[a].paper[dataset], by_key[b].paper[dataset]
            paper_d = pa[1] - pb[1]
            parts = []
            for protocol in PROTOCOLS:
                sa, sb = rows[a][f"{protocol}_output_psnr"], rows[b][f"{protocol}_output_psnr"]
                d = sa["mean"] - sb["mean"]
                noise = math.sqrt(sa["sd"] ** 2 / sa["n"] + sb["sd"] ** 2 / sb["n"])
                if math.isnan(noise):
                    judged = "one seed, no spread"
                elif abs(d) <= 2 * noise:
                    judged = "within seed noise"
                elif abs(paper_d) < 0.1:
                    judged = "the paper sees no real difference; ours is larger than the noise"
                else:
                    judged = "agrees" if (d > 0) == (paper_d > 0) else "CONTRADICTS the paper"
                spread = "" if math.isnan(noise) else f"±{2 * noise:.2f}, "
                parts.append(f"{protocol} {d:+.2f} dB ({spread}{judged})")
            lines.append(f"- {dataset}, {a} vs {b} ({claim}): paper {paper_d:+.2f} dB; "
                         f"ours " + "; ".join(parts) + ".")
    return lines


def budget_check(table: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Whether the Lp baseline beats the rainy input by >= 5 dB (Y): is the budget real?"""
    lines = []
    for dataset, rows in table.items():
        if "lp" not in rows:
            continue
        cell = rows["lp"]
        gain = (cell["standard_output_psnr"]["mean"] - cell["standard_input_psnr"]["mean"])
        verdict = ("a real budget" if gain >= 5.0 else
                   "below the 5 dB this benchmark asks of its budget: train longer")
        lines.append(f"- {dataset}: the Lp baseline gains {gain:+.2f} dB (Y) over the rainy "
                     f"input: {verdict}.")
    return lines


def below_input(table: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Lines naming the rows whose mean output PSNR is below the rainy input's."""
    lines = []
    for dataset, rows in table.items():
        for protocol in PROTOCOLS:
            worse = [f"{key} ({cell[f'{protocol}_output_psnr']['mean']:.2f} dB)"
                     for key, cell in rows.items()
                     if cell[f"{protocol}_output_psnr"]["mean"]
                     < cell[f"{protocol}_input_psnr"]["mean"]]
            if worse:
                first = next(iter(rows.values()))
                lines.append(
                    f"- {dataset}, {protocol} protocol: below the rainy input "
                    f"({first[f'{protocol}_input_psnr']['mean']:.2f} dB) after this budget: "
                    + ", ".join(worse) + ". These networks have not yet learnt to improve "
                    "on their input; differences between them say little about the paper's "
                    "claims.")
    return lines


def render_markdown(payload: dict[str, Any]) -> str:
    """The Markdown report: Table I layout, ours next to the paper's, per protocol."""
    table = payload["table"]
    cfg = payload["config"]
    mach = payload["machine"]
    datasets = [d for d in (DATASETS[k] for k in "LH") if d in table]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    out = [
        f"## Quality under a fixed budget (Table I at small scale, {', '.join(datasets)}, "
        f"{cfg['steps']} steps)",
        "",
        f"Measured {mach['date']} on {mach['cpu']} ({mach['logical_cpus']} logical CPUs, "
        f"{cfg['threads']} torch thread(s) per run, torch {mach['torch']}). Budget per run: "
        f"{cfg['steps']} Adam steps of {cfg['batch']} random {cfg['patch']}x{cfg['patch']} "
        f"crops (lr {cfg['lr']:g}, recipe `{cfg.get('recipe', 'paper')}`: "
        + ("divided by 10 at 40 %" if cfg.get("recipe", "paper") == "paper" else
           "cosine decay, clipping at 1.0, zero-init last conv")
        + f"), the same for every row; seeds "
        f"{seeds} (mean ± sample standard deviation over seeds). Trained on the "
        f"{cfg['train_images']} `train` ids of `rain100-split.json`, evaluated on its "
        f"{cfg['test_images']} `test` ids. Training and evaluation took "
        f"{sum(r['train_seconds'] + r['eval_seconds'] for r in payload['runs']) / 60:.0f} "
        f"min over the {len(payload['runs'])} runs; the machine was shared with other "
        "jobs, so the seconds are indicative only.",
        "",
        "These are not the paper's conditions (RainTrainL/H, 200/1800 pairs, 100 epochs): "
        "compare our rows with each other; the paper's columns only show which direction "
        "it reports.",
    ]
    for protocol, title in (("paper", "Paper protocol: RGB, ten 224x224 crops per image"),
                            ("standard", "Standard protocol: Y (BT.601), full image")):
        header = list(COMPONENTS)
        for d in datasets:
            header += [f"{d} SSIM", f"{d} PSNR"]
            if protocol == "paper":
                header += [f"{d} SSIM (paper)", f"{d} PSNR (paper)"]
        header += ["train s / run"]
        rows = []
        for row in ROWS:
            if not any(row.key in table[d] for d in datasets):
                continue
            cells = ["✓" if c in row.marks else "" for c in COMPONENTS]
            secs = []
            for d in datasets:
                cell = table[d].get(row.key)
                if cell is None:
                    cells += ["–", "–"]
                else:
                    cells += [_fmt(cell[f"{protocol}_output_ssim"], 4),
                              _fmt(cell[f"{protocol}_output_psnr"], 2)]
                    secs.append(cell["train_seconds"])
                if protocol == "paper":
                    ssim, psnr_ = row.paper[d]
                    cells += [f"{ssim:.4f}", f"{psnr_:.2f}"]
            cells.append(" / ".join(f"{s:.0f}" for s in secs))
            rows.append(cells)
        inputs = ["rainy input", *[""] * (len(COMPONENTS) - 1)]
        for d in datasets:
            any_cell = next(iter(table[d].values()))
            inputs += [f"{any_cell[f'{protocol}_input_ssim']['mean']:.4f}",
                       f"{any_cell[f'{protocol}_input_psnr']['mean']:.2f}"]
            if protocol == "paper":
                inputs += ["", ""]
        rows.append([*inputs, ""])
        out += ["", f"### {title}", "", markdown_table(header, rows)]
    out += ["", "### Against the paper's claims (PSNR differences, ± two standard errors)", ""]
    out += verdicts(table) or ["- (not enough rows to compare)"]
    out += ["", *budget_check(table)]
    worse = below_input(table)
    if worse:
        out += ["", "### Rows that do not yet beat the rainy input", "", *worse]
    out += ["", "Rows 1-2 have no channel attention and rows 3-4 have it, as in the paper's "
            "Table I, so rows 3-4 against row 1 measure losses, weighting and attention "
            "together. "
            + ("One seed: no spread, so no difference can be called significant."
               if len(cfg["seeds"]) == 1 else
               f"With {len(cfg['seeds'])} seeds the spread is a rough estimate.")]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["L"],
                        help="L = Rain100L (default), H = Rain100H")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=[r.key for r in ROWS],
                        default=[r.key for r in ROWS])
    parser.add_argument("--steps", type=int, default=2500,
                        help="optimizer steps per run (default 2500: Lp beats the input by 5.6 dB)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64, help="random crop side")
    parser.add_argument("--recipe", choices=["fast", "paper"], default="fast",
                        help="training recipe of every row (see recipe.py)")
    parser.add_argument("--patches-per-image", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with Rain100L/, Rain100H/, rain100-split.json")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "quality",
                        help="keep the training runs here, to resume them (default runs/quality)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse runs of the same budget found in the JSON at --out")
    parser.add_argument("--quick", action="store_true",
                        help="2 steps, batch 2, 32 px crops, 32 px evaluation crops, one seed")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown from the JSON at --out")
    parser.add_argument("--crop", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="Markdown path (default: next to the JSON)")
    args = parser.parse_args(argv)
    if args.render:
        json_path = args.out or RESULTS / "quality.json"
        payload = json.loads(json_path.read_text(encoding="utf-8"))
        md_path = args.markdown or json_path.with_suffix(".md")
        md_path.write_text(render_markdown(payload), encoding="utf-8")
        if md_path.resolve().parent == RESULTS.resolve():  # quality.md, quality-rain100h.md
            write_docs_results()
        print(f"wrote {md_path}")
        return 0

    data_root = args.data or default_data_root()
    split_path = data_root / "rain100-split.json"
    names = [DATASETS[k] for k in args.datasets]
    missing = [p for p in [split_path, *(data_root / n for n in names)] if not p.exists()]
    if missing:
        print(f"quality benchmark skipped: data not found ({', '.join(map(str, missing))}); "
              "set MTLWEIGHT_DATA or --data")
        return 0
    if args.quick:
        args.steps, args.batch, args.patch, args.crop = 2, 2, 32, 32
        args.patches_per_image, args.seeds = 1, args.seeds[:1]
    torch.set_num_threads(args.threads)
    budget = Budget(args.steps, args.batch, args.patch, args.patches_per_image, args.lr,
                    args.crop, args.threads, args.recipe)
    json_path = args.out or RESULTS / "quality.json"
    md_path = args.markdown or json_path.with_suffix(".md")
    split = load_split(split_path)

    previous: list[dict[str, Any]] = []
    if args.resume and json_path.is_file():
        previous = [r for r in json.loads(json_path.read_text())["runs"]
                    if r["budget"] == budget.key()]
    rows = [r for r in ROWS if r.key in args.rows]
    print(f"machine: {json.dumps(machine())}")
    print(f"budget: {budget}; datasets {names}; seeds {args.seeds}; rows {[r.key for r in rows]}")

    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    runs_dir = args.runs_dir
    for dataset in names:
        for seed in args.seeds:  # all rows of a seed first: a cut-short run stays balanced
            for row in rows:
                done = [r for r in previous
                        if (r["dataset"], r["row"], r["seed"]) == (dataset, row.key, seed)]
                if done:
                    runs.append(done[0])
                    print(f"{dataset} {row.key} seed {seed}: reused")
                    continue
                record = run_one(row, dataset, seed, budget, data_root, split_path, runs_dir)
                runs.append(record)
                p, s = record["scores"]["paper"], record["scores"]["standard"]
                print(f"{dataset} {row.key} seed {seed}: {record['train_seconds']:.0f} s "
                      f"train + {record['eval_seconds']:.0f} s eval; paper "
                      f"{p['output_ssim']:.4f}/{p['output_psnr']:.2f} dB, standard "
                      f"{s['output_ssim']:.4f}/{s['output_psnr']:.2f} dB", flush=True)
                _write(json_path, md_path, runs, args, budget, split, time.perf_counter()
                       - start, final=False)
    payload = _write(json_path, md_path, runs, args, budget, split,
                     time.perf_counter() - start, final=True)
    print()
    print(render_markdown(payload))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _write(json_path: Path, md_path: Path, runs: list[dict[str, Any]], args: argparse.Namespace,
           budget: Budget, split: dict[str, list[int]], seconds: float,
           final: bool) -> dict[str, Any]:
    config = {**budget.key(), "threads": budget.threads, "seeds": args.seeds,
              "datasets": [DATASETS[k] for k in args.datasets], "rows": args.rows,
              "train_images": len(split["train"]), "test_images": len(split["test"]),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "complete": final,
              "notes": "2-core machine shared with other jobs: seconds are noisy; scores "
                       "are deterministic given the seed up to floating-point threading."}
    paper = {r.key: r.paper for r in ROWS}
    payload: dict[str, Any] = {"config": config, "total_seconds": seconds,
                               "table": aggregate(runs), "paper": paper, "runs": runs}
    write_json("quality", payload, json_path)
    payload["machine"] = json.loads(json_path.read_text(encoding="utf-8"))["machine"]
    md = render_markdown(payload)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(md, encoding="utf-8")
    if md_path.resolve().parent == RESULTS.resolve():  # quality.md, quality-rain100h.md
        write_docs_results()
    return payload


if __name__ == "__main__":
    sys.exit(main())
