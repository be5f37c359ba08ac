"""The end-to-end demo behind ``python -m menet demo``: no download, CPU only.

1. Light synthetic rain (:func:`menet.rain.synthesize_rain`, preset ``"light"``)
   on four of scikit-image's built-in photographs (:data:`TRAIN_IMAGES`).
2. A few minutes of training of MENET ``shallow-ca`` with gradient-balanced
   (GB) weighting of the pixel, edge and texture losses on random 64 x 64
   patches (the network starts as the identity, see
   :attr:`menet.config.TrainConfig.zero_init_residual`).
3. Evaluation on the two *held-out* photographs (:data:`HELD_OUT_IMAGES`),
   never seen in training, with rain drawn from a different seed: PSNR/SSIM on
   the Y channel of the full images (the "standard" protocol of most
   de-raining papers), and on RGB ten-crops (the paper's protocol).
4. A before/after grid, the per-image scores, and the training curves in ``out``.

``quick=True`` is a ~30 s version (fewer, smaller steps; evaluation on central
crops) used by the tests.

>>> sorted(set(TRAIN_IMAGES) & set(HELD_OUT_IMAGES))
[]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from .building import PairSource, build_pairs, build_weighting, resolve_device
from .config import TrainConfig
from .derain import derain_image
from .evaluate import evaluate_pairs, save_grid, summarize, write_csv
from .model import MENET
from .train import TrainResult, train

__all__ = ["HELD_OUT_IMAGES", "TRAIN_IMAGES", "DemoResult", "DemoSettings", "run_demo"]

#: Built-in images the demo trains on.
TRAIN_IMAGES = ("astronaut", "rocket", "motorcycle", "immunohistochemistry")
#: Built-in images held out for evaluation.
HELD_OUT_IMAGES = ("chelsea", "coffee")
#: Rain seeds: training pairs use ``TRAIN_RAIN_SEED``, evaluation ``EVAL_RAIN_SEED``.
TRAIN_RAIN_SEED, EVAL_RAIN_SEED = 0, 12345


@dataclass(frozen=True)
class DemoSettings:
    """Size of the demo's training run and evaluation."""

    steps: int
    patch_size: int
    batch_size: int
    rain_repeats: int
    patches_per_image: int
    eval_crop: int | None  # central crop side for evaluation; None = full images
    paper_protocol: bool


#: The full demo: a few minutes on two CPU cores.
FULL = DemoSettings(steps=1500, patch_size=64, batch_size=8, rain_repeats=4,
                    patches_per_image=32, eval_crop=None, paper_protocol=True)
#: ``--quick``: about 30 s.
QUICK = DemoSettings(steps=60, patch_size=48, batch_size=4, rain_repeats=1,
                     patches_per_image=8, eval_crop=128, paper_protocol=False)


@dataclass
class DemoResult:
    """Scores and outputs of :func:`run_demo` (PSNR in dB, standard protocol)."""

    out: Path
    input_psnr: float
    output_psnr: float
    input_ssim: float
    output_ssim: float
    steps: int
    train_seconds: float
    seconds: float
    held_out: list[str]
    paper: dict[str, float] | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def gain_db(self) -> float:
        """Output minus input PSNR (standard protocol)."""
        return self.output_psnr - self.input_psnr


def run_demo(
    out: str | Path = "outputs/demo",
    *,
    quick: bool = False,
    steps: int | None = None,
    weighting: str = "gb",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    stream: TextIO | None = None,
) -> DemoResult:
    """Synthesise rain, train MENET briefly, evaluate on held-out images, write outputs.

    Parameters
    ----------
    out : str or Path
        Output folder: ``grid.png``, ``scores-*.csv``, ``summary.json`` and
        ``train/`` (checkpoint, log, weights, plots).
    quick : bool
        Run the ~30 s version.
    steps : int, optional
        Override the number of training steps (at least 1).
    weighting : str
        Any :mod:`mtlweight` strategy name (default GB, as MENET-GB).
    seed : int
        Seed of initialisation and patch sampling.
    device : str
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.
    progress : bool
        Show progress bars.
    stream : TextIO, optional
        Where the report goes (default ``sys.stdout``).

    Returns
    -------
    DemoResult
        Input/output PSNR and SSIM on the held-out images and the files written.

    Raises
    ------
    ValueError
        ``steps < 1`` or an unknown strategy (before anything is trained).
    menet.building.DeviceError
        ``device="cuda"`` on a machine without CUDA.
    """
    start = time.perf_counter()
    stream = stream if stream is not None else sys.stdout
    settings = QUICK if quick else FULL
    n_steps = steps if steps is not None else settings.steps
    if n_steps < 1:
        raise ValueError(f"steps must be >= 1; found {n_steps}")
    resolve_device(device)  # no CUDA for "cuda": fail now, not after the data is made
    out = Path(out)
    config = _train_config(out, settings, n_steps, weighting, seed, device, progress)
    # An unknown strategy name fails here, in a fraction of a second.
    build_weighting(weighting, MENET.variant(config.variant), config.losses)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"MENET demo: training shallow-ca with {weighting} weighting of pixel+edge+texture "
        f"for {n_steps} steps ({settings.batch_size} x {settings.patch_size}px patches) on "
        f"light synthetic rain over {', '.join(TRAIN_IMAGES)}",
        file=stream,
    )
    result = train(config)
    if result.interrupted:
        raise KeyboardInterrupt
    demo = _evaluate(result, settings, out)
    demo.seconds = time.perf_counter() - start
    summary = {k: v for k, v in asdict(demo).items() if k not in ("out", "files")}
    summary.update(gain_db=demo.gain_db, quick=quick, weighting=weighting, seed=seed,
                   eval_rain_seed=EVAL_RAIN_SEED, eval_crop=settings.eval_crop)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    demo.files.append(out / "summary.json")
    print("\n".join(_report(demo, settings, result)), file=stream)
    return demo


def _train_config(
    out: Path, settings: DemoSettings, steps: int, weighting: str, seed: int, device: str,
    progress: bool,
) -> TrainConfig:
    return TrainConfig(
        out=str(out / "train"),
        synthetic="light",
        synthetic_images=list(TRAIN_IMAGES),
        synthetic_seed=TRAIN_RAIN_SEED,
        synthetic_repeats=settings.rain_repeats,
        patches="random",
        patch_size=settings.patch_size,
        patches_per_image=settings.patches_per_image,
        batch_size=settings.batch_size,
        weighting=weighting,
        variant="shallow-ca",
        zero_init_residual=True,
        epochs=None,
        steps=steps,
        seed=seed,
        device=device,
        progress=progress,
        channels_last=True,
    )


def _evaluate(result: TrainResult, settings: DemoSettings, out: Path) -> DemoResult:
    """Score the trained model on the held-out images; write the CSVs and the grid."""
    model = result.model
    held_out = build_pairs(PairSource(
        synthetic="light", images=HELD_OUT_IMAGES, rain_seed=EVAL_RAIN_SEED,
        crop=settings.eval_crop,
    ))
    records = evaluate_pairs(model, held_out, "standard", progress=False)
    std = summarize(records)
    write_csv(records, out / "scores-standard.csv")
    files = [out / "scores-standard.csv"]
    paper: dict[str, float] | None = None
    if settings.paper_protocol:
        paper_records = evaluate_pairs(model, held_out, "paper", progress=False)
        paper = summarize(paper_records)
        write_csv(paper_records, out / "scores-paper.csv")
        files.append(out / "scores-paper.csv")
    pairs = [held_out[i] for i in range(len(records))]
    triples = [(rainy, derain_image(model, rainy, tile=None), clean) for rainy, clean in pairs]
    labels = [f"{r.name}\n{r.input_psnr:.1f} -> {r.output_psnr:.1f} dB" for r in records]
    save_grid(triples, out / "grid.png", row_labels=labels)
    files += [out / "grid.png", *result.plots]
    if result.weights_file is not None:
        files.append(result.weights_file)
    return DemoResult(
        out=out,
        input_psnr=std["input_psnr"],
        output_psnr=std["output_psnr"],
        input_ssim=std["input_ssim"],
        output_ssim=std["output_ssim"],
        steps=result.step,
        train_seconds=result.seconds,
        seconds=0.0,
        held_out=list(HELD_OUT_IMAGES),
        paper=paper,
        files=files,
    )


def _report(demo: DemoResult, settings: DemoSettings, result: TrainResult) -> list[str]:
    """The demo's closing lines: scores, outputs, and where to go for real photos."""
    where = "central crops of the" if settings.eval_crop else "the full"
    lines = [
        f"trained {result.step} steps in {demo.train_seconds:.0f} s (total {demo.seconds:.0f} s)",
        f"held-out images (never trained on; rain seed {EVAL_RAIN_SEED}): "
        f"{', '.join(HELD_OUT_IMAGES)} ({where} images)",
        f"standard protocol (Y channel): input PSNR {demo.input_psnr:.2f} dB -> output "
        f"{demo.output_psnr:.2f} dB ({demo.gain_db:+.2f} dB); SSIM {demo.input_ssim:.4f} -> "
        f"{demo.output_ssim:.4f}",
    ]
    if demo.paper is not None:
        p = demo.paper
        lines.append(
            f"paper protocol (RGB, ten 224x224 crops): input PSNR {p['input_psnr']:.2f} dB "
            f"-> output {p['output_psnr']:.2f} dB ({p['psnr_gain']:+.2f} dB); SSIM "
            f"{p['input_ssim']:.4f} -> {p['output_ssim']:.4f}"
        )
    lines += [
        f"outputs in {demo.out}: grid.png, scores-*.csv, summary.json, train/ (plots, weights)",
        f"demo model: {result.weights_file} -- a quick check that training works, trained "
        f"minutes on synthetic rain over {len(TRAIN_IMAGES)} pictures; not a model for real "
        f"photos",
        "to de-rain your own photos (bundled pretrained model): "
        "python -m menet derain photo.jpg --out derained/",
        f"  (or with the demo model: python -m menet derain photo.jpg --weights "
        f"{result.weights_file} --out derained/)",
    ]
    return lines
