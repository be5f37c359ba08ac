"""QM9 from the installed ``qm9pack`` package, as the graphs of PyTorch Geometric's ``QM9``.

``qm9pack`` ships the 130,831 molecules of QM9 that remain after removing the
3,054 "uncharacterized" ones (the same set as PyG's ``QM9``) as CSV files in its
``data`` folder: element symbols, coordinates (Angstrom), the SMILES and the
B3LYP properties in atomic units. Its ``__init__`` imports ``pkg_resources``,
so the folder is located with :func:`importlib.util.find_spec`, without
importing the package.

Each molecule becomes what PyG's ``QM9.process`` builds from its SDF file:

- atoms: ``z``, positions, and the 11 node features ``[one-hot H, C, N, O, F,
  Z, aromatic, sp, sp2, sp3, number of H neighbours]``. PyG reads the SDF
  unsanitised, so its aromatic and hybridisation columns are zero for every
  atom; ours are too (``PYG_ZERO_COLUMNS``);
- bonds: the bonds of the SMILES (kekulised, as in the SDF: single, double,
  triple; one-hot over PyG's four classes), placed on the atoms of the
  coordinates by matching the SMILES graph (hydrogens added) onto the
  connectivity that RDKit derives from the geometry. A molecule whose SMILES
  graph does not match keeps the geometric connectivity with single bonds
  (counted in the cache's ``fallbacks``; none in a 10 % sample);
- targets: the 19 columns of PyG's ``QM9.y``, in its order and units (:data:`TARGETS`):
  energies in eV (``HAR2EV``), the atomisation energies (12-15) as the total
  energies minus PyG's per-atom references.

Batches add what the MPNN example's transforms add (``Complete`` and
``Distance(norm=False)``): every ordered pair of distinct atoms of a molecule
is an edge, with the bond one-hot (zeros for non-bonded pairs) and the distance.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PAPER_TARGETS",
    "TARGETS",
    "Batch",
    "DataError",
    "Graphs",
    "Standardiser",
    "collate",
    "load",
    "locate_qm9pack",
    "split",
]

HAR2EV = 27.211386246  # PyG's QM9
FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_VERSION = 1

#: PyG's ``QM9.y`` columns: (name, unit, qm9pack column, factor to PyG's unit).
#: Rows 12-15 (atomisation energies) are computed from rows 7-10.
TARGETS: tuple[tuple[str, str], ...] = (
    ("mu", "D"), ("alpha", "a0^3"), ("homo", "eV"), ("lumo", "eV"), ("gap", "eV"),
    ("r2", "a0^2"), ("zpve", "eV"), ("U0", "eV"), ("U", "eV"), ("H", "eV"), ("G", "eV"),
    ("cv", "cal/mol/K"), ("U0_atom", "eV"), ("U_atom", "eV"), ("H_atom", "eV"),
    ("G_atom", "eV"), ("A", "GHz"), ("B", "GHz"), ("C", "GHz"),
)  # fmt: skip
_COLUMNS: tuple[tuple[str, float], ...] = (
    ("Dipole_debye", 1.0), ("Polarizability_bohr3", 1.0), ("HOMO_au", HAR2EV),
    ("LUMO_au", HAR2EV), ("HOMO_LUMO_gap_au", HAR2EV), ("R2_bohr2", 1.0), ("ZPVE_au", HAR2EV),
    ("InternalEnergy_0K_au", HAR2EV), ("InternalEnergy_298K_au", HAR2EV),
    ("Enthalphy_298K_au", HAR2EV), ("GibbsFreeEnergy_298K_au", HAR2EV),
    ("Heatcapacity_Cv_cal_mol_K", 1.0),
)  # fmt: skip
_ROTATIONAL = ("RotA_GHz", "RotB_GHz", "RotC_GHz")
#: PyG's ``atomrefs`` (eV) of U0, U, H, G for H, C, N, O, F (its rows 7-10).
ATOMREFS: dict[int, tuple[float, float, float, float, float]] = {
    7: (-13.61312172, -1029.86312267, -1485.30251237, -2042.61123593, -2713.48485589),
    8: (-13.5745904, -1029.82456413, -1485.26398105, -2042.5727046, -2713.44632457),
    9: (-13.54887564, -1029.79887659, -1485.2382935, -2042.54701705, -2713.42063702),
    10: (-13.90303183, -1030.25891228, -1485.71166277, -2043.01812778, -2713.88796536),
}
#: The eleven targets of the Nash-MTL and FAMO papers (their ``target_idx``):
#: mu, alpha, homo, lumo, r2, zpve, U0, U, H, G (atomisation energies), cv.
PAPER_TARGETS: tuple[int, ...] = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
ELEMENTS = ("H", "C", "N", "O", "F")
ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
NUM_NODE_FEATURES = 11
NUM_EDGE_FEATURES = 5
PYG_ZERO_COLUMNS = (6, 7, 8, 9)  # aromatic, sp, sp2, sp3: zero in PyG's unsanitised read


class DataError(RuntimeError):
    """The data cannot be read: a missing package, file or column, or a corrupt cache."""


# ----------------------------------------------------------------------------- source
def locate_qm9pack(folder: str | os.PathLike[str] | None = None) -> Path:
    """The folder with qm9pack's CSV files (``folder`` if given), checked to hold them."""
    if folder is None:
        spec = importlib.util.find_spec("qm9pack")  # does not run its __init__
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                "the QM9 benchmark reads its molecules from the 'qm9pack' package, which is "
                "not installed: pip install qm9pack (or pip install -e '.[qm9]')"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "data"
    else:
        path = Path(folder)
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: reinstall qm9pack")
    return path


def _rows(folder: Path, limit: int | None) -> Iterator[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    count = 0
    for name in FILES:
        with open(folder / name, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield row


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace("[", " ").replace("]", " ").split(",")]


def _symbols(text: str) -> list[str]:
    return [s.strip(" '\"") for s in text.strip("[] ").split(",")]


def molecule_graph(
    symbols: Sequence[str], coords: Sequence[float], smiles: str
) -> tuple[list[tuple[int, int, int]], bool]:
    """Bonds ``(i, j, class)`` on the atoms of the coordinates; ``True`` if it fell back.

    ``class`` is PyG's bond class: 0 single, 1 double, 2 triple (3 aromatic,
    absent after kekulisation).
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    n = len(symbols)
    block = f"{n}\n\n" + "\n".join(
        f"{s} {coords[3 * i]:.10f} {coords[3 * i + 1]:.10f} {coords[3 * i + 2]:.10f}"
        for i, s in enumerate(symbols)
    )
    geometry = Chem.MolFromXYZBlock(block)
    if geometry is None:
        raise DataError(f"RDKit cannot read the coordinates of {smiles!r}")
    rdDetermineBonds.DetermineConnectivity(geometry)
    classes = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2}
    reference = Chem.MolFromSmiles(smiles)
    if reference is not None:
        reference = Chem.AddHs(reference)
        Chem.Kekulize(reference, clearAromaticFlags=True)
        query = Chem.RWMol(reference)
        for bond in query.GetBonds():
            bond.SetBondType(Chem.BondType.SINGLE)
        for atom in query.GetAtoms():
            atom.SetFormalCharge(0)
        match = geometry.GetSubstructMatch(query) if query.GetNumAtoms() == n else ()
        if match:
            return [
                (match[b.GetBeginAtomIdx()], match[b.GetEndAtomIdx()], classes[b.GetBondType()])
                for b in reference.GetBonds()
            ], False
    return [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), 0) for b in geometry.GetBonds()], True


# ----------------------------------------------------------------------------- graphs
@dataclass
class Graphs:
    """All molecules, concatenated (the layout of the cache file)."""

    z: Tensor  # (A,) int64 atomic numbers
    pos: Tensor  # (A, 3) float32, Angstrom
    num_hs: Tensor  # (A,) int64
    atom_ptr: Tensor  # (M + 1,) int64: atoms of molecule m are atom_ptr[m]:atom_ptr[m+1]
    bonds: Tensor  # (B, 2) int64, indices local to the molecule, each bond once
    bond_type: Tensor  # (B,) int64, PyG's classes
    bond_ptr: Tensor  # (M + 1,) int64
    y: Tensor  # (M, 19) float64, PyG's QM9.y columns and units
    index: Tensor  # (M,) int64, the QM9 index (gdb number)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def check(self, source: str) -> None:
        """Raise :class:`DataError` naming ``source`` unless the arrays fit together."""
        m, a, b = len(self), int(self.z.shape[0]), int(self.bonds.shape[0])
        problems = []
        if self.y.shape != (m, len(TARGETS)):
            problems.append(f"y has shape {tuple(self.y.shape)}, expected ({m}, {len(TARGETS)})")
        for name, ptr, total in (("atom_ptr", self.atom_ptr, a), ("bond_ptr", self.bond_ptr, b)):
            if ptr.shape != (m + 1,) or int(ptr[0]) != 0 or int(ptr[-1]) != total:
                problems.append(f"{name} does not index {total} rows of {m} molecules")
        if self.pos.shape != (a, 3) or self.num_hs.shape != (a,):
            problems.append("pos or num_hs does not match z")
        if self.bonds.shape != (b, 2) or self.bond_type.shape != (b,):
            problems.append("bonds or bond_type has the wrong shape")
        if not torch.isfinite(self.y).all():
            problems.append("y has non-finite values")
        if problems:
            raise DataError(f"{source}: {'; '.join(problems)}")


def build(folder: Path, limit: int | None = None, *, progress: bool = True) -> tuple[Graphs, int]:
    """Read qm9pack's CSV files into :class:`Graphs`; also returns the number of fallbacks."""
    try:
        from rdkit import RDLogger
    except ImportError as error:
        raise DataError("processing QM9 needs RDKit: pip install rdkit") from error
    from tqdm import tqdm

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    z: list[int] = []
    pos: list[float] = []
    num_hs: list[int] = []
    atom_ptr, bond_ptr = [0], [0]
    bonds: list[tuple[int, int]] = []
    bond_type: list[int] = []
    ys: list[list[float]] = []
    index: list[int] = []
    fallbacks = 0
    total = 130_831 if limit is None else limit
    for row in tqdm(_rows(folder, limit), total=total, desc="QM9 graphs", disable=not progress):
        try:
            symbols = _symbols(row["Elements"])
            coords = _floats(row["XYZ_Ang"])
            values = [float(row[c]) * f for c, f in _COLUMNS]
            rotational = [float(row[c]) for c in _ROTATIONAL]
            numbers = [ATOMIC_NUMBER[s] for s in symbols]
            smiles, number = row["SMILES"], int(row["Index"])
        except (KeyError, ValueError) as error:
            raise DataError(
                f"{folder}: unreadable row {row.get('XYZ_file')!r}: {error!r}"
            ) from None
        if len(coords) != 3 * len(symbols):
            raise DataError(
                f"{folder}: {row['XYZ_file']} has {len(symbols)} atoms, {len(coords)} coordinates"
            )
        pairs, fell_back = molecule_graph(symbols, coords, smiles)
        fallbacks += fell_back
        hs = [0] * len(numbers)
        for i, j, _ in pairs:
            hs[i] += numbers[j] == 1
            hs[j] += numbers[i] == 1
        atomisation = [
            values[k] - sum(ATOMREFS[k][ELEMENTS.index(s)] for s in symbols) for k in (7, 8, 9, 10)
        ]
        z += numbers
        pos += coords
        num_hs += hs
        bonds += [(i, j) for i, j, _ in pairs]
        bond_type += [t for _, _, t in pairs]
        atom_ptr.append(len(z))
        bond_ptr.append(len(bonds))
        ys.append(values + atomisation + rotational)
        index.append(number)
    if not ys:
        raise DataError(f"{folder}: no molecule read")
    graphs = Graphs(
        z=torch.tensor(z, dtype=torch.long),
        pos=torch.tensor(pos, dtype=torch.float32).view(-1, 3),
        num_hs=torch.tensor(num_hs, dtype=torch.long),
        atom_ptr=torch.tensor(atom_ptr, dtype=torch.long),
        bonds=torch.tensor(bonds, dtype=torch.long).view(-1, 2),
        bond_type=torch.tensor(bond_type, dtype=torch.long),
        bond_ptr=torch.tensor(bond_ptr, dtype=torch.long),
        y=torch.tensor(ys, dtype=torch.float64),
        index=torch.tensor(index, dtype=torch.long),
    )
    graphs.check(str(folder))
    return graphs, fallbacks


def _source_stamp(folder: Path) -> str:
    stamp = hashlib.sha256()
    for name in FILES:
        stat = (folder / name).stat()
        stamp.update(f"{name}:{stat.st_size};".encode())
    return stamp.hexdigest()[:16]


def default_cache() -> Path:
    """``$MTLWEIGHT_QM9_CACHE``, else ``~/.cache/mtlweight/qm9``."""
    env = os.environ.get("MTLWEIGHT_QM9_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mtlweight" / "qm9"


def load(
    cache: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    source: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> Graphs:
    """The graphs of QM9 (the first ``limit`` molecules), from the cache or built once.

    The cache file (``qm9-v1-all.pt`` or ``qm9-v1-first{limit}.pt`` in ``cache``)
    is written atomically; one that cannot be read, was built from other source
    files or does not hold consistent arrays raises :class:`DataError` naming
    it (delete it, or pass ``rebuild=True``).
    """
    folder = locate_qm9pack(source)
    directory = Path(cache) if cache is not None else default_cache()
    path = directory / f"qm9-v{CACHE_VERSION}-{'all' if limit is None else f'first{limit}'}.pt"
    stamp = _source_stamp(folder)
    if path.exists() and not rebuild:
        hint = f"delete {path} or pass --rebuild"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for damaged files
            raise DataError(f"the QM9 cache {path} is corrupt ({error!r}): {hint}") from None
        if not isinstance(saved, dict) or saved.get("version") != CACHE_VERSION:
            raise DataError(f"the QM9 cache {path} has an unknown layout: {hint}")
        if saved.get("source") != stamp:
            raise DataError(f"the QM9 cache {path} was built from other qm9pack files: {hint}")
        try:
            graphs = Graphs(**{f.name: saved["arrays"][f.name] for f in fields(Graphs)})
        except (KeyError, TypeError) as error:
            raise DataError(f"the QM9 cache {path} lacks {error}: {hint}") from None
        graphs.check(f"the QM9 cache {path} ({hint})")
        return graphs
    graphs, fallbacks = build(folder, limit, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f.name: getattr(graphs, f.name) for f in fields(Graphs)}
    payload = {"version": CACHE_VERSION, "source": stamp, "fallbacks": fallbacks, "arrays": arrays}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return graphs


# ----------------------------------------------------------------------------- splits
def split(
    n: int, *, seed: int = 0, val: int = 10_000, test: int = 10_000
) -> tuple[Tensor, Tensor, Tensor]:
    """(train, val, test) indices: a permutation by ``seed``, test first, then val.

    The layout of the papers' code (``dataset.shuffle()``, then ``[:10000]`` test,
    ``[10000:20000]`` validation, the remaining 110,831 molecules for training);
    the permutation here depends on ``seed`` alone, not on the training seed.
    """
    if val + test >= n:
        raise ValueError(f"val ({val}) + test ({test}) leave no training molecule of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val + test :], perm[test : test + val], perm[:test]


class Standardiser:
    """Per-target mean and standard deviation over the training molecules."""

    def __init__(self, y: Tensor) -> None:
        self.mean = y.mean(0)
        self.std = y.std(0)
        if not (self.std > 0).all():
            raise ValueError("a target is constant over the training molecules")

    def __call__(self, y: Tensor) -> Tensor:
        return ((y - self.mean) / self.std).float()

    def invert(self, y: Tensor) -> Tensor:
        return y.double() * self.std + self.mean

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


# ----------------------------------------------------------------------------- batches
class Batch(NamedTuple):
    """A batch as the MPNN reads it (the fields of PyG's ``Batch`` that it uses)."""

    x: Tensor  # (N, 11)
    edge_index: Tensor  # (2, E) complete graph without self loops, row-major
    edge_attr: Tensor  # (E, 5) bond one-hot, distance
    batch: Tensor  # (N,) molecule of each atom
    y: Tensor  # (G, T) float32, standardised
    num_graphs: int


def _ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """``cat([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    offsets = torch.cumsum(counts, 0) - counts
    return torch.arange(total) - torch.repeat_interleave(offsets - starts, counts)


def node_features(z: Tensor, num_hs: Tensor) -> Tensor:
    """PyG's 11 QM9 node features (its aromatic/hybridisation columns are zero)."""
    x = torch.zeros(z.shape[0], NUM_NODE_FEATURES)
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[torch.tensor([1, 6, 7, 8, 9])] = torch.arange(5)
    kind = lookup[z]
    if (kind < 0).any():
        raise DataError(
            f"atomic numbers outside H, C, N, O, F: {sorted(set(z[kind < 0].tolist()))}"
        )
    x[torch.arange(z.shape[0]), kind] = 1.0
    x[:, 5] = z.float()
    x[:, 10] = num_hs.float()
    return x


def collate(graphs: Graphs, molecules: Tensor, targets: Tensor, graph: str = "complete") -> Batch:
    """The molecules ``molecules`` as one batch; ``targets`` are the (standardised) labels.

    ``graph="complete"``: every ordered pair of distinct atoms, row-major (PyG's
    ``Complete``); ``"bonds"``: the bonds in both directions, sorted the same
    way (PyG's ``QM9`` edges without ``Complete``). Edge features: the bond
    one-hot and the distance (``Distance(norm=False)``).
    """
    if graph not in ("complete", "bonds"):
        raise ValueError(f"graph must be 'complete' or 'bonds'; found {graph!r}")
    counts = graphs.atom_ptr[molecules + 1] - graphs.atom_ptr[molecules]
    atoms = _ranges(graphs.atom_ptr[molecules], counts)
    num_graphs = int(molecules.shape[0])
    batch = torch.repeat_interleave(torch.arange(num_graphs), counts)
    start = torch.cumsum(counts, 0) - counts  # first atom of each molecule in the batch
    pos = graphs.pos[atoms]
    x = node_features(graphs.z[atoms], graphs.num_hs[atoms])
    bond_counts = graphs.bond_ptr[molecules + 1] - graphs.bond_ptr[molecules]
    bond_rows = _ranges(graphs.bond_ptr[molecules], bond_counts)
    bond_owner = torch.repeat_interleave(torch.arange(num_graphs), bond_counts)
    a, b = graphs.bonds[bond_rows, 0], graphs.bonds[bond_rows, 1]
    kind = graphs.bond_type[bond_rows]
    if graph == "bonds":
        row = torch.cat([a, b]) + start[bond_owner].repeat(2)
        col = torch.cat([b, a]) + start[bond_owner].repeat(2)
        order = torch.argsort(row * x.shape[0] + col)
        row, col, kind = row[order], col[order], kind.repeat(2)[order]
        edge_attr = torch.zeros(row.shape[0], NUM_EDGE_FEATURES)
        edge_attr[torch.arange(row.shape[0]), kind] = 1.0
        edge_attr[:, 4] = (pos[row] - pos[col]).norm(dim=-1)
        return Batch(x, torch.stack([row, col]), edge_attr, batch, targets, num_graphs)
    # complete graph: molecule b has n_b (n_b - 1) ordered pairs, row-major, no self loops
    pairs = counts * (counts - 1)
    pair_start = torch.cumsum(pairs, 0) - pairs
    owner = torch.repeat_interleave(torch.arange(num_graphs), pairs)
    k = torch.arange(int(pairs.sum())) - pair_start[owner]
    n_1 = (counts - 1)[owner]
    i, r = k // n_1, k % n_1
    j = r + (r >= i).long()
    row, col = start[owner] + i, start[owner] + j
    edge_attr = torch.zeros(k.shape[0], NUM_EDGE_FEATURES)
    for u, v in ((a, b), (b, a)):  # both directions of each bond
        slot = pair_start[bond_owner] + u * (counts - 1)[bond_owner] + v - (v > u).long()
        edge_attr[slot, kind] = 1.0
    edge_attr[:, 4] = (pos[row] - pos[col]).norm(dim=-1)
    return Batch(x, torch.stack([row, col]), edge_attr, batch, targets, num_graphs)
