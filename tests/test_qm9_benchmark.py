"""The QM9 benchmark (benchmarks/qm9, issue 28) on a few dozen molecules.

The data tests compare with values derived by hand from the qm9pack rows and with
loop-based re-implementations of PyG's transforms; the model's convolution with
PyG's NNConv. Skipped when the optional ``qm9`` extra (torch_geometric, rdkit,
qm9pack) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch_geometric")
pytest.importorskip("rdkit")
if importlib.util.find_spec("qm9pack") is None:
    pytest.skip("qm9pack is not installed (pip install -e '.[qm9]')", allow_module_level=True)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import qm9_benchmark  # noqa: E402
from qm9 import data, metrics, sweep  # noqa: E402
from qm9.model import MPNN, EdgeConv  # noqa: E402
from qm9.protocol import RunConfig, preset  # noqa: E402
from qm9.train import run  # noqa: E402

N = 48  # molecules used by the tests


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qm9cache")


@pytest.fixture(scope="module")
def graphs(cache: Path) -> data.Graphs:
    return data.load(cache, limit=N, progress=False)


def tiny(**changes: Any) -> RunConfig:
    """The CPU preset on the test molecules: 24 training, 12 validation, 12 test."""
    values: dict[str, Any] = dict(train_size=24, val_size=12, test_size=12, epochs=1, batch_size=12)
    values.update(changes)
    return preset(values.pop("protocol", "cpu"), **values)


# ----------------------------------------------------------------------------- data
def test_targets_in_pyg_units(graphs: data.Graphs) -> None:
    # molecule 1 is methane; qm9pack's row: homo -0.3877, lumo 0.1171, gap 0.5048,
    # zpve 0.044749, U0 -40.47893 Ha, mu 0, alpha 13.21, r2 35.3641, cv 6.469
    ev = 27.211386246
    y = graphs.y[0]
    assert graphs.index[0] == 1
    expected = {0: 0.0, 1: 13.21, 2: -0.3877 * ev, 3: 0.1171 * ev, 4: 0.5048 * ev, 5: 35.3641,
                6: 0.044749 * ev, 7: -40.47893 * ev, 11: 6.469}  # fmt: skip
    for column, value in expected.items():
        assert y[column].item() == pytest.approx(value, rel=1e-9, abs=1e-12)
    # atomisation energy: U0 minus PyG's references of one C and four H (eV)
    assert y[12].item() == pytest.approx(-40.47893 * ev - (-1029.86312267 + 4 * -13.61312172))
    assert y[12].item() == pytest.approx(-17.1722, abs=1e-4)  # PyG's QM9 value


def test_node_features_of_methane(graphs: data.Graphs) -> None:
    first = slice(0, int(graphs.atom_ptr[1]))
    x = data.node_features(graphs.z[first], graphs.num_hs[first])
    assert x[0].tolist() == [0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 4]
    for h in x[1:]:
        assert h.tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]


def test_bonds_follow_the_smiles(graphs: data.Graphs) -> None:
    # molecule 5 is HCN (C#N): a triple bond C-N and a single C-H
    m = 4
    z = graphs.z[graphs.atom_ptr[m] : graphs.atom_ptr[m + 1]].tolist()
    rows = slice(int(graphs.bond_ptr[m]), int(graphs.bond_ptr[m + 1]))
    found = {
        frozenset((z[i], z[j])): kind
        for (i, j), kind in zip(
            graphs.bonds[rows].tolist(), graphs.bond_type[rows].tolist(), strict=True
        )
    }
    assert found == {frozenset((6, 7)): 2, frozenset((6, 1)): 0}


def _reference_edges(
    graphs: data.Graphs, molecules: list[int], complete: bool
) -> tuple[list[Any], list[Any]]:
    """Edges and attributes by plain loops: PyG's Complete (or the bonds) + Distance."""
    edges, attrs, offset = [], [], 0
    for m in molecules:
        a0, a1 = int(graphs.atom_ptr[m]), int(graphs.atom_ptr[m + 1])
        n, pos = a1 - a0, graphs.pos[a0:a1]
        kinds = {}
        for (i, j), k in zip(graphs.bonds[graphs.bond_ptr[m] : graphs.bond_ptr[m + 1]].tolist(),
                             graphs.bond_type[graphs.bond_ptr[m] : graphs.bond_ptr[m + 1]].tolist(),
                             strict=True):  # fmt: skip
            kinds[(i, j)] = kinds[(j, i)] = k
        for i in range(n):
            for j in range(n):
                if i == j or (not complete and (i, j) not in kinds):
                    continue
                onehot = [0.0] * 4
                if (i, j) in kinds:
                    onehot[kinds[(i, j)]] = 1.0
                edges.append((offset + i, offset + j))
                attrs.append([*onehot, float((pos[i] - pos[j]).norm())])
        offset += n
    return edges, attrs


@pytest.mark.parametrize("graph", ["complete", "bonds"])
def test_collate_matches_the_transforms(graphs: data.Graphs, graph: str) -> None:
    molecules = [3, 17, 0, 40, 25]
    batch = data.collate(graphs, torch.tensor(molecules), torch.zeros(5, 2), graph)
    edges, attrs = _reference_edges(graphs, molecules, graph == "complete")
    assert [tuple(e) for e in batch.edge_index.t().tolist()] == edges
    torch.testing.assert_close(batch.edge_attr, torch.tensor(attrs))
    counts = [int(graphs.atom_ptr[m + 1] - graphs.atom_ptr[m]) for m in molecules]
    assert batch.batch.tolist() == [k for k, c in enumerate(counts) for _ in range(c)]
    assert batch.num_graphs == 5


def test_cache_is_reused_and_corruption_is_named(
    cache: Path, graphs: data.Graphs, tmp_path: Path
) -> None:
    again = data.load(cache, limit=N, progress=False)
    assert torch.equal(again.y, graphs.y) and torch.equal(again.bonds, graphs.bonds)
    bad = tmp_path / "bad"
    bad.mkdir()
    path = bad / f"qm9-v{data.CACHE_VERSION}-first{N}.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(data.DataError, match=r"corrupt.*--rebuild"):
        data.load(bad, limit=N, progress=False)
    assert len(data.load(bad, limit=N, progress=False, rebuild=True)) == N  # rebuilt over it


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DataError, match="pip install qm9pack"):
        data.locate_qm9pack()
    with pytest.raises(data.DataError, match=r"qm9_part1\.csv"):
        data.locate_qm9pack(tmp_path)
    code = qm9_benchmark.main(["prepare", "--cache", str(tmp_path)])
    assert code == 2


def test_split_is_disjoint_and_seeded() -> None:
    train, val, test = data.split(100, seed=3, val=10, test=20)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(100))
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert torch.equal(data.split(100, seed=3, val=10, test=20)[2], test)
    with pytest.raises(ValueError, match="no training molecule"):
        data.split(30, val=10, test=20)


# ----------------------------------------------------------------------------- model
def test_edge_conv_equals_pyg_nnconv(graphs: data.Graphs) -> None:
    from torch_geometric.nn import NNConv

    torch.manual_seed(1)
    conv = EdgeConv(8, hidden=16)
    reference = NNConv(
        8,
        8,
        torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 64)),
        aggr="mean",
    )
    reference.load_state_dict(conv.state_dict())
    batch = data.collate(graphs, torch.arange(6), torch.zeros(6, 1))
    x = torch.randn(batch.x.shape[0], 8, dtype=torch.float64)
    conv, reference = conv.double(), reference.double()
    ours = conv(x, batch.edge_index, conv.edge_weights(batch.edge_attr.double()))
    theirs = reference(x, batch.edge_index, batch.edge_attr.double())
    torch.testing.assert_close(ours, theirs)


def test_mpnn_size_is_pygs_example() -> None:
    model = MPNN(11)
    shared = sum(p.numel() for m in model.shared() for p in m.parameters())
    assert shared == 616_960  # the 617k shared parameters
    assert sum(p.numel() for p in model.heads.parameters()) == 11 * 65


# ----------------------------------------------------------------------------- metrics
def test_delta_m_by_hand() -> None:
    assert metrics.delta_m([1.1, 0.5, 3.0], [1.0, 1.0, 2.0]) == pytest.approx(
        100 * (0.1 - 0.5 + 0.5) / 3
    )
    with pytest.raises(ValueError, match="equal-length"):
        metrics.delta_m([1.0], [1.0, 2.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(0.01, 10), min_size=3, max_size=3), min_size=2, max_size=5))
def test_mean_ranks_match_scipy(rows: list[list[float]]) -> None:
    from scipy.stats import rankdata

    table = {f"m{i}": row for i, row in enumerate(rows)}
    expected = rankdata(np.asarray(rows), axis=0).mean(axis=1)
    assert list(metrics.mean_ranks(table).values()) == pytest.approx(list(expected))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=2, max_size=6), st.floats(0.1, 10))
def test_delta_m_is_zero_on_itself_and_unit_free(mae: list[float], scale: float) -> None:
    assert metrics.delta_m(mae, mae) == pytest.approx(0.0, abs=1e-9)
    ref = [m * 1.5 for m in mae]
    assert metrics.delta_m([m * scale for m in mae], [r * scale for r in ref]) == pytest.approx(
        metrics.delta_m(mae, ref)
    )


# ----------------------------------------------------------------------------- runs
@pytest.mark.slow
@pytest.mark.parametrize("method", sweep.STRATEGIES)
def test_every_strategy_trains_one_epoch(graphs: data.Graphs, tmp_path: Path, method: str) -> None:
    gradients = "last" if method in sweep.NO_REPRESENTATION else None
    result = run(tiny(method=method, gradients=gradients), graphs, tmp_path, log=lambda s: None)
    assert result["finished"] and result["steps"] == 2
    assert len(result["test_mae"]) == 11 and all(np.isfinite(result["test_mae"]))


def test_stl_run_trains_its_task_only(graphs: data.Graphs, tmp_path: Path) -> None:
    result = run(tiny(method="stl", task="homo"), graphs, tmp_path, log=lambda s: None)
    assert result["heads"] == ["homo"] and result["finished"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rlw", "dwa", "famo", "uncertainty", "gradnorm"])
def test_resume_equals_an_uninterrupted_run(
    graphs: data.Graphs, tmp_path: Path, method: str
) -> None:
    # RLW draws from the global RNG; the others carry state (loss history, learned
    # parameters and their optimizer state) from one epoch to the next
    config = tiny(method=method, epochs=2, batch_size=8)
    whole = run(config, graphs, tmp_path / "whole", log=lambda s: None)
    part = run(config, graphs, tmp_path / "part", log=lambda s: None, max_epochs=1)
    assert not part["finished"]
    resumed = run(config, graphs, tmp_path / "part", log=lambda s: None)
    assert resumed["finished"] and resumed["test_mae"] == whole["test_mae"]
    assert resumed["history"] == whole["history"]
    with pytest.raises(ValueError, match=r"another configuration.*lr"):
        run(tiny(method=method, epochs=2, batch_size=8, lr=0.5), graphs, tmp_path / "part",
            log=lambda s: None)  # fmt: skip


@pytest.mark.slow
def test_paper_protocol_one_epoch_end_to_end(cache: Path, tmp_path: Path) -> None:
    """The paper's preset (dim 64, complete graph, Nash-MTL on the shared parameters)."""
    results = tmp_path / "results"
    argv = ["run", "--protocol", "paper", "--cache", str(cache), "--limit", str(N), "--no-progress",
            "--val-size", "12", "--test-size", "12", "--epochs", "1", "--method", "nash_mtl",
            "--runs-dir", str(tmp_path / "runs"), "--results", str(results)]  # fmt: skip
    assert qm9_benchmark.main(argv) == 0
    saved = json.loads((results / "nash_mtl-s0.json").read_text())
    assert saved["finished"] and saved["train_molecules"] == N - 24
    assert saved["config"]["dim"] == 64 and saved["config"]["graph"] == "complete"
    assert saved["config"]["gradients"] == "shared" and saved["config"]["batch_size"] == 120
    assert all(np.isfinite(saved["test_mae"]))


def test_plan_runs_seed_zero_first() -> None:
    runs = sweep.plan("cpu")
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    seeds = [r.seed for r in runs if r.method != "stl" and r.gradients == "representation"]
    assert seeds == sorted(seeds)  # every seed-0 row before any seed-1 row
    assert names[0] == "equal-s0" and names[1] == "stl-mu-s0"
    assert sum(r.method == "stl" for r in runs) == 33
    assert "db_mtl-last-s0" in names and "nash_mtl-shared-s0" in names


@pytest.mark.slow
def test_sweep_skips_finished_runs(graphs: data.Graphs, tmp_path: Path) -> None:
    runs = [tiny(method="equal"), tiny(method="stl", task="mu")]
    kwargs: dict[str, Any] = dict(
        runs_dir=tmp_path / "runs", results_dir=tmp_path / "res", log=lambda s: None
    )
    assert len(sweep.sweep(runs, graphs, **kwargs)) == 2
    assert sweep.sweep(runs, graphs, **kwargs) == []


# ----------------------------------------------------------------------------- report
def _fake_run(method: str, seed: int, mae: list[float], *, task: str | None = None,
              lr: float = 1e-3, step: float = 1.0) -> dict[str, Any]:  # fmt: skip
    config = preset("cpu", method=method, task=task, seed=seed, lr=lr, targets=(0, 2))
    return {
        "config": config.to_json(), "name": config.name, "tasks": ["mu", "homo"],
        "units": ["D", "eV"],
        "finished": True, "test_mae": mae, "val_mae": mae, "median_step_seconds": step,
        "mean_predictor_test_mae": [2.0, 2.0],
    }  # fmt: skip


def test_report_table_by_hand(tmp_path: Path) -> None:
    from qm9 import report

    runs = [
        _fake_run("stl", 0, [1.0, 9.0], task="mu"), _fake_run("stl", 0, [9.0, 0.5], task="homo"),
        _fake_run("equal", 0, [1.2, 0.6]), _fake_run("equal", 1, [1.4, 0.6], step=3.0),
        _fake_run("equal", 0, [3.0, 3.0], lr=3e-3), _fake_run("equal", 1, [3.0, 3.2], lr=3e-3),
        _fake_run("mgda", 0, [1.0, 0.5], step=2.0), _fake_run("mgda", 1, [1.02, 0.52], step=4.0),
    ]  # fmt: skip
    runs.sort(key=lambda r: r["name"])  # as read from the folder: "equal-lr0.003-s0" first
    table = report.build_table(runs)
    rows = {(r["method"], r["lr"]): r for r in table["rows"]}
    ls, mgda = rows[("equal", 1e-3)], rows[("mgda", 1e-3)]
    # Δm of LS seed 0: (0.2/1 + 0.1/0.5) / 2 = 20 %; seed 1: (0.4 + 0.2) / 2 = 30 %
    assert ls["delta_m_seeds"] == pytest.approx([20.0, 30.0])
    assert ls["delta_m_sd"] == pytest.approx(np.std([20.0, 30.0], ddof=1))
    assert mgda["delta_m_seeds"] == pytest.approx([0.0, 3.0])  # (0.02 + 0.02 / 0.5) / 2
    assert table["tuned_ls"]["lr"] == 1e-3  # the lower validation Δm of the two LS rates
    assert mgda["verdict"].startswith("beats tuned LS")  # -23.5 ± 2 sqrt(50 / 2 + 4.5 / 2)
    assert rows[("equal", 3e-3)]["verdict"].startswith("worse")
    assert mgda["step_ratio"] == pytest.approx(3.0 / 2.0)  # medians 3 over LS's median 2
    assert mgda["mean_rank"] == 1.0 and ls["mean_rank"] == 2.0
    assert rows[("equal", 3e-3)]["mean_rank"] is None  # not a main row
    assert table["mean_predictor"]["delta_m"] == pytest.approx(
        ((2 - 1) / 1 + (2 - 0.5) / 0.5) / 2 * 100
    )
    text = report.render(table, planned=10, protocol="cpu")
    assert "Partial: 8 of 10 runs" in text and "MGDA" in text and "homo [meV]" in text


def test_report_waits_for_the_single_task_runs(tmp_path: Path) -> None:
    from qm9 import report

    results = tmp_path / "runs"
    results.mkdir()
    (results / "equal-s0.json").write_text(json.dumps(_fake_run("equal", 0, [1.0, 1.0])))
    table = report.main("cpu", results, tmp_path / "qm9-cpu", planned=5)
    assert not table["complete"] and table["finished_runs"] == 1
    text = (tmp_path / "qm9-cpu.md").read_text()
    assert "1 of 5 runs" in text and "mu, homo have not finished" in text


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=3, max_size=8))
def test_spearman_matches_scipy(pairs: list[tuple[float, float]]) -> None:
    from qm9 import report
    from scipy.stats import spearmanr

    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(a)) < 2 or len(set(b)) < 2:
        return  # undefined for a constant list
    assert report.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


def test_timing_interleaves_every_row(graphs: data.Graphs) -> None:
    from qm9.timing import step_times

    rows = {
        "equal": tiny(method="equal"),
        "mgda-shared": tiny(method="mgda", gradients="shared"),
        "stl": tiny(method="stl", task="mu"),
    }
    timing = step_times(rows, graphs, batches=2, repeats=2, warmup=0)
    assert set(timing["rows"]) == set(rows)
    assert timing["rows"]["equal"]["ratio_to_ls"] == 1.0
    assert all(r["median_s"] > 0 for r in timing["rows"].values())
    with pytest.raises(ValueError, match="'equal'"):
        step_times({"stl": rows["stl"]}, graphs)


def test_report_takes_the_interleaved_timing() -> None:
    from qm9 import report

    runs = [
        _fake_run("stl", 0, [1.0, 1.0], task="mu"), _fake_run("stl", 0, [1.0, 1.0], task="homo"),
        _fake_run("equal", 0, [1.2, 0.6]), _fake_run("mgda", 0, [1.0, 0.5], step=9.0),
    ]  # fmt: skip
    table = report.build_table(runs, {("mgda", "representation"): 1.25})
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["mgda"]["step_ratio"] == 1.25  # not the recorded 9.0 / 1.0
    assert rows["equal"]["step_ratio"] == 1.0
