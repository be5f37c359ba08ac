"""Shared pieces of the benchmark scripts: machine description, timing, output.

Timings are medians over interleaved repetitions after a warm-up: every
repetition runs each variant once, in turn, so that slow drifts of the
machine (thermal, other load) hit all variants alike; comparisons are ratios
of medians measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    variants: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Run every variant ``warmup`` times, then ``repeats`` rounds of one call each.

    Returns, per variant, the median and the inter-quartile range of the
    wall-clock seconds of one call.
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    result = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
        result[name] = {"median_s": statistics.median(values), "q1_s": q[0], "q3_s": q[2]}
    return result


def paired_ratios(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    pairs: int,
    warmup: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ratio of ``b``'s time to ``a``'s, measured in back-to-back pairs.

    Each of ``pairs`` pairs times one call of ``a`` and one of ``b`` next to
    each other, in the order a b, then b a in the next pair (so that neither
    always runs second, on warmer caches), and takes the pair's ratio
    ``t_b / t_a``. Slow drifts of the machine cancel within a pair, so the
    median of the pair ratios resolves far smaller differences than two
    medians taken apart. Returns that median, a 95 % bootstrap interval of it
    (``resamples`` resamples of the pairs), the median times of each and the
    ratio of those medians. ``clock`` is for tests.
    """
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    for _ in range(warmup):
        a()
        b()
    synchronize(device)

    def timed(fn: Callable[[], object]) -> float:
        synchronize(device)
        start = clock()
        fn()
        synchronize(device)
        return clock() - start

    ta: list[float] = []
    tb: list[float] = []
    for i in range(pairs):
        if i % 2 == 0:
            ta.append(timed(a))
            tb.append(timed(b))
        else:
            tb.append(timed(b))
            ta.append(timed(a))
    ratios = [y / x for x, y in zip(ta, tb, strict=True)]
    gen = torch.Generator().manual_seed(seed)
    r = torch.tensor(ratios, dtype=torch.float64)
    idx = torch.randint(len(ratios), (resamples, len(ratios)), generator=gen)
    medians = r[idx].median(dim=1).values  # torch's median: the lower middle value
    lo, hi = torch.quantile(medians, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {
        "pairs": pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_ci95": [lo, hi],
        "a_median_s": statistics.median(ta),
        "b_median_s": statistics.median(tb),
        "ratio_of_medians": statistics.median(tb) / statistics.median(ta),
    }


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident set in MiB (Linux).

    Not ``resource.getrusage(...).ru_maxrss``: Linux carries it over ``exec``, so a
    child started by a large parent reports at least the parent's peak.
    """
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0: ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")


def write_json(name: str, payload: Mapping[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` with the machine's description to ``benchmarks/results/NAME.json``."""
    path = out if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


DOCS_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "_generated" / "results.md"


def write_docs_results(out: Path | None = None) -> Path:
    """Assemble ``docs/_generated/results.md`` from the Markdown files under ``results/``.

    Sections, in order, for those present: ``overhead.md``, ``vs_torchjd.md``,
    ``fixed_overhead.md`` (Fixed against a plain step, in pairs on one model), ``speed.md``,
    ``recipe.md``, ``recipe-3000.md`` (the fast recipe at the issue's budget, made with
    ``recipe.py --rows fast --steps 3000 --patch 128``), ``recipe-amp.md`` (``fast``
    against ``fast+amp``), ``recipe-25min.md`` (``fast+amp`` for 25 minutes of two
    cores), ``quality.md``, ``quality-rain100h.md`` (Table I on Rain100H); each starts
    with its own ``##`` heading.
    """
    path = out if out is not None else DOCS_RESULTS
    parts: list[str] = []
    names = ("overhead", "vs_torchjd", "fixed_overhead", "speed", "recipe", "recipe-3000",
             "recipe-amp", "recipe-25min", "quality", "quality-rain100h")
    for name in names:
        md = RESULTS / f"{name}.md"
        if md.is_file():
            parts += [md.read_text(encoding="utf-8").rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
