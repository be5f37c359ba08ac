"""DistributedDataParallel: every strategy on two CPU processes (gloo), each with different data.

One run of ``tests/_ddp_worker.py`` in two processes trains every scenario below for a
few steps and saves, per rank and step, the weights, the parameters and ``.grad``. The
tests then check, against computations that do not go through DDP:

* the weights are identical on every rank at every step (the statistics are
  all-reduced through :meth:`mtlweight.Weighting.statistic`);
* the parameters are identical on every rank at every step;
* ``.grad`` after the backward is the average over ranks of ``sum_t w_t grad L_t`` of
  each rank's own batch, recomputed here without DDP: the strategies' extra gradient
  computations (GB's ``torch.autograd.grad``) neither trigger DDP's reduction a second
  time nor skip it;
* where the method allows (mean losses, equal batch sizes), DDP equals one process
  training on the combined batch: same weights, gradients and parameters.

All of it uses the default ``DistributedDataParallel`` (no ``find_unused_parameters``,
no ``no_sync``); variants add ``static_graph``, ``find_unused_parameters`` and gradient
accumulation under ``no_sync``. A hang cannot block CI: collectives time out after 30 s
and the processes are killed after :data:`TIMEOUT` seconds.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _ddp_worker as worker
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlweight as mw
import mtlweight.distributed as mwd

try:
    fcntl: Any = importlib.import_module("fcntl")
except ImportError:  # Windows: each xdist worker runs the scenarios itself
    fcntl = None

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)

WORLD = 2
STEPS = 4
TIMEOUT = 600.0
"""Seconds all the runs of the worker may take together before they count as hung."""

WORKER = Path(worker.__file__).resolve()
TASKS = worker.TASKS

# ------------------------------------------------------------------ scenarios
BASE: list[dict[str, Any]] = [
    {"id": "fixed", "strategy": "fixed", "options": {"weights": [1.0, 0.05, 2.0]}, "exact": True},
    {"id": "lb", "strategy": "lb", "exact": True},
    {"id": "gb", "strategy": "gb", "shared": True, "exact": True},
    {
        "id": "gb-representation",
        "strategy": "gb",
        "representation": "output",
        "exact": True,
    },
    {
        "id": "gb-find-unused",
        "strategy": "gb",
        "shared": True,
        "ddp": {"find_unused_parameters": True},
    },
    {
        "id": "gb-representation-find-unused",
        "strategy": "gb",
        "representation": "inner",
        "ddp": {"find_unused_parameters": True},
        "exact": True,
    },
    {"id": "lb-static-graph", "strategy": "lb", "ddp": {"static_graph": True}, "exact": True},
    {"id": "gb-no-sync-accumulation", "strategy": "gb", "shared": True, "accumulate": True},
    {"id": "lb-no-sync-accumulation", "strategy": "lb", "accumulate": True},
    # Negative control: without the all-reduce the ranks' weights must differ, which
    # shows that the identity checks below can fail.
    {"id": "lb-unsynced", "strategy": "lb", "options": {"sync": False}},
]
for _spec in BASE:
    _spec["linear"] = True  # fixed, LB and GB: the total is sum_t w_t L_t

EXACT_BY_STRATEGY = {
    "equal",
    "dwa",
    "gls",
    "uncertainty",
    "imtl_l",
    "pcgrad",
    "mgda",
    "mgda_ub",
    "cagrad",
    "imtl_g",
    "nash_mtl",
    "aligned_mtl",
    "gradnorm",
    "graddrop",
    "excess_mtl",
    "moco",
    "famo",
    "stch",
    "upgrad",
    "dualproj",
    "config",
    "fairgrad",
    "gradvac",
    "sdmgrad",
    "modo",
}
"""Other registry names whose DDP run must equal the combined-batch run: their
statistics (losses, the Jacobian of the shared parameters) average exactly. RLW is
not among them: its draws depend on each process's random state."""

SOLVERS = {"cagrad", "nash_mtl", "fairgrad", "sdmgrad", "modo", "upgrad", "dualproj"}
"""Iterative solvers: equal to the combined-batch run up to their tolerance."""

LINEAR_BY_STRATEGY = {
    "equal",
    "dwa",
    "rlw",
    "gls",
    "uncertainty",
    "imtl_l",
    "gradnorm",
    "mgda",
    "mgda_ub",
    "cagrad",
    "imtl_g",
    "nash_mtl",
    "aligned_mtl",
    "excess_mtl",
    "famo",
    "stch",
}
"""Other registry names whose model gradient is ``sum_t w_t grad L_t`` with the reported
weights (PCGrad is not: its projected gradients are no such combination)."""


def _generic_specs(name: str) -> list[dict[str, Any]]:
    """The scenarios of a strategy of ``mw.available()``, with default options.

    Its constructor gets ``tasks=`` :data:`TASKS` when it requires the task names
    and ``shared=`` the model's trunk when it takes shared parameters; a strategy
    whose one-step single-process dry run asks for a representation gets the
    trunk's features. A strategy that requires anything else is skipped, with the
    reason; any other error of the dry run is left for the DDP tests to report.
    A strategy with trainable parameters of its own (handed to the optimizer with
    the model's) must keep them identical on every rank by itself; a second
    scenario wraps it in ``DistributedDataParallel`` as well, which must change
    nothing.
    """
    spec: dict[str, Any] = {"id": name, "strategy": name, "options": {}}
    try:
        weighting = mw.get(name, tasks=list(TASKS))
        spec["options"]["tasks"] = list(TASKS)
    except TypeError:
        try:
            weighting = mw.get(name)
        except TypeError as error:
            spec["skip"] = f"{name} needs arguments this generic test cannot supply: {error}"
            return [spec]
    if "shared" in inspect.signature(type(weighting).__init__).parameters:
        spec["shared"] = True
    try:
        worker.train({**spec, "steps": 1})
    except (TypeError, ValueError) as error:
        if "representation" in str(error):
            spec["representation"] = "inner"
    spec["exact"] = name in EXACT_BY_STRATEGY
    spec["linear"] = name in LINEAR_BY_STRATEGY
    if spec["linear"] and isinstance(weighting, mw.GradientMethod):
        # the linear checks' premise, .grad = sum_t w_t grad L_t, is the weighted mode (plain
        # heads, the default since issue 26, run under DDP in tests/test_trainers.py)
        spec["options"]["task_specific"] = "weighted"
    if not any(p.requires_grad for p in weighting.parameters()):
        return [spec]
    wrapped = {**spec, "id": f"{name}-wrapped", "wrap": True}
    return [spec, wrapped]


SPECS: list[dict[str, Any]] = [
    *BASE,
    *(s for n in mw.available() if n not in {"fixed", "lb", "gb"} for s in _generic_specs(n)),
]
for _spec in SPECS:
    _spec.setdefault("steps", STEPS)
RUNNABLE = [s for s in SPECS if "skip" not in s]


def _params(kind: str, predicate: Any = None) -> list[Any]:
    """``pytest.param`` per scenario for a test of ``kind``, with its skip marks."""
    result = []
    for spec in SPECS:
        if predicate is not None and not predicate(spec):
            continue
        marks: list[Any] = []
        if "skip" in spec:
            marks.append(pytest.mark.skip(reason=spec["skip"]))
        result.append(pytest.param(spec["id"], id=spec["id"], marks=marks))
    return result


# ------------------------------------------------------------------- launcher
@dataclass
class Results:
    """Per-scenario records of each rank, or why a scenario has none."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def get(self, scenario: str) -> list[dict[str, Any]]:
        if scenario in self.failures:
            pytest.fail(f"scenario {scenario!r} failed under DDP:\n{self.failures[scenario]}")
        return self.records[scenario]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")]),
    )
    if sys.platform.startswith("linux") and "lo" in {n for _, n in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo talks over the loopback interface only
    return env


def _launch(specs: list[dict[str, Any]], out: Path, timeout: float) -> tuple[bool, str]:
    """Run the worker on ``specs`` in :data:`WORLD` processes; return (timed out, logs)."""
    (out / "specs.json").write_text(json.dumps(specs))
    env = _environment(_free_port())
    logs = [out / f"rank{r}.log" for r in range(WORLD)]
    processes = []
    for rank in range(WORLD):
        with logs[rank].open("w") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(out / "specs.json"), str(out)],
                    env={**env, "RANK": str(rank)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout
    timed_out = False
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "\n".join(f"--- rank {r} ---\n{log.read_text()[-3000:]}" for r, log in enumerate(logs))
    return timed_out, text


def run_all(specs: list[dict[str, Any]], root: Path) -> Results:
    """Run ``specs`` under DDP; a failing scenario is recorded and the rest run again."""
    results = Results()
    pending = list(specs)
    deadline = time.monotonic() + TIMEOUT
    attempt = 0
    while pending:
        attempt += 1
        out = root / f"run{attempt}"
        out.mkdir()
        timed_out, logs = _launch(pending, out, deadline - time.monotonic())
        done = 0
        for spec in pending:
            files = [out / f"{spec['id']}.rank{r}.pt" for r in range(WORLD)]
            if not all(f.exists() for f in files):
                break
            results.records[spec["id"]] = [torch.load(f, weights_only=True) for f in files]
            done += 1
        if done == len(pending):
            break
        if done == 0 and "address already in use" in logs.lower() and attempt < 3:
            continue  # the free port was taken before the workers bound it: retry
        failed = pending[done]
        errors = [out / f"{failed['id']}.rank{r}.err" for r in range(WORLD)]
        reason = "\n".join(e.read_text() for e in errors if e.exists())
        if timed_out:
            reason = f"no result within {TIMEOUT:.0f} s (a hang?)\n{reason}"
        results.failures[failed["id"]] = reason or logs
        pending = pending[done + 1 :]
        if time.monotonic() > deadline:
            for spec in pending:
                results.failures[spec["id"]] = f"not run: out of time after {failed['id']!r}"
            break
    return results


LIMITS: list[dict[str, Any]] = [
    {
        "id": "limit-gb-static-graph",
        "strategy": "gb",
        "shared": True,
        "ddp": {"static_graph": True},
        "steps": 2,
    },
    {
        "id": "limit-gb-representation-ddp-copy",
        "strategy": "gb",
        "representation": "output",
        "ddp": {"find_unused_parameters": True},
        "steps": 1,
        "expect_error": True,
    },
    {"id": "limit-nan-on-one-rank", "strategy": "lb", "nan_rank": 1, "steps": 1,
     "expect_error": True},
]
"""Known hazards of DDP with gradient-probing strategies (see the tests at the end)."""

BROKEN = {"id": "broken", "strategy": "no-such-strategy", "steps": 1}
"""A scenario that fails on every rank, last in the run: its failure must be reported."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: tiny tensors gain nothing from more, and on a loaded
    machine OpenMP threads waiting for each other make every operation slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """All scenarios, run once for the whole module (once for all pytest-xdist workers)."""
    specs = [*RUNNABLE, *LIMITS, {"id": "helpers", "helpers": True}, BROKEN]
    if "PYTEST_XDIST_WORKER" not in os.environ or fcntl is None:
        return run_all(specs, tmp_path_factory.mktemp("ddp"))
    # Under xdist the workers share one run: the first to take the lock runs it,
    # the others load its results.
    root = tmp_path_factory.getbasetemp().parent / "mtlweight-ddp"
    root.mkdir(exist_ok=True)
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = root / "results.pt"
        if cache.exists():
            return Results(**torch.load(cache, weights_only=True))
        results = run_all(specs, root)
        torch.save({"records": results.records, "failures": results.failures}, cache)
        return results


def spec_of(scenario: str) -> dict[str, Any]:
    return next(s for s in SPECS if s["id"] == scenario)


# ------------------------------------------------------------- references
def rank_task_gradients(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(T, P)`` gradients of each task's loss on ``(x, y)`` at ``params``, without DDP.

    Each task gets its own forward pass and ``torch.autograd.grad`` on a fresh :class:`Net`.
    """
    rows = []
    for i in range(len(TASKS)):
        net = worker.Net()
        torch.nn.utils.vector_to_parameters(params, net.parameters())
        _, outputs = net(x)
        loss = list(worker.task_losses(outputs, y).values())[i]
        rows.append(worker.flat(torch.autograd.grad(loss, list(net.parameters()))))
    return torch.stack(rows)


def expected_grad(records: list[dict[str, Any]], step: int, accumulate: bool) -> torch.Tensor:
    r"""``(1/R) sum_r sum_m sum_t w_{t}^{(r,m)} grad L_t^{(r,m)} / M`` from each rank's own weights.

    ``m`` runs over the ``M`` micro-batches of the step; every rank's parameters
    before the step are the same (checked elsewhere), rank 0's are used.
    """
    params = records[0]["params"][step]
    total = torch.zeros_like(params)
    for rank, record in enumerate(records):
        x, y = worker.batch(step, rank, WORLD)
        micro = [(x, y)]
        if accumulate:
            micro = [(x[: worker.MICRO], y[: worker.MICRO]), (x[worker.MICRO :], y[worker.MICRO :])]
        for (xb, yb), weights in zip(micro, record["weights"][step], strict=True):
            w = torch.tensor(weights, dtype=torch.float64)
            total += w @ rank_task_gradients(params, xb, yb) / len(micro)
    return total / len(records)


# ------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize("scenario", _params("identical", lambda s: s["id"] != "lb-unsynced"))
def test_weights_identical_across_ranks(ddp: Results, scenario: str) -> None:
    """Every rank computes exactly the same weights at every step (and micro-batch)."""
    records = ddp.get(scenario)
    for step in range(STEPS):
        first = records[0]["weights"][step]
        for rank, record in enumerate(records[1:], start=1):
            assert record["weights"][step] == first, (
                f"step {step}: rank {rank} weights {record['weights'][step]} != rank 0 {first}"
            )
    assert np.all(np.isfinite(records[0]["weights"]))


@pytest.mark.slow
def test_unsynced_weights_differ_across_ranks(ddp: Results) -> None:
    """Control: with ``sync=False`` each rank weights its own losses, so the weights differ."""
    records = ddp.get("lb-unsynced")
    assert records[0]["weights"][0] != records[1]["weights"][0]
    # DDP still averages the gradients, so the parameters stay identical.
    assert torch.equal(records[0]["final"], records[1]["final"])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", _params("identical"))
def test_parameters_identical_across_ranks(ddp: Results, scenario: str) -> None:
    """The model's (and the weighting's own) parameters are identical on every rank."""
    records = ddp.get(scenario)
    for rank, record in enumerate(records[1:], start=1):
        for step in range(STEPS):
            assert torch.equal(record["params"][step], records[0]["params"][step]), (
                f"rank {rank} parameters differ from rank 0 before step {step}"
            )
            assert torch.equal(record["grads"][step], records[0]["grads"][step]), (
                f"rank {rank} .grad differs from rank 0 at step {step}"
            )
            assert torch.equal(record["extra"][step], records[0]["extra"][step]), (
                f"rank {rank}: the weighting's own parameters differ from rank 0 after step {step}"
            )
        assert torch.equal(record["final"], records[0]["final"])
    # The run did train: the parameters moved.
    assert not torch.equal(records[0]["final"], records[0]["params"][0])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", _params("grad", lambda s: s.get("linear")))
def test_grad_is_rank_average_of_weighted_task_gradients(ddp: Results, scenario: str) -> None:
    """``.grad`` after backward is DDP's average of each rank's ``sum_t w_t grad L_t``.

    The per-task gradients are recomputed here on each rank's batch without DDP.
    A strategy whose extra gradient computations triggered DDP's reduction again
    (or skipped it) would leave another ``.grad``.
    """
    records = ddp.get(scenario)
    accumulate = bool(spec_of(scenario).get("accumulate"))
    for step in range(STEPS):
        expected = expected_grad(records, step, accumulate)
        for rank, record in enumerate(records):
            torch.testing.assert_close(
                record["grads"][step],
                expected,
                rtol=1e-10,
                atol=1e-12,
                msg=f"rank {rank}, step {step}: .grad is not the rank average",
            )


@pytest.mark.slow
@pytest.mark.parametrize("scenario", _params("exact", lambda s: s.get("exact")))
def test_matches_single_process_on_combined_batch(ddp: Results, scenario: str) -> None:
    """DDP on 2 x 4 samples equals one process on the 8 samples: weights, .grad, parameters."""
    records = ddp.get(scenario)
    spec = copy.deepcopy(spec_of(scenario))
    single = worker.train(spec, rank=0, world=1)
    rtol, atol = (1e-5, 1e-7) if spec["strategy"] in SOLVERS else (1e-9, 1e-12)
    for step in range(STEPS):
        np.testing.assert_allclose(
            records[0]["weights"][step],
            single["weights"][step],
            rtol=rtol,
            atol=atol,
            err_msg=f"weights at step {step}",
        )
        torch.testing.assert_close(
            records[0]["grads"][step], single["grads"][step], rtol=rtol, atol=atol
        )
    torch.testing.assert_close(records[0]["final"], single["final"], rtol=rtol, atol=atol)


@pytest.mark.slow
def test_gb_weights_use_the_combined_batch_gradient_norms(ddp: Results) -> None:
    """GB's weights under DDP: the balance of the norms of the rank-averaged task gradients.

    That is the single-process rule on the combined batch: for mean losses
    :math:`\\nabla L_t = \\frac{1}{R} \\sum_r \\nabla L_t^{(r)}`.
    """
    records = ddp.get("gb")
    trunk = slice(0, 4 * 6 + 6)  # the trunk's weight and bias come first in the parameters
    params = records[0]["params"][0]
    grads = [rank_task_gradients(params, *worker.batch(0, r, WORLD)) for r in range(WORLD)]
    norms = torch.stack(grads).mean(dim=0)[:, trunk].norm(dim=1).numpy()
    expected = 1 - norms / norms.sum()
    np.testing.assert_allclose(records[0]["weights"][0][0], expected, rtol=1e-10)


@pytest.mark.slow
def test_distributed_helpers_under_ddp(ddp: Results) -> None:
    """``all_reduce_mean`` averages over ranks: strided input, float16 sum overflow, integers."""
    records = ddp.get("helpers")
    base = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    mean = (base + base + 10) / 2
    for record in records:
        assert record["world_size"] == WORLD
        assert record["is_distributed"] is True
        assert record["strided_unchanged"] is True
        torch.testing.assert_close(record["strided"], mean.t(), rtol=0, atol=0)
        assert record["half"].dtype == torch.float16
        torch.testing.assert_close(
            record["half"], torch.tensor([60000.0, 1.5], dtype=torch.float16)
        )
        assert record["scalar"].item() == 0.5
        assert "floating-point" in record["int_error"] and "int64" in record["int_error"]


@pytest.mark.slow
def test_static_graph_with_gradient_probing_skips_the_reduction(ddp: Results) -> None:
    """Known PyTorch limitation, pinned so that the documented warning is revisited.

    With ``static_graph=True``, DDP's first step passes its outputs through an
    autograd function whose backward schedules the gradient all-reduce at the end of
    the *first* backward pass through them. GB's ``torch.autograd.grad`` on the
    shared parameters is that first pass: the reduction runs before any gradient
    exists, DDP records every parameter as unused, and from then on it never
    averages ``.grad``; the ranks silently diverge. Do not combine
    ``static_graph=True`` with strategies that take gradients through the model
    before the backward (GB on parameters, the gradient-level methods).
    """
    records = ddp.get("limit-gb-static-graph")
    assert records[0]["weights"] == records[1]["weights"]  # the statistics are still synced
    for step in range(2):
        assert not torch.equal(records[0]["grads"][step], records[1]["grads"][step])


@pytest.mark.slow
def test_gb_rejects_a_representation_no_loss_reaches(ddp: Results) -> None:
    """The features DDP returns with ``find_unused_parameters=True`` are a copy no loss uses.

    DDP passes its outputs through its own autograd function; the heads consumed
    the original features, so the gradient of every loss with respect to the
    returned copy is zero, and GB would silently weight every task ``1 - 1/T``. It
    must say so instead (use the tensor the heads consume, e.g. kept on the module).
    """
    records = ddp.get("limit-gb-representation-ddp-copy")
    for record in records:
        assert "representation" in record.get("error", ""), record.get("weights")


@pytest.mark.slow
def test_a_nan_on_one_rank_raises_on_every_rank(ddp: Results) -> None:
    """A non-finite loss on one process stops every process with a clear error, no hang.

    The finiteness check is collective (one all-reduce of the flags), so the
    healthy rank raises too instead of waiting in the next collective.
    """
    healthy, broken = ddp.get("limit-nan-on-one-rank")
    task = worker.TASKS[1]
    assert broken["error"].startswith("FloatingPointError: loss of task"), broken
    assert repr(task) in broken["error"] and "nan" in broken["error"]
    assert healthy["error"] == (
        f"FloatingPointError: loss of task {task!r} is not finite on another process "
        "(this one is finite)"
    )


@pytest.mark.slow
def test_a_failing_scenario_is_reported_with_its_error(ddp: Results) -> None:
    """The launcher reports a scenario's traceback (and keeps every other scenario's records)."""
    assert "unknown weighting 'no-such-strategy'" in ddp.failures["broken"]
    assert set(ddp.records) == {s["id"] for s in [*RUNNABLE, *LIMITS]} | {"helpers"}


@pytest.mark.slow
def test_a_hanging_run_is_killed(tmp_path: Path) -> None:
    """A run that does not finish within its time is killed and reported as timed out."""
    timed_out, _ = _launch([{"id": "hang", "sleep": 600}], tmp_path, timeout=3.0)
    assert timed_out
    assert not list(tmp_path.glob("hang.rank*.pt"))


# ---------------------------------------------------- without a process group
@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), max_size=3),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
)
def test_all_reduce_mean_is_identity_without_process_group(
    shape: list[int], dtype: torch.dtype
) -> None:
    """Not distributed: the same values, shape and dtype, detached, input untouched."""
    value = torch.randn(shape).to(dtype).requires_grad_(True)
    result = mwd.all_reduce_mean(value)
    assert result.dtype == dtype and result.shape == value.shape
    assert not result.requires_grad
    assert torch.equal(result, value.detach())


def test_all_reduce_mean_rejects_non_float() -> None:
    with pytest.raises(TypeError, match=r"floating-point tensor; found dtype torch\.int64"):
        mwd.all_reduce_mean(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"expects a torch\.Tensor; found list"):
        mwd.all_reduce_mean([1.0])  # type: ignore[arg-type]


def test_statistic_without_sync_keeps_the_local_value() -> None:
    """``statistic`` records detached values; ``sync=False`` never reduces."""
    lb = mw.LossBalance(sync=False)
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    recorded = lb.statistic("loss", value)
    assert not recorded.requires_grad
    assert torch.equal(lb.statistics["loss"], value.detach())
