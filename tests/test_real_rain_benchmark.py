"""benchmarks/real_rain.py: procedural test pairs, the --quick run on tiny data, the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("menet")
real_rain = pytest.importorskip("real_rain")
from test_benchmarks import _fake_data  # noqa: E402  (4 tiny Rain100L pairs, test id 4)


def test_procedural_pairs_are_fixed_per_seed_and_differ_by_kind() -> None:
    cleans = [torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    dense = real_rain.procedural_pairs(cleans, "dense", seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in
               zip(dense, real_rain.procedural_pairs(cleans, "dense", seed=1), strict=True))
    assert not torch.equal(dense[0][0], real_rain.procedural_pairs(cleans, "dense", seed=2)[0][0])
    for rainy, clean in dense:  # streaks only, no veil: nothing gets darker (up to rounding)
        assert bool((rainy >= clean - 0.5 / 255).all())
        assert torch.equal(rainy, (rainy * 255).round() / 255)  # stored as 8 bits
    for (rainy, clean), c in zip(real_rain.procedural_pairs(cleans, "mist"), cleans, strict=True):
        assert clean is c
        dark = clean < 0.05  # under a veil of airlight >= 0.6 dark pixels get lighter
        assert bool((rainy[dark] > clean[dark]).all())


@pytest.mark.slow
def test_quick_run_scores_each_model_and_draws_the_figure(tmp_path: Path) -> None:
    from menet.pretrained import BUNDLED

    root = _fake_data(tmp_path / "data")
    out = tmp_path / "r" / "real_rain.json"
    argv = ["--quick", "--data", str(root), "--out", str(out),
            "--models", f"one={BUNDLED}", f"two={BUNDLED}"]
    assert real_rain.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["sets"] == ["Rain100L", "dense", "mist", "mixed"] and result["images"] == 1
    assert result["scores"]["one"] == result["scores"]["two"]  # same file, same scores
    assert result["models"]["one"]["file"] == str(BUNDLED.relative_to(real_rain.REPO))
    for s in result["sets"]:
        assert 0 < result["scores"]["one"][s]["input_psnr"] < 60
    md = out.with_suffix(".md").read_text()
    assert "| procedural mist on the Rain100L clean test images |" in md
    assert md.count("(≥ 35.8 ") == 2  # one Rain100L verdict per model
    with Image.open(out.with_suffix(".png")) as im:
        assert im.width <= 1000


def test_bad_models_argument_and_missing_data(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        real_rain.main(["--models", "no-equals-sign"])
    assert "give NAME=FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        real_rain.main(["--models", f"x={tmp_path / 'missing.safetensors'}"])
    assert "x: no file" in capsys.readouterr().err
    assert real_rain.main(["--data", str(tmp_path)]) == 0
    assert "real_rain skipped" in capsys.readouterr().out
