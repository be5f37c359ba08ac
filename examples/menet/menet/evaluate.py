"""Evaluation of a de-raining model on paired data, under two protocols, with plots.

Protocols (name them whenever reporting numbers):

``"paper"``
    The authors' protocol: RGB, PSNR and SSIM (Gaussian 11x11, σ 1.5) averaged
    over the ten 224x224 crops of each image (:func:`menet.data.ten_crops`);
    each crop is de-rained on its own.
``"standard"``
    Most de-raining papers: the full image is de-rained, PSNR and SSIM are
    computed on the BT.601 luma ``Y`` (:func:`menet.metrics.rgb_to_y`).

Scores are those of 8-bit images: rainy, clean and de-rained images are
quantised to the 8-bit grid (``round(x·255)/255``, :func:`menet.images.quantize`)
before scoring, as if saved to PNG (a no-op for images read from 8-bit files),
and metrics use data range 255. The per-image scores are averaged over images
(never over batches).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from menet.data import ten_crops
from menet.images import quantize
from menet.metrics import psnr, rgb_to_y, ssim
from menet.plots import legend_below

__all__ = [
    "ImageRecord",
    "evaluate_pairs",
    "plot_psnr_histogram",
    "plot_ssim_box",
    "save_grid",
    "summarize",
    "write_csv",
]

Protocol = Literal["paper", "standard"]
Model = Callable[[Tensor], Tensor]
Records = Sequence["ImageRecord"]


@dataclass(frozen=True)
class ImageRecord:
    """Scores of one image: the rainy input and the model output against the clean image.

    PSNR in dB, SSIM in [-1, 1]; ``protocol`` is ``"paper"`` or ``"standard"``.
    """

    name: str
    id: int | None
    protocol: str
    input_psnr: float
    input_ssim: float
    output_psnr: float
    output_ssim: float


def _scores(out: Tensor, clean: Tensor, protocol: Protocol) -> tuple[Tensor, Tensor]:
    """Per-image (PSNR, SSIM) of quantised ``(N, 3, H, W)`` images in [0, 1]."""
    if protocol == "standard":
        a, b = rgb_to_y(out), rgb_to_y(clean)
    else:
        a, b = out * 255.0, clean * 255.0
    return psnr(a, b, 255.0), ssim(a, b, 255.0)


def _run(model: Model | None, x: Tensor, batch_size: int) -> Tensor:
    if model is None:
        return x
    outs = [model(chunk) for chunk in torch.split(x, batch_size)]
    return quantize(torch.cat(outs))


def _score_pair(
    model: Model | None,
    rainy: Tensor,
    clean: Tensor,
    index: int,
    protocol: Protocol,
    device: torch.device | str,
    batch_size: int,
    crop_size: int,
) -> dict[str, float]:
    """Input and output PSNR/SSIM of one pair under ``protocol``."""
    if rainy.shape != clean.shape or rainy.dim() != 3 or rainy.shape[0] != 3:
        raise ValueError(
            f"pair {index}: expected two (3, H, W) images of equal size, found "
            f"{tuple(rainy.shape)} and {tuple(clean.shape)}"
        )
    rainy = quantize(rainy.to(device, torch.float32))
    clean = quantize(clean.to(device, torch.float32))
    if protocol == "paper":
        rainy, clean = ten_crops(rainy, crop_size), ten_crops(clean, crop_size)
    else:
        rainy, clean = rainy[None], clean[None]
    out = _run(model, rainy, batch_size)
    in_p, in_s = _scores(rainy, clean, protocol)
    out_p, out_s = _scores(out, clean, protocol)
    return {
        "input_psnr": float(in_p.mean()), "input_ssim": float(in_s.mean()),
        "output_psnr": float(out_p.mean()), "output_ssim": float(out_s.mean()),
    }


def evaluate_pairs(
    model: Model | None,
    dataset: Dataset[tuple[Tensor, Tensor]] | Sequence[tuple[Tensor, Tensor]],
    protocol: Protocol = "standard",
    device: torch.device | str | None = None,
    batch_size: int = 10,
    *,
    crop_size: int = 224,
    progress: bool = True,
) -> list[ImageRecord]:
    """Score the rainy inputs and the model's outputs against the clean images.

    Parameters
    ----------
    model : callable or None
        ``(B, 3, H, W) -> (B, 3, H, W)`` in [0, 1], e.g. :class:`menet.MENET`
        already on ``device`` (an ``nn.Module`` is put in eval mode for the call
        and restored after). ``None`` evaluates the identity (output = input).
    dataset : Dataset or sequence of (rainy, clean)
        ``(3, H, W)`` pairs in [0, 1]; ``dataset.names`` / ``dataset.ids`` (as on
        :class:`menet.data.PairedFolder`) name the records when present.
    protocol : {"paper", "standard"}
        See the module docstring.
    device : torch.device or str, optional
        Where to run; defaults to the model's device (CPU for ``None``).
    batch_size : int
        Crops per forward pass (paper protocol); the standard protocol de-rains
        one full image at a time.
    crop_size : int
        Crop side of the paper protocol (224 in the paper).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list of ImageRecord
        One per pair, in dataset order.

    Examples
    --------
    >>> pairs = [(torch.full((3, 16, 16), 0.6), torch.full((3, 16, 16), 0.5))]
    >>> rec = evaluate_pairs(None, pairs, "paper", crop_size=12, progress=False)[0]
    >>> round(rec.input_psnr, 2) == round(rec.output_psnr, 2)
    True
    """
    if protocol not in ("paper", "standard"):
        raise ValueError(f"protocol must be 'paper' or 'standard', found {protocol!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    if device is None:
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    names: Sequence[str] | None = getattr(dataset, "names", None)
    ids: Sequence[int | None] | None = getattr(dataset, "ids", None)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    records = []
    try:
        with torch.inference_mode():
            for i in tqdm(range(len(dataset)), desc=f"evaluate ({protocol})",  # type: ignore[arg-type]
                          disable=not progress):
                rainy, clean = dataset[i]
                scores = _score_pair(model, rainy, clean, i, protocol, device, batch_size,
                                     crop_size)
                records.append(ImageRecord(
                    name=names[i] if names is not None else str(i),
                    id=ids[i] if ids is not None else None,
                    protocol=protocol,
                    **scores,
                ))
    finally:
        if was_training and isinstance(model, nn.Module):
            model.train()
    return records


def summarize(records: Records) -> dict[str, float]:
    """Means over images of every score, plus ``count`` and ``psnr_gain`` (output - input).

    A pair scored on identical images has PSNR ``inf``, and so has the mean.

    Examples
    --------
    >>> r = ImageRecord("a", 1, "standard", 20.0, 0.5, 30.0, 0.9)
    >>> summarize([r])["psnr_gain"]
    10.0
    """
    if not records:
        raise ValueError("summarize: no records")
    keys = ("input_psnr", "input_ssim", "output_psnr", "output_ssim")
    out = {k: float(np.mean([getattr(r, k) for r in records])) for k in keys}
    out["psnr_gain"] = out["output_psnr"] - out["input_psnr"]
    out["count"] = float(len(records))
    return out


def write_csv(records: Records, path: str | Path) -> None:
    """Write one row per image (columns as :class:`ImageRecord`), scores to 6 decimals.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "scores.csv")
    >>> write_csv([ImageRecord("a", 1, "paper", 20.0, 0.5, 30.0, 0.9)], f)
    >>> open(f).read().splitlines()[1]
    'a,1,paper,20.000000,0.500000,30.000000,0.900000'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [f.name for f in fields(ImageRecord)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            row = asdict(r)
            writer.writerow([
                f"{v:.6f}" if isinstance(v, float) else ("" if v is None else v)
                for v in (row[c] for c in columns)
            ])


def _groups(records: Records | Mapping[str, Records]) -> list[tuple[str, list[float], list[float]]]:
    """[(label, psnr values, ssim values)]: the inputs first, then each run's outputs."""
    runs = dict(records) if isinstance(records, Mapping) else {"output": list(records)}
    if not runs or any(len(r) == 0 for r in runs.values()):
        raise ValueError("plot: no records")
    first = next(iter(runs.values()))
    groups = [("input", [r.input_psnr for r in first], [r.input_ssim for r in first])]
    for label, recs in runs.items():
        groups.append((label, [r.output_psnr for r in recs], [r.output_ssim for r in recs]))
    return groups


def _save(fig: object, path: str | Path) -> None:
    # matplotlib is heavy: imported by the plotting functions only
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_figure(str(path), dpi=120, bbox_inches="tight")  # type: ignore[arg-type]


def plot_psnr_histogram(
    records: Records | Mapping[str, Records], path: str | Path, *, bins: int = 20,
    title: str | None = None,
) -> None:
    """Histogram of per-image PSNR, inputs vs outputs (the paper's Fig. 8).

    ``records`` is one run's records, or ``{label: records}`` for several runs on
    the same images (the inputs are taken from the first).

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "psnr.png")
    >>> plot_psnr_histogram([ImageRecord("a", 1, "standard", 20.0, 0.5, 30.0, 0.9)], f)
    >>> os.path.getsize(f) > 0
    True
    """
    from matplotlib.figure import Figure

    groups = _groups(records)
    finite = [v for _, p, _ in groups for v in p if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    edges = np.linspace(lo - 0.5, hi + 0.5, bins + 1)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for label, p, _ in groups:
        ax.hist([v for v in p if math.isfinite(v)], bins=edges.tolist(), alpha=0.5, label=label)
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("images")
    ax.set_title(title or f"Per-image PSNR ({groups[0][0]} vs output, {_protocol(records)})")
    legend_below(ax)
    _save(fig, path)


def plot_ssim_box(
    records: Records | Mapping[str, Records], path: str | Path, *, title: str | None = None
) -> None:
    """Box plot of per-image SSIM, inputs vs outputs (the paper's Fig. 9).

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "ssim.png")
    >>> plot_ssim_box({"gb": [ImageRecord("a", 1, "paper", 20.0, 0.5, 30.0, 0.9)]}, f)
    >>> os.path.getsize(f) > 0
    True
    """
    from matplotlib.figure import Figure

    groups = _groups(records)
    fig = Figure(figsize=(1.2 * len(groups) + 2, 4))
    ax = fig.add_subplot()
    ax.boxplot([s for _, _, s in groups])
    ax.set_xticks(range(1, len(groups) + 1), [label for label, _, _ in groups])
    ax.set_ylabel("SSIM")
    ax.set_title(title or f"Per-image SSIM ({_protocol(records)} protocol)")
    _save(fig, path)


def _protocol(records: Records | Mapping[str, Records]) -> str:
    recs = next(iter(records.values())) if isinstance(records, Mapping) else records
    return recs[0].protocol


def save_grid(
    triples: Sequence[tuple[Tensor, Tensor, Tensor]],
    path: str | Path,
    *,
    titles: Sequence[str] = ("rainy", "derained", "clean"),
    row_labels: Sequence[str] | None = None,
) -> None:
    """Save a grid with one row per image: rainy | derained | clean.

    Parameters
    ----------
    triples : sequence of (Tensor, Tensor, Tensor)
        ``(3, H, W)`` images in [0, 1] (any number of columns per row works).
    path : str or Path
        Output image (format from the extension).
    titles : sequence of str
        Column titles.
    row_labels : sequence of str, optional
        One label per row (e.g. the image name and PSNR).

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> x = torch.rand(3, 8, 8)
    >>> save_grid([(x, x, x)], f, row_labels=["rain-001"]); os.path.getsize(f) > 0
    True
    """
    from matplotlib.figure import Figure

    if not triples:
        raise ValueError("save_grid: no images")
    if row_labels is not None and len(row_labels) != len(triples):
        raise ValueError(f"save_grid: {len(row_labels)} row labels for {len(triples)} rows")
    cols = len(triples[0])
    # Each row as tall as its own image at a common width: no blank band after a
    # portrait row in a grid that starts with a landscape one (or the reverse).
    ratios = [row[0].shape[-2] / row[0].shape[-1] for row in triples]
    fig = Figure(figsize=(cols * 3.0, 3.0 * sum(ratios) + 0.5))
    axes = fig.subplots(len(triples), cols, squeeze=False,
                        gridspec_kw={"height_ratios": ratios})
    for r, row in enumerate(triples):
        for c, img in enumerate(row):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"save_grid: row {r}, column {c}: expected (3, H, W), "
                                 f"found {tuple(img.shape)}")
            ax = axes[r][c]
            ax.imshow(img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and c < len(titles):
                ax.set_title(titles[c])
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r])
    fig.tight_layout()
    _save(fig, path)
