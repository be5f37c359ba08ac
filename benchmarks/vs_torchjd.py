"""mtlweight against TorchJD: the same model and method, side by side.

A 6-layer MLP trunk (width ``w``: ``6 (w^2 + w)`` shared parameters) with 3
regression heads, batch 64, one intra-op thread. One step = zero the
gradients, forward, the three losses and the backward of the library:

- ``plain``: ``sum(losses).backward()``;
- mtlweight: ``weighting.backward(losses)`` with
  ``weighting = mw.get(name, shared=trunk, tasks=...)`` (each method's defaults);
- TorchJD: ``mtl_backward(losses, features=features, shared_params=...,
  tasks_params=...)`` then ``jac_to_grad(shared_params, aggregator)`` (TorchJD >= 0.18
  splits what ``mtl_backward(..., aggregator=...)`` did into these two calls).

Every method that both libraries have (the name table ``TORCHJD`` below,
filtered by ``mtlweight.available()`` and the installed TorchJD), plus GB over
all shared parameters and Fixed against the plain step. Times are medians of
interleaved repetitions after a warm-up, all variants of one size in one
process. Memory comes from one fresh process per (size, library, method), forked
from a process that has imported the libraries and run no step (``--probe exec``:
a new interpreter each, minutes of imports on a loaded machine): the peak
resident set of that process alone (``VmHWM`` of ``/proc/self/status``:
``ru_maxrss`` is inherited across ``exec`` from the parent, so it would report
the benchmark's own peak), and the step's share of it, the peak minus the
resident set just before the first step.

    python benchmarks/vs_torchjd.py                  # both sizes, every shared method
    python benchmarks/vs_torchjd.py --quick          # tiny sizes, for a smoke test
    python benchmarks/vs_torchjd.py --methods upgrad mgda --sizes 0.35M

The trunk is all ``nn.Linear``, so mtlweight's methods of ``G`` alone take the
shortcut for linear layers (Gram entries and update from the layers' activations,
``linear_shortcut``); a trunk of other layers (convolutions) takes the general path,
timed too, with the shortcut turned off (column "general path / TorchJD", and GB's
"general path" figure).

Targets (issue 13): every shared method <= TorchJD's time and step memory at
both sizes; GB over all shared parameters <= 2.5x a plain step (T per-task
backward passes and no further one: about (1 + 2T)/3 = 2.33x); Fixed <= 1.03x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see speed.py

import torch
import torch.nn.functional as F
from torch import nn

import mtlweight as mw

from _common import (
    interleaved_medians,
    machine,
    markdown_table,
    reset_peak_rss,
    rss_mib,
    write_docs_results,
    write_json,
)

TASKS = ["a", "b", "c"]
DEPTH = 6
SIZES = {"0.35M": 240, "5.3M": 940}  # name -> trunk width
QUICK_SIZES = {"tiny": 16, "small": 32}
TARGETS = {"vs_torchjd": 1.0, "gb_all": 2.5, "gb_all_floor": (1 + 2 * len(TASKS)) / 3,
           "fixed": 1.03}

# mtlweight name -> (TorchJD aggregator class, its options). TorchJD's Weighting-only
# methods are wrapped in GramianWeightedAggregator (marked by a "Weighting" class name).
TORCHJD: dict[str, tuple[str, dict[str, Any]]] = {
    "upgrad": ("UPGrad", {}),
    "dualproj": ("DualProj", {}),
    "config": ("ConFIG", {}),
    "gradvac": ("GradVac", {}),
    "graddrop": ("GradDrop", {}),
    "pcgrad": ("PCGrad", {}),
    "mgda": ("MGDA", {}),
    "cagrad": ("CAGrad", {"c": 0.4}),
    "imtl_g": ("IMTLG", {}),
    "nash_mtl": ("NashMTL", {"n_tasks": len(TASKS)}),
    "aligned_mtl": ("AlignedMTL", {}),
    "fairgrad": ("FairGrad", {"alpha": 1.0}),
    "excess_mtl": ("ExcessMTL", {}),
    "sdmgrad": ("SDMGradWeighting", {}),
    "modo": ("MoDoWeighting", {}),
}
# mtlweight options that match TorchJD's settings above (where the defaults differ)
OURS_OPTIONS: dict[str, dict[str, Any]] = {"fairgrad": {"alpha": 1.0}}


def torchjd_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torchjd")
    except Exception:  # PackageNotFoundError: not installed
        return None


def shared_methods(requested: list[str] | None = None) -> list[str]:
    """The methods of the table that both mtlweight and the installed TorchJD have."""
    try:
        import torchjd.aggregation as agg
    except ImportError:
        return []
    ours = set(mw.available())
    names = [n for n in TORCHJD if n in ours and hasattr(agg, TORCHJD[n][0])]
    if requested is not None:
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise SystemExit(f"not in both libraries: {', '.join(unknown)}; shared: "
                             f"{', '.join(names)}")
        names = [n for n in names if n in requested]
    return names


def torchjd_aggregator(name: str) -> Any:
    import torchjd.aggregation as agg

    cls_name, options = TORCHJD[name]
    cls = getattr(agg, cls_name)
    if cls_name.endswith("Weighting"):
        return agg.GramianWeightedAggregator(cls(**options))
    return cls(**options)


Model = tuple[nn.Sequential, nn.ModuleList, torch.Tensor, torch.Tensor]


def build_model(width: int, batch: int, device: torch.device, seed: int = 0) -> Model:
    """The trunk, the heads, one batch of inputs and one of targets."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(width, width), nn.ReLU()]
    trunk = nn.Sequential(*layers).to(device)
    heads = nn.ModuleList(nn.Linear(width, 1) for _ in TASKS).to(device)
    x = torch.randn(batch, width, device=device)
    y = torch.randn(batch, len(TASKS), device=device)
    return trunk, heads, x, y


def shared_parameters(width: int) -> int:
    return DEPTH * (width * width + width)


def make_step(library: str, name: str, width: int, batch: int, device: torch.device,
              model: Model | None = None) -> Callable[[], None]:
    """One training step (no optimizer update) of ``name`` in ``library``.

    ``library`` is ``"plain"``, ``"mtlweight"`` or ``"torchjd"``; for mtlweight
    ``name`` may also be ``"gb_all"`` (GB over every shared parameter) or ``"fixed"``.
    ``model`` (from :func:`build_model`) lets two steps share one model; by default
    each step builds its own.
    """
    trunk, heads, x, y = model if model is not None else build_model(width, batch, device)
    shared = list(trunk.parameters())
    params = [*shared, *heads.parameters()]

    def losses_of() -> tuple[torch.Tensor, list[torch.Tensor]]:
        for p in params:
            p.grad = None
        features = trunk(x)
        return features, [F.mse_loss(h(features).squeeze(1), y[:, i])
                          for i, h in enumerate(heads)]

    if library == "plain":
        def step() -> None:
            _, losses = losses_of()
            torch.autograd.backward(sum(losses))  # type: ignore[arg-type]
        return step

    if library in ("mtlweight", "mtlweight-general"):
        if name == "gb_all":
            weighting: mw.Weighting = mw.GradientBalance(shared=trunk)
        elif name == "fixed":
            weighting = mw.Fixed(dict.fromkeys(TASKS, 1.0))
        else:
            weighting = mw.get(name, shared=trunk, tasks=TASKS, **OURS_OPTIONS.get(name, {}))
        weighting = weighting.to(device)
        if library == "mtlweight-general" and hasattr(weighting, "linear_shortcut"):
            weighting.linear_shortcut = False  # what a trunk of other layers gets

        def step() -> None:
            _, losses = losses_of()
            weighting.backward(dict(zip(TASKS, losses, strict=True)))
        return step

    if library == "torchjd":
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = torchjd_aggregator(name)
        tasks_params = [list(h.parameters()) for h in heads]

        def step() -> None:
            features, losses = losses_of()
            mtl_backward(losses, features=features, shared_params=shared,
                         tasks_params=tasks_params)
            jac_to_grad(shared, aggregator)
        return step

    raise ValueError(f"unknown library {library!r}: plain, mtlweight or torchjd")


def memory_probe(library: str, name: str, width: int, batch: int, device: torch.device,
                 steps: int = 3) -> dict[str, float]:
    """Run ``steps`` steps in this (fresh) process; its memory in MiB.

    ``first_step_mib``: what the first step adds to the peak (one-time
    initialisation included); ``step_mib``: the same for the later steps, from
    the resident set (CUDA: allocated memory) after the first; ``peak_mib``: the
    process's peak.
    """
    step = make_step(library, name, width, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        first = torch.cuda.max_memory_allocated(device) / 2**20
        again = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps - 1):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        base = rss_mib("VmRSS")
        step()
        first = rss_mib("VmHWM")
        reset_peak_rss()
        again = rss_mib("VmRSS")
        for _ in range(steps - 1):
            step()
        peak = rss_mib("VmHWM")
    return {"peak_mib": max(first, peak), "first_step_mib": first - base,
            "step_mib": peak - again}


def peak_memory(library: str, name: str, width: int, batch: int, device: torch.device
                ) -> dict[str, float]:
    """:func:`memory_probe` in a fresh child process (one per call)."""
    probe = [sys.executable, __file__, "--memory-probe", library, name, "--width", str(width),
             "--batch", str(batch), "--device", device.type]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(probe, capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:  # reported, and the figures left out (NaN), not fatal
        print(f"memory probe {library}/{name} (width {width}) failed:\n{out.stderr[-2000:]}",
              file=sys.stderr, flush=True)
        return dict.fromkeys(("peak_mib", "first_step_mib", "step_mib"), float("nan"))
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class Zygote:
    """A process forked before any step has run, which forks one child per memory probe.

    Each probe is still a fresh process of its own (its peak is its own; ``VmHWM`` is reset
    to the resident set it starts with), but it starts from a copy of a process that has
    already imported torch, mtlweight and TorchJD and run nothing: on a loaded machine an
    ``exec`` per probe spends minutes importing torch. ``--probe exec`` uses ``exec``.
    """

    def __init__(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=self._serve, args=(child,), daemon=True)
        self._process.start()

    @staticmethod
    def _serve(conn: Any) -> None:
        import torchjd.aggregation  # loaded once, shared by every probe
        import torchjd.autojac  # noqa: F401

        while (request := conn.recv()) is not None:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the probe: a process of its own
                os.close(read)
                try:
                    library, name, width, batch, device = request
                    reply = json.dumps(memory_probe(library, name, width, batch,
                                                    torch.device(device)))
                except BaseException as exc:  # reported to the parent
                    reply = json.dumps({"error": repr(exc)})
                os.write(write, reply.encode())
                os._exit(0)
            os.close(write)
            chunks = []
            while chunk := os.read(read, 65536):
                chunks.append(chunk)
            os.close(read)
            os.waitpid(pid, 0)
            conn.send(json.loads(b"".join(chunks) or b'{"error": "no reply"}'))

    def probe(self, library: str, name: str, width: int, batch: int, device: torch.device
              ) -> dict[str, float]:
        self._conn.send((library, name, width, batch, device.type))
        reply: dict[str, Any] = self._conn.recv()
        if "error" in reply:
            print(f"memory probe {library}/{name} (width {width}) failed: {reply['error']}",
                  file=sys.stderr, flush=True)
            return dict.fromkeys(("peak_mib", "first_step_mib", "step_mib"), float("nan"))
        return reply

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=60)


def run_size(width: int, methods: list[str], batch: int, repeats: int, warmup: int,
             device: torch.device, memory: bool, zygote: Zygote | None = None
             ) -> dict[str, Any]:
    variants: dict[str, Callable[[], None]] = {
        "plain": make_step("plain", "plain", width, batch, device),
        # the same plain step on a second model: how far two identical steps differ
        "plain_again": make_step("plain", "plain", width, batch, device),
        "fixed": make_step("mtlweight", "fixed", width, batch, device),
        "gb_all": make_step("mtlweight", "gb_all", width, batch, device),
        "gb_all_general": make_step("mtlweight-general", "gb_all", width, batch, device),
    }
    for m in methods:
        variants[f"mtlweight/{m}"] = make_step("mtlweight", m, width, batch, device)
        variants[f"general/{m}"] = make_step("mtlweight-general", m, width, batch, device)
        variants[f"torchjd/{m}"] = make_step("torchjd", m, width, batch, device)
    times = interleaved_medians(variants, repeats=repeats, warmup=warmup, device=device)
    del variants
    plain = times["plain"]["median_s"]
    for key, row in times.items():  # the times first, before the (slower) memory probes
        print(f"  {key:24s} {row['median_s'] * 1e3:9.2f} ms  {row['median_s'] / plain:6.2f}x plain",
              flush=True)

    def mem(library: str, name: str) -> dict[str, float]:
        if not memory:
            return dict.fromkeys(("peak_mib", "first_step_mib", "step_mib"), float("nan"))
        if zygote is not None:
            return zygote.probe(library, name, width, batch, device)
        return peak_memory(library, name, width, batch, device)

    plain_mem = mem("plain", "plain")
    out: dict[str, Any] = {
        "width": width, "shared_parameters": shared_parameters(width),
        "plain": {**times["plain"], **plain_mem},
    }
    for key in ("fixed", "gb_all"):
        out[key] = {**times[key], "vs_plain": times[key]["median_s"] / plain,
                    **mem("mtlweight", key)}
    general = times["gb_all_general"]
    out["gb_all_general"] = {**general, "vs_plain": general["median_s"] / plain}
    again = times["plain_again"]
    out["plain_again"] = {**again, "vs_plain": again["median_s"] / plain}
    out["methods"] = {}
    for m in methods:
        ours, theirs = times[f"mtlweight/{m}"], times[f"torchjd/{m}"]
        ours_mem, theirs_mem = mem("mtlweight", m), mem("torchjd", m)
        out["methods"][m] = {
            "mtlweight": {**ours, **ours_mem, "vs_plain": ours["median_s"] / plain},
            "torchjd": {**theirs, **theirs_mem, "vs_plain": theirs["median_s"] / plain},
            "time_ratio": ours["median_s"] / theirs["median_s"],
            "general": {**times[f"general/{m}"],
                        "vs_plain": times[f"general/{m}"]["median_s"] / plain},
            "general_time_ratio": times[f"general/{m}"]["median_s"] / theirs["median_s"],
            "step_memory_ratio": (ours_mem["step_mib"] / theirs_mem["step_mib"]
                                  if theirs_mem["step_mib"] > 0 else float("nan")),
        }
    return out


def _general(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def tables(results: dict[str, Any]) -> list[str]:
    """Markdown sections, one per size."""
    sections = []
    for size, res in results.items():
        plain = res["plain"]
        rows = [["plain `sum(losses).backward()`", f"{plain['median_s'] * 1e3:.2f}", "", "", "1.00",
                 "", f"{plain['step_mib']:.1f}", "", "", ""]]
        again = res.get("plain_again")
        if again is not None:  # the timing noise between two identical steps
            rows.append(["plain again, on a second model (timing noise)",
                         f"{again['median_s'] * 1e3:.2f}", "", "", f"{again['vs_plain']:.2f}",
                         "", "", "", "", ""])
        for m, r in res["methods"].items():
            ours, theirs = r["mtlweight"], r["torchjd"]
            ok = r["time_ratio"] <= 1.0 and not r["step_memory_ratio"] > 1.0
            rows.append([
                m, f"{ours['median_s'] * 1e3:.2f}", f"{theirs['median_s'] * 1e3:.2f}",
                f"{r['time_ratio']:.2f}", f"{ours['vs_plain']:.2f}", f"{theirs['vs_plain']:.2f}",
                f"{ours['step_mib']:.1f}", f"{theirs['step_mib']:.1f}",
                _general(r.get("general_time_ratio")), _verdict(ok),
            ])
        for key, target in (("gb_all", TARGETS["gb_all"]), ("fixed", TARGETS["fixed"])):
            r = res[key]
            general = res.get("gb_all_general") if key == "gb_all" else None
            rows.append([f"{key} (mtlweight only)", f"{r['median_s'] * 1e3:.2f}", "", "",
                         f"{r['vs_plain']:.2f}", "", f"{r['step_mib']:.1f}", "",
                         "" if general is None else f"{general['vs_plain']:.2f}x plain",
                         f"<= {target:.2f}x plain: {_verdict(r['vs_plain'] <= target)}"])
        header = ["method", "mtlweight ms", "TorchJD ms", "ours / TorchJD", "ours / plain",
                  "TorchJD / plain", "mtlweight step MiB", "TorchJD step MiB",
                  "general path / TorchJD", "target"]
        sections += [f"### {size} shared parameters ({res['shared_parameters']:,}, width "
                     f"{res['width']})", "", markdown_table(header, rows), ""]
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods (default: every one both libraries have)")
    parser.add_argument("--sizes", nargs="+", default=None, help=f"of {list(SIZES)}")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="widths 16 and 32, batch 8, 2 repeats, 1 warm-up")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--probe", choices=["fork", "exec"], default="fork",
                        help="memory probes forked from a clean process (default) or exec'd")
    parser.add_argument("--note", default="", help="a remark for the results (e.g. shared machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: results/vs_torchjd.json; Markdown next to it)")
    parser.add_argument("--memory-probe", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available")

    if args.memory_probe is not None:
        library, name = args.memory_probe
        print(json.dumps(memory_probe(library, name, args.width, args.batch, device)))
        return 0

    version = torchjd_version()
    if version is None:
        raise SystemExit("TorchJD is not installed: pip install 'torchjd[full]'")
    sizes = dict(SIZES)
    if args.quick:
        sizes = dict(QUICK_SIZES)
        args.batch, args.repeats, args.warmup = 8, 2, 1
    if args.sizes is not None:
        unknown = [s for s in args.sizes if s not in sizes]
        if unknown:
            raise SystemExit(f"unknown sizes {unknown}; known: {list(sizes)}")
        sizes = {s: sizes[s] for s in args.sizes}
    methods = shared_methods(args.methods)

    memory = not args.no_memory
    zygote = Zygote() if memory and args.probe == "fork" else None  # before any step runs
    mach = machine()
    print(f"machine: {json.dumps(mach)}\nTorchJD {version}; methods: {', '.join(methods)}")
    results: dict[str, Any] = {}
    def write(results: dict[str, Any]) -> Path:
        config = {"probe": args.probe if memory else None,
                  "depth": DEPTH, "tasks": len(TASKS), "batch": args.batch, "repeats": args.repeats,
                  "warmup": args.warmup, "threads": args.threads, "device": device.type,
                  "torchjd": version, "methods": methods, "note": args.note}
        path = write_json("vs_torchjd", {"config": config, "results": results, "targets": TARGETS},
                          args.out)
        head = [
            "## mtlweight against TorchJD (same model, same method)",
            "",
            f"Measured {mach['date']} on {mach['cpu']} ({mach['logical_cpus']} logical CPUs, "
            f"{args.threads} torch thread(s), torch {mach['torch']}, TorchJD {version}"
            f"{', ' + mach['cuda'] if device.type == 'cuda' else ''}, device {device.type}). "
            f"A {DEPTH}-layer MLP trunk with {len(TASKS)} regression heads, batch {args.batch}; "
            "one step = zero the gradients, forward, losses and the library's backward "
            "(mtlweight: `weighting.backward(losses)`; TorchJD: `mtl_backward` + `jac_to_grad`; "
            "plain: `sum(losses).backward()`). Medians of "
            f"{args.repeats} interleaved repetitions after {args.warmup} warm-up. Step MiB: "
            "in a fresh process per (library, method) ("
            f"{'forked from one that imported the libraries and ran nothing' if args.probe == 'fork' else 'a new interpreter each'}"  # noqa: E501
            "), what steps 2 and 3 add to the peak resident set (CUDA: peak allocated) "
            "over the resident set after step 1 (the JSON also has the first step's share, "
            "one-time initialisation included, and the process's peak).",
            "",
            "Targets: every method <= TorchJD in time and step memory; GB over all shared "
            f"parameters <= {TARGETS['gb_all']}x a plain step (floor "
            f"{TARGETS['gb_all_floor']:.2f}x); Fixed <= {TARGETS['fixed']}x.",
            "",
        ]
        if args.note:
            head += [f"Note: {args.note}", ""]
        path.with_suffix(".md").write_text("\n".join(head + tables(results)), encoding="utf-8")
        if args.out is None:
            write_docs_results()  # the docs' results page includes vs_torchjd.md
        return path

    for size, width in sizes.items():
        print(f"\n{size}: width {width}, {shared_parameters(width):,} shared parameters, batch "
              f"{args.batch}, {args.repeats} interleaved repeats after {args.warmup} warm-up",
              flush=True)
        results[size] = run_size(width, methods, args.batch, args.repeats, args.warmup, device,
                                 memory=memory, zygote=zygote)
        print("\n".join(tables({size: results[size]})), flush=True)
        path = write(results)  # after each size: a partial run keeps what it measured
    if zygote is not None:
        zygote.close()
    print(f"\nwrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
