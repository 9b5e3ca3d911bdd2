"""QM9: 130,831 small organic molecules with 12 DFT properties (B3LYP/6-31G(2df,p)).

Source: the ``qm9pack`` package (MIT, by R. Ramakrishnan, QM9's author), which ships the
characterised QM9 molecules (the 3,054 that failed the consistency check are left out) as CSV
files ``data/qm9_part{1,2,3}.csv``: one row per molecule, geometry in Angstrom as a list column
(``XYZ_Ang``), element symbols (``Elements``), and properties in Hartree, Debye, bohr^n, cal/mol/K.
The files are read directly (no pandas and no ``import qm9pack``).

Targets are returned in the paper's units (its Table 2): ``alpha`` bohr^3, ``gap``/``homo``/``lumo``
meV, ``mu`` D, ``cv`` cal/mol/K, ``G``/``H``/``U``/``U0`` meV as *atomisation* energies (the energy
of the molecule minus that of its free atoms, :data:`ATOM_REFERENCE_HARTREE`), ``r2`` bohr^2,
``zpve`` meV.

The first :func:`load_qm9` parses the CSVs (~30 s on one core) into a cache ``<cache>/qm9/qm9_v1.npz``
(written atomically, carrying a version, the source files' sizes and a SHA-256 of its arrays);
later loads read the cache in about a second. A cache that fails any check is rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from posenc.data.download import atomic_open, cache_root
from posenc.data.molecules import Molecules
from posenc.data.units import HARTREE_TO_MEV

#: The paper's 12 targets (Table 2 order) and their units.
QM9_TARGETS: tuple[str, ...] = ("alpha", "gap", "homo", "lumo", "mu", "cv", "G", "H", "r2", "U", "U0", "zpve")
QM9_UNITS: dict[str, str] = {
    "alpha": "bohr^3", "gap": "meV", "homo": "meV", "lumo": "meV", "mu": "D", "cv": "cal/mol/K",
    "G": "meV", "H": "meV", "r2": "bohr^2", "U": "meV", "U0": "meV", "zpve": "meV",
}
#: The qm9pack CSV column of each target.
QM9_COLUMNS: dict[str, str] = {
    "alpha": "Polarizability_bohr3", "gap": "HOMO_LUMO_gap_au", "homo": "HOMO_au", "lumo": "LUMO_au",
    "mu": "Dipole_debye", "cv": "Heatcapacity_Cv_cal_mol_K", "G": "GibbsFreeEnergy_298K_au",
    "H": "Enthalphy_298K_au", "r2": "R2_bohr2", "U": "InternalEnergy_298K_au", "U0": "InternalEnergy_0K_au",
    "zpve": "ZPVE_au",
}
HARTREE_TARGETS = ("gap", "homo", "lumo", "G", "H", "U", "U0", "zpve")
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
#: Energies of the free atoms (Hartree) at the level of theory of QM9, from QM9's ``atomref.txt``:
#: R. Ramakrishnan et al., "Atomref: Reference thermochemical energies of H, C, N, O, F atoms",
#: figshare (2014), doi:10.6084/m9.figshare.1057643 (part of the QM9 collection, Sci. Data 1, 140022).
#: U0: internal energy at 0 K; U, H, G: internal energy, enthalpy and free energy at 298.15 K.
ATOM_REFERENCE_HARTREE: dict[str, dict[int, float]] = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}
QM9PACK_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
N_QM9 = 130_831
CACHE_VERSION = 1
CACHE_KEYS = ("index", "z", "pos", "n_atoms", "targets")
#: Split seeds of the upstream code: Cormorant (used by EGNN) calls ``np.random.seed(0)``;
#: DimeNet's config sets ``data_seed: 42``.
DEFAULT_SPLIT_SEEDS = {"egnn": 0, "dimenet": 42}


@dataclass(frozen=True)
class QM9Data:
    """All molecules in one ragged set of arrays (the cache's content).

    Attributes:
      index: ``[M]`` QM9 molecule ids (1-based ``dsgdb9nsd_<id>.xyz``), increasing.
      z: ``[A]`` atomic numbers.
      pos: ``[A, 3]`` positions, Angstrom.
      n_atoms: ``[M]`` atoms per molecule.
      targets: ``[M, 12]`` the :data:`QM9_TARGETS` in :data:`QM9_UNITS`.
    """

    index: np.ndarray
    z: np.ndarray
    pos: np.ndarray
    n_atoms: np.ndarray
    targets: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields by name, in :data:`CACHE_KEYS` order."""
        return {key: getattr(self, key) for key in CACHE_KEYS}


def qm9pack_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` (found without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("QM9 needs the qm9pack package: pip install 'posenc[data]' (or qm9pack)")
    return Path(spec.origin).parent / "data"


def _parse_row(row: list[str], col: dict[str, int], where: str) -> tuple[int, list[int], str, list[float]]:
    """One CSV row -> (id, atomic numbers, coordinate text without brackets, 12 raw properties)."""
    n = int(row[col["N_atoms"]])
    symbols = row[col["Elements"]].strip("[]").replace("'", "").split(",")
    if len(symbols) != n:
        raise ValueError(f"{where}: N_atoms is {n} but Elements lists {len(symbols)} atoms")
    try:
        z = [ELEMENTS[s.strip()] for s in symbols]
    except KeyError as err:
        raise ValueError(f"{where}: unknown element {err.args[0]!r}") from None
    # The list column is text like "[[0.5,0.,1.],[...]]"; "0." is valid for float() but not for JSON.
    xyz = row[col["XYZ_Ang"]].replace("[", "").replace("]", "")
    if xyz.count(",") + 1 != 3 * n:
        raise ValueError(f"{where}: XYZ_Ang holds {xyz.count(',') + 1} numbers, expected {3 * n}")
    properties = [float(row[col[QM9_COLUMNS[t]]]) for t in QM9_TARGETS]
    return int(row[col["Index"]]), z, xyz, properties


def read_qm9_csv(paths: Sequence[str | os.PathLike], limit: int | None = None, progress: bool = False) -> QM9Data:
    """Parses qm9pack-format CSV files into ragged arrays, targets in the paper's units.

    Args:
      paths: CSV files with qm9pack's columns (``Index``, ``N_atoms``, ``Elements``, ``XYZ_Ang`` and
        the property columns of :data:`QM9_COLUMNS`).
      limit: stop after this many molecules in total (quick looks and tests).
      progress: show a tqdm bar over the rows.

    Returns:
      The molecules sorted by QM9 id.

    Raises:
      ValueError: a missing column, inconsistent atom counts, unknown element, repeated id, NaN.
    """
    ids: list[int] = []
    z, xyz, raw, n_atoms = [], [], [], []
    with tqdm(total=limit or N_QM9, desc="parsing QM9", unit="mol", disable=not progress) as bar:
        for path in paths:
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                col = {name: i for i, name in enumerate(header)}
                needed = ["Index", "N_atoms", "Elements", "XYZ_Ang", *QM9_COLUMNS.values()]
                missing = [name for name in needed if name not in col]
                if missing:
                    raise ValueError(f"{path} lacks the columns {missing}")
                for line, row in enumerate(reader, start=2):
                    if limit is not None and len(ids) >= limit:
                        break
                    i, zs, text, props = _parse_row(row, col, f"{path}:{line}")
                    ids.append(i)
                    z.extend(zs)
                    xyz.append(text)
                    raw.append(props)
                    n_atoms.append(len(zs))
                    bar.update()
    if not ids:
        raise ValueError(f"no molecules in {[str(p) for p in paths]}")
    index = np.asarray(ids, dtype=np.int64)
    n_atoms_arr = np.asarray(n_atoms, dtype=np.int64)
    z_arr = np.asarray(z, dtype=np.int64)
    pos = np.asarray(",".join(xyz).split(","), dtype=np.float64).reshape(-1, 3)
    targets = to_paper_units(np.asarray(raw, dtype=np.float64), z_arr, n_atoms_arr)
    if np.unique(index).size != index.size:
        raise ValueError("repeated QM9 ids in the CSV files")
    if not (np.isfinite(pos).all() and np.isfinite(targets).all()):
        raise ValueError("NaN or inf among the QM9 positions or properties")
    order = np.argsort(index, kind="stable")
    data = QM9Data(index, z_arr, pos, n_atoms_arr, targets)
    return _reorder(data, order) if (order != np.arange(order.size)).any() else data


def _atom_index(n_atoms: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``[A_sel]`` atom positions of molecules ``idx`` (vectorised: no Python loop over molecules)."""
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    counts = n_atoms[idx]
    starts_out = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.arange(counts.sum()) + np.repeat(offsets[idx] - starts_out, counts)


def _reorder(data: QM9Data, order: np.ndarray) -> QM9Data:
    atoms = _atom_index(data.n_atoms, order)
    return QM9Data(data.index[order], data.z[atoms], data.pos[atoms], data.n_atoms[order], data.targets[order])


def to_paper_units(raw: np.ndarray, z: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """``[M, 12]`` raw qm9pack properties (Hartree, ...) -> the paper's units, energies atomised.

    U0, U, H and G become atomisation energies: the molecule's energy minus the sum of its free
    atoms' energies (:data:`ATOM_REFERENCE_HARTREE`), negative for a bound molecule.
    """
    out = raw.copy()
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    for name, reference in ATOM_REFERENCE_HARTREE.items():
        table = np.zeros(max(ELEMENTS.values()) + 1)
        table[list(reference)] = list(reference.values())
        out[:, QM9_TARGETS.index(name)] -= np.add.reduceat(table[z], offsets)
    for name in HARTREE_TARGETS:
        out[:, QM9_TARGETS.index(name)] *= HARTREE_TO_MEV
    return out


def _stamp(paths: Sequence[Path]) -> dict[str, int]:
    """What the cache was built from: file name -> size in bytes."""
    return {p.name: p.stat().st_size for p in paths}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in CACHE_KEYS:
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_cache(path: str | os.PathLike, data: QM9Data, stamp: dict[str, int]) -> None:
    """Writes ``data`` to an uncompressed ``.npz`` atomically, with version, source stamp and SHA-256."""
    arrays: dict[str, Any] = data.arrays()  # Any: np.savez's stubs take no ndarray dict
    arrays["z"] = arrays["z"].astype(np.uint8)  # Z <= 9: one byte per atom keeps the cache small
    meta = {"version": CACHE_VERSION, "source": stamp, "sha256": _digest(arrays), "targets": list(QM9_TARGETS)}
    with atomic_open(path) as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)


def read_cache(path: str | os.PathLike, stamp: dict[str, int] | None = None) -> QM9Data:
    """Reads a cache written by :func:`write_cache`, checking everything it can.

    Args:
      path: the cache file.
      stamp: the current source files' sizes; a cache built from other files is rejected.
        None skips this check (the source is not installed).

    Raises:
      ValueError: the cache is unreadable, truncated, of another version or source, or its
        arrays do not match their SHA-256 or each other.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as err:  # any failure to read means the same: not a usable cache
        raise ValueError(f"{path} is unreadable: {err}") from err
    if meta.get("version") != CACHE_VERSION or meta.get("targets") != list(QM9_TARGETS):
        raise ValueError(f"{path} is a cache of another version ({meta.get('version')})")
    if stamp is not None and meta.get("source") != stamp:
        raise ValueError(f"{path} was built from other source files ({meta.get('source')} vs {stamp})")
    if sorted(arrays) != sorted(CACHE_KEYS) or meta.get("sha256") != _digest(arrays):
        raise ValueError(f"{path} fails its SHA-256 check")
    data = QM9Data(**{**arrays, "z": arrays["z"].astype(np.int64)})
    m, a = data.index.size, int(data.n_atoms.sum())
    if data.z.shape != (a,) or data.pos.shape != (a, 3) or data.targets.shape != (m, len(QM9_TARGETS)):
        raise ValueError(f"{path} has inconsistent array shapes")
    return data


def load_qm9_data(
    source_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> QM9Data:
    """All QM9 molecules from the cache, (re)building it from the CSV files when needed.

    Args:
      source_dir: folder with ``qm9_part{1,2,3}.csv`` (default: qm9pack's data folder).
      cache_dir: cache root (default ``$POSENC_CACHE`` or ``~/.cache/posenc``); the file is
        ``<cache_dir>/qm9/qm9_v1.npz``.
      progress: show a progress bar while parsing.
    """
    path = cache_root(cache_dir) / "qm9" / f"qm9_v{CACHE_VERSION}.npz"
    try:
        sources = [Path(source_dir or qm9pack_dir()) / name for name in QM9PACK_FILES]
        missing = [str(p) for p in sources if not p.is_file()]
        problem = f"QM9 source files not found: {missing}" if missing else None
    except ModuleNotFoundError as err:
        sources, problem = [], str(err)
    if path.is_file():
        try:
            # Without the source, the cache's own checks (version, SHA-256, shapes) must do.
            return read_cache(path, None if problem else _stamp(sources))
        except ValueError as err:
            if problem:
                raise ValueError(f"{err}; it cannot be rebuilt: {problem}") from err
            warnings.warn(f"rebuilding the QM9 cache: {err}", stacklevel=2)
    if problem:
        raise FileNotFoundError(problem)
    data = read_qm9_csv(sources, progress=progress)
    write_cache(path, data, _stamp(sources))
    return data


Split = str | tuple[int, int, int]  # "egnn", "dimenet" or (n_train, n_val, n_test)


def split_sizes(split: Split, n_total: int) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` of a split scheme for ``n_total`` molecules.

    ``"egnn"`` (Cormorant's, used by EGNN): 100,000 train, ``int(0.1 * n_total)`` test, the rest
    validation. ``"dimenet"``: 110,000 train, 10,000 validation, the rest test. A tuple gives the
    sizes directly (molecules beyond their sum are unused).
    """
    if split == "egnn":
        sizes = (100_000, n_total - 100_000 - int(0.1 * n_total), int(0.1 * n_total))
    elif split == "dimenet":
        sizes = (110_000, 10_000, n_total - 120_000)
    elif isinstance(split, tuple) and len(split) == 3 and all(isinstance(s, (int, np.integer)) for s in split):
        sizes = (int(split[0]), int(split[1]), int(split[2]))
    else:
        raise ValueError(f"split must be 'egnn', 'dimenet' or (n_train, n_val, n_test), got {split!r}")
    if min(sizes) < 1 or sum(sizes) > n_total:
        raise ValueError(f"split {split!r} needs sizes >= 1 summing to at most {n_total}, got {sizes}")
    return sizes


def _resolve_seed(split: Split, seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    return DEFAULT_SPLIT_SEEDS.get(split, 0) if isinstance(split, str) else 0


def split_indices(n_total: int, split: Split = "egnn", seed: int | None = None) -> dict[str, np.ndarray]:
    """Disjoint ``train``/``val``/``test`` positions in ``range(n_total)``, each in random order.

    ``np.random.RandomState(seed).permutation(n_total)`` cut into consecutive blocks of
    :func:`split_sizes` -- the procedure of Cormorant (``seed=0``; with the 130,831 molecules in
    QM9-id order this reproduces the EGNN/Cormorant split) and of DimeNet's DataProvider
    (``seed=42``; DimeNet's own file filtered a slightly different molecule set, so the ids differ).
    ``seed=None`` uses :data:`DEFAULT_SPLIT_SEEDS` (0 for custom tuples).
    """
    n_train, n_val, n_test = split_sizes(split, n_total)
    perm = np.random.RandomState(_resolve_seed(split, seed)).permutation(n_total)
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
            "test": perm[n_train + n_val:n_train + n_val + n_test]}


def _positions(
    index: np.ndarray, ids: dict[str, np.ndarray], sizes: tuple[int, int, int]
) -> dict[str, np.ndarray] | None:
    """Positions in ``index`` of saved split ids, or None if they do not fit (absent, sizes, overlap)."""
    positions = {}
    for (part, part_ids), size in zip(ids.items(), sizes):
        p = np.searchsorted(index, part_ids)
        if part_ids.size != size or (p >= index.size).any() or (index[p] != part_ids).any():
            return None
        positions[part] = p
    if np.unique(np.concatenate(list(positions.values()))).size != sum(sizes):
        return None
    return positions


def saved_split(data: QM9Data, split: Split, seed: int | None, cache: Path) -> dict[str, np.ndarray]:
    """:func:`split_indices`, saved as QM9 ids next to the cache and reused; returns positions in ``data``.

    The file ``<cache>/qm9/split_<name>_seed<seed>.npz`` holds the ids of each part (readable
    without this code). It is checked on every use (ids present, sizes, parts disjoint) and
    regenerated if it fails.
    """
    seed = _resolve_seed(split, seed)
    name = split if isinstance(split, str) else "custom-" + "-".join(map(str, split))
    path = cache / "qm9" / f"split_{name}_seed{seed}.npz"
    sizes = split_sizes(split, data.index.size)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                ids = {part: f[part] for part in ("train", "val", "test")}
        except Exception as err:  # unreadable or truncated: regenerate
            warnings.warn(f"{path} is unreadable ({err}); regenerating it", stacklevel=2)
        else:
            positions = _positions(data.index, ids, sizes)
            if positions is not None:
                return positions
            warnings.warn(f"{path} does not fit the data; regenerating it", stacklevel=2)
    positions = split_indices(data.index.size, split, seed)
    with atomic_open(path) as f:
        np.savez(f, **{part: data.index[p] for part, p in positions.items()})
    return positions


def load_qm9(
    split: Split = "egnn",
    targets: str | Sequence[str] | None = None,
    subset: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    *,
    source_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Molecules]:
    """QM9 train/validation/test sets with the paper's targets and units.

    Args:
      split: ``"egnn"`` (100,000 / 17,748 / 13,083), ``"dimenet"`` (110,000 / 10,000 / 10,831),
        or explicit sizes ``(n_train, n_val, n_test)``.
      targets: target names (see :data:`QM9_TARGETS`), in the order wanted; None: all 12.
      subset: quick mode: keep about ``subset`` molecules in total, the same fraction of each
        part, taken from the start of each (randomly ordered) part, so a subset's test molecules
        are test molecules of the full split.
      cache_dir: cache root (default ``$POSENC_CACHE`` or ``~/.cache/posenc``).
      seed: split seed; None: the upstream seed (0 for egnn, 42 for dimenet).
      source_dir: folder with qm9pack-format CSVs (default: the installed qm9pack's).
      progress: show a progress bar on the first (parsing) load.

    Returns:
      ``{"train", "val", "test"}`` :class:`Molecules` (positions in Angstrom; ``targets`` columns
      as asked, units in ``target_units``).
    """
    names = list(QM9_TARGETS) if targets is None else [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in names if t not in QM9_UNITS]
    if unknown or not names:
        raise ValueError(f"unknown QM9 targets {unknown or names}; choose from {', '.join(QM9_TARGETS)}")
    if subset is not None and (not isinstance(subset, (int, np.integer)) or subset < 3):
        raise ValueError(f"subset must be an integer >= 3 (one molecule per part at least), got {subset!r}")
    cache = cache_root(cache_dir)
    data = load_qm9_data(source_dir, cache, progress)
    parts = saved_split(data, split, seed, cache)
    if subset is not None:
        total = sum(p.size for p in parts.values())
        parts = {k: p[:max(1, round(subset * p.size / total))] for k, p in parts.items()}
    columns = [QM9_TARGETS.index(t) for t in names]
    label = split if isinstance(split, str) else "custom"
    out = {}
    for part, idx in parts.items():
        atoms = _atom_index(data.n_atoms, idx)
        out[part] = Molecules(
            z=data.z[atoms], pos=data.pos[atoms], n_atoms=data.n_atoms[idx], targets=data.targets[idx][:, columns],
            target_names=tuple(names), target_units=tuple(QM9_UNITS[t] for t in names), name=f"qm9:{label}/{part}",
        )
    return out
