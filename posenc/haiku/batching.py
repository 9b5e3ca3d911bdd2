"""Molecules -> JAX model inputs: fixed-size, masked arrays (one compilation for every batch).

The graph (edges, batch order) is built in numpy by :mod:`posenc.data.graphs`, shared with the
torch backend (``posenc.torch.batching``); this module pads it and hands it to JAX. No torch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from posenc.data.graphs import fully_connected_edges, radius_edges, selection, unordered_pairs
from posenc.data.molecules import Molecules

__all__ = ["collate_jax"]


def collate_jax(
    mols: Molecules,
    idx: np.ndarray | list[int],
    *,
    max_atoms: int,
    max_edges: int,
    max_molecules: int | None = None,
    cutoff: float | None = None,
) -> dict[str, jax.Array]:
    """Molecules ``idx`` as fixed-size, masked JAX arrays (one compilation for every batch).

    Padding atoms sit at the origin with ``z = 0`` and belong to no molecule (``batch`` = M_pad,
    out of range, so ``jax.ops.segment_sum(..., num_segments=M_pad)`` drops them); padding edges
    join atom 0 to itself and are masked out. Models must mask with ``edge_mask`` before using a
    padding edge's (zero) distance. The graph's unordered pairs (both directions of a pair share
    one distance) come with it, padded alike: a model may encode each distance once.

    Args:
      mols: the data set.
      idx: molecule indices (non-empty).
      max_atoms, max_edges: padded sizes A_pad >= A, E_pad >= E.
      max_molecules: padded number of molecules M_pad >= M (default: M). Pass the batch size so
        a short last batch has the same shapes.
      cutoff: None for a fully connected graph inside each molecule; otherwise the radius graph
        with this cutoff (Angstrom).

    Returns:
      dict of jnp arrays: ``z`` [A_pad] int32, ``pos`` [A_pad, 3], ``batch`` [A_pad] int32,
      ``atom_mask`` [A_pad] bool, ``edge_index`` [2, E_pad] int32, ``edge_mask`` [E_pad] bool,
      ``targets`` [M_pad, T], ``mol_mask`` [M_pad] bool, ``forces`` [A_pad, 3] (zeros if the set has
      none), ``pairs`` [2, P_pad] int32 (``P_pad = E_pad // 2``; atoms of each unordered pair),
      ``pair_mask`` [P_pad] bool and ``pair_of`` [E_pad] int32 (the pair of each edge; 0 for
      padding edges). Floats take JAX's default float dtype (float64 under ``jax_enable_x64``).

    Raises:
      ValueError: empty selection, or the selection exceeds a padded size.
      IndexError: an index out of range.
    """
    idx = selection(mols, idx)
    atoms = mols.atom_index(idx)
    n_atoms = mols.n_atoms[idx]
    n_mol_pad = int(idx.size if max_molecules is None else max_molecules)
    pos = mols.pos[atoms]
    if cutoff is None:
        edges, pairs, pair_of = _fully_connected(tuple(n_atoms.tolist()))
    else:
        edges = radius_edges(pos, n_atoms, cutoff)
        pairs, pair_of = unordered_pairs(edges)
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
        "pairs": jnp.asarray(pad(pairs.T, max_edges // 2).T, dtype=jnp.int32),
        "pair_mask": jnp.asarray(np.arange(max_edges // 2) < pairs.shape[1]),
        "pair_of": jnp.asarray(pad(pair_of, max_edges), dtype=jnp.int32),
    }


@functools.lru_cache(maxsize=64)
def _fully_connected(n_atoms: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges, pairs and pair of each edge of the fully connected graph of these sizes (cached:
    every batch of an MD17 molecule has the same ones)."""
    edges = fully_connected_edges(np.asarray(n_atoms, dtype=np.int64))
    return (edges, *unordered_pairs(edges))
