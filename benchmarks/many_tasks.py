"""Many tasks: instance-wise weighting, mtlweight against TorchJD's autojac and autogram.

An MLP 64-256-256-256-256-1 (214,273 parameters), a batch of ``T`` samples, each
sample's squared error its own task, the method over all parameters, one
intra-op thread. One step = zero the gradients, forward, the ``T`` losses and
the library's backward:

- ``plain``: ``losses.mean().backward()``;
- mtlweight: ``InstanceGram(model).backward(losses, weighting)`` (the Gram
  matrix from one backward pass, the weights by ``weighting.gram_weights``, the
  update :math:`J^\\top w` written without a second pass);
- TorchJD autojac: ``backward(losses)`` then ``jac_to_grad(params, aggregator)``;
- TorchJD autogram: ``Engine(model, batch_dim=0).compute_gramian(losses)``, the
  method's ``Weighting``, then ``losses.backward(weights)``.

Times are medians of interleaved repetitions (each repetition runs every
variant once, in turn) after a warm-up; fewer at large ``T``, where TorchJD's
UPGrad spends about 90 s a step in ``quadprog``. Memory comes from one fresh
process per (T, library, method), forked from the benchmark before it runs any
step: the peak resident set during the measured step minus the resident set
just before it (steps 2.. when ``--memory-steps`` is 2 or more, else the first
step). Agreement: the relative distance between the updates of mtlweight and
of each TorchJD engine, from the same model and batch.

    python benchmarks/many_tasks.py                       # T = 8, 32, 128, 512
    python benchmarks/many_tasks.py --tasks 8 32 --quick  # a smoke test

Targets (issue 29): at every T, mtlweight's UPGrad and MGDA take no more time
and step memory than TorchJD autogram with the same method; UPGrad at T = 512
at least 10x faster than TorchJD's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see speed.py

import torch
from torch import nn

import mtlweight as mw

from _common import (
    RESULTS,
    interleaved_medians,
    machine,
    markdown_table,
    reset_peak_rss,
    rss_mib,
    write_json,
)

WIDTHS = [64, 256, 256, 256, 256, 1]
TASKS = [8, 32, 128, 512]
LIBRARIES = ("mtlweight", "autojac", "autogram")
# mtlweight name -> TorchJD aggregator and weighting classes (their defaults)
TORCHJD = {"upgrad": ("UPGrad", "UPGradWeighting"), "mgda": ("MGDA", "MGDAWeighting"),
           "dualproj": ("DualProj", "DualProjWeighting"), "imtl_g": ("IMTLG", "IMTLGWeighting")}
METHODS = ["upgrad", "mgda", "dualproj"]
TARGETS = {"vs_autogram": 1.0, "upgrad_512_speedup": 10.0}


def build(count: int, widths: list[int], seed: int = 0) -> tuple[nn.Module, torch.Tensor,
                                                                 torch.Tensor]:
    """The MLP, ``count`` inputs and targets."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    return model, torch.randn(count, widths[0]), torch.randn(count, widths[-1])


def parameters(widths: list[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def make_step(library: str, name: str, count: int, widths: list[int],
              model: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None
              ) -> Callable[[], None]:
    """One step of ``name`` in ``library`` (``plain``, ``mtlweight``, ``autojac``, ``autogram``)."""
    net, x, y = model if model is not None else build(count, widths)
    params = list(net.parameters())

    def losses_of() -> torch.Tensor:
        for p in params:
            p.grad = None
        losses: torch.Tensor = ((net(x) - y) ** 2).sum(1)  # (T,): one loss per sample
        return losses

    if library == "plain":
        def step() -> None:
            torch.autograd.backward(losses_of().mean())
        return step
    if library == "mtlweight":
        path = mw.InstanceGram(net)
        weighting = mw.get(name, shared=net)

        def step() -> None:
            path.backward(losses_of(), weighting)
        return step

    import torchjd.aggregation as agg

    aggregator_name, weighting_name = TORCHJD[name]
    if library == "autojac":
        from torchjd.autojac import backward, jac_to_grad

        aggregator = getattr(agg, aggregator_name)()

        def step() -> None:
            backward(losses_of())
            jac_to_grad(params, aggregator)
        return step
    if library == "autogram":
        from torchjd.autogram import Engine

        engine = Engine(net, batch_dim=0)
        torchjd_weighting = getattr(agg, weighting_name)()

        def step() -> None:
            losses = losses_of()
            torch.autograd.backward(losses, torchjd_weighting(engine.compute_gramian(losses)))
        return step
    raise ValueError(f"unknown library {library!r}: plain, mtlweight, autojac or autogram")


def update(library: str, name: str, count: int, widths: list[int]) -> torch.Tensor:
    """The gradient one step of ``library`` leaves on a fresh copy of the seeded model."""
    model = build(count, widths)
    make_step(library, name, count, widths, model)()
    return torch.cat([p.grad.reshape(-1) for p in model[0].parameters()])  # type: ignore[union-attr]


def exact_distance(name: str, count: int, widths: list[int]) -> float | None:
    """Relative distance of mtlweight's weights to TorchJD's unregularised ``quadprog``
    projection (``reg_eps=0``) on the same float64 Gram matrix (UPGrad, DualProj)."""
    if name not in ("upgrad", "dualproj"):
        return None
    import torchjd.aggregation as agg
    from torchjd.linalg import QuadprogProjector

    net, x, y = build(count, widths)
    path = mw.InstanceGram(net)
    gram = path.gram(((net(x) - y) ** 2).sum(1))
    path.remove()
    weighting: Any = mw.get(name, shared=net)
    ours = weighting.gram_weights(gram, torch.zeros(count, dtype=torch.float64))
    theirs = getattr(agg, TORCHJD[name][1])(projector=QuadprogProjector(reg_eps=0.0))(gram)
    return float((ours - theirs).norm() / theirs.norm())


def memory_probe(library: str, name: str, count: int, widths: list[int], steps: int
                 ) -> dict[str, float]:
    """Run ``steps`` steps here; what the measured step adds to the peak resident set (MiB)."""
    step = make_step(library, name, count, widths)
    if steps >= 2:
        step()
    reset_peak_rss()
    before = rss_mib("VmRSS")
    for _ in range(max(steps - 1, 1)):
        step()
    return {"step_mib": rss_mib("VmHWM") - before, "peak_mib": rss_mib("VmHWM")}


def _probe_child(conn: Any, args: tuple[str, str, int, list[int], int]) -> None:
    try:
        conn.send(memory_probe(*args))
    except BaseException as exc:  # reported to the parent
        conn.send({"error": repr(exc)})


def fresh_memory(library: str, name: str, count: int, widths: list[int], steps: int
                 ) -> dict[str, float]:
    """:func:`memory_probe` in a process of its own, forked from this one."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_probe_child, args=(child, (library, name, count, widths, steps)))
    process.start()
    reply: dict[str, Any] = parent.recv()
    process.join()
    if "error" in reply:
        print(f"memory probe {library}/{name} (T={count}) failed: {reply['error']}",
              file=sys.stderr, flush=True)
        return {"step_mib": float("nan"), "peak_mib": float("nan")}
    return reply


def schedule(count: int, quick: bool) -> tuple[int, int]:
    """(repeats, warm-up) at ``count`` tasks: TorchJD's UPGrad takes ~90 s a step at 512."""
    if quick:
        return 2, 1
    return {8: (15, 3), 32: (9, 2), 128: (5, 1)}.get(count, (1, 0))


def run_tasks(count: int, methods: list[str], widths: list[int], *, quick: bool,
              memory: bool, memory_steps: int, exact_up_to: int = 128) -> dict[str, Any]:
    repeats, warmup = schedule(count, quick)
    mem: dict[str, dict[str, float]] = {}
    if memory:  # before any step runs in this process: each probe forks a clean copy
        steps = memory_steps if count < 512 else 1
        mem["plain"] = fresh_memory("plain", "plain", count, widths, steps)
        for m in methods:
            for library in LIBRARIES:
                mem[f"{library}/{m}"] = fresh_memory(library, m, count, widths, steps)
                print(f"  memory {library}/{m}: {mem[f'{library}/{m}']['step_mib']:.1f} MiB",
                      flush=True)
    variants = {"plain": make_step("plain", "plain", count, widths)}
    for m in methods:
        for library in LIBRARIES:
            variants[f"{library}/{m}"] = make_step(library, m, count, widths)
    start = time.perf_counter()
    times = interleaved_medians(variants, repeats=repeats, warmup=warmup,
                                device=torch.device("cpu"))
    plain = times["plain"]["median_s"]
    out: dict[str, Any] = {"tasks": count, "date": machine()["date"],
                           "repeats": repeats, "warmup": warmup,
                           "seconds": time.perf_counter() - start,
                           "plain": {**times["plain"], **mem.get("plain", {})}, "methods": {}}
    for m in methods:
        ours = update("mtlweight", m, count, widths)
        row: dict[str, Any] = {}
        for library in LIBRARIES:
            key = f"{library}/{m}"
            row[library] = {**times[key], **mem.get(key, {}),
                            "vs_plain": times[key]["median_s"] / plain}
            if library != "mtlweight":
                theirs = update(library, m, count, widths)
                row[library]["update_distance"] = float((ours - theirs).norm() / theirs.norm())
                row[library]["time_ratio"] = (times[f"mtlweight/{m}"]["median_s"]
                                              / times[key]["median_s"])
                if memory:
                    row[library]["step_memory_ratio"] = (
                        mem[f"mtlweight/{m}"]["step_mib"] / mem[key]["step_mib"]
                        if mem[key]["step_mib"] > 0 else float("nan"))
        if count <= exact_up_to:  # one more quadprog solve per task
            row["mtlweight"]["exact_distance"] = exact_distance(m, count, widths)
        out["methods"][m] = row
        print(f"  {m}: " + ", ".join(f"{lib} {row[lib]['median_s'] * 1e3:.1f} ms"
                                     for lib in LIBRARIES), flush=True)
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}" if seconds >= 1.0 else f"{seconds * 1e3:.1f}"


def _exact(distance: float | None) -> str:
    return "" if distance is None else f"{distance:.1e}"


def tables(results: dict[str, Any]) -> list[str]:
    """One Markdown table: a row per (T, method)."""
    rows = []
    for res in results.values():
        count = res["tasks"]
        rows.append([str(count), "plain mean", _ms(res["plain"]["median_s"]), "", "", "", "",
                     f"{res['plain'].get('step_mib', float('nan')):.1f}", "", "", "", "", ""])
        for m, row in res["methods"].items():
            ours, jac, gram = row["mtlweight"], row["autojac"], row["autogram"]
            ok = gram["time_ratio"] <= TARGETS["vs_autogram"] and not gram.get(
                "step_memory_ratio", 0.0) > TARGETS["vs_autogram"]
            rows.append([
                str(count), m, _ms(ours["median_s"]), _ms(jac["median_s"]), _ms(gram["median_s"]),
                f"{gram['time_ratio']:.3f}", f"{jac['median_s'] / ours['median_s']:.1f}x",
                f"{ours.get('step_mib', float('nan')):.1f}",
                f"{jac.get('step_mib', float('nan')):.1f}",
                f"{gram.get('step_mib', float('nan')):.1f}",
                f"{gram['update_distance']:.1e} / {jac['update_distance']:.1e}",
                _exact(ours.get("exact_distance")),
                "met" if ok else "MISSED",
            ])
    header = ["T", "method", "mtlweight ms", "autojac ms", "autogram ms", "ours / autogram",
              "autojac / ours", "mtlweight step MiB", "autojac step MiB", "autogram step MiB",
              "update distance (autogram / autojac)", "weights vs unregularised quadprog",
              "<= autogram"]
    return [markdown_table(header, rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", type=int, default=TASKS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=sorted(TORCHJD))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="an MLP 8-16-1, 2 repeats, no warm-up: a smoke test")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="steps per memory probe below T = 512 (there: 1)")
    parser.add_argument("--note", default="", help="a remark for the results")
    parser.add_argument("--append", action="store_true",
                        help="keep the other T of the existing JSON (re-measure some T only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: results/many_tasks.json; Markdown next to it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from importlib.metadata import version

        torchjd = version("torchjd")
    except Exception as exc:  # PackageNotFoundError
        raise SystemExit("TorchJD is not installed: pip install 'torchjd[full]'") from exc
    widths = [8, 16, 1] if args.quick else WIDTHS
    mach = machine()
    print(f"machine: {json.dumps(mach)}\nTorchJD {torchjd}; methods {args.methods}", flush=True)
    results: dict[str, Any] = {}
    path = args.out
    existing = args.out if args.out is not None else RESULTS / "many_tasks.json"
    if args.append and existing.is_file():
        previous = json.loads(existing.read_text())
        results = previous["results"]
        for row in results.values():  # older files: when that run wrote them
            row.setdefault("date", previous["machine"]["date"])
    for count in args.tasks:
        print(f"\nT = {count}", flush=True)
        results[str(count)] = run_tasks(count, args.methods, widths, quick=args.quick,
                                        memory=not args.no_memory,
                                        memory_steps=args.memory_steps)
        config = {"widths": widths, "parameters": parameters(widths), "threads": args.threads,
                  "torchjd": torchjd, "methods": args.methods, "note": args.note,
                  "memory_steps": args.memory_steps}
        path = write_json("many_tasks", {"config": config, "results": results,
                                         "targets": TARGETS}, args.out)
        dates = ", ".join(f"T = {k}: {r.get('date', mach['date'])}" for k, r in results.items())
        head = [
            "## Many tasks: instance-wise weighting against TorchJD",
            "",
            f"Measured {dates} on {mach['cpu']} ({mach['logical_cpus']} logical CPUs, "
            f"{args.threads} torch thread(s), torch {mach['torch']}, TorchJD {torchjd}). "
            f"An MLP {'-'.join(map(str, widths))} ({parameters(widths):,} parameters), a batch "
            "of T samples, each sample's squared error its own task, the method over all "
            "parameters. mtlweight: `InstanceGram(model).backward(losses, weighting)`; "
            "autojac: `backward(losses)` + `jac_to_grad`; autogram: "
            "`Engine(model, batch_dim=0)`, the method's `Weighting`, `losses.backward(weights)`. "
            "Times: medians of interleaved repetitions (repeats / warm-up per T: "
            + ", ".join(f"{r['tasks']}: {r['repeats']}/{r['warmup']}" for r in results.values())
            + "). Step MiB: in a fresh process forked before any step, what the measured step "
            f"adds to the peak resident set (steps 2..{args.memory_steps}; at T = 512 the first "
            "and only step). Update distance: relative distance of mtlweight's update to each "
            "TorchJD engine's (TorchJD regularises UPGrad's and DualProj's Gram by 1e-4 and "
            "runs MGDA's Frank-Wolfe to 1e-3); weights vs unregularised quadprog: mtlweight's "
            "weights against TorchJD's weighting with `QuadprogProjector(reg_eps=0)` on the same "
            "float64 Gram matrix (UPGrad, DualProj; T <= 128: a quadprog solve per task).",
            "",
        ]
        if args.note:
            head += [f"Note: {args.note}", ""]
        assert path is not None
        path.with_suffix(".md").write_text("\n".join(head + tables(results)) + "\n",
                                           encoding="utf-8")
    print("\n".join(tables(results)))
    print(f"\nwrote {path} and {path.with_suffix('.md') if path else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
