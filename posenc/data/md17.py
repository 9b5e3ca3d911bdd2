"""MD17 and revised MD17 (rMD17): energies and forces along molecular-dynamics trajectories.

Three file layouts are read (all in kcal/mol and kcal/mol/Angstrom; converted here to meV and
meV/Angstrom with 1 kcal/mol = 43.364 meV):

``"rmd17-npz"``  pre-split revised MD17 (andersx/rmd17-npz, as in ``../shared/data/rmd17``):
    ``rmd17_<molecule>_<train|test>_<NN>.npz``, NN = 01..05, 1,000 frames each, keys
    ``nuclear_charges [N]``, ``coords [F, N, 3]``, ``energies [F]``, ``forces [F, N, 3]``,
    ``old_indices [F]``, ``old_energies [F]``, ``old_forces [F, N, 3]``. Downloads are verified
    against the SHA-256 table in :mod:`posenc.data.md17_sha256`.
``"rmd17-archive"``  the official figshare archive ``rmd17.tar.bz2``, extracted:
    ``npz_data/rmd17_<molecule>.npz`` (100,000 frames, same keys) and ``splits/index_train_0N.csv``
    / ``splits/index_test_0N.csv`` (1,000 frame indices each, one per line). Its SHA-256 is not
    known here, so downloading it needs ``allow_unverified=True`` (the hash you got is printed).
``"md17"``  original MD17 ``md17_<molecule>.npz`` (keys ``R``, ``F``, ``E`` [F] or [F, 1], ``z``),
    the whole trajectory without official splits: split k draws 1,000 + 1,000 disjoint frames
    with ``numpy.random.default_rng(k)``. Also unverified downloads only.

Labels: ``labels="md17"`` uses the original MD17 energies and forces (``old_energies`` /
``old_forces`` in rMD17 files; what the paper's Table 1 uses), ``labels="rmd17"`` the revised
ones (PBE/def2-SVP recomputed, free of the original's numerical noise).

Splits follow the paper (NequIP's protocol): 1,000 training and 1,000 test frames. The validation
set is carved out of the 1,000 training frames, never out of the test frames: with the defaults a
seeded permutation of the 1,000 gives 950 training and the next 50 validation frames (the set-up
of the project's EGNN ethanol calibration note).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posenc.data.download import DownloadError, cache_root, extract_tar, fetch, local_root, verify_with_sums
from posenc.data.md17_sha256 import RMD17_NPZ_SHA256
from posenc.data.molecules import Molecules
from posenc.data.units import KCAL_PER_MOL_TO_MEV

#: The ten molecules of (revised) MD17 and their atom counts.
MD17_N_ATOMS: dict[str, int] = {
    "aspirin": 21, "azobenzene": 24, "benzene": 12, "ethanol": 9, "malonaldehyde": 9,
    "naphthalene": 18, "paracetamol": 20, "salicylic": 16, "toluene": 15, "uracil": 12,
}
MD17_MOLECULES: tuple[str, ...] = tuple(MD17_N_ATOMS)
#: The eight molecules of the paper's Table 1.
PAPER_MD17_MOLECULES: tuple[str, ...] = (
    "aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic", "toluene", "uracil",
)
MD17_SOURCES = ("auto", "rmd17-npz", "rmd17-archive", "md17")
N_SPLITS = 5  # pre-split files and archive index files come as splits 1..5
N_PER_PART = 1000  # frames in a training or test part

RMD17_NPZ_URL = "https://raw.githubusercontent.com/andersx/rmd17-npz/master/rmd17-npz/{filename}"
RMD17_ARCHIVE_URL = "https://figshare.com/ndownloader/files/23950376"  # figshare article 12672038
RMD17_ARCHIVE_FILE = "rmd17.tar.bz2"
RMD17_ARCHIVE_SHA256: str | None = None  # not known offline: see the module docstring
MD17_URL = "http://quantum-machine.org/gdml/data/npz/{filename}"
#: Upstream file names of the original MD17 (sgdml.org) where they differ from ``md17_<molecule>.npz``.
MD17_UPSTREAM_FILES = {
    "benzene": "md17_benzene2017.npz", "azobenzene": "azobenzene_dft.npz", "paracetamol": "paracetamol_dft.npz",
}
MD17_SHA256: dict[str, str | None] = {molecule: None for molecule in MD17_MOLECULES}

SHARED_RMD17 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rmd17"
MISSING_HINT = (
    "the pre-split rMD17 files are in ../shared/data/rmd17 next to the repository; point data_dir= "
    "or the environment variable POSENC_DATA at a directory holding the files"
)


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The MD17 data directory: ``data_dir``, else ``$POSENC_DATA``, else ``<repo>/../shared/data/rmd17``.

    Returns None when none is given and the shared directory does not exist.
    """
    root = local_root(data_dir)
    if root is not None:
        return root
    return SHARED_RMD17 if SHARED_RMD17.is_dir() else None


@dataclass(frozen=True)
class Trajectory:
    """Frames of one molecule, already in meV units.

    Attributes:
      z: ``[N]`` atomic numbers.
      pos: ``[F, N, 3]`` positions, Angstrom.
      energy: ``[F]`` total energies, meV.
      forces: ``[F, N, 3]`` forces, meV/Angstrom.
    """

    z: np.ndarray
    pos: np.ndarray
    energy: np.ndarray
    forces: np.ndarray

    def __len__(self) -> int:
        return int(self.energy.shape[0])

    def take(self, idx: np.ndarray, name: str) -> Molecules:
        """Frames ``idx`` as :class:`Molecules` with target ``energy`` (meV) and forces (meV/A)."""
        idx = np.asarray(idx, dtype=np.int64)
        n_frames, n = idx.size, self.z.size
        return Molecules(
            z=np.tile(self.z, n_frames), pos=self.pos[idx].reshape(n_frames * n, 3),
            n_atoms=np.full(n_frames, n), targets=self.energy[idx, None],
            target_names=("energy",), target_units=("meV",),
            forces=self.forces[idx].reshape(n_frames * n, 3), name=name,
        )


def read_md17_file(path: str | os.PathLike, labels: str = "md17", molecule: str | None = None) -> Trajectory:
    """Reads an MD17 or rMD17 ``.npz`` (layout detected from its keys) and converts to meV.

    Args:
      path: an rMD17 file (keys ``nuclear_charges``, ``coords``, ...) or an original MD17 file
        (keys ``z``, ``R``, ``E``, ``F``).
      labels: ``"md17"`` (original labels) or ``"rmd17"`` (revised; rMD17 files only).
      molecule: if given, the atom count must be this molecule's.

    Raises:
      ValueError: unreadable file, missing keys, wrong shapes, NaN/inf, or labels it lacks.
    """
    path = Path(path)
    if labels not in ("md17", "rmd17"):
        raise ValueError(f"labels must be 'md17' or 'rmd17', got {labels!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as err:  # zipfile/pickle/OS errors all mean the same thing here
        raise ValueError(f"{path} is not a readable .npz file: {err}") from err
    if "coords" in arrays:
        energy_key, force_key = ("old_energies", "old_forces") if labels == "md17" else ("energies", "forces")
        keys = {"z": "nuclear_charges", "pos": "coords", "energy": energy_key, "forces": force_key}
    elif "R" in arrays:
        if labels != "md17":
            raise ValueError(f"{path} is an original MD17 file; it has no revised (rmd17) labels")
        keys = {"z": "z", "pos": "R", "energy": "E", "forces": "F"}
    else:
        raise ValueError(
            f"{path} is neither an rMD17 file (no 'coords') nor an MD17 file (no 'R'); keys: {sorted(arrays)}"
        )
    missing = sorted(key for key in keys.values() if key not in arrays)
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}")
    z, pos, energy, forces = (arrays[keys[k]] for k in ("z", "pos", "energy", "forces"))
    if z.ndim != 1 or z.size == 0 or not np.issubdtype(z.dtype, np.integer):
        raise ValueError(f"{path}: {keys['z']} must be a non-empty integer [N] array, got {z.dtype} {z.shape}")
    n = z.size
    if pos.ndim != 3 or pos.shape[1:] != (n, 3) or pos.shape[0] == 0:
        raise ValueError(f"{path}: {keys['pos']} must be [F, N={n}, 3], got {pos.shape}")
    n_frames = pos.shape[0]
    if energy.shape == (n_frames, 1):
        energy = energy[:, 0]
    if energy.shape != (n_frames,):
        raise ValueError(f"{path}: {keys['energy']} must be [F={n_frames}] or [F, 1], got {energy.shape}")
    if forces.shape != pos.shape:
        raise ValueError(f"{path}: {keys['forces']} must be {pos.shape} like {keys['pos']}, got {forces.shape}")
    for key in ("pos", "energy", "forces"):
        if not np.isfinite(arrays[keys[key]]).all():
            raise ValueError(f"{path}: {keys[key]} contains NaN or inf")
    if molecule is not None and n != MD17_N_ATOMS[molecule]:
        raise ValueError(f"{path}: {n} atoms, but {molecule} has {MD17_N_ATOMS[molecule]}")
    return Trajectory(
        z=z.astype(np.int64), pos=pos.astype(np.float64),
        energy=energy.astype(np.float64) * KCAL_PER_MOL_TO_MEV,
        forces=forces.astype(np.float64) * KCAL_PER_MOL_TO_MEV,
    )


def _read_index_csv(path: Path, n_frames: int) -> np.ndarray:
    """``[K]`` frame indices from an rMD17 ``splits/index_*.csv`` (one integer per line)."""
    try:
        idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as err:
        raise ValueError(f"{path} is not a list of integer frame indices: {err}") from err
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"{path} must hold one frame index per line, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= n_frames:
        raise ValueError(f"{path}: frame indices must lie in [0, {n_frames}), got [{idx.min()}, {idx.max()}]")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{path} repeats frame indices")
    return idx


def _archive_root(directory: Path) -> Path | None:
    """The folder holding ``npz_data/`` and ``splits/`` in or directly under ``directory``."""
    for root in (directory, directory / "rmd17"):
        if (root / "npz_data").is_dir():
            return root
    return None


def _local_md17_file(directory: Path, molecule: str) -> Path | None:
    for filename in (f"md17_{molecule}.npz", MD17_UPSTREAM_FILES.get(molecule)):
        if filename is not None and (directory / filename).is_file():
            return directory / filename
    return None


def _missing(what: str, directory: Path | None, cache: Path, reason: str) -> FileNotFoundError:
    if directory is None:
        looked = f"the cache {cache} (no data_dir given, no POSENC_DATA, no ../shared/data/rmd17)"
    else:
        looked = f"{directory} and the cache {cache}"
    return FileNotFoundError(f"{what} not found: looked in {looked}; {reason}. Hint: {MISSING_HINT}")


def _fetch(filename: str, url: str, sha256: str | None, directory: Path | None, cache: Path,
           download: bool, allow_unverified: bool, progress: bool) -> Path:
    """:func:`fetch` with not-found and download errors turned into one helpful message."""
    try:
        return fetch(url, sha256, filename, cache, data_dir=directory, allow_unverified=allow_unverified,
                     download=download, progress=progress)
    except FileNotFoundError:
        raise _missing(filename, directory, cache, "downloading is off (download=False)") from None
    except DownloadError as err:
        raise _missing(filename, directory, cache, f"the download failed ({err})") from err


def _carve(n_pool: int, n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint training and validation positions in a pool of ``n_pool`` frames (seeded)."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if n_train + n_val > n_pool:
        raise ValueError(
            f"n_train + n_val = {n_train + n_val} exceeds the {n_pool} training frames; validation frames "
            "are carved out of the training frames (e.g. n_train=950, n_val=50)"
        )
    perm = np.random.default_rng(seed).permutation(n_pool)
    return perm[:n_train], perm[n_train:n_train + n_val]


def load_md17(
    molecule: str,
    split: int = 1,
    labels: str = "md17",
    n_train: int = 950,
    n_val: int = 50,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    source: str = "auto",
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    allow_unverified: bool = False,
    progress: bool = True,
) -> dict[str, Molecules]:
    """Training, validation and test frames of one (r)MD17 molecule, in meV and meV/Angstrom.

    The 1,000 training frames of split ``split`` are permuted with ``seed``; the first ``n_train``
    are the training set and the next ``n_val`` the validation set. The test set is the split's
    1,000 test frames.

    Args:
      molecule: one of :data:`MD17_MOLECULES`.
      split: 1..5, which of the five published train/test splits.
      labels: ``"md17"`` (original labels, the paper's Table 1) or ``"rmd17"`` (revised).
      n_train: training frames (default 950).
      n_val: validation frames taken from the remaining training frames (default 50).
      data_dir: local data directory (default: ``$POSENC_DATA``, else ``../shared/data/rmd17``
        next to the repository if it exists).
      seed: seed of the train/validation permutation.
      source: ``"auto"`` (local pre-split files, else a local archive, else a local original MD17
        file if ``labels="md17"``, else the pre-split files from the cache or downloaded),
        ``"rmd17-npz"``, ``"rmd17-archive"`` or ``"md17"``.
      download: allow downloads into the cache when files are not local.
      cache_dir: cache directory (default ``$POSENC_CACHE`` or ``~/.cache/posenc``).
      allow_unverified: allow downloads without a known SHA-256 (archive, original MD17).
      progress: show download progress.

    Returns:
      ``{"train", "val", "test"}`` :class:`Molecules`; ``targets[:, 0]`` is the total energy (meV),
      ``forces`` in meV/Angstrom.

    Raises:
      ValueError: unknown molecule/source/labels/split, bad sizes, or a corrupt file.
      FileNotFoundError: the files are not local and could not be downloaded (the message says
        where it looked).
    """
    if molecule not in MD17_N_ATOMS:
        raise ValueError(f"unknown MD17 molecule {molecule!r}; choose one of {', '.join(MD17_MOLECULES)}")
    if source not in MD17_SOURCES:
        raise ValueError(f"source must be one of {MD17_SOURCES}, got {source!r}")
    if labels not in ("md17", "rmd17"):
        raise ValueError(f"labels must be 'md17' or 'rmd17', got {labels!r}")
    if not isinstance(split, (int, np.integer)) or not 1 <= split <= N_SPLITS:
        raise ValueError(f"split must be an integer in 1..{N_SPLITS}, got {split!r}")
    directory = default_data_dir(data_dir)
    cache = cache_root(cache_dir)
    part_names = {part: f"rmd17_{molecule}_{part}_{split:02d}.npz" for part in ("train", "test")}
    if source == "auto":
        source = "rmd17-npz"
        if directory is not None and not all((directory / f).is_file() for f in part_names.values()):
            if _archive_root(directory) is not None:
                source = "rmd17-archive"
            elif labels == "md17" and _local_md17_file(directory, molecule) is not None:
                source = "md17"
    tag = f"{labels}:{molecule}/{split:02d}"

    if source == "rmd17-npz":
        parts = {
            part: read_md17_file(
                _fetch(f, RMD17_NPZ_URL.format(filename=f), RMD17_NPZ_SHA256[f], directory, cache,
                       download, allow_unverified, progress), labels, molecule)
            for part, f in part_names.items()
        }
        pool, pool_idx = parts["train"], np.arange(len(parts["train"]))
        test, test_idx = parts["test"], np.arange(len(parts["test"]))
    elif source == "rmd17-archive":
        root = _archive_root(directory) if directory is not None else None
        root = root or _archive_root(cache / "rmd17-archive")  # extracted by an earlier download
        if root is None:
            tarball = _fetch(RMD17_ARCHIVE_FILE, RMD17_ARCHIVE_URL, RMD17_ARCHIVE_SHA256, None, cache,
                             download, allow_unverified, progress)
            root = _archive_root(extract_tar(tarball, cache / "rmd17-archive"))
            if root is None:
                raise ValueError(f"{tarball} does not contain npz_data/ (an rmd17 archive was expected)")
        npz = root / "npz_data" / f"rmd17_{molecule}.npz"
        if not npz.is_file():
            raise _missing(f"npz_data/rmd17_{molecule}.npz", root, cache, "the archive lacks it")
        verify_with_sums(npz)
        pool = test = read_md17_file(npz, labels, molecule)
        pool_idx = _read_index_csv(root / "splits" / f"index_train_{split:02d}.csv", len(pool))
        test_idx = _read_index_csv(root / "splits" / f"index_test_{split:02d}.csv", len(pool))
        if np.intersect1d(pool_idx, test_idx).size:
            raise ValueError(f"{root / 'splits'}: split {split:02d} has frames in both train and test")
    else:  # original MD17
        if labels != "md17":
            raise ValueError("original MD17 files carry only the original labels; use labels='md17'")
        local = _local_md17_file(directory, molecule) if directory is not None else None
        if local is not None:
            verify_with_sums(local)
        else:
            filename = MD17_UPSTREAM_FILES.get(molecule, f"md17_{molecule}.npz")
            local = _fetch(filename, MD17_URL.format(filename=filename), MD17_SHA256[molecule], None, cache,
                           download, allow_unverified, progress)
        pool = test = read_md17_file(local, labels, molecule)
        if len(pool) < 2 * N_PER_PART:
            raise ValueError(f"{local} has {len(pool)} frames; {2 * N_PER_PART} are needed for 1,000 + 1,000")
        perm = np.random.default_rng(split).permutation(len(pool))
        pool_idx, test_idx = perm[:N_PER_PART], perm[N_PER_PART:2 * N_PER_PART]

    train_pos, val_pos = _carve(pool_idx.size, n_train, n_val, seed)
    return {
        "train": pool.take(pool_idx[train_pos], f"{tag}/train"),
        "val": pool.take(pool_idx[val_pos], f"{tag}/val"),
        "test": test.take(test_idx, f"{tag}/test"),
    }
