"""Smoke test of benchmarks/vs_torchjd.py: tiny sizes, JSON and Markdown, fresh-process memory."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("torchjd")
vs_torchjd = pytest.importorskip("vs_torchjd")


def test_shared_methods_come_from_both_libraries() -> None:
    import torchjd.aggregation

    import mtlweight as mw

    names = vs_torchjd.shared_methods()
    assert names, "no method in both libraries"
    for name in names:
        assert name in mw.available()
        assert hasattr(torchjd.aggregation, vs_torchjd.TORCHJD[name][0])
    with pytest.raises(SystemExit, match="not in both libraries: no_such_method"):
        vs_torchjd.shared_methods(["no_such_method"])


def test_quick_run_writes_ratios(tmp_path: Path) -> None:
    methods = [m for m in ("upgrad", "pcgrad", "mgda") if m in vs_torchjd.shared_methods()][:2]
    out = tmp_path / "vs.json"
    argv = ["--quick", "--sizes", "tiny", "--repeats", "2", "--warmup", "0", "--no-memory",
            "--methods", *methods, "--out", str(out)]
    assert vs_torchjd.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "vs_torchjd" and data["machine"]["torch"]
    assert data["config"]["methods"] == methods and data["config"]["torchjd"]
    res = data["results"]["tiny"]
    assert res["shared_parameters"] == 6 * (16 * 16 + 16)
    plain = res["plain"]["median_s"]
    assert plain > 0
    for key in ("fixed", "gb_all", "gb_all_general", "plain_again"):
        assert res[key]["vs_plain"] == pytest.approx(res[key]["median_s"] / plain)
    assert "plain again, on a second model" in out.with_suffix(".md").read_text()
    assert list(res["methods"]) == methods
    for name, row in res["methods"].items():
        ours, theirs = row["mtlweight"], row["torchjd"]
        assert row["time_ratio"] == pytest.approx(ours["median_s"] / theirs["median_s"]), name
        assert ours["vs_plain"] == pytest.approx(ours["median_s"] / plain), name
        assert math.isnan(ours["step_mib"])  # --no-memory
    md = out.with_suffix(".md").read_text()
    assert "ours / TorchJD" in md and all(f"| {m} |" in md for m in methods)


def test_same_model_same_method_same_shared_gradient() -> None:
    """The benchmark compares like with like: on its model, mtlweight's and TorchJD's IMTL-G
    (equal in both libraries on a full-rank J) put the same gradient on the trunk."""
    import torch

    if "imtl_g" not in vs_torchjd.shared_methods():
        pytest.skip("IMTL-G is not in both libraries")
    grads = [_trunk_gradient(library, "imtl_g") for library in ("mtlweight", "torchjd")]
    # TorchJD takes the pseudo-inverse of the float32 Gram matrix, we solve in float64: the
    # two differ by up to 7e-6 of the largest entry (60 float32 ulps, with the rounding of the
    # BLAS kernels of the machine); another method would differ by O(1).
    scale = float(grads[0].abs().max())  # type: ignore[attr-defined]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=5e-5 * scale)


def _trunk_gradient(library: str, name: str) -> object:
    import torch
    import torch.nn.functional as F
    from torchjd.autojac import jac_to_grad, mtl_backward

    import mtlweight as mw

    trunk, heads, x, y = vs_torchjd.build_model(8, 4, torch.device("cpu"))
    features = trunk(x)
    losses = [F.mse_loss(h(features).squeeze(1), y[:, i]) for i, h in enumerate(heads)]
    shared = list(trunk.parameters())
    if library == "mtlweight":
        mw.get(name, shared=trunk).backward(losses)
    else:
        mtl_backward(losses, features=features, shared_params=shared)
        jac_to_grad(shared, vs_torchjd.torchjd_aggregator(name))
    return torch.cat([p.grad.reshape(-1) for p in shared])  # type: ignore[union-attr]


@pytest.mark.slow
def test_memory_probe_runs_in_a_fresh_process() -> None:
    import torch

    name = vs_torchjd.shared_methods()[0]
    row = vs_torchjd.peak_memory("torchjd", name, 16, 4, torch.device("cpu"))
    assert row["peak_mib"] > 0
    assert row["step_mib"] >= 0 and row["first_step_mib"] >= 0
    assert math.isfinite(row["peak_mib"])
