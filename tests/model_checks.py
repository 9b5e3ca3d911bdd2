"""Checks every torch backbone must pass: symmetry, forces = -dE/dr, batching, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from posenc.torch.batching import collate
from posenc.data.molecules import Molecules
from posenc.torch.models import energy_and_forces


def transformed(mols: Molecules, seed: int) -> tuple[Molecules, np.ndarray, np.ndarray]:
    """``mols`` rotated, translated and with the atoms of each molecule permuted.

    Returns ``(new, rotation [3, 3], perm [A])``: new atom k is old atom ``perm[k]``.
    """
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=seed).as_matrix()
    perm = np.concatenate([o + rng.permutation(n) for o, n in zip(mols.offsets, mols.n_atoms)])
    pos = mols.pos[perm] @ rot.T + rng.normal(size=3) * 3.0
    return dataclasses.replace(mols, z=mols.z[perm], pos=pos, forces=mols.forces[perm]), rot, perm


def check_symmetry(model: torch.nn.Module, mols: Molecules) -> None:
    """Energy invariant, forces equivariant under rotation, translation and atom permutation."""
    idx = np.arange(len(mols))
    y, f = energy_and_forces(model, collate(mols, idx, dtype=torch.float64))
    new, rot, perm = transformed(mols, seed=3)
    y2, f2 = energy_and_forces(model, collate(new, idx, dtype=torch.float64))
    torch.testing.assert_close(y2, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f2, f[perm] @ torch.as_tensor(rot).T, rtol=1e-9, atol=1e-10)


def check_forces_fd(model: torch.nn.Module, mols: Molecules, h: float = 1e-5) -> None:
    """Forces equal -dE/dr by central finite differences (float64)."""
    b = collate(mols, [0], dtype=torch.float64)
    _, forces = energy_and_forces(model, b)
    fd = torch.zeros_like(b.pos)
    with torch.no_grad():
        for a in range(b.pos.shape[0]):
            for c in range(3):
                step = torch.zeros_like(b.pos)
                step[a, c] = h
                e_plus = model(dataclasses.replace(b, pos=b.pos + step))[0, 0]
                e_minus = model(dataclasses.replace(b, pos=b.pos - step))[0, 0]
                fd[a, c] = -(e_plus - e_minus) / (2 * h)
    torch.testing.assert_close(forces, fd, rtol=1e-6, atol=1e-7)


def check_batch_equals_single(model: torch.nn.Module, mols: Molecules) -> None:
    """A batch of molecules gives what each molecule gives alone."""
    y, f = energy_and_forces(model, collate(mols, np.arange(len(mols)), dtype=torch.float64))
    for m in range(len(mols)):
        y1, f1 = energy_and_forces(model, collate(mols, [m], dtype=torch.float64))
        atoms = mols.atom_index(np.array([m]))
        torch.testing.assert_close(y[m], y1[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(f[atoms], f1, rtol=1e-12, atol=1e-12)


def check_bad_input(model: torch.nn.Module, mols: Molecules) -> None:
    """Empty batch, NaN positions, a dtype mismatch and unknown elements raise clear errors."""
    b = collate(mols, [0], dtype=torch.float64)
    empty = dataclasses.replace(b, z=b.z[:0], pos=b.pos[:0], batch=b.batch[:0], edge_index=b.edge_index[:, :0])
    with pytest.raises(ValueError, match="empty batch"):
        model(empty)
    nan_pos = b.pos.clone()
    nan_pos[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(dataclasses.replace(b, pos=nan_pos))
    with pytest.raises(TypeError, match="dtype mismatch"):
        model(collate(mols, [0], dtype=torch.float32))
    with pytest.raises(ValueError, match="atomic numbers"):
        model(dataclasses.replace(b, z=b.z + 200))
