"""QM9 benchmark: every weighting strategy on 11 molecular properties (issue 28).

Subcommands (``--protocol paper`` is the papers' setting, ``cpu`` the CPU preset)::

    python benchmarks/qm9_benchmark.py prepare                 # build the graph cache once
    python benchmarks/qm9_benchmark.py run --method nash_mtl   # one run
    python benchmarks/qm9_benchmark.py sweep --protocol cpu    # the whole table, resumable
    python benchmarks/qm9_benchmark.py report --protocol cpu   # table, plot, docs page

Every field of :class:`qm9.protocol.RunConfig` is a flag (``--epochs``,
``--train-size``, ``--gradients``, ...); unset flags take the preset's value.
The data come from the installed ``qm9pack`` package (``pip install -e '.[qm9]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_RUNS = Path(os.environ.get("MTLWEIGHT_QM9_RUNS", "/work/qm9-runs"))


def _config_flags(parser: argparse.ArgumentParser) -> None:
    from qm9.protocol import RunConfig

    group = parser.add_argument_group("run configuration (unset: the preset's value)")
    for f in dataclasses.fields(RunConfig):
        if f.name in ("protocol", "method_options"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "targets":
            group.add_argument(flag, type=int, nargs="+", help="PyG QM9 target indices")
        elif f.type in ("int", "int | None"):
            group.add_argument(flag, type=int)
        elif f.type == "float":
            group.add_argument(flag, type=float)
        else:
            group.add_argument(flag, type=str)
    group.add_argument(
        "--method-options",
        type=json.loads,
        default=None,
        help="JSON keyword options of the strategy, e.g. '{\"c\": 0.4}'",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from qm9.protocol import RunConfig

    out: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        value = getattr(args, f.name, None)
        if f.name == "protocol" or value is None:
            continue
        out[f.name] = tuple(value) if f.name == "targets" else value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qm9_benchmark", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--protocol", choices=("paper", "cpu"), default="paper")
    common.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="graph cache folder (default $MTLWEIGHT_QM9_CACHE or ~/.cache/mtlweight/qm9)",
    )
    common.add_argument(
        "--source", type=Path, default=None, help="qm9pack's data folder (default: located)"
    )
    common.add_argument(
        "--limit", type=int, default=None, help="use only the first N molecules (tests)"
    )
    common.add_argument("--rebuild", action="store_true", help="rebuild the graph cache")
    common.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    common.add_argument("--no-progress", action="store_true")
    common.add_argument(
        "--device", default=None, help="cuda, cpu, ... (default: cuda if available, else cpu)"
    )
    common.add_argument(
        "--runs-dir", type=Path, default=DEFAULT_RUNS, help="checkpoints (default %(default)s)"
    )
    common.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results/qm9-<protocol>-runs)",
    )
    sub.add_parser("prepare", parents=[common], help="build the graph cache")
    one = sub.add_parser("run", parents=[common], help="one run")
    _config_flags(one)
    many = sub.add_parser("sweep", parents=[common], help="every run of the table, in order")
    _config_flags(many)
    many.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    many.add_argument("--methods", nargs="+", default=None, help="default: the 19 of issue 28")
    many.add_argument("--lrs", type=float, nargs="+", default=None, help="LS sweep learning rates")
    many.add_argument("--shared-rows", nargs="*", default=None)
    many.add_argument(
        "--dry-run", action="store_true", help="list the runs and whether each is done"
    )
    many.add_argument(
        "--commit", action="store_true", help="git-commit each results file as it lands"
    )
    tim = sub.add_parser("timing", parents=[common], help="interleaved step times of every row")
    _config_flags(tim)
    tim.add_argument("--repeats", type=int, default=10)
    tim.add_argument("--batches", type=int, default=4)
    tim.add_argument(
        "--out-timing", type=Path, default=None, help="default results/qm9-<protocol>-timing.json"
    )
    rep = sub.add_parser("report", parents=[common], help="the table, plot and docs page")
    rep.add_argument(
        "--out", type=Path, default=None, help="table base path (default results/qm9-<protocol>)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from qm9 import data
    from qm9.protocol import preset
    from qm9.sweep import LR_SWEEP, SHARED_ROWS, STRATEGIES, plan, sweep
    from qm9.train import atomic_write_json, run

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = args.results or RESULTS / f"qm9-{args.protocol}-runs"

    def log(message: str) -> None:
        print(message, flush=True)

    if args.command == "report":
        from qm9 import report

        report.main(args.protocol, results, args.out or RESULTS / f"qm9-{args.protocol}")
        return 0
    try:
        graphs = data.load(
            args.cache,
            limit=args.limit,
            source=args.source,
            rebuild=args.rebuild,
            progress=not args.no_progress,
        )
    except data.DataError as error:
        print(f"qm9_benchmark: {error}", file=sys.stderr)
        return 2
    log(f"{len(graphs)} molecules")
    if args.command == "prepare":
        return 0
    overrides = _overrides(args)
    if args.command == "timing":
        from qm9.timing import step_times

        rows: dict[str, Any] = {}
        for config in plan(args.protocol, seeds=[0], stl_seeds=[0], lrs=[], **overrides):
            key = "stl" if config.method == "stl" else config.name.removesuffix("-s0")
            rows.setdefault(key, config)
        timing = step_times(rows, graphs, batches=args.batches, repeats=args.repeats)
        path = args.out_timing or RESULTS / f"qm9-{args.protocol}-timing.json"
        atomic_write_json(path, timing)
        for key, row in timing["rows"].items():
            log(f"{key:24s} {row['median_s']:.3f} s  {row['ratio_to_ls']:.2f}x LS")
        return 0
    if args.command == "run":
        config = preset(args.protocol, **overrides)
        folder = args.runs_dir / args.protocol / config.name
        result = run(config, graphs, folder, log=log, device=device)
        atomic_write_json(results / f"{config.name}.json", result)
        log(json.dumps({"test_mae": result["test_mae"]}))
        return 0
    runs = plan(
        args.protocol, seeds=args.seeds,
        methods=args.methods or STRATEGIES,
        lrs=LR_SWEEP if args.lrs is None else args.lrs,
        shared_rows=SHARED_ROWS if args.shared_rows is None else args.shared_rows,
        **overrides,
    )  # fmt: skip
    if args.dry_run:
        for k, config in enumerate(runs):
            done = (results / f"{config.name}.json").exists()
            print(f"{k + 1:3d} {'done' if done else '    '} {config.name}")
        return 0
    sweep(
        runs,
        graphs,
        runs_dir=args.runs_dir / args.protocol,
        results_dir=results,
        log=log,
        commit=args.commit,
        device=device,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
