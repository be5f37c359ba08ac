"""MENET inference speed against this machine's own limits.

For each model variant (8 or 16 residual blocks, with or without channel
attention), image size (224x224 and 481x321) and batch (1 and 8): the median
time of one forward pass in eval mode under :func:`torch.inference_mode`,
images per second, and the achieved GFLOP/s, where the FLOPs of one forward are
counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and
matrix products, 2 FLOPs per multiply-add; BatchNorm, ReLU, additions and the
pixel shuffles are not counted: they are the overhead). The machine's peak is
measured in the same run, interleaved with the models: a large float32 matrix
product and a large 3x3 convolution (64 -> 64 channels, the layer that dominates
MENET), FLOPs counted the same way.

Target (issue 5): at least half of the measured convolution peak at 481x321.
The script also tries the usual inference optimisations on the main model
(shallow + CA): channels-last memory layout, BatchNorm folded into the
convolutions (:func:`fuse_bn`), oneDNN (mkldnn) disabled for comparison, and
thread settings (in fresh processes, since OpenMP reads them at start-up), and
profiles which operators take the time.

    python benchmarks/speed.py            # full run (~10-15 min on 2 busy cores)
    python benchmarks/speed.py --quick    # tiny sizes, for a smoke test
    python benchmarks/speed.py --no-study # only the variant grid

Note: OpenMP's default busy-waiting makes a shared 2-core machine several times
slower; unless ``OMP_WAIT_POLICY`` is set, this script sets it to ``PASSIVE``
(recorded in the JSON; the thread study compares both).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import argparse
import copy
import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.flop_counter import FlopCounterMode

from menet.model import MENET

from _common import (
    RESULTS,
    interleaved_medians,
    machine,
    markdown_table,
    write_docs_results,
    write_json,
)

#: The paper's four networks: name -> (residual blocks, channel attention).
MODELS: dict[str, tuple[int, bool]] = {
    "shallow": (8, False),
    "shallow-ca": (8, True),
    "deep": (16, False),
    "deep-ca": (16, True),
}
MAIN = "shallow-ca"
SIZES: dict[str, tuple[int, int]] = {"224x224": (224, 224), "481x321": (321, 481)}  # (H, W)
TARGET = 0.5  # fraction of the convolution peak at 481x321


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into its convolution.

    Inside each :class:`torch.nn.Sequential`, a :class:`torch.nn.Conv2d` directly
    followed by a :class:`torch.nn.BatchNorm2d` becomes one convolution with a bias:

    .. math::

        W' = W \\cdot \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
        b' = \\beta + (b - \\mu) \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}

    where :math:`\\mu, \\sigma^2` are the running statistics and :math:`\\gamma,
    \\beta, \\epsilon` the BatchNorm's affine parameters and epsilon (scales per
    output channel); the BatchNorm becomes :class:`torch.nn.Identity`. The result
    equals the original in eval mode (up to rounding); it is for inference only.
    The original model is left untouched.

    Examples
    --------
    >>> net = MENET(blocks=1, channel_attention=True).eval()
    >>> x = torch.rand(1, 3, 32, 32)
    >>> fused = fuse_bn(net)
    >>> sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    0
    >>> bool(torch.allclose(fused(x), net(x), atol=1e-5))
    True
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                if bn.running_mean is None or bn.running_var is None:
                    raise ValueError(
                        f"fuse_bn: BatchNorm {b!r} has no running statistics "
                        "(track_running_stats=False); cannot fold it"
                    )
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return fused


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``FlopCounterMode``.

    >>> x = torch.rand(4, 8)
    >>> count_flops(lambda: x @ torch.rand(8, 2))
    128
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@contextmanager
def mkldnn_enabled(enabled: bool) -> Iterator[None]:
    """Temporarily switch oneDNN (mkldnn) convolutions on or off."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def forward_fn(model: nn.Module, x: torch.Tensor, *, mkldnn: bool = True) -> Callable[[], None]:
    """One inference forward of ``model`` on ``x`` as a no-argument callable."""

    def call() -> None:
        with torch.inference_mode(), mkldnn_enabled(mkldnn):
            model(x)

    return call


def peak_fns(quick: bool) -> dict[str, tuple[Callable[[], None], int]]:
    """The peak probes: a large matmul and a large 64->64 3x3 convolution in both layouts.

    The convolution peak of the machine is the faster of the two layouts
    (``conv3x3`` = contiguous NCHW, ``conv3x3_cl`` = channels-last). A third,
    small probe (``conv3x3_small``: the same layer on a 56x56 map, whose input
    and output fit in the L2 cache) shows what the convolution reaches when
    memory traffic is not the limit; it is reported, not used by the target.
    """
    n = 256 if quick else 2048
    a, b = torch.rand(n, n), torch.rand(n, n)
    conv_x = torch.rand(1, 64, *((32, 32) if quick else (256, 256)))
    conv_w = torch.rand(64, 64, 3, 3)
    conv_x_cl = conv_x.contiguous(memory_format=torch.channels_last)
    small_x = torch.rand(1, 64, *((16, 16) if quick else (56, 56)))
    conv_w_cl = conv_w.contiguous(memory_format=torch.channels_last)

    def matmul() -> None:
        with torch.inference_mode():
            torch.mm(a, b)

    def conv() -> None:
        with torch.inference_mode():
            F.conv2d(conv_x, conv_w, padding=1)

    def conv_cl() -> None:
        with torch.inference_mode():
            F.conv2d(conv_x_cl, conv_w_cl, padding=1)

    def conv_small() -> None:
        with torch.inference_mode():
            F.conv2d(small_x, conv_w, padding=1)

    return {"peak:matmul": (matmul, count_flops(matmul)),
            "peak:conv3x3_small": (conv_small, count_flops(conv_small)),
            "peak:conv3x3": (conv, count_flops(conv)),
            "peak:conv3x3_cl": (conv_cl, count_flops(conv_cl))}


def build(name: str, seed: int = 0) -> MENET:
    """A MENET variant in eval mode with non-trivial BatchNorm statistics.

    Freshly initialised BatchNorm layers are the identity; a few training-mode
    forwards on random data give them realistic running statistics (their value
    does not change the speed, but it makes :func:`fuse_bn` checks meaningful).
    """
    torch.manual_seed(seed)
    blocks, ca = MODELS[name]
    model = MENET(blocks=blocks, channel_attention=ca)
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.rand(2, 3, 32, 32))
    return model.eval()


def grid(sizes: dict[str, tuple[int, int]], batches: list[int], models: list[str],
         quick: bool, repeats: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Time every (model, size, batch) and the peaks, interleaved; add derived figures."""
    calls: dict[str, Callable[[], None]] = {}
    flops: dict[str, int] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, (fn, f) in peak_fns(quick).items():
        calls[name], flops[name] = fn, f
        meta[name] = {"kind": "peak"}
    for model_name in models:
        model = build(model_name)
        for size_name, (h, w) in sizes.items():
            for batch in batches:
                key = f"{model_name} {size_name} b{batch}"
                x = torch.rand(batch, 3, h, w)
                calls[key] = forward_fn(model, x)
                flops[key] = count_flops(calls[key])
                meta[key] = {"kind": "model", "model": model_name, "size": size_name,
                             "batch": batch}
    times = interleaved_medians(calls, repeats=repeats, warmup=warmup,
                                device=torch.device("cpu"))
    return _derive(times, flops, meta)


def _derive(times: dict[str, dict[str, float]], flops: dict[str, int],
            meta: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    peaks = {k.split(":")[1]: flops[k] / times[k]["median_s"] / 1e9
             for k in times if k.startswith("peak:")}
    peaks["conv"] = max(peaks["conv3x3"], peaks["conv3x3_cl"])
    out: dict[str, dict[str, Any]] = {}
    for key, t in times.items():
        gflops = flops[key] / t["median_s"] / 1e9
        row = {**meta[key], **t, "flops": flops[key], "gflops_per_s": gflops}
        if meta[key]["kind"] == "model":
            row["images_per_s"] = meta[key]["batch"] / t["median_s"]
            row["gflop_per_image"] = flops[key] / meta[key]["batch"] / 1e9
        for peak, value in peaks.items():
            row[f"fraction_of_{peak}"] = gflops / value
        out[key] = row
    return out


def _channels_last(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its 4-d parameters in channels-last memory layout."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def study(size: tuple[int, int], batches: list[int], quick: bool, repeats: int,
          warmup: int) -> dict[str, dict[str, Any]]:
    """Inference optimisations on the main model, timed against each other and the peaks."""
    base = build(MAIN)
    fused = fuse_bn(base)
    calls: dict[str, Callable[[], None]] = {}
    flops: dict[str, int] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, (fn, f) in peak_fns(quick).items():
        calls[name], flops[name] = fn, f
        meta[name] = {"kind": "peak"}
    for batch in batches:
        x = torch.rand(batch, 3, *size)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        variants: dict[str, Callable[[], None]] = {
            "baseline": forward_fn(base, x),
            "channels_last": forward_fn(_channels_last(base), x_cl),
            "fuse_bn": forward_fn(fused, x),
            "fuse_bn+channels_last": forward_fn(_channels_last(fused), x_cl),
            "mkldnn off": forward_fn(base, x, mkldnn=False),
        }
        useful = count_flops(variants["baseline"])  # the same useful work for every variant
        for name, fn in variants.items():
            key = f"{name} b{batch}"
            calls[key], flops[key] = fn, useful
            meta[key] = {"kind": "model", "model": MAIN, "variant": name, "batch": batch}
    times = interleaved_medians(calls, repeats=repeats, warmup=warmup,
                                device=torch.device("cpu"))
    return _derive(times, flops, meta)


def profile_ops(model: nn.Module, x: torch.Tensor, top: int = 8) -> list[dict[str, Any]]:
    """Share of self CPU time per operator over two inference forwards (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                model(x)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count // 2}
            for e in events[:top]]


def thread_study(size: tuple[int, int], quick: bool) -> list[dict[str, Any]]:
    """Median forward time of the main model (batch 1) in fresh processes per setting."""
    settings = [(threads, policy) for threads in sorted({1, os.cpu_count() or 1})
                for policy in ("PASSIVE", "ACTIVE")]
    out = []
    for threads, policy in settings:
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        cmd = [sys.executable, __file__, "--probe", str(threads), "--probe-size",
               f"{size[0]}x{size[1]}"] + (["--quick"] if quick else [])
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        if res.returncode != 0:
            raise RuntimeError(f"thread probe {threads}/{policy} failed:\n{res.stderr}")
        record = json.loads(res.stdout.strip().splitlines()[-1])
        out.append({"threads": threads, "omp_wait_policy": policy, **record})
    return out


def _probe(threads: int, size: tuple[int, int], quick: bool) -> int:
    torch.set_num_threads(threads)
    model = build(MAIN)
    x = torch.rand(1, 3, *size)
    calls = {"model": forward_fn(model, x)}
    t = interleaved_medians(calls, repeats=2 if quick else 7, warmup=1,
                            device=torch.device("cpu"))["model"]
    print(json.dumps({**t, "images_per_s": 1 / t["median_s"],
                      "gflops_per_s": count_flops(calls["model"]) / t["median_s"] / 1e9}))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def render(payload: dict[str, Any]) -> str:
    """The Markdown report of one run."""
    res, mach, cfg = payload["grid"], payload["machine"], payload["config"]
    mm = res["peak:matmul"]["gflops_per_s"]
    cv = res["peak:conv3x3"]["gflops_per_s"]
    cv_cl = res["peak:conv3x3_cl"]["gflops_per_s"]
    lines = [
        "## Inference speed (MENET, CPU)",
        "",
        f"Measured {mach['date']} on {mach['cpu']} ({mach['logical_cpus']} logical CPUs, "
        f"{mach['torch_threads']} torch threads, OMP_WAIT_POLICY={cfg['omp_wait_policy']}, "
        f"torch {mach['torch']}). Medians of {cfg['repeats']} interleaved repetitions after "
        f"{cfg['warmup']} warm-up; eval mode, `torch.inference_mode`, float32. "
        "The machine was shared with other jobs, so absolute figures are noisy; ratios "
        "measured in the same run are more reliable.",
        "",
        f"Peaks measured in the same run: matmul {cfg['matmul_n']}³ **{mm:.1f} GFLOP/s**; "
        f"3x3 convolution 64->64 on {cfg['conv_map']}: {cv:.1f} GFLOP/s (NCHW), "
        f"{cv_cl:.1f} GFLOP/s (channels-last); the convolution peak is the faster, "
        f"**{max(cv, cv_cl):.1f} GFLOP/s**. For context, the same layer on a 56x56 map "
        f"(input and output fit in the L2 cache) reached "
        f"{res['peak:conv3x3_small']['gflops_per_s']:.1f} GFLOP/s (last column).",
        "",
    ]
    rows = []
    for r in res.values():
        if r["kind"] != "model":
            continue
        rows.append([r["model"], r["size"], str(r["batch"]), f"{r['median_s'] * 1e3:.0f}",
                     f"{r['images_per_s']:.2f}", f"{r['gflop_per_image']:.2f}",
                     f"{r['gflops_per_s']:.1f}", _pct(r["fraction_of_matmul"]),
                     _pct(r["fraction_of_conv"]), _pct(r["fraction_of_conv3x3_small"])])
    lines.append(markdown_table(["model", "size", "batch", "ms / batch", "images/s",
                                 "GFLOP / image", "GFLOP/s", "of matmul peak",
                                 "of conv peak", "of cache-resident conv"], rows))
    verdicts = payload["target"]["verdicts"]
    lines += ["", f"**Target** (>= {TARGET:.0%} of the convolution peak at {cfg['big']}, "
              f"{MAIN}): " + "; ".join(f"batch {b}: {v['fraction']:.0%} — {v['status']}"
                                         for b, v in verdicts.items()) + "."]
    if payload.get("study"):
        s = payload["study"]
        srows = []
        for r in s.values():
            if r["kind"] != "model":
                continue
            base = s[f"baseline b{r['batch']}"]["median_s"]
            srows.append([r["variant"], str(r["batch"]), f"{r['median_s'] * 1e3:.0f}",
                          f"{base / r['median_s']:.2f}x", f"{r['gflops_per_s']:.1f}",
                          _pct(r["fraction_of_conv"])])
        lines += ["", f"### Optimisations ({MAIN}, {cfg['big']}, same run, "
                  f"{cfg.get('study_repeats', cfg['repeats'])} repetitions)", "",
                  markdown_table(["variant", "batch", "ms / batch", "speed-up",
                                  "GFLOP/s", "of conv peak"], srows)]
    if payload.get("profile"):
        for label, ops in payload["profile"].items():
            lines += ["", f"Operator time ({label}): " + ", ".join(
                f"{o['op']} {_pct(o['share'])}" for o in ops) + "."]
    if payload.get("threads"):
        trows = [[str(t["threads"]), t["omp_wait_policy"], f"{t['median_s'] * 1e3:.0f}",
                  f"{t['gflops_per_s']:.1f}"] for t in payload["threads"]]
        lines += ["", f"### Thread settings ({MAIN}, {cfg['big']}, batch 1, fresh processes)", "",
                  markdown_table(["threads", "OMP_WAIT_POLICY", "ms", "GFLOP/s"], trows)]
        best = min(payload["threads"], key=lambda t: t["median_s"])
        worst = max(payload["threads"], key=lambda t: t["median_s"])
        grid_ms = res[f"{MAIN} {cfg['big']} b1"]["median_s"] * 1e3
        lines += ["", f"Fastest setting here: {best['threads']} thread(s) with "
                  f"OMP_WAIT_POLICY={best['omp_wait_policy']}, {best['median_s'] * 1e3:.0f} ms "
                  f"against {grid_ms:.0f} ms for the setting of the grid above "
                  f"({mach['torch_threads']} threads, {cfg['omp_wait_policy']}); slowest: "
                  f"{worst['threads']} thread(s) with {worst['omp_wait_policy']}, "
                  f"{worst['median_s'] * 1e3:.0f} ms. On a machine shared with other jobs, "
                  "fewer threads than cores can be faster, and threads that busy-wait "
                  "(ACTIVE) lose most when they outnumber the free cores."]
    if payload.get("notes"):
        lines += ["", *payload["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--study-repeats", type=int, default=7,
                        help="repetitions of the optimisation study")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--no-study", action="store_true",
                        help="skip the optimisation, profile and thread studies")
    parser.add_argument("--no-threads", action="store_true",
                        help="skip the thread study (fresh processes)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny images, small peaks, 2 repeats, two models")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="Markdown path (default: next to the JSON)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown from the JSON at --out")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-size", default="321x481", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.render:
        json_path = args.out or RESULTS / "speed.json"
        stored: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
        md_path = args.markdown or json_path.with_suffix(".md")
        md_path.write_text(render(stored), encoding="utf-8")
        if md_path.resolve() == (RESULTS / "speed.md").resolve():
            write_docs_results()
        print(f"wrote {md_path}")
        return 0
    if args.probe is not None:
        h, w = (int(v) for v in args.probe_size.split("x"))
        return _probe(args.probe, (h, w), args.quick)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = dict(SIZES)
    if args.quick:
        sizes = {"32x32": (32, 32), "48x32": (32, 48)}
        args.repeats, args.study_repeats, args.warmup, args.batches = 2, 2, 1, [1, 2]
        args.models = [m for m in args.models if m in ("shallow", MAIN)] or [MAIN]
    big = "48x32" if args.quick else "481x321"
    print(f"machine: {json.dumps(machine())}")
    res = grid(sizes, args.batches, args.models, args.quick, args.repeats, args.warmup)
    payload: dict[str, Any] = {"grid": res}
    verdicts = {}
    for batch in args.batches:
        key = f"{MAIN} {big} b{batch}"
        if key in res:
            frac = res[key]["fraction_of_conv"]
            verdicts[str(batch)] = {"fraction": frac, "status": "met" if frac >= TARGET
                                    else "MISSED"}
    payload["target"] = {"fraction_of_conv_peak": TARGET, "size": big, "model": MAIN,
                         "verdicts": verdicts}
    if not args.no_study:
        print("optimisation study ...", flush=True)
        payload["study"] = study(sizes[big], args.batches, args.quick, args.study_repeats,
                                 args.warmup)
        x = torch.rand(1, 3, *sizes[big])
        base = build(MAIN)
        payload["profile"] = {
            f"baseline, batch 1, {big}": profile_ops(base, x),
            f"fuse_bn, batch 1, {big}": profile_ops(fuse_bn(base), x),
        }
        if not args.no_threads:
            print("thread study ...", flush=True)
            payload["threads"] = thread_study(sizes[big], args.quick)
    payload["config"] = {
        "sizes": sizes, "big": big, "batches": args.batches, "models": args.models,
        "repeats": args.repeats, "study_repeats": args.study_repeats, "warmup": args.warmup,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "matmul_n": 256 if args.quick else 2048,
        "conv_map": "1x64x32x32" if args.quick else "1x64x256x256",
        "flops": "FlopCounterMode on one forward (convolutions and matmuls only)",
    }
    payload["notes"] = [
        "Notes: 2 logical CPUs shared with other jobs during the run (timings are noisy). "
        "FLOPs count convolutions only (2 per multiply-add), on the padded input "
        "(sides rounded up to multiples of 16: 481x321 runs as 496x336)."
    ]
    json_path = write_json("speed", payload, args.out)
    payload["machine"] = machine()
    md = render(payload)
    md_path = args.markdown or json_path.with_suffix(".md")
    md_path.write_text(md, encoding="utf-8")
    if md_path.resolve() == (RESULTS / "speed.md").resolve():
        write_docs_results()
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
