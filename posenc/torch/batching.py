"""Molecules -> torch model inputs: a selection of molecules becomes one :class:`Batch`.

The graph (edges, batch order) is built in numpy by :mod:`posenc.data.graphs`, shared with the
Haiku backend (``posenc.haiku.batching``); this module only puts the arrays into torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from posenc.data.graphs import fully_connected_edges, radius_edges, selection
from posenc.data.molecules import Molecules

__all__ = ["Batch", "collate"]


@dataclass
class Batch:
    """M molecules with A atoms and E directed edges, as torch tensors.

    Attributes:
      z: ``[A]`` int64 atomic numbers.
      pos: ``[A, 3]`` positions, Angstrom (float dtype of the batch).
      batch: ``[A]`` int64 molecule index (0..M-1) of each atom, non-decreasing.
      n_molecules: M.
      edge_index: ``[2, E]`` int64; row 0 the sender j, row 1 the receiver i.
      targets: ``[M, T]`` per-molecule labels, in the :class:`Molecules` units.
      forces: ``[A, 3]`` forces in meV/Angstrom, or None.
      dense_size: n when every molecule has the same n atoms and ``edge_index`` is the fully
        connected graph of :func:`posenc.data.graphs.fully_connected_edges` (every MD17 batch):
        models may then work on dense ``[M, n, n, ...]`` pair tensors instead of edge lists. None
        otherwise. Set once, when the batch is built, so no model needs to inspect the tensors to
        know it.
    """

    z: torch.Tensor
    pos: torch.Tensor
    batch: torch.Tensor
    n_molecules: int
    edge_index: torch.Tensor
    targets: torch.Tensor
    forces: torch.Tensor | None = None
    dense_size: int | None = None

    @property
    def n_atoms(self) -> torch.Tensor:
        """``[M]`` int64 atoms per molecule."""
        return torch.bincount(self.batch, minlength=self.n_molecules)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Batch(**moved)


def collate(
    mols: Molecules,
    idx: np.ndarray | list[int],
    *,
    cutoff: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Batch:
    """Molecules ``idx`` of ``mols`` as one :class:`Batch` (one disjoint graph).

    Args:
      mols: the data set.
      idx: molecule indices (any order; a molecule may repeat).
      cutoff: None for a fully connected graph inside each molecule; otherwise the radius graph
        with this cutoff (Angstrom).
      dtype: float dtype of positions, targets and forces.
      device: where the tensors live.

    Raises:
      ValueError: empty selection, non-positive cutoff.
      TypeError: a non-float dtype.
      IndexError: an index out of range.

    Example:
      >>> import numpy as np
      >>> from posenc.data.molecules import Molecules
      >>> water = Molecules(z=np.array([8, 1, 1]), pos=np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
      ...                   n_atoms=np.array([3]), targets=np.zeros((1, 1)), target_names=("E",), target_units=("meV",))
      >>> b = collate(water, [0, 0])  # the molecule twice: two disjoint graphs of 3 atoms
      >>> b.edge_index.shape, b.batch.tolist()
      (torch.Size([2, 12]), [0, 0, 0, 1, 1, 1])
    """
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    idx = selection(mols, idx)
    atoms = mols.atom_index(idx)
    n_atoms = mols.n_atoms[idx]
    pos = mols.pos[atoms]
    edges = fully_connected_edges(n_atoms) if cutoff is None else radius_edges(pos, n_atoms, cutoff)
    forces = None if mols.forces is None else torch.as_tensor(mols.forces[atoms], dtype=dtype, device=device)
    uniform = cutoff is None and bool((n_atoms == n_atoms[0]).all())
    return Batch(
        dense_size=int(n_atoms[0]) if uniform else None,
        z=torch.as_tensor(mols.z[atoms], device=device),
        pos=torch.as_tensor(pos, dtype=dtype, device=device),
        batch=torch.as_tensor(np.repeat(np.arange(idx.size), n_atoms), device=device),
        n_molecules=int(idx.size),
        edge_index=torch.as_tensor(edges, device=device),
        targets=torch.as_tensor(mols.targets[idx], dtype=dtype, device=device),
        forces=forces,
    )
