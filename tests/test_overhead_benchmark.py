"""Smoke test of benchmarks/overhead.py: it runs on tiny settings and writes valid JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

overhead = pytest.importorskip("overhead")


@pytest.mark.slow
def test_overhead_quick_writes_ratios_to_fixed(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    argv = ["--quick", "--device", "cpu", "--methods", "lb", "gb_last", "gb_repr", "pcgrad",
            "--repeats", "2", "--warmup", "0", "--no-memory", "--out", str(out)]
    assert overhead.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["torch"] and data["machine"]["logical_cpus"]
    cpu = data["results"]["cpu"]
    assert list(cpu) == ["fixed", "lb", "gb_last", "gb_repr", "pcgrad"]
    assert cpu["fixed"]["ratio"] == 1.0
    for name, row in cpu.items():
        assert row["median_s"] > 0, name
        assert row["ratio"] == pytest.approx(row["median_s"] / cpu["fixed"]["median_s"])
    assert data["targets"] == {"lb": 1.02, "gb_last": 1.10, "gb_repr": 1.05}


@pytest.mark.slow
def test_memory_probe_reports_a_positive_peak() -> None:
    import torch

    assert overhead.peak_memory("lb", torch.device("cpu"), 1, 32) > 0


@pytest.mark.slow
def test_memory_probe_measures_the_child_alone() -> None:
    """Each strategy's peak comes from its own fresh process: inflating this process's peak
    by 1 GiB does not move the child's (``ru_maxrss`` is carried over exec; issue 13 saw the
    same 2303 MiB for every strategy)."""
    import torch

    cpu = torch.device("cpu")
    before = overhead.peak_memory("lb", cpu, 1, 32)
    size = 2**30
    buffer = bytearray(size)
    buffer[::4096] = b"\x01" * (size // 4096)  # touch every page
    del buffer
    after = overhead.peak_memory("lb", cpu, 1, 32)
    assert after < before + 256, (before, after)
    assert after < overhead.rss_mib("VmHWM")  # below the peak of this (inflated) process
