"""A ragged, backend-agnostic container for a set of molecules (numpy).

All data loaders (QM9, MD17, the toy clusters) return :class:`Molecules`; the batching code
turns a selection of it into backend tensors. Atoms of all molecules are concatenated, so sets of
molecules of different sizes need no padding until a backend asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Molecules:
    """M molecules with A atoms in total.

    Attributes:
      z: ``[A]`` int64 atomic numbers.
      pos: ``[A, 3]`` float64 positions, Angstrom.
      n_atoms: ``[M]`` int64 atoms per molecule (each >= 1); molecule m owns atoms
        ``offsets[m] : offsets[m] + n_atoms[m]``.
      targets: ``[M, T]`` float64 per-molecule labels in the units named by ``target_units``
        (MD17: the energy in meV; QM9: the paper's 12 targets in the paper's units).
      target_names: the T label names.
      target_units: the T label units.
      forces: ``[A, 3]`` float64 forces in meV/Angstrom, or None.
      name: a short description (e.g. ``"md17:ethanol/train"``).
    """

    z: np.ndarray
    pos: np.ndarray
    n_atoms: np.ndarray
    targets: np.ndarray
    target_names: tuple[str, ...]
    target_units: tuple[str, ...]
    forces: np.ndarray | None = None
    name: str = ""
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        z, pos, n_atoms, targets = (np.asarray(a) for a in (self.z, self.pos, self.n_atoms, self.targets))
        if n_atoms.ndim != 1 or n_atoms.size == 0:
            raise ValueError(f"n_atoms must be a non-empty [M] array, got shape {n_atoms.shape}")
        if (n_atoms < 1).any():
            raise ValueError("every molecule needs at least one atom (n_atoms >= 1)")
        n_total = int(n_atoms.sum())
        if z.shape != (n_total,):
            raise ValueError(f"z must be [A={n_total}], got {z.shape}")
        if pos.shape != (n_total, 3):
            raise ValueError(f"pos must be [A={n_total}, 3], got {pos.shape}")
        if targets.ndim != 2 or targets.shape[0] != n_atoms.size:
            raise ValueError(f"targets must be [M={n_atoms.size}, T], got {targets.shape}")
        if len(self.target_names) != targets.shape[1] or len(self.target_units) != targets.shape[1]:
            raise ValueError("target_names and target_units need one entry per target column")
        if self.forces is not None and np.asarray(self.forces).shape != (n_total, 3):
            raise ValueError(f"forces must be [A={n_total}, 3], got {np.asarray(self.forces).shape}")
        for label, arr in (("pos", pos), ("targets", targets), ("forces", self.forces)):
            if arr is not None and not np.isfinite(arr).all():
                raise ValueError(f"{label} contains NaN or inf")
        object.__setattr__(self, "z", z.astype(np.int64))
        object.__setattr__(self, "pos", pos.astype(np.float64))
        object.__setattr__(self, "n_atoms", n_atoms.astype(np.int64))
        object.__setattr__(self, "targets", targets.astype(np.float64))
        if self.forces is not None:
            object.__setattr__(self, "forces", np.asarray(self.forces, dtype=np.float64))
        object.__setattr__(self, "offsets", np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64))

    def __len__(self) -> int:
        return int(self.n_atoms.size)

    def atom_index(self, idx: np.ndarray) -> np.ndarray:
        """``[A_sel]`` indices of the atoms of molecules ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"molecule index out of range [0, {len(self)})")
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(o, o + n) for o, n in zip(self.offsets[idx], self.n_atoms[idx])])

    def subset(self, idx: np.ndarray) -> Molecules:
        """The molecules ``idx`` (a non-empty index array), as a new :class:`Molecules`."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("subset needs at least one molecule")
        atoms = self.atom_index(idx)
        return Molecules(
            z=self.z[atoms], pos=self.pos[atoms], n_atoms=self.n_atoms[idx], targets=self.targets[idx],
            target_names=self.target_names, target_units=self.target_units,
            forces=None if self.forces is None else self.forces[atoms], name=self.name,
        )
