"""Paired de-raining data: folders of (rainy, clean) images, crops, synthetic rain.

Every dataset here yields ``(rainy, clean)``: two float32 RGB tensors
``(3, H, W)`` in [0, 1] of equal size (see the package docstring).

- :class:`PairedFolder` -- Rain100L/Rain100H-style folders (``pairs.csv``, or
  ``rain/rain-XXX.png`` <-> ``norain/norain-XXX.png``, or same names in
  ``rain/`` and ``norain/``), selectable by pair id (:func:`load_split`).
- :func:`ten_crops` / :class:`TenCropPairs` -- the paper's ten 224x224 crops
  (its whole training set, and its evaluation protocol).
- :class:`RandomCropPairs` -- seeded random aligned crops with flips.
- :func:`builtin_images` / :class:`SyntheticRainPairs` -- clean images bundled
  with scikit-image and procedural rain on them (no download; defined in
  :mod:`menet.synthetic`, re-exported here).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from menet.images import read_image
from menet.synthetic import SyntheticRainPairs, builtin_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "PairedFolder",
    "RandomCropPairs",
    "SyntheticRainPairs",
    "TenCropPairs",
    "builtin_images",
    "load_split",
    "ten_crop",
    "ten_crops",
]

Pair = tuple[Tensor, Tensor]
PairTransform = Callable[[Tensor, Tensor], Pair]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits


def load_split(path: str | Path) -> dict[str, list[int]]:
    """Read a split file such as ``rain100-split.json``: ``{"train": [ids], "test": [ids]}``.

    Keys whose value is not a list of integers (``description``,
    ``duplicate_backgrounds``) are left out.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "split.json")
    >>> _ = open(f, "w").write('{"description": "x", "train": [1, 2], "test": [3]}')
    >>> load_split(f)
    {'train': [1, 2], 'test': [3]}
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read split file {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"split file {path}: expected a JSON object, found {type(raw).__name__}")
    split = {
        k: [int(i) for i in v]
        for k, v in raw.items()
        if isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    }
    if not split:
        raise ValueError(f"split file {path} holds no list of integer ids")
    return split


def _pair_id(path: Path) -> int | None:
    match = _NUMBER.search(path.stem)
    return int(match.group(1)) if match else None


class PairedFolder(Dataset[Pair]):
    """(rainy, clean) pairs from a folder, optionally restricted to some pair ids.

    Pairing, first rule that applies:

    1. ``root/pairs.csv`` with header ``rain,norain`` and paths relative to ``root``;
    2. ``root/rain/rain-XXX.ext`` <-> ``root/norain/norain-XXX.ext`` (Rain100L);
    3. ``root/rain/NAME`` <-> ``root/norain/NAME`` (Rain100H: ``7.png``).

    A pair's id is the last number in the rainy file's name (``rain-007.png`` and
    ``7.png`` are both id 7). Pairs are sorted by id (then name).

    Parameters
    ----------
    root : str or Path
        Dataset folder.
    ids : iterable of int, optional
        Keep only these pair ids, in the given order (e.g. ``load_split(f)["test"]``).
    transform : callable, optional
        ``transform(rainy, clean) -> (rainy, clean)``, applied to each loaded pair.
    cache : bool
        Keep decoded images in memory after first use.

    Attributes
    ----------
    pairs : list of (Path, Path)
        Rainy and clean file of each item.
    ids : list of int or None
        Pair id of each item.
    names : list of str
        Rainy file name (stem) of each item, e.g. ``"rain-007"``.

    Raises
    ------
    FileNotFoundError
        Missing folder, missing partner, or an unknown id.
    ValueError
        Unreadable image or a size mismatch within a pair (checked from the file
        headers at construction, so it fails early), malformed ``pairs.csv``.

    Examples
    --------
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> for sub in ("rain", "norain"):
    ...     os.makedirs(os.path.join(root, sub))
    ...     for i in (1, 2):
    ...         Image.new("RGB", (8, 6)).save(os.path.join(root, sub, f"{sub}-00{i}.png"))
    >>> data = PairedFolder(root, ids=[2])
    >>> len(data), data.names, data[0][0].shape
    (1, ['rain-002'], torch.Size([3, 6, 8]))
    """

    def __init__(
        self,
        root: str | Path,
        ids: Iterable[int] | None = None,
        transform: PairTransform | None = None,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        pairs = self._discover()
        if not pairs:
            raise FileNotFoundError(f"no image pairs found in {self.root}")
        if ids is not None:
            pairs = self._select(pairs, list(ids))
        for rain, norain in pairs:
            self._check_pair(rain, norain)
        self.pairs: list[tuple[Path, Path]] = pairs
        self.ids: list[int | None] = [_pair_id(r) for r, _ in pairs]
        self.names: list[str] = [r.stem for r, _ in pairs]
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, Pair] = {}

    def _discover(self) -> list[tuple[Path, Path]]:
        csv_path = self.root / "pairs.csv"
        if csv_path.is_file():
            return self._from_csv(csv_path)
        rain_dir, norain_dir = self.root / "rain", self.root / "norain"
        if not rain_dir.is_dir() or not norain_dir.is_dir():
            raise FileNotFoundError(
                f"{self.root}: expected pairs.csv or the folders rain/ and norain/"
            )
        pairs = []
        for rain in sorted(rain_dir.iterdir()):
            if rain.suffix.lower() not in IMAGE_EXTENSIONS or not rain.is_file():
                continue
            if rain.name.startswith("rain-"):
                norain = norain_dir / ("no" + rain.name)
                if not norain.exists() and (norain_dir / rain.name).exists():
                    norain = norain_dir / rain.name
            else:
                norain = norain_dir / rain.name
            if not norain.is_file():
                raise FileNotFoundError(f"no clean partner for {rain}: expected {norain}")
            pairs.append((rain, norain))
        return sorted(pairs, key=lambda p: (_pair_id(p[0]) is None, _pair_id(p[0]) or 0, p[0].name))

    def _from_csv(self, csv_path: Path) -> list[tuple[Path, Path]]:
        with csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"rain", "norain"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{csv_path}: header must contain 'rain,norain', found {reader.fieldnames}"
                )
            pairs = []
            for line, row in enumerate(reader, start=2):
                if not row["rain"] or not row["norain"]:
                    raise ValueError(f"{csv_path}, line {line}: empty rain or norain path")
                rain, norain = self.root / row["rain"].strip(), self.root / row["norain"].strip()
                for p in (rain, norain):
                    if not p.is_file():
                        raise FileNotFoundError(f"{csv_path}, line {line}: file not found: {p}")
                pairs.append((rain, norain))
        return pairs

    def _select(self, pairs: list[tuple[Path, Path]], ids: list[int]) -> list[tuple[Path, Path]]:
        by_id: dict[int, tuple[Path, Path]] = {}
        for pair in pairs:
            pid = _pair_id(pair[0])
            if pid is None:
                continue
            if pid in by_id:
                raise ValueError(
                    f"{self.root}: pair id {pid} is ambiguous: {by_id[pid][0].name} "
                    f"and {pair[0].name}"
                )
            by_id[pid] = pair
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise FileNotFoundError(
                f"{self.root}: no pair with id(s) {missing} (ids found: "
                f"{min(by_id, default=None)}..{max(by_id, default=None)}, {len(by_id)} pairs)"
            )
        return [by_id[i] for i in ids]

    @staticmethod
    def _check_pair(rain: Path, norain: Path) -> None:
        sizes = []
        for p in (rain, norain):
            try:
                with Image.open(p) as img:
                    sizes.append(img.size)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ValueError(f"cannot read image {p}: {err}") from err
        if sizes[0] != sizes[1]:
            raise ValueError(
                f"size mismatch: {rain} is {sizes[0][0]}x{sizes[0][1]} but {norain} is "
                f"{sizes[1][0]}x{sizes[1][1]} (width x height)"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Pair:
        """The pair at ``index`` without ``transform`` (cached when ``cache=True``)."""
        if index in self._cache:
            return self._cache[index]
        rain_path, norain_path = self.pairs[index]
        pair = (read_image(rain_path), read_image(norain_path))
        if pair[0].shape != pair[1].shape:
            raise ValueError(
                f"size mismatch: {rain_path} {tuple(pair[0].shape)} vs "
                f"{norain_path} {tuple(pair[1].shape)}"
            )
        if self.cache:
            self._cache[index] = pair
        return pair

    def __iter__(self) -> Iterator[Pair]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Pair:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        rainy, clean = self.load(index % len(self))
        return self.transform(rainy, clean) if self.transform is not None else (rainy, clean)


def _crop_box(h: int, w: int, size: int, k: int) -> tuple[bool, int, int]:
    """(flip, top, left) of ten-crop ``k``; for flipped crops the box is in the flipped image."""
    if not 0 <= k < 10:
        raise ValueError(f"ten-crop index must be in 0..9, found {k}")
    if h < size or w < size:
        raise ValueError(f"image of {h}x{w} is smaller than the crop size {size}x{size}")
    boxes = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
             (round((h - size) / 2.0), round((w - size) / 2.0))]
    top, left = boxes[k % 5]
    return k >= 5, top, left


def ten_crop(img: Tensor, k: int, size: int = 224) -> Tensor:
    """Crop ``k`` (0..9) of :func:`ten_crops`, without computing the others.

    Examples
    --------
    >>> x = torch.rand(3, 10, 12)
    >>> bool((ten_crop(x, 7, 4) == ten_crops(x, 4)[7]).all())
    True
    """
    flip, top, left = _crop_box(img.shape[-2], img.shape[-1], size, k)
    if flip:  # box (top, left) in the flipped image = mirrored box in the original
        left = img.shape[-1] - size - left
        return img[..., top : top + size, left : left + size].flip(-1)
    return img[..., top : top + size, left : left + size]


def ten_crops(img: Tensor, size: int = 224) -> Tensor:
    """The paper's ten crops of ``img`` ``(..., H, W)`` -> ``(10, ..., size, size)``.

    Order (as :class:`torchvision.transforms.TenCrop`): top-left, top-right,
    bottom-left, bottom-right, centre of ``img``, then the same five of the
    horizontally flipped image (so crop 5 is the mirror of crop 1). The centre
    box starts at ``round((H - size) / 2), round((W - size) / 2)``.

    Raises
    ------
    ValueError
        If the image is smaller than ``size`` in either side.

    Examples
    --------
    >>> x = torch.arange(16.0).reshape(1, 4, 4)
    >>> c = ten_crops(x, 2)
    >>> c.shape, c[0].flatten().tolist(), c[5].flatten().tolist()
    (torch.Size([10, 1, 2, 2]), [0.0, 1.0, 4.0, 5.0], [3.0, 2.0, 7.0, 6.0])
    """
    if img.dim() < 2:
        raise ValueError(f"ten_crops expects (..., H, W), found shape {tuple(img.shape)}")
    return torch.stack([ten_crop(img, k, size) for k in range(10)])


class TenCropPairs(Dataset[Pair]):
    """All ten aligned crops of every pair of ``dataset`` (the paper's training set).

    Item ``i`` is crop ``i % 10`` (order of :func:`ten_crops`) of pair ``i // 10``.
    Each item reads its pair from ``dataset``: wrap a :class:`PairedFolder` built
    with ``cache=True`` to decode each image once rather than ten times.

    Examples
    --------
    >>> pairs = [(torch.rand(3, 8, 8), torch.rand(3, 8, 8))]
    >>> crops = TenCropPairs(pairs, size=4)
    >>> len(crops), crops[9][0].shape
    (10, torch.Size([3, 4, 4]))
    """

    def __init__(self, dataset: Dataset[Pair] | Sequence[Pair], size: int = 224) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return 10 * len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Pair:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        rainy, clean = self.dataset[index // 10]
        k = index % 10
        return ten_crop(rainy, k, self.size), ten_crop(clean, k, self.size)


class RandomCropPairs(Dataset[Pair]):
    """Random aligned ``size x size`` crops with random horizontal/vertical flips.

    Item ``i`` is a crop of pair ``i // samples_per_image``. The crop position
    and flips are drawn from a generator seeded with ``(seed, epoch, i)``, so
    items are reproducible, independent of worker processes and access order;
    call :meth:`set_epoch` each epoch to draw new crops.

    Parameters
    ----------
    dataset : Dataset or sequence of pairs
        Source pairs (each at least ``size`` in both sides).
    size : int
        Crop side.
    flips : bool
        Flip horizontally and vertically, each with probability 1/2.
    samples_per_image : int
        Crops per pair per epoch.
    seed : int
        Base seed.

    Examples
    --------
    >>> pairs = [(torch.rand(3, 9, 9), torch.rand(3, 9, 9))]
    >>> crops = RandomCropPairs(pairs, size=4, samples_per_image=3, seed=1)
    >>> len(crops), bool((crops[2][0] == crops[2][0]).all())
    (3, True)
    """

    def __init__(
        self,
        dataset: Dataset[Pair] | Sequence[Pair],
        size: int,
        flips: bool = True,
        samples_per_image: int = 1,
        seed: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"crop size must be positive, found {size}")
        if samples_per_image < 1:
            raise ValueError(f"samples_per_image must be >= 1, found {samples_per_image}")
        self.dataset = dataset
        self.size = size
        self.flips = flips
        self.samples_per_image = samples_per_image
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of ``epoch`` (same epoch -> same crops)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_image * len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Pair:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        rainy, clean = self.dataset[index // self.samples_per_image]
        h, w = rainy.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(
                f"pair {index // self.samples_per_image} is {h}x{w}, smaller than the crop "
                f"size {self.size}"
            )
        seed = (self.seed * 1_000_003 + self.epoch) * 1_000_033 + index
        gen = torch.Generator().manual_seed(seed % (2**63))
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=gen))
        hflip, vflip = (torch.rand(2, generator=gen) < 0.5).tolist()
        out = []
        for img in (rainy, clean):
            crop = img[..., top : top + self.size, left : left + self.size]
            if self.flips and hflip:
                crop = crop.flip(-1)
            if self.flips and vflip:
                crop = crop.flip(-2)
            out.append(crop)
        return out[0], out[1]
