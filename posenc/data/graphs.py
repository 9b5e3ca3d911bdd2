"""Molecules -> graphs and batch order, in numpy: what both backends' collate functions share.

A selection of molecules becomes one disjoint graph: the atoms of the molecules concatenated, and
the directed edges inside each molecule, every pair (:func:`fully_connected_edges`, EGNN's and the
Transformer's default) or the pairs closer than a cutoff (:func:`radius_edges`, DimeNet++). Edges
never cross molecules. Row 0 of an edge index is the sender j and row 1 the receiver i of the
message j -> i; both directions are present and there are no self loops.

:func:`batches` yields the index arrays of an epoch from a seed, so an epoch's order is
reproducible (and a resumed run sees the same batches). The backend collate functions
(``posenc.torch.batching.collate``, ``posenc.haiku.batching.collate_jax``) turn one index array
into tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from posenc.data.molecules import Molecules


def _check_sizes(n_atoms: np.ndarray) -> np.ndarray:
    """``n_atoms`` as a checked 1-D int64 array."""
    n_atoms = np.asarray(n_atoms)
    if n_atoms.ndim != 1:
        raise ValueError(f"n_atoms must be a 1-D array, got shape {n_atoms.shape}")
    if (n_atoms < 0).any():
        raise ValueError("n_atoms must be >= 0")
    return n_atoms.astype(np.int64)


def _block_pairs(n_atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (j, i), j != i, inside each block of ``n_atoms`` consecutive atoms.

    Returns:
      ``(j, i)``: ``[E]`` int64 global atom indices, grouped by molecule and, inside one, sorted
      by sender then receiver. Memory ``sum_m n_m^2``, never ``A^2``.
    """
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    n_pairs = n_atoms**2
    mol = np.repeat(np.arange(n_atoms.size), n_pairs)  # [P] molecule of each candidate pair
    local = np.arange(int(n_pairs.sum())) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    n = n_atoms[mol]
    j, i = local // n, local % n
    keep = j != i
    return j[keep] + offsets[mol][keep], i[keep] + offsets[mol][keep]


def fully_connected_edges(n_atoms: np.ndarray) -> np.ndarray:
    """Every directed pair inside each molecule of a concatenation.

    Args:
      n_atoms: ``[M]`` atoms per molecule (molecule m owns the next ``n_atoms[m]`` atoms).

    Returns:
      ``[2, E]`` int64, ``E = sum_m n_m (n_m - 1)``: row 0 senders j, row 1 receivers i, grouped by
      molecule and, inside one, sorted by sender then receiver.
    """
    j, i = _block_pairs(_check_sizes(n_atoms))
    return np.stack([j, i]).astype(np.int64)


def radius_edges(pos: np.ndarray, n_atoms: np.ndarray, cutoff: float) -> np.ndarray:
    """Directed pairs closer than ``cutoff`` inside each molecule.

    Only pairs within one molecule are candidates (``sum_m n_m^2`` of them), so the memory is that
    of the molecules, not of the whole batch squared. The selection carries no gradient and needs
    none: a smooth cutoff in the model takes messages to zero at the radius.

    Args:
      pos: ``[A, 3]`` positions, Angstrom.
      n_atoms: ``[M]`` atoms per molecule, ``sum = A`` (molecule m owns the next ``n_atoms[m]`` atoms).
      cutoff: radius (> 0), Angstrom; pairs with ``d < cutoff`` are kept.

    Returns:
      ``[2, E]`` int64: row 0 senders j, row 1 receivers i, in the order of
      :func:`fully_connected_edges` with the distant pairs left out.

    Raises:
      ValueError: a non-positive cutoff, ``pos`` not ``[A, 3]``, or sizes that do not add up to A.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    pos = np.asarray(pos)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be [A, 3], got {pos.shape}")
    n_atoms = _check_sizes(n_atoms)
    if int(n_atoms.sum()) != pos.shape[0]:
        raise ValueError(f"n_atoms adds up to {int(n_atoms.sum())} atoms but pos has {pos.shape[0]}")
    j, i = _block_pairs(n_atoms)
    keep = np.linalg.norm(pos[j] - pos[i], axis=-1) < cutoff
    return np.stack([j[keep], i[keep]]).astype(np.int64)


def unordered_pairs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unordered pairs of a symmetric edge list, and the pair of each edge.

    Both directions of a pair have the same distance, so a model may encode each distance once
    and hand the result to both messages.

    Args:
      edges: ``[2, E]`` directed edges in which (j, i) is present whenever (i, j) is (every graph
        of this module is).

    Returns:
      ``(pairs, pair_of)``: ``[2, P]`` int64 with ``pairs[0] < pairs[1]`` (``P = E / 2``) and
      ``[E]`` int64, the pair of each edge.

    Raises:
      ValueError: the edge list is not symmetric, or has a self loop.
    """
    edges = np.asarray(edges, dtype=np.int64)
    lo, hi = np.minimum(edges[0], edges[1]), np.maximum(edges[0], edges[1])
    if (lo == hi).any():
        raise ValueError("the edge list has a self loop")
    keys, pair_of, counts = np.unique(lo * (int(hi.max(initial=0)) + 1) + hi, return_inverse=True, return_counts=True)
    if (counts != 2).any():
        raise ValueError("the edge list is not symmetric: every (j, i) needs its (i, j), once")
    first = np.zeros(keys.size, dtype=np.int64)
    first[pair_of] = lo
    second = np.zeros(keys.size, dtype=np.int64)
    second[pair_of] = hi
    return np.stack([first, second]), pair_of.reshape(-1).astype(np.int64)


def selection(mols: Molecules, idx: np.ndarray | list[int]) -> np.ndarray:
    """``idx`` as a checked, non-empty int64 array of molecule indices of ``mols``.

    Raises:
      ValueError: an empty selection.
      IndexError: an index out of range.
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("empty selection: a batch needs at least one molecule")
    if idx.min() < 0 or idx.max() >= len(mols):
        raise IndexError(f"molecule index out of range [0, {len(mols)})")
    return idx


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
