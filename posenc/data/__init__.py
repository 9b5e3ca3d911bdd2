"""Molecule data sets as backend-agnostic numpy containers.

``load_md17`` (MD17 / revised MD17 energies and forces) and ``load_qm9`` (QM9's 12 properties)
return ``{"train", "val", "test"}`` dicts of :class:`Molecules`, in Angstrom, meV and meV/Angstrom
(QM9 targets in the paper's units). ``fetch`` finds, downloads, verifies and caches files.
Importing this package loads numpy and tqdm only.
"""

from posenc.data.download import ChecksumError, DownloadError, cache_root, fetch, sha256_file
from posenc.data.md17 import MD17_MOLECULES, MD17_N_ATOMS, PAPER_MD17_MOLECULES, load_md17, read_md17_file
from posenc.data.molecules import Molecules
from posenc.data.qm9 import ATOM_REFERENCE_HARTREE, QM9_TARGETS, QM9_UNITS, load_qm9, read_qm9_csv, split_indices
from posenc.data.units import HARTREE_TO_MEV, KCAL_PER_MOL_TO_MEV

__all__ = [
    "ATOM_REFERENCE_HARTREE", "ChecksumError", "DownloadError", "HARTREE_TO_MEV", "KCAL_PER_MOL_TO_MEV",
    "MD17_MOLECULES", "MD17_N_ATOMS", "Molecules", "PAPER_MD17_MOLECULES", "QM9_TARGETS", "QM9_UNITS",
    "cache_root", "fetch", "load_md17", "load_qm9", "read_md17_file", "read_qm9_csv", "sha256_file",
    "split_indices",
]
