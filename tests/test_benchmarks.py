"""Smoke tests of the benchmark scripts (tiny settings) and checks of their helpers.

No test asserts a time: only that the scripts run, write valid JSON with the
machine's description, and that the helpers compute what they claim.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
import recipe  # noqa: E402
import speed  # noqa: E402

from menet.model import MENET  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """One torch thread: the scripts set OMP_WAIT_POLICY only when they start torch
    themselves, and spinning OpenMP threads are very slow on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MACHINE_KEYS = {"cpu", "logical_cpus", "torch_threads", "torch", "python", "platform", "cuda"}


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


# ----------------------------------------------------------------------------- speed helpers


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), attention=st.booleans())
def test_fuse_bn_is_exact_in_float64(seed: int, attention: bool) -> None:
    """Folding is an identity of the eval-mode network (arbitrary statistics, float64)."""
    torch.manual_seed(seed)
    net = MENET(blocks=1, channel_attention=attention)
    _randomise_bn(net, seed)
    net = net.double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    fused = speed.fuse_bn(net)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-10, rtol=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # the original keeps its BatchNorm layers
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0


def test_fuse_bn_float32_within_1e5() -> None:
    """The benchmarked model (BatchNorm statistics from training passes) to 1e-5 in float32."""
    net = speed.build("shallow-ca")
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(speed.fuse_bn(net)(x), net(x), atol=1e-5, rtol=0)


def test_fuse_bn_folds_by_the_formula() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(3).eval()
    _randomise_bn(bn, 3)
    fused = speed.fuse_bn(nn.Sequential(conv, bn))
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused_conv = fused[0]
    assert isinstance(fused_conv, nn.Conv2d) and isinstance(fused[1], nn.Identity)
    torch.testing.assert_close(fused_conv.weight, conv.weight * scale[:, None, None, None])
    assert fused_conv.bias is not None
    torch.testing.assert_close(fused_conv.bias, bn.bias - bn.running_mean * scale)


def test_fuse_bn_rejects_batchnorm_without_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.BatchNorm2d(1, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        speed.fuse_bn(model)


@pytest.mark.parametrize(("b", "cin", "cout", "h", "w"), [(1, 3, 4, 5, 6), (2, 8, 2, 7, 3)])
def test_count_flops_of_a_convolution(b: int, cin: int, cout: int, h: int, w: int) -> None:
    x, k = torch.rand(b, cin, h, w), torch.rand(cout, cin, 3, 3)
    flops = speed.count_flops(lambda: torch.nn.functional.conv2d(x, k, padding=1))
    assert flops == 2 * b * cout * cin * 9 * h * w


@pytest.mark.slow
def test_speed_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    assert speed.main(["--quick", "--no-threads", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "speed"
    assert MACHINE_KEYS <= set(data["machine"])
    grid = data["grid"]
    assert {"peak:matmul", "peak:conv3x3", "peak:conv3x3_cl"} <= set(grid)
    models = [r for r in grid.values() if r["kind"] == "model"]
    assert len(models) == 2 * 2 * 2  # two models, two sizes, two batches
    for r in models:
        assert r["flops"] > 0 and r["median_s"] > 0
        assert math.isclose(r["images_per_s"], r["batch"] / r["median_s"])
        assert math.isclose(r["gflops_per_s"], r["flops"] / r["median_s"] / 1e9)
    assert set(data["target"]["verdicts"]) == {"1", "2"}
    assert {r["variant"] for r in data["study"].values() if r["kind"] == "model"} >= {
        "baseline", "fuse_bn", "channels_last"}
    assert "## Inference speed" in out.with_suffix(".md").read_text()
    # the thread study's summary names the fastest and the slowest setting
    data["threads"] = [
        {"threads": 1, "omp_wait_policy": "PASSIVE", "median_s": 0.1, "gflops_per_s": 2.0},
        {"threads": 2, "omp_wait_policy": "ACTIVE", "median_s": 0.4, "gflops_per_s": 0.5},
    ]
    out.write_text(json.dumps(data))
    assert speed.main(["--render", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "Fastest setting here: 1 thread(s) with OMP_WAIT_POLICY=PASSIVE, 100 ms" in md
    assert "slowest: 2 thread(s) with ACTIVE, 400 ms" in md


# ----------------------------------------------------------------------------- quality


def _fake_data(root: Path) -> Path:
    """A Rain100L-like folder of 4 tiny pairs and a split file."""
    rng = np.random.default_rng(0)
    for sub in ("rain", "norain"):
        (root / "Rain100L" / sub).mkdir(parents=True)
    for i in range(1, 5):
        clean = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
        rain = np.clip(clean.astype(int) + rng.integers(0, 60, clean.shape), 0, 255)
        Image.fromarray(clean).save(root / "Rain100L" / "norain" / f"norain-{i:03d}.png")
        Image.fromarray(rain.astype(np.uint8)).save(
            root / "Rain100L" / "rain" / f"rain-{i:03d}.png")
    (root / "rain100-split.json").write_text(json.dumps({"train": [1, 2, 3], "test": [4]}))
    return root


@pytest.mark.slow
def test_quality_quick_on_tiny_data(tmp_path: Path) -> None:
    root = _fake_data(tmp_path / "data")
    out = tmp_path / "quality.json"
    runs = tmp_path / "runs"
    args = ["--quick", "--data", str(root), "--out", str(out), "--runs-dir", str(runs)]
    assert quality.main(args) == 0
    data = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(data["machine"])
    assert data["config"]["complete"] is True
    assert len(data["runs"]) == 4
    table = data["table"]["Rain100L"]
    assert set(table) == {"lp", "lp_le_fixed", "gb_ca", "lb_ca"}
    for run in data["runs"]:
        assert run["steps"] == 2
        for protocol in ("paper", "standard"):
            assert 0 < run["scores"][protocol]["output_psnr"] < 100
    md = out.with_suffix(".md").read_text()
    assert "Paper protocol" in md and "Standard protocol" in md and "33.55" in md
    out.with_suffix(".md").unlink()
    assert quality.main(["--render", "--out", str(out)]) == 0  # Markdown again from the JSON
    assert out.with_suffix(".md").read_text() == md
    assert "gains" in md  # the check that the budget is real (Lp vs the rainy input)
    # Every run kept its checkpoint under --runs-dir, at the 2 steps of the budget.
    assert len(list(runs.rglob("last.ckpt"))) == 4


@pytest.mark.slow
def test_quality_resumes_an_interrupted_run(tmp_path: Path) -> None:
    """A run cut short (its checkpoint at step 1 of 2) continues from that checkpoint."""
    root = _fake_data(tmp_path / "data")
    runs = tmp_path / "runs"
    base = ["--data", str(root), "--rows", "lp", "--seeds", "0", "--batch", "2", "--patch",
            "32", "--patches-per-image", "1", "--crop", "32", "--runs-dir", str(runs)]
    assert quality.main([*base, "--steps", "1", "--out", str(tmp_path / "a.json")]) == 0
    # Pretend the 1-step run was the first half of a 2-step one: same folder, same budget.
    (first,) = runs.rglob("last.ckpt")
    target = runs / first.parent.parent.name.replace("steps1", "steps2") / first.parent.name
    target.parent.mkdir(parents=True)
    first.parent.rename(target)
    ckpt = torch.load(target / "last.ckpt", weights_only=True)
    ckpt["config"]["steps"] = 2
    ckpt["total_steps"] = 2
    torch.save(ckpt, target / "last.ckpt")
    assert quality.main([*base, "--steps", "2", "--out", str(tmp_path / "b.json")]) == 0
    (run,) = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert run["steps"] == 2
    rows = (target / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]  # step 1 kept, only step 2 new


def test_quality_budget_check() -> None:
    low = quality.budget_check(quality.aggregate([_run("lp", 0, 23.0)]))  # input 20 dB
    high = quality.budget_check(quality.aggregate([_run("lp", 0, 26.0)]))
    assert "+3.00 dB" in low[0] and "train longer" in low[0]
    assert "+6.00 dB" in high[0] and "a real budget" in high[0]


def test_recipe_rows_are_leave_one_out() -> None:
    table = recipe.rows()
    fast, paper = table["fast"], table["paper"]
    assert set(fast) == set(paper)
    differ = [k for k in fast if fast[k] != paper[k]]
    assert len(differ) == len(recipe.RECIPE_PARTS)  # one field per part
    for part in recipe.RECIPE_PARTS:
        row = table[f"fast-{part}"]
        changed = [k for k in fast if row[k] != fast[k]]
        assert len(changed) == 1 and row[changed[0]] == paper[changed[0]]
    for name, change in recipe.VARIATIONS.items():  # fast plus one choice neither makes
        row = table[f"fast+{name}"]
        missing = object()  # a variation may set a field that neither recipe sets (amp)
        assert {k: v for k, v in row.items() if v != fast.get(k, missing)} == change
        assert all(paper.get(k, missing) != v for k, v in change.items())


@pytest.mark.slow
def test_recipe_quick_on_tiny_data(tmp_path: Path) -> None:
    root = _fake_data(tmp_path / "data")
    out = tmp_path / "recipe.json"
    argv = ["--quick", "--data", str(root), "--out", str(out), "--rows", "paper", "fast",
            "--runs-dir", str(tmp_path / "runs")]
    assert recipe.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["complete"] is True and set(data["table"]) == {"paper", "fast"}
    assert {r["overrides"]["lr_schedule"] for r in data["runs"]} == {"step", "cosine"}
    md = out.with_suffix(".md").read_text()
    assert "| fast |" in md and "| paper |" in md
    assert recipe.main([*argv, "--resume"]) == 0  # both runs reused from the JSON
    assert json.loads(out.read_text())["runs"] == data["runs"]


def test_quality_skips_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert quality.main(["--data", str(tmp_path / "absent"), "--out",
                         str(tmp_path / "q.json")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "q.json").exists()


def _run(row: str, seed: int, psnr: float) -> dict[str, Any]:
    scores = {"output_psnr": psnr, "output_ssim": 0.9, "input_psnr": 20.0, "input_ssim": 0.8}
    return {"dataset": "Rain100L", "row": row, "seed": seed, "steps": 1, "train_seconds": 1.0,
            "eval_seconds": 1.0, "scores": {"paper": scores, "standard": scores}}


def test_quality_aggregate_and_verdicts() -> None:
    runs = [_run("lp", 0, 30.0), _run("lp", 1, 30.2),
            _run("gb_ca", 0, 31.0), _run("gb_ca", 1, 31.2),   # clearly better: agrees
            _run("lb_ca", 0, 29.0), _run("lb_ca", 1, 29.2),   # clearly worse: contradicts
            _run("lp_le_fixed", 0, 29.9), _run("lp_le_fixed", 1, 30.4)]  # within noise
    table = quality.aggregate(runs)
    cell = table["Rain100L"]["lp"]["paper_output_psnr"]
    assert math.isclose(cell["mean"], 30.1)
    assert math.isclose(cell["sd"], math.sqrt(0.02))  # sample sd of (30.0, 30.2)
    lines = {line.split("(")[0]: line for line in quality.verdicts(table)}
    assert "agrees" in lines["- Rain100L, gb_ca vs lp "]
    assert "CONTRADICTS" in lines["- Rain100L, lb_ca vs lp "]
    assert "within seed noise" in lines["- Rain100L, lp_le_fixed vs lp "]


def test_quality_names_rows_below_the_input() -> None:
    table = quality.aggregate([_run("lp", 0, 19.0), _run("gb_ca", 0, 21.0)])  # input: 20 dB
    lines = quality.below_input(table)
    assert len(lines) == 2  # both protocols
    assert all("lp (19.00 dB)" in line and "gb_ca" not in line for line in lines)
