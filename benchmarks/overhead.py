"""Overhead of the weighting strategies on one MENET training step.

One step = forward, the three losses (pixel MSE, edge-aware, texture), the
weighting, backward and an Adam step; batch 16, patch 128 by default. Each
strategy's median step time and peak memory is reported as a ratio to the
Fixed step measured in the same run (interleaved repetitions after a warm-up).

    python benchmarks/overhead.py                 # CPU (and CUDA when present)
    python benchmarks/overhead.py --quick         # small sizes, for a smoke test
    python benchmarks/overhead.py --methods fixed lb gb_last

Targets (issue 5): LB <= 1.02x, GB on the last convolution <= 1.10x,
GB on the representation <= 1.05x.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` around one step; on
CPU, the peak resident set of a fresh process per strategy running three steps of
it (``VmHWM`` of that process alone, from ``/proc/self/status``), since the CPU
allocator keeps no counter. Not ``ru_maxrss``: Linux carries it over ``exec``, so
every child reported at least this script's own peak (issue 13: the same 2303 MiB
for every strategy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see speed.py

import torch
import torch.nn.functional as F

import mtlweight as mw
from menet.model import MENET

from _common import (
    RESULTS,
    interleaved_medians,
    machine,
    markdown_table,
    rss_mib,
    write_docs_results,
    write_json,
)

TARGETS = {"lb": 1.02, "gb_last": 1.10, "gb_repr": 1.05}
CORE = ["fixed", "lb", "gb_last", "gb_all", "gb_repr"]
TASKS = ["pixel", "edge", "texture"]


def _weighting(name: str, model: MENET) -> tuple[mw.Weighting, bool]:
    """The strategy for ``name`` and whether it wants ``representation=``."""
    if name == "fixed":
        return mw.Fixed({"pixel": 1.0, "edge": 1e-2, "texture": 1.0}), False
    if name == "gb_last":
        return mw.GradientBalance(shared=model.last_conv), False
    if name == "gb_all":
        return mw.GradientBalance(shared=model), False
    if name == "gb_repr":
        return mw.GradientBalance(), True
    if name == "mgda_ub":
        return mw.get(name), True
    # Strategies that take shared parameters get the last convolution, as GB.
    return mw.get(name, shared=model.last_conv, tasks=TASKS), False


def make_step(
    name: str, device: torch.device, batch: int, patch: int, seed: int = 0
) -> Callable[[], None]:
    torch.manual_seed(seed)
    # channels_last, as ``python -m menet train`` stores it
    model = MENET(blocks=8, channel_attention=True).to(
        device, memory_format=torch.channels_last).train()
    weighting, wants_repr = _weighting(name, model)
    weighting = weighting.to(device)
    params = [*model.parameters(), *weighting.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    edge = mw.losses.EdgeAwareLoss().to(device)
    texture = mw.losses.TextureMatchingLoss(patch_size=4).to(device)
    rainy = torch.rand(batch, 3, patch, patch, device=device)
    clean = torch.rand(batch, 3, patch, patch, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out, features = model(rainy, return_features=True)
        losses = {
            "pixel": F.mse_loss(out, clean),
            "edge": edge(out, clean),
            "texture": texture(out, clean),
        }
        weighting.backward(losses, representation=features if wants_repr else None)
        optimizer.step()

    return step


def peak_memory(name: str, device: torch.device, batch: int, patch: int) -> float:
    """Peak memory in MiB of a training step with strategy ``name``."""
    if device.type == "cuda":
        step = make_step(name, device, batch, patch)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) / 2**20
    probe = [sys.executable, __file__, "--memory-probe", name, "--batch", str(batch),
             "--patch", str(patch)]
    out = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


def run(device: torch.device, methods: list[str], batch: int, patch: int, repeats: int,
        warmup: int, memory: bool = True) -> dict[str, dict[str, float]]:
    steps = {m: make_step(m, device, batch, patch) for m in methods}
    times = interleaved_medians(steps, repeats=repeats, warmup=warmup, device=device)
    base = times["fixed"]["median_s"]
    peaks = {m: peak_memory(m, device, batch, patch) if memory else float("nan") for m in methods}
    return {
        m: {**times[m], "ratio": times[m]["median_s"] / base, "peak_mib": peaks[m],
            "memory_ratio": peaks[m] / peaks["fixed"]}
        for m in methods
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="strategies (default: the core five, plus --all for every one)")
    parser.add_argument("--all", action="store_true", help="every registered strategy as well")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="batch 2, patch 32, 3 repeats")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: results/overhead.json, with overhead.md and the "
                        "docs' results page)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe is not None:
        step = make_step(args.memory_probe, torch.device("cpu"), args.batch, args.patch)
        for _ in range(3):
            step()
        print(rss_mib("VmHWM"))  # this process alone (ru_maxrss would include the parent's)
        return 0

    if args.quick:
        args.batch, args.patch, args.repeats, args.warmup = 2, 32, 3, 1
    methods = list(args.methods or CORE)
    if args.all:
        methods += [n for n in mw.available() if n not in ("gb", "fixed") and n not in methods]
    if "fixed" not in methods:
        methods.insert(0, "fixed")
    devices = [torch.device("cpu")]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cpu":
        devices = [torch.device("cpu")]
    if args.device == "cuda":
        devices = [d for d in devices if d.type == "cuda"] or sys.exit("CUDA is not available")

    print(f"machine: {json.dumps(machine())}")
    results: dict[str, object] = {}
    sections: list[str] = []
    for device in devices:
        print(f"\n{device.type}: batch {args.batch}, patch {args.patch}, "
              f"{args.repeats} interleaved repeats after {args.warmup} warm-up")
        res = run(device, methods, args.batch, args.patch, args.repeats, args.warmup,
                  memory=not args.no_memory)
        results[device.type] = res
        rows = []
        for m, r in res.items():
            target = TARGETS.get(m)
            verdict = "" if target is None else ("met" if r["ratio"] <= target else "MISSED")
            rows.append([m, f"{r['median_s'] * 1e3:.1f}", f"{r['ratio']:.3f}",
                         f"{r['peak_mib']:.0f}", f"{r['memory_ratio']:.3f}",
                         "" if target is None else f"<= {target:.2f} {verdict}"])
        table = markdown_table(["strategy", "step ms (median)", "time vs fixed", "peak MiB",
                                "memory vs fixed", "target"], rows)
        print(table)
        sections += [f"### {device.type.upper()}", "", table, ""]
    config = {"batch": args.batch, "patch": args.patch, "repeats": args.repeats,
              "warmup": args.warmup, "model": "MENET shallow-ca (8 blocks + attention)"}
    path = write_json("overhead", {"config": config, "results": results, "targets": TARGETS},
                      args.out)
    print(f"\nwrote {path}")
    if args.out is None:
        mach = machine()
        header = [
            "## Overhead of the weighting strategies (one MENET training step)",
            "",
            f"Measured {mach['date']} on {mach['cpu']} ({mach['logical_cpus']} logical CPUs, "
            f"{mach['torch_threads']} torch threads, torch {mach['torch']}"
            f"{', ' + mach['cuda'] if mach['cuda'] else ''}). One step = forward, the three "
            "losses, the weighting, backward and an Adam step on MENET shallow-ca "
            f"(channels_last), batch {args.batch}, patch {args.patch}; medians of "
            f"{args.repeats} interleaved repetitions after {args.warmup} warm-up, each "
            "strategy as a ratio to Fixed in the same run. Strategies that take shared "
            "parameters use the last convolution (as GB); `gb_all` uses every parameter, "
            "`gb_repr` and `mgda_ub` the output of the last convolution. CPU peak memory "
            "is the peak resident set (`VmHWM`) of a fresh process per strategy running "
            "three steps of it.",
            "",
        ]
        (RESULTS / "overhead.md").write_text("\n".join(header + sections), encoding="utf-8")
        write_docs_results()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
