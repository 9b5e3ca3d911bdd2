"""Molecules -> model inputs: a selection of molecules becomes one disjoint graph.

The torch side (:class:`Batch`, :func:`collate`) concatenates the atoms of the selected molecules
and lists the directed edges inside each molecule: every pair (fully connected, EGNN's and the
Transformer's default) or the pairs closer than a cutoff (a radius graph, DimeNet++). Edges never
cross molecules. ``edge_index[0]`` is the sender j and ``edge_index[1]`` the receiver i of the
message j -> i; both directions are present and there are no self loops.

The JAX side (:func:`collate_jax`) pads the same arrays to fixed sizes with masks, so a jitted step
compiles once instead of once per batch shape. :func:`batches` yields the index arrays of an epoch
from a seed, so an epoch's order is reproducible (and a resumed run sees the same batches).

Radius graphs are built in plain torch, one block of pairs per molecule (memory ``sum_m n_m^2``,
not ``A^2``), so no compiled graph extension (torch-cluster, pyg-lib) is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np
import torch

from posenc.data.molecules import Molecules


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
        connected graph of :func:`fully_connected_edges` (every MD17 batch): models may then work
        on dense ``[M, n, n, ...]`` pair tensors instead of edge lists. None otherwise. Set once,
        when the batch is built, so no model needs to inspect the tensors to know it.
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

    def to(self, device: torch.device | str) -> "Batch":
        """A copy with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Batch(**moved)


def _block_pairs(n_atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (j, i), j != i, inside each block of ``n_atoms`` consecutive atoms (numpy)."""
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    n_pairs = n_atoms**2
    mol = np.repeat(np.arange(n_atoms.size), n_pairs)  # [P] molecule of each pair
    local = np.arange(int(n_pairs.sum())) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    n = n_atoms[mol]
    j, i = local // n, local % n
    keep = j != i
    return (j[keep] + offsets[mol][keep]), (i[keep] + offsets[mol][keep])


def fully_connected_edges(n_atoms: np.ndarray) -> np.ndarray:
    """Every directed pair inside each molecule of a concatenation.

    Args:
      n_atoms: ``[M]`` atoms per molecule (molecule m owns the next ``n_atoms[m]`` atoms).

    Returns:
      ``[2, E]`` int64, ``E = sum_m n_m (n_m - 1)``: row 0 senders j, row 1 receivers i, grouped by
      molecule and, inside one, sorted by sender then receiver.
    """
    n_atoms = np.asarray(n_atoms)
    if n_atoms.ndim != 1:
        raise ValueError(f"n_atoms must be a 1-D array, got shape {n_atoms.shape}")
    if (n_atoms < 0).any():
        raise ValueError("n_atoms must be >= 0")
    j, i = _block_pairs(n_atoms)
    return np.stack([j, i]).astype(np.int64)


def radius_edges(pos: torch.Tensor, batch: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Directed pairs closer than ``cutoff`` inside each molecule (plain torch).

    Only pairs within one molecule are ever formed (``sum_m n_m^2`` candidates), so the memory is
    that of the molecules, not of the whole batch squared. The selection is not differentiable
    (it needs none: a smooth cutoff in the model takes messages to zero at the radius).

    Args:
      pos: ``[A, 3]`` positions, Angstrom.
      batch: ``[A]`` int64 molecule index of each atom, non-decreasing (atoms of a molecule contiguous).
      cutoff: radius (> 0), Angstrom; pairs with ``d < cutoff`` are kept.

    Returns:
      ``[2, E]`` int64 on ``pos.device``: row 0 senders j, row 1 receivers i.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be [A, 3], got {tuple(pos.shape)}")
    if batch.shape != pos.shape[:1]:
        raise ValueError(f"batch must be [A={pos.shape[0]}], got {tuple(batch.shape)}")
    if batch.dtype != torch.int64:
        raise TypeError(f"batch must be int64, got {batch.dtype}")
    if pos.shape[0] == 0:
        return torch.zeros(2, 0, dtype=torch.int64, device=pos.device)
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be non-decreasing (the atoms of each molecule contiguous)")
    counts = torch.unique_consecutive(batch, return_counts=True)[1]
    n_pairs = counts**2
    mol = torch.repeat_interleave(torch.arange(counts.numel(), device=pos.device), n_pairs)  # [P]
    pair_start = torch.cumsum(n_pairs, 0) - n_pairs
    atom_start = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(n_pairs.sum()), device=pos.device) - pair_start[mol]
    n = counts[mol]
    j = local // n + atom_start[mol]
    i = local % n + atom_start[mol]
    with torch.no_grad():
        d = torch.linalg.vector_norm(pos[j] - pos[i], dim=-1)
        keep = (j != i) & (d < cutoff)
    return torch.stack([j[keep], i[keep]])


def _selection(mols: Molecules, idx: np.ndarray | list[int]) -> np.ndarray:
    """``idx`` as a checked, non-empty int64 array of molecule indices."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("empty selection: a batch needs at least one molecule")
    if idx.min() < 0 or idx.max() >= len(mols):
        raise IndexError(f"molecule index out of range [0, {len(mols)})")
    return idx


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
    idx = _selection(mols, idx)
    atoms = mols.atom_index(idx)
    n_atoms = mols.n_atoms[idx]
    pos = torch.as_tensor(mols.pos[atoms], dtype=dtype, device=device)
    batch = torch.repeat_interleave(torch.arange(idx.size, device=device), torch.as_tensor(n_atoms, device=device))
    if cutoff is None:
        edge_index = torch.as_tensor(fully_connected_edges(n_atoms), device=device)
    else:
        edge_index = radius_edges(pos, batch, cutoff)
    forces = None if mols.forces is None else torch.as_tensor(mols.forces[atoms], dtype=dtype, device=device)
    uniform = cutoff is None and bool((n_atoms == n_atoms[0]).all())
    return Batch(
        dense_size=int(n_atoms[0]) if uniform else None,
        z=torch.as_tensor(mols.z[atoms], device=device),
        pos=pos,
        batch=batch,
        n_molecules=int(idx.size),
        edge_index=edge_index,
        targets=torch.as_tensor(mols.targets[idx], dtype=dtype, device=device),
        forces=forces,
    )


def collate_jax(
    mols: Molecules,
    idx: np.ndarray | list[int],
    *,
    max_atoms: int,
    max_edges: int,
    max_molecules: int | None = None,
    cutoff: float | None = None,
) -> dict:
    """Molecules ``idx`` as fixed-size, masked JAX arrays (one compilation for every batch).

    Padding atoms sit at the origin with ``z = 0`` and belong to no molecule (``batch`` = M_pad,
    out of range, so ``jax.ops.segment_sum(..., num_segments=M_pad)`` drops them); padding edges
    join atom 0 to itself and are masked out. Models must mask with ``edge_mask`` before using a
    padding edge's (zero) distance.

    Args:
      mols: the data set.
      idx: molecule indices (non-empty).
      max_atoms, max_edges: padded sizes A_pad >= A, E_pad >= E.
      max_molecules: padded number of molecules M_pad >= M (default: M). Pass the batch size so
        a short last batch has the same shapes.
      cutoff: as in :func:`collate`.

    Returns:
      dict of jnp arrays: ``z`` [A_pad] int32, ``pos`` [A_pad, 3], ``batch`` [A_pad] int32,
      ``atom_mask`` [A_pad] bool, ``edge_index`` [2, E_pad] int32, ``edge_mask`` [E_pad] bool,
      ``targets`` [M_pad, T], ``mol_mask`` [M_pad] bool, ``forces`` [A_pad, 3] (zeros if the set has
      none). Floats take JAX's default float dtype (float64 under ``jax_enable_x64``).

    Raises:
      ValueError: empty selection, or the selection exceeds a padded size.
    """
    import jax.numpy as jnp  # local: the torch side must not need JAX

    idx = _selection(mols, idx)
    atoms = mols.atom_index(idx)
    n_atoms = mols.n_atoms[idx]
    n_mol_pad = int(idx.size if max_molecules is None else max_molecules)
    pos = mols.pos[atoms]
    if cutoff is None:
        edges = fully_connected_edges(n_atoms)
    else:
        batch_t = torch.repeat_interleave(torch.arange(idx.size), torch.as_tensor(n_atoms))
        edges = radius_edges(torch.as_tensor(pos), batch_t, cutoff).numpy()
    n_a, n_e, n_m = atoms.size, edges.shape[1], idx.size
    for label, have, room in (("atoms", n_a, max_atoms), ("edges", n_e, max_edges), ("molecules", n_m, n_mol_pad)):
        if have > room:
            raise ValueError(f"the selection has {have} {label} but the padded size is {room}")

    def pad(a: np.ndarray, size: int, fill: float | int = 0) -> np.ndarray:
        out = np.full((size,) + a.shape[1:], fill, dtype=a.dtype)
        out[: a.shape[0]] = a
        return out

    batch = np.repeat(np.arange(n_m), n_atoms)
    forces = np.zeros_like(pos) if mols.forces is None else mols.forces[atoms]
    return {
        "z": jnp.asarray(pad(mols.z[atoms], max_atoms), dtype=jnp.int32),
        "pos": jnp.asarray(pad(pos, max_atoms)),
        "batch": jnp.asarray(pad(batch, max_atoms, n_mol_pad), dtype=jnp.int32),
        "atom_mask": jnp.asarray(np.arange(max_atoms) < n_a),
        "edge_index": jnp.asarray(pad(edges.T, max_edges).T, dtype=jnp.int32),
        "edge_mask": jnp.asarray(np.arange(max_edges) < n_e),
        "targets": jnp.asarray(pad(mols.targets[idx], n_mol_pad)),
        "mol_mask": jnp.asarray(np.arange(n_mol_pad) < n_m),
        "forces": jnp.asarray(pad(forces, max_atoms)),
    }


def batches(mols: Molecules, batch_size: int, *, shuffle: bool, seed: int | None = None) -> Iterator[np.ndarray]:
    """Index arrays covering ``mols`` once, ``batch_size`` molecules each (the last may be shorter).

    Args:
      mols: the data set.
      batch_size: molecules per batch (>= 1).
      shuffle: permute the order with ``numpy.random.default_rng(seed)``; a fixed seed per epoch
        gives the same order every time (what makes a resumed run identical).
      seed: required when ``shuffle`` is True.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle and seed is None:
        raise ValueError("shuffle=True needs a seed (reproducible epochs)")
    order = np.random.default_rng(seed).permutation(len(mols)) if shuffle else np.arange(len(mols))
    for start in range(0, len(mols), batch_size):
        yield order[start : start + batch_size]
