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

    Sections, in order, for those present: ``overhead.md``, ``vs_torchjd.md``, ``speed.md``,
    ``recipe.md``, ``recipe-3000.md`` (the fast recipe at the issue's budget, made with
    ``recipe.py --rows fast --steps 3000 --patch 128``), ``recipe-amp.md`` (``fast``
    against ``fast+amp``), ``recipe-25min.md`` (``fast+amp`` for 25 minutes of two
    cores), ``quality.md``, ``quality-rain100h.md`` (Table I on Rain100H); each starts
    with its own ``##`` heading.
    """
    path = out if out is not None else DOCS_RESULTS
    parts: list[str] = []
    names = ("overhead", "vs_torchjd", "speed", "recipe", "recipe-3000", "recipe-amp",
             "recipe-25min", "quality", "quality-rain100h")
    for name in names:
        md = RESULTS / f"{name}.md"
        if md.is_file():
            parts += [md.read_text(encoding="utf-8").rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
