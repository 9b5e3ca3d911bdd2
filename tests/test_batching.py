"""Molecules -> graphs: numpy edges and radius graphs, torch and JAX collation, epoch order."""

import numpy as np
import pytest
import torch

from molecule_factory import random_molecules
from posenc.data.graphs import batches, fully_connected_edges, radius_edges, unordered_pairs
from posenc.haiku.batching import collate_jax
from posenc.torch.batching import Batch, collate


def brute_force_edges(n_atoms, pos=None, cutoff=None):
    """Every (j, i), j != i, in one molecule (and closer than cutoff), as a set."""
    mol = np.repeat(np.arange(len(n_atoms)), n_atoms)
    out = set()
    for j in range(mol.size):
        for i in range(mol.size):
            if i != j and mol[i] == mol[j] and (cutoff is None or np.linalg.norm(pos[i] - pos[j]) < cutoff):
                out.add((j, i))
    return out


def as_set(edge_index):
    return set(map(tuple, np.asarray(edge_index).T.tolist()))


def test_fully_connected_edges_match_brute_force():
    n_atoms = np.array([3, 1, 4, 2])
    edges = fully_connected_edges(n_atoms)
    assert edges.shape == (2, sum(n * (n - 1) for n in n_atoms))
    assert edges.dtype == np.int64
    assert as_set(edges) == brute_force_edges(n_atoms)


def test_radius_edges_match_brute_force():
    mols = random_molecules([5, 7, 2], seed=1, spread=2.0)
    for cutoff in (1.5, 3.0, 100.0):
        edges = radius_edges(mols.pos, mols.n_atoms, cutoff)
        assert edges.dtype == np.int64
        assert as_set(edges) == brute_force_edges(mols.n_atoms, mols.pos, cutoff)
    np.testing.assert_array_equal(radius_edges(mols.pos, mols.n_atoms, 100.0), fully_connected_edges(mols.n_atoms))


def test_radius_edges_reject_bad_input():
    pos = np.zeros((4, 3))
    with pytest.raises(ValueError, match="adds up to 3"):
        radius_edges(pos, np.array([1, 2]), 2.0)
    with pytest.raises(ValueError, match="cutoff"):
        radius_edges(pos, np.array([2, 2]), 0.0)
    with pytest.raises(ValueError, match=r"\[A, 3\]"):
        radius_edges(np.zeros((4, 2)), np.array([2, 2]), 2.0)


@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_unordered_pairs_of_a_symmetric_graph(cutoff):
    mols = random_molecules([4, 6, 1], seed=5)
    edges = fully_connected_edges(mols.n_atoms) if cutoff is None else radius_edges(mols.pos, mols.n_atoms, cutoff)
    pairs, pair_of = unordered_pairs(edges)
    assert pairs.shape == (2, edges.shape[1] // 2) and (pairs[0] < pairs[1]).all()
    assert as_set(pairs) == {(min(j, i), max(j, i)) for j, i in edges.T}
    np.testing.assert_array_equal(np.sort(pairs[:, pair_of], axis=0), np.sort(edges, axis=0))
    with pytest.raises(ValueError, match="symmetric"):
        unordered_pairs(edges[:, 1:])
    with pytest.raises(ValueError, match="self loop"):
        unordered_pairs(np.array([[0, 1, 1], [1, 0, 1]]))


def test_collate_selects_molecules_in_order():
    mols = random_molecules([3, 5, 4], seed=2)
    b = collate(mols, [2, 0], dtype=torch.float64)
    assert isinstance(b, Batch) and b.n_molecules == 2
    atoms = mols.atom_index(np.array([2, 0]))
    np.testing.assert_array_equal(b.z.numpy(), mols.z[atoms])
    np.testing.assert_array_equal(b.pos.numpy(), mols.pos[atoms])
    np.testing.assert_array_equal(b.forces.numpy(), mols.forces[atoms])
    np.testing.assert_array_equal(b.targets.numpy(), mols.targets[[2, 0]])
    np.testing.assert_array_equal(b.batch.numpy(), [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(b.n_atoms.numpy(), [4, 3])
    assert b.pos.dtype == b.targets.dtype == torch.float64 and b.z.dtype == b.edge_index.dtype == torch.int64
    assert as_set(b.edge_index) == brute_force_edges([4, 3])
    moved = b.to("cpu")
    assert moved is not b and torch.equal(moved.pos, b.pos)


def test_collate_radius_graph_and_no_forces():
    mols = random_molecules([6, 6], seed=3, forces=False)
    b = collate(mols, [0, 1], cutoff=2.0)
    assert b.forces is None
    assert as_set(b.edge_index) == brute_force_edges([6, 6], mols.pos, 2.0)


def test_collate_rejects_bad_selections():
    mols = random_molecules([2, 3], seed=0)
    with pytest.raises(ValueError, match="empty selection"):
        collate(mols, [])
    with pytest.raises(IndexError):
        collate(mols, [2])
    with pytest.raises(TypeError, match="floating"):
        collate(mols, [0], dtype=torch.int64)


def test_collate_jax_pads_with_masks(x64):
    mols = random_molecules([3, 5, 4], seed=4)
    g = collate_jax(mols, [1, 2], max_atoms=12, max_edges=40, max_molecules=3)
    b = collate(mols, [1, 2], dtype=torch.float64)
    n_a, n_e = 9, 5 * 4 + 4 * 3
    assert g["pos"].shape == (12, 3) and g["edge_index"].shape == (2, 40) and g["targets"].shape == (3, 1)
    np.testing.assert_array_equal(np.asarray(g["atom_mask"]), np.arange(12) < n_a)
    np.testing.assert_array_equal(np.asarray(g["edge_mask"]), np.arange(40) < n_e)
    np.testing.assert_array_equal(np.asarray(g["mol_mask"]), [True, True, False])
    np.testing.assert_array_equal(np.asarray(g["pos"])[:n_a], b.pos.numpy())
    np.testing.assert_array_equal(np.asarray(g["edge_index"])[:, :n_e], b.edge_index.numpy())
    np.testing.assert_array_equal(np.asarray(g["batch"]), [0] * 5 + [1] * 4 + [3] * 3)  # padding: out of range
    np.testing.assert_array_equal(np.asarray(g["forces"])[:n_a], b.forces.numpy())
    pairs, pair_of = np.asarray(g["pairs"]), np.asarray(g["pair_of"])
    assert pairs.shape == (2, 20) and np.asarray(g["pair_mask"]).sum() == n_e // 2
    edges = np.asarray(g["edge_index"])[:, :n_e]
    np.testing.assert_array_equal(np.sort(pairs[:, pair_of[:n_e]], axis=0), np.sort(edges, axis=0))
    with pytest.raises(ValueError, match="edges"):
        collate_jax(mols, [1, 2], max_atoms=12, max_edges=10)
    with pytest.raises(ValueError, match="empty selection"):
        collate_jax(mols, [], max_atoms=12, max_edges=40)


def test_batches_cover_the_set_reproducibly():
    mols = random_molecules([2] * 11, seed=0)
    first = list(batches(mols, 4, shuffle=True, seed=7))
    assert [len(b) for b in first] == [4, 4, 3]
    assert sorted(np.concatenate(first).tolist()) == list(range(11))
    again = list(batches(mols, 4, shuffle=True, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = np.concatenate(list(batches(mols, 4, shuffle=True, seed=8)))
    assert not np.array_equal(np.concatenate(first), other)
    np.testing.assert_array_equal(np.concatenate(list(batches(mols, 4, shuffle=False))), np.arange(11))
    with pytest.raises(ValueError, match="seed"):
        next(batches(mols, 4, shuffle=True))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(mols, 0, shuffle=False))
