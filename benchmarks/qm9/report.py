"""The QM9 table from the finished runs: Markdown, JSON and a plot.

Rows: every (method, learning rate, gradients) with at least one finished seed.
Columns: the test MAE per task (mean over seeds, the papers' units), Delta_m %
against the single-task models of the same protocol (mean +- sample standard
deviation over seeds), the mean rank among the main rows, and the median time
of a training step relative to LS (``equal``) of the same protocol.

LS is *tuned*: of its learning rates, the one with the lowest validation
Delta_m (mean over seeds) is the reference of the verdicts; a method beats
tuned LS when its Delta_m is lower by more than two standard errors of the
difference (the spread over seeds of both), and loses when higher by more.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import delta_m, display_scale, mean_ranks
from .protocol import preset

__all__ = ["PAPERS", "build_table", "main", "spearman"]

#: Delta_m % on QM9 as printed in Table 2 of FAMO (Liu et al., NeurIPS 2023),
#: whose rows other than FAMO repeat Table 2 of Nash-MTL (Navon et al., ICML
#: 2022); same protocol as ``--protocol paper`` (mean of 3 seeds). These are the
#: widely cited figures (LS 177.6, Nash-MTL 62.0, FAMO 58.5); the tools of the
#: session that wrote them could not open the papers' tables, so they were not
#: re-read from the PDFs: check them there before quoting this comparison.
PAPERS: dict[str, float] = {
    "equal": 177.6,
    "gls": 77.8,
    "rlw": 203.8,
    "dwa": 175.3,
    "uncertainty": 108.0,
    "mgda": 120.5,
    "pcgrad": 125.7,
    "cagrad": 112.8,
    "imtl_g": 77.2,
    "nash_mtl": 62.0,
    "famo": 58.5,
}
LABELS = {
    "equal": "LS",
    "gls": "SI (geometric)",
    "uncertainty": "UW",
    "dwa": "DWA",
    "rlw": "RLW",
    "gb": "GB",
    "lb": "LB",
    "gradnorm": "GradNorm",
    "mgda": "MGDA",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "imtl_g": "IMTL-G",
    "nash_mtl": "Nash-MTL",
    "aligned_mtl": "Aligned-MTL",
    "famo": "FAMO",
    "upgrad": "UPGrad",
    "fairgrad": "FairGrad",
    "db_mtl": "DB-MTL",
    "stch": "STCH",
}
LOSS_LEVEL = {"equal", "gls", "uncertainty", "dwa", "rlw", "lb", "famo", "stch"}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged).

    >>> spearman([1, 2, 3], [10, 30, 20])
    0.5
    """

    def ranks(x: Sequence[float]) -> np.ndarray:
        v = np.asarray(x, dtype=float)
        return np.array([1 + (v < e).sum() + 0.5 * ((v == e).sum() - 1) for e in v])

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra**2).sum() * (rb**2).sum()))


def _load(results: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(results.glob("*.json")):
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("finished"):
            runs.append(saved)
    return runs


def _ratios(run: dict[str, Any]) -> dict[str, Any]:
    """A run's test MAE over that of predicting the training mean, by task (STL: its task)."""
    pairs = zip(run["tasks"], run["test_mae"], run["mean_predictor_test_mae"], strict=True)
    task = run["config"]["task"]
    return {
        "name": run["name"],
        "ratio": {t: m / p for t, m, p in pairs if task is None or t == task},
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def build_table(
    runs: list[dict[str, Any]], timing: dict[tuple[str, str], float] | None = None
) -> dict[str, Any]:
    """The table as a dict (the JSON written next to the Markdown).

    ``timing``: step time relative to LS by (method, gradients), from the
    interleaved measurement; rows it lacks use the medians the runs recorded.
    """
    stl: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    tasks: list[str] = []
    units: list[str] = []
    for r in runs:
        c = r["config"]
        if c["method"] == "stl":
            i = r["tasks"].index(c["task"])
            stl[c["task"]][c["seed"]] = (r["test_mae"][i], r["val_mae"][i])
        else:
            groups[(c["method"], c["lr"], c["gradients"])].append(r)
            tasks, units = r["tasks"], r["units"]
    out: dict[str, Any] = {
        "tasks": tasks,
        "units": units,
        "rows": [],
        "complete": False,
        "finished_runs": len(runs),
    }
    if not tasks or any(t not in stl for t in tasks):
        out["missing_stl"] = [t for t in tasks if t not in stl]
        out["so_far"] = [_ratios(r) for r in runs]
        return out
    ref_test = [statistics.fmean(v[0] for v in stl[t].values()) for t in tasks]
    ref_val = [statistics.fmean(v[1] for v in stl[t].values()) for t in tasks]
    defaults = preset(runs[0]["config"]["protocol"])  # the main rows: the preset's lr, gradients
    base_lr = defaults.lr
    ls_step = [
        r["median_step_seconds"]
        for (m, lr, _), rs in groups.items()
        if m == "equal" and lr == base_lr
        for r in rs
    ]
    ls_time = statistics.median(ls_step) if ls_step else math.nan
    rows = []
    for (method, lr, gradients), rs in sorted(groups.items()):
        deltas = [delta_m(r["test_mae"], ref_test) for r in rs]
        val_deltas = [delta_m(r["val_mae"], ref_val) for r in rs]
        mae = np.mean([r["test_mae"] for r in rs], axis=0).tolist()
        d, sd = _mean_sd(deltas)
        rows.append(
            {
                "method": method,
                "lr": lr,
                "gradients": gradients,
                "label": LABELS.get(method, method),
                "seeds": sorted(r["config"]["seed"] for r in rs),
                "test_mae": mae,
                "delta_m": d,
                "delta_m_sd": sd,
                "delta_m_seeds": deltas,
                "val_delta_m": statistics.fmean(val_deltas),
                "step_ratio": (timing or {}).get((method, gradients))
                or statistics.median(r["median_step_seconds"] for r in rs) / ls_time,
            }
        )
    mean_pred = np.mean(
        [r["mean_predictor_test_mae"] for r in runs if r["config"]["method"] != "stl"], axis=0
    )
    out["mean_predictor"] = {
        "test_mae": mean_pred.tolist(),
        "delta_m": delta_m(mean_pred, ref_test),
    }
    out["stl"] = {"test_mae": ref_test, "seeds": {t: sorted(stl[t]) for t in tasks}}
    main_rows = [
        r
        for r in rows
        if r["lr"] == base_lr
        and (
            r["gradients"] == defaults.gradients
            or r["method"] == "db_mtl"
            or r["method"] in LOSS_LEVEL
        )
    ]
    for r in main_rows:
        r["main"] = True
    ranks = mean_ranks({f"{r['method']}": r["test_mae"] for r in main_rows})
    for r in rows:
        r["mean_rank"] = ranks.get(r["method"]) if r.get("main") else None
    ls = [r for r in rows if r["method"] == "equal"]
    if ls:
        tuned = min(ls, key=lambda r: r["val_delta_m"])
        out["tuned_ls"] = {
            "lr": tuned["lr"],
            "delta_m": tuned["delta_m"],
            "sd": tuned["delta_m_sd"],
        }
        for r in rows:
            r["verdict"] = _verdict(r, tuned)
    common = [r for r in main_rows if r["method"] in PAPERS]
    if len(common) >= 3:
        ours = [r["delta_m"] for r in common]
        theirs = [PAPERS[r["method"]] for r in common]
        out["papers"] = {
            "methods": [r["method"] for r in common],
            "ours": ours,
            "papers": theirs,
            "spearman": spearman(ours, theirs),
        }
    out["rows"] = rows
    out["complete"] = True
    return out


def _verdict(row: dict[str, Any], tuned: dict[str, Any]) -> str:
    if row is tuned:
        return "tuned LS"
    a, b = row["delta_m_seeds"], tuned["delta_m_seeds"]
    if len(a) < 2 or len(b) < 2:
        return "needs 2+ seeds"
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.fmean(a) - statistics.fmean(b)
    if diff + 2 * se < 0:
        return f"beats tuned LS ({diff:+.1f} ± {2 * se:.1f})"
    if diff - 2 * se > 0:
        return f"worse than tuned LS ({diff:+.1f} ± {2 * se:.1f})"
    return f"within seed spread ({diff:+.1f} ± {2 * se:.1f})"


def _fmt(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:.3g}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def render(table: dict[str, Any], *, planned: int, protocol: str) -> str:
    """The Markdown page."""
    finished = table["finished_runs"]
    lines = [f"# QM9, `--protocol {protocol}`", ""]
    if finished < planned:
        lines += [
            f"**Partial: {finished} of {planned} runs finished.** The table fills in as "
            "the sweep goes on; seeds and rows missing below have not run yet.",
            "",
        ]
    if not table["complete"]:
        lines += [
            "No table yet: the single-task runs of "
            f"{', '.join(table.get('missing_stl', [])) or 'every task'} have not finished.",
            "",
        ]
        if table.get("so_far"):
            tasks = table["tasks"]
            lines += [
                "Finished runs so far: test MAE over the MAE of predicting the training mean "
                "(below 1: better than no model).",
                "",
                "| run | " + " | ".join(tasks) + " |",
                "|" + "---|" * (1 + len(tasks)),
            ]
            for r in table["so_far"]:
                cells = [f"{r['ratio'][t]:.2f}" if t in r["ratio"] else "" for t in tasks]
                lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)
    heads = []
    for t, u in zip(table["tasks"], table["units"], strict=True):
        heads.append(f"{t} [{display_scale(u)[1]}]")
    lines += [
        "| method | grads | lr | seeds | "
        + " | ".join(heads)
        + " | Δm % | MR | step / LS | vs tuned LS |",
        "|" + "---|" * (8 + len(heads)),
    ]
    scales = [display_scale(u)[0] for u in table["units"]]

    def maes(values: list[float]) -> str:
        return " | ".join(_fmt(v * s) for v, s in zip(values, scales, strict=True))

    lines.append(f"| STL (one model per task) | | | | {maes(table['stl']['test_mae'])} | 0 | | | |")
    mp = table["mean_predictor"]
    lines.append(
        f"| training mean (no model) | | | | {maes(mp['test_mae'])} | {mp['delta_m']:.0f} | | | |"
    )
    order = sorted(table["rows"], key=lambda r: (not r.get("main"), r["delta_m"]))
    for r in order:
        sd = "" if math.isnan(r["delta_m_sd"]) else f" ± {r['delta_m_sd']:.1f}"
        mr = "" if r["mean_rank"] is None else f"{r['mean_rank']:.1f}"
        grads = (
            "–"
            if r["method"] in LOSS_LEVEL
            else {"representation": "z", "last": "lin1", "shared": "θ"}[r["gradients"]]
        )
        lines.append(
            f"| {r['label']} | {grads} | {r['lr']:g} | {len(r['seeds'])} | {maes(r['test_mae'])} | "
            f"{r['delta_m']:.1f}{sd} | {mr} | {r['step_ratio']:.2f} | {r.get('verdict', '')} |"
        )
    lines += [
        "",
        "grads: what a gradient-level method differentiates (z: the graph embedding, "
        "`representation=`; lin1: the last shared layer; θ: every shared parameter; –: "
        "loss-level, no per-task gradients). Δm % against the STL row, mean ± sample standard "
        "deviation over seeds (lower is better); MR: mean rank over the tasks among the main rows "
        "(the preset's learning rate and gradients); step / LS: median training step time "
        "relative to LS on a shared, loaded machine (from `qm9_benchmark.py timing`, every "
        "row stepping in turn on the same batches, when that file exists; else the medians "
        "the runs recorded, hours apart: indicative only).",
        "",
    ]
    if "tuned_ls" in table:
        t = table["tuned_ls"]
        lines.append(
            f"Tuned LS: learning rate {t['lr']:g} (lowest validation Δm of the LS sweep), "
            f"test Δm {t['delta_m']:.1f} %."
        )
        beat = [r["label"] for r in table["rows"] if str(r.get("verdict", "")).startswith("beats")]
        lines.append(
            "Methods that beat tuned LS beyond the seed spread (2 standard errors): "
            f"{', '.join(beat) if beat else 'none'}."
        )
        lines.append("")
    if "papers" in table:
        p = table["papers"]
        lines += [
            "## Against the papers",
            "",
            "| method | Δm % here | Δm % papers |",
            "|---|---|---|",
        ]
        for m, a, b in zip(p["methods"], p["ours"], p["papers"], strict=True):
            lines.append(f"| {LABELS.get(m, m)} | {a:.1f} | {b:.1f} |")
        lines += [
            "",
            f"Spearman rank correlation over these {len(p['methods'])} methods: "
            f"{p['spearman']:+.2f}. The papers' figures: Table 2 of FAMO (NeurIPS 2023), "
            "which repeats Nash-MTL's (ICML 2022) for the older methods: the full protocol, "
            "300 epochs on 110k molecules, gradients on the shared parameters (figures as "
            "widely cited; not re-read from the PDFs when this was written).",
            "",
        ]
    return "\n".join(lines)


def plot(table: dict[str, Any], path: Path) -> None:
    """Δm % against the step time relative to LS, one point per row (error bar: seed sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in table["rows"]:
        sd = 0.0 if math.isnan(r["delta_m_sd"]) else r["delta_m_sd"]
        marker = "o" if r.get("main") else "s"
        ax.errorbar(r["step_ratio"], r["delta_m"], yerr=sd, fmt=marker, ms=4, capsize=2)
        grads = "" if r["method"] in LOSS_LEVEL else f"{r['gradients']}, "
        label = r["label"] + ("" if r.get("main") else f" ({grads}lr {r['lr']:g})")
        ax.annotate(
            label,
            (r["step_ratio"], r["delta_m"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training step time relative to LS (loaded machine)")
    ax.set_ylabel("Δm % against single-task models (lower is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(protocol: str, results: Path, out: Path, planned: int | None = None) -> dict[str, Any]:
    """Write ``out``.md, ``out``.json and ``out``.png from the runs in ``results``."""
    from .sweep import plan

    runs = [r for r in _load(results) if r["config"]["protocol"] == protocol]
    timing_path = out.parent / f"qm9-{protocol}-timing.json"
    timing = None
    if timing_path.exists():
        rows = json.loads(timing_path.read_text(encoding="utf-8"))["rows"].values()
        timing = {(r["config"]["method"], r["config"]["gradients"]): r["ratio_to_ls"] for r in rows}
    table = build_table(runs, timing)
    table["timing"] = "interleaved" if timing else "per run"
    total = len(plan(protocol)) if planned is None else planned
    table["planned_runs"] = total
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(
        render(table, planned=total, protocol=protocol) + "\n", encoding="utf-8"
    )
    if table["complete"]:
        plot(table, out.with_suffix(".png"))
    return table
