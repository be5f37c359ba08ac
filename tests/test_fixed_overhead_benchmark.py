"""benchmarks/fixed_overhead.py: the paired timing against a fake clock, and a tiny real run."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

common = pytest.importorskip("_common")
fixed_overhead = pytest.importorskip("fixed_overhead")


class FakeClock:
    """Time moves only when a timed function says so: each call costs a scripted duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_paired_ratios_against_a_hand_computation() -> None:
    """a costs 2, 4, 2, 4, ... and b 3 each time: pairs alternate a b / b a."""
    clock = FakeClock()
    a_costs = iter([2.0, 4.0, 2.0, 4.0, 2.0])
    order: list[str] = []

    def a() -> None:
        order.append("a")
        clock.spend(next(a_costs))

    def b() -> None:
        order.append("b")
        clock.spend(3.0)

    r = common.paired_ratios(a, b, pairs=5, warmup=0, device=torch.device("cpu"), clock=clock)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    ratios = [3 / 2, 3 / 4, 3 / 2, 3 / 4, 3 / 2]
    assert r["pairs"] == 5
    assert r["ratio_median"] == pytest.approx(statistics.median(ratios))  # 1.5
    assert r["a_median_s"] == 2.0 and r["b_median_s"] == 3.0
    assert r["ratio_of_medians"] == pytest.approx(1.5)
    lo, hi = r["ratio_ci95"]
    assert 0.75 <= lo <= r["ratio_median"] <= hi <= 1.5


def test_paired_ratios_warmup_is_not_timed() -> None:
    clock = FakeClock()
    calls = {"a": 0, "b": 0}

    def a() -> None:
        calls["a"] += 1
        clock.spend(100.0 if calls["a"] <= 3 else 1.0)  # slow warm-up calls

    def b() -> None:
        calls["b"] += 1
        clock.spend(2.0)

    r = common.paired_ratios(a, b, pairs=4, warmup=3, device=torch.device("cpu"), clock=clock)
    assert calls == {"a": 7, "b": 7}
    assert r["ratio_median"] == 2.0 and r["ratio_ci95"] == [2.0, 2.0]


@settings(max_examples=30, deadline=None)
@given(ta=st.lists(st.floats(0.5, 5.0), min_size=3, max_size=40), factor=st.floats(0.5, 2.0))
def test_paired_ratios_recover_a_constant_factor(ta: list[float], factor: float) -> None:
    """In pair i, a costs ta[i] and b factor x ta[i]: however much a drifts, the ratio is exact."""
    clock = FakeClock()
    calls = [0]

    def timed(scale: float) -> None:
        clock.spend(scale * ta[calls[0] // 2])  # two calls per pair
        calls[0] += 1

    r = common.paired_ratios(lambda: timed(1.0), lambda: timed(factor), pairs=len(ta), warmup=0,
                             device=torch.device("cpu"), clock=clock)
    assert r["ratio_median"] == pytest.approx(factor, rel=1e-9)
    lo, hi = r["ratio_ci95"]
    assert lo == pytest.approx(factor, rel=1e-9) and hi == pytest.approx(factor, rel=1e-9)


def test_paired_ratios_refuses_no_pairs() -> None:
    with pytest.raises(ValueError, match="pairs must be >= 1, got 0"):
        common.paired_ratios(lambda: None, lambda: None, pairs=0, warmup=0,
                             device=torch.device("cpu"))


@pytest.mark.parametrize(("high", "median", "expected"), [
    (1.02, 1.01, "met"), (1.04, 1.02, "met (median), the interval reaches above"),
    (1.06, 1.05, "MISSED"),
])
def test_verdict(high: float, median: float, expected: str) -> None:
    assert fixed_overhead.verdict(high, median, 1.03) == expected


def test_quick_run_writes_both_pairs(tmp_path: Path) -> None:
    out = tmp_path / "fo.json"
    assert fixed_overhead.main(["--quick", "--sizes", "tiny", "--pairs", "6", "--out",
                                str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "fixed_overhead" and data["target"] == 1.03
    res = data["results"]["tiny"]
    assert res["shared_parameters"] == 6 * (16 * 16 + 16)
    for key in ("plain_vs_plain", "fixed_vs_plain"):
        row = res[key]
        assert row["pairs"] == 6 and row["a_median_s"] > 0 and row["b_median_s"] > 0
        lo, hi = row["ratio_ci95"]
        assert lo <= row["ratio_median"] <= hi
    assert res["verdict"] in ("met", "met (median), the interval reaches above", "MISSED")
    md = out.with_suffix(".md").read_text()
    assert "A/A" in md and "Fixed / plain" in md
    with pytest.raises(SystemExit, match="--pairs must be >= 1"):
        fixed_overhead.main(["--quick", "--pairs", "0", "--out", str(out)])
