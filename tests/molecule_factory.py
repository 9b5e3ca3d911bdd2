"""Small random molecules for the model, batching and training tests (no data files needed)."""

from __future__ import annotations

import numpy as np

from posenc.data.molecules import Molecules


def random_molecules(n_atoms: list[int], seed: int = 0, *, forces: bool = True, n_targets: int = 1,
                     spread: float = 1.2) -> Molecules:
    """Molecules of the given sizes: H/C/N/O atoms at least 0.7 A apart, random labels."""
    rng = np.random.default_rng(seed)
    pos = []
    for n in n_atoms:
        atoms: list[np.ndarray] = []
        while len(atoms) < n:
            trial = rng.normal(scale=spread, size=3)
            if all(np.linalg.norm(trial - a) > 0.7 for a in atoms):
                atoms.append(trial)
        pos.extend(atoms)
    total = int(np.sum(n_atoms))
    return Molecules(
        z=rng.choice([1, 6, 7, 8], size=total), pos=np.array(pos), n_atoms=np.array(n_atoms),
        targets=rng.normal(size=(len(n_atoms), n_targets)), target_names=tuple(f"t{k}" for k in range(n_targets)),
        target_units=("meV",) * n_targets, forces=rng.normal(size=(total, 3)) if forces else None,
    )
