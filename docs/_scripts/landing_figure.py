"""Draw the landing page's before/after figure, ``docs/_static/landing.jpg``.

Three of scikit-image's built-in photographs (shipped in its wheel: no download,
no benchmark or real-rain photo), each with the MENET example's synthetic rain
(:func:`menet.rain.synthesize_rain`, light or heavy preset, a fixed seed), de-rained by
the bundled pretrained model (:func:`menet.pretrained.load_bundled`) in one pass.
Each panel says its PSNR (Y channel, against the clean photograph).

Run from the repository root (about 5 s on one CPU core)::

    python docs/_scripts/landing_figure.py            # writes docs/_static/landing.jpg
    python docs/_scripts/landing_figure.py --out x.jpg
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from menet.derain import derain_image
from menet.images import quantize
from menet.metrics import psnr, rgb_to_y
from menet.pretrained import load_bundled
from menet.rain import synthesize_rain
from menet.synthetic import builtin_images

OUT = Path(__file__).resolve().parents[1] / "_static" / "landing.jpg"
#: (built-in image, rain preset, rain seed, crop (top, left)): 300 x 400 crops.
PANELS = (("chelsea", "light", 3, (0, 25)), ("coffee", "light", 5, (50, 100)),
          ("rocket", "heavy", 1, (60, 120)))
SIZE = (300, 400)


def panels() -> list[tuple[str, Tensor, Tensor, Tensor]]:
    """``(title, rainy, de-rained, clean)`` for each panel, quantised to 8 bits."""
    images = dict(builtin_images())
    model = load_bundled()
    out = []
    for name, preset, seed, (top, left) in PANELS:
        clean = images[name][:, top : top + SIZE[0], left : left + SIZE[1]]
        rainy = quantize(synthesize_rain(clean, preset=preset, seed=seed))
        derained = quantize(derain_image(model, rainy, tile=None))
        out.append((f"{name}, {preset} rain", rainy, derained, clean))
    return out


def _y_psnr(x: Tensor, clean: Tensor) -> float:
    return float(psnr(rgb_to_y(x[None]), rgb_to_y(clean[None])))


def draw(out: Path = OUT) -> Path:
    """Two rows (rainy input, de-rained) by three photographs; JPEG at quality 85."""
    rows = panels()
    fig, axes = plt.subplots(2, len(rows), figsize=(10.5, 5.4), dpi=100,
                             gridspec_kw={"hspace": 0.16, "wspace": 0.03})
    for j, (title, rainy, derained, clean) in enumerate(rows):
        for i, img in enumerate((rainy, derained)):
            ax = axes[i, j]
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{title}: {_y_psnr(img, clean):.1f} dB", fontsize=10)
    axes[0, 0].set_ylabel("rainy input", fontsize=11)
    axes[1, 0].set_ylabel("MENET (bundled model)", fontsize=11)
    fig.subplots_adjust(left=0.035, right=0.995, top=0.95, bottom=0.01)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="jpeg", pil_kwargs={"quality": 85, "optimize": True})
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output JPEG (default {OUT})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = draw(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
