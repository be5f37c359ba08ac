"""Smoke test of benchmarks/many_tasks.py: a tiny MLP at T = 4 and 8, JSON, Markdown, memory."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("torchjd")
pytest.importorskip("quadprog")
many_tasks = pytest.importorskip("many_tasks")


@pytest.mark.slow
def test_quick_run_writes_ratios_and_agreement(tmp_path: Path) -> None:
    out = tmp_path / "many.json"
    argv = ["--quick", "--tasks", "4", "8", "--methods", "upgrad", "mgda", "--no-memory",
            "--out", str(out)]
    assert many_tasks.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "many_tasks" and data["config"]["torchjd"]
    assert data["config"]["parameters"] == 8 * 16 + 16 + 16 + 1
    assert list(data["results"]) == ["4", "8"]
    for res in data["results"].values():
        assert res["plain"]["median_s"] > 0
        for name, row in res["methods"].items():
            ours = row["mtlweight"]
            for library in ("autojac", "autogram"):
                theirs = row[library]
                assert theirs["time_ratio"] == pytest.approx(
                    ours["median_s"] / theirs["median_s"]), name
                assert 0.0 <= theirs["update_distance"] < 2.0, name
            if name in ("upgrad", "dualproj"):  # the exact solver is TorchJD's without ridge
                assert ours["exact_distance"] < 1e-8, name
    md = out.with_suffix(".md").read_text()
    assert "ours / autogram" in md and "| 8 | upgrad |" in md and "| 4 | mgda |" in md
    # --append re-measures T = 4 and keeps T = 8 as it was
    again = ["--quick", "--tasks", "4", "--methods", "upgrad", "--no-memory", "--append",
             "--out", str(out)]
    assert many_tasks.main(again) == 0
    appended = json.loads(out.read_text())["results"]
    assert list(appended) == ["4", "8"] and appended["8"] == data["results"]["8"]
    assert list(appended["4"]["methods"]) == ["upgrad"]


def test_same_batch_same_update_without_the_ridge() -> None:
    """Like with like: mtlweight's instance-wise IMTL-G (no regularisation in either library
    on a full-rank G) leaves the update TorchJD's autogram leaves, to float32 rounding."""
    import torch

    widths = [8, 16, 1]
    ours = many_tasks.update("mtlweight", "imtl_g", 6, widths)
    theirs = many_tasks.update("autogram", "imtl_g", 6, widths)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


@pytest.mark.slow
def test_memory_probe_runs_in_a_fresh_process() -> None:
    row = many_tasks.fresh_memory("mtlweight", "upgrad", 4, [8, 16, 1], 2)
    assert math.isfinite(row["peak_mib"]) and row["peak_mib"] > 0
    assert row["step_mib"] >= 0
