"""Tests of posenc.torch.models.dimenet: triplets, symmetries, forces, encodings, torch-geometric parity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch_geometric.nn.models.dimenet as pyg_dimenet

from posenc.data.graphs import radius_edges
from posenc.data.molecules import Molecules
from posenc.encoding_defaults import TABLE_ENCODINGS
from posenc.torch.batching import collate
from posenc.torch import ENCODINGS, TableEncoding, total_smoothness_loss
from posenc.torch.models.dimenet import ANGLE_ENCODING_DEFAULTS, DimeNetPlusPlus, SphericalBasis, triplets

CUTOFF = 3.0
TINY = dict(hidden_channels=16, out_channels=1, num_blocks=2, int_emb_size=8, basis_emb_size=4,
            out_emb_channels=16, num_spherical=3, num_radial=4, cutoff=CUTOFF)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_molecules(seed: int = 0, sizes: tuple[int, ...] = (4, 6, 5), box: float = 3.5) -> Molecules:
    """Molecules with random positions (atoms >= 0.8 A apart), some pairs beyond ``CUTOFF``."""
    rng = np.random.default_rng(seed)
    pos = []
    for n in sizes:
        while True:
            p = rng.uniform(0.0, box, size=(n, 3))
            d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(n) * box
            if d.min() > 0.8:
                break
        pos.append(p)
    n_total = sum(sizes)
    return Molecules(z=rng.choice([1, 6, 7, 8], size=n_total), pos=np.concatenate(pos),
                     n_atoms=np.array(sizes), targets=np.zeros((len(sizes), 1)), target_names=("E",),
                     target_units=("meV",))


def tiny_model(radial: str = "bessel", angular: str = "spherical", seed: int = 0, **kwargs) -> DimeNetPlusPlus:
    """A small float64 model whose output layer is not zero (DimeNet's default init predicts 0)."""
    torch.manual_seed(seed)
    args = {**TINY, **kwargs}
    return DimeNetPlusPlus(**args, radial_encoding=radial, angular_encoding=angular,
                           output_initializer="glorot_orthogonal").double()


def batch_of(mols: Molecules, idx=None):
    return collate(mols, np.arange(len(mols)) if idx is None else idx, cutoff=CUTOFF, dtype=torch.float64)


def brute_force_triplets(edge_index: torch.Tensor) -> list[tuple[int, int, int, int, int]]:
    """(i, j, k, kj, ji) for every edge pair k -> j, j -> i with k != i, sorted by (ji, k, kj)."""
    senders, receivers = edge_index.tolist()
    out = []
    for ji, (j, i) in enumerate(zip(senders, receivers)):
        for kj, (k, j2) in enumerate(zip(senders, receivers)):
            if j2 == j and k != i:
                out.append((i, j, k, kj, ji))
    return sorted(out, key=lambda t: (t[4], t[2], t[3]))


@pytest.mark.parametrize("graph", ["radius", "random_directed", "empty"])
def test_triplets_match_brute_force(graph):
    if graph == "radius":
        mols = random_molecules()
        b = batch_of(mols)
        edge_index, n = b.edge_index, b.z.numel()
        assert edge_index.shape[1] < int((mols.n_atoms * (mols.n_atoms - 1)).sum())  # some pairs cut off
    elif graph == "random_directed":  # not symmetric, unsorted, with an isolated atom
        gen = torch.Generator().manual_seed(1)
        n = 9
        pairs = torch.randint(0, n - 1, (2, 40), generator=gen)
        pairs = torch.unique(pairs[:, pairs[0] != pairs[1]], dim=1)
        edge_index = pairs[:, torch.randperm(pairs.shape[1], generator=gen)]
    else:
        edge_index, n = torch.zeros(2, 0, dtype=torch.int64), 3
    got = list(zip(*(t.tolist() for t in triplets(edge_index, n))))
    expected = brute_force_triplets(edge_index)
    assert got == expected  # same triplets in torch-geometric's order
    if graph != "empty":
        assert len(expected) > 0


def test_triplets_reject_bad_edges():
    with pytest.raises(ValueError, match="outside"):
        triplets(torch.tensor([[0, 3], [1, 0]]), 3)
    with pytest.raises(TypeError, match="int64"):
        triplets(torch.tensor([[0, 1], [1, 0]], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        triplets(torch.tensor([0, 1]), 2)


@pytest.fixture(scope="module")
def pyg_spherical_basis():
    """torch-geometric's own (sympy-built, slow) spherical basis of the TINY model."""
    return pyg_dimenet.SphericalBasisLayer(TINY["num_spherical"], TINY["num_radial"], CUTOFF, 5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spherical_basis_matches_torch_geometric(pyg_spherical_basis, dtype):
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(50, generator=gen, dtype=dtype) * 1.1 * CUTOFF + 0.5  # also beyond the cutoff
    angle = torch.rand(200, generator=gen, dtype=dtype) * np.pi
    idx_kj = torch.randint(0, 50, (200,), generator=gen)
    ours = SphericalBasis(TINY["num_spherical"], TINY["num_radial"], CUTOFF, 5)(dist, angle, idx_kj)
    expected = pyg_spherical_basis(dist, angle, idx_kj)
    assert ours.dtype == dtype and float(expected.abs().max()) > 0.1
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours, expected, rtol=tol, atol=tol)


def test_matches_torch_geometric_with_our_graph(pyg_spherical_basis, monkeypatch):
    """Our default model = torch-geometric's DimeNetPlusPlus forward, its graph steps replaced by ours."""
    monkeypatch.setattr(pyg_dimenet, "SphericalBasisLayer", lambda *args: pyg_spherical_basis)  # built once
    torch.manual_seed(3)
    reference = pyg_dimenet.DimeNetPlusPlus(**TINY, output_initializer="glorot_orthogonal").double()
    model = DimeNetPlusPlus(**TINY).double()
    model.load_state_dict(reference.state_dict())  # the same parameter names

    monkeypatch.setattr(pyg_dimenet, "radius_graph",
                        lambda pos, r, batch, max_num_neighbors: torch.as_tensor(
                            radius_edges(pos.numpy(), torch.bincount(batch).numpy(), r)))
    monkeypatch.setattr(pyg_dimenet, "triplets", lambda ei, num_nodes: (ei[1], ei[0], *triplets(ei, num_nodes)))
    b = batch_of(random_molecules())
    with torch.no_grad():
        expected = reference(b.z, b.pos, b.batch)
        got = model(b)
    assert float(expected.abs().min()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("radial,angular", [("bessel", "spherical"), ("hermite", "hermite")])
def test_energy_invariant_under_rotation_translation_permutation(radial, angular):
    model = tiny_model(radial, angular)
    mols = random_molecules(seed=2)
    energy = model(batch_of(mols))

    rot, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    moved = Molecules(z=mols.z, pos=mols.pos @ rot.T + np.array([1.5, -2.0, 0.7]), n_atoms=mols.n_atoms,
                      targets=mols.targets, target_names=mols.target_names, target_units=mols.target_units)
    torch.testing.assert_close(model(batch_of(moved)), energy, rtol=1e-10, atol=1e-10)

    # permute the atoms inside every molecule
    perm = np.concatenate([o + np.random.default_rng(6).permutation(n) for o, n in zip(mols.offsets, mols.n_atoms)])
    shuffled = Molecules(z=mols.z[perm], pos=mols.pos[perm], n_atoms=mols.n_atoms, targets=mols.targets,
                         target_names=mols.target_names, target_units=mols.target_units)
    torch.testing.assert_close(model(batch_of(shuffled)), energy, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("radial,angular", [("bessel", "spherical"), ("hermite", "hermite"), ("gaussian", "linear")])
def test_forces_match_finite_differences(radial, angular):
    model = tiny_model(radial, angular)
    mols = random_molecules(seed=4, sizes=(5,))
    b = batch_of(mols)
    _, forces = model.energy_and_forces(b)
    step = 1e-5
    numeric = torch.zeros_like(forces)
    with torch.no_grad():
        for a in range(forces.shape[0]):
            for c in range(3):
                plus, minus = b.pos.clone(), b.pos.clone()
                plus[a, c] += step
                minus[a, c] -= step
                # the graph stays the batch's (no pair is within 1e-5 of the cutoff)
                e_plus = model(replace(b, pos=plus))
                e_minus = model(replace(b, pos=minus))
                numeric[a, c] = -(e_plus - e_minus).sum() / (2 * step)
    assert float(forces.abs().max()) > 1e-3
    torch.testing.assert_close(forces, numeric, rtol=1e-6, atol=1e-7)


def test_force_training_reaches_the_parameters():
    model = tiny_model("hermite", "hermite")
    _, forces = model.energy_and_forces(batch_of(random_molecules()), create_graph=True)
    forces.pow(2).sum().backward()
    for name in ("rbf.encoding.values", "sbf.encoding.slopes", "emb.lin.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0, name


def test_batch_equals_molecules_one_by_one():
    model = tiny_model("hermite", "spherical")
    mols = random_molecules(seed=7)
    together, forces = model.energy_and_forces(batch_of(mols))
    alone = [model.energy_and_forces(batch_of(mols, [m])) for m in range(len(mols))]
    torch.testing.assert_close(together, torch.cat([e for e, _ in alone]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forces, torch.cat([f for _, f in alone]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("angular", ["spherical", *sorted(ANGLE_ENCODING_DEFAULTS)])
@pytest.mark.parametrize("radial", ["bessel", *sorted(set(ENCODINGS) - {"bessel"})])
def test_every_encoding_runs_and_is_smooth_at_the_cutoff(radial, angular):
    model = tiny_model(radial, angular, out_channels=2)
    n_tables = sum(isinstance(m, TableEncoding) for m in model.modules())
    assert n_tables == (radial in TABLE_ENCODINGS) + (angular in TABLE_ENCODINGS)
    if n_tables:
        assert float(total_smoothness_loss(model)) > 0
    # atom 2 sits just inside / just outside the cutoff of atom 1 (and beyond that of atom 0):
    # the edge 1 <-> 2 appears or vanishes, the energy must not jump
    energies = []
    for gap in (-1e-7, 1e-7):
        direction = np.array([np.cos(np.pi / 3), np.sin(np.pi / 3), 0.0])
        pos = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [1.1, 0.0, 0.0] + (CUTOFF + gap) * direction])
        mols = Molecules(z=np.array([6, 8, 1]), pos=pos, n_atoms=np.array([3]), targets=np.zeros((1, 1)),
                         target_names=("E",), target_units=("meV",))
        b = batch_of(mols)
        assert b.edge_index.shape[1] == (4 if gap < 0 else 2)
        energy, forces = model.energy_and_forces(b)
        assert energy.shape == (1, 2) and bool(torch.isfinite(forces).all())
        energies.append(energy)
    torch.testing.assert_close(energies[0], energies[1], rtol=0, atol=1e-9)


def test_bad_configurations_and_inputs_raise():
    with pytest.raises(ValueError, match="unknown radial_encoding"):
        DimeNetPlusPlus(**TINY, radial_encoding="fourier")
    with pytest.raises(ValueError, match="unsupported angular encoding"):
        DimeNetPlusPlus(**TINY, angular_encoding="bessel")
    with pytest.raises(ValueError, match="DimeNet's own basis"):
        DimeNetPlusPlus(**TINY, radial_kwargs={"n_basis": 8})
    with pytest.raises(ValueError, match="DimeNet's own basis"):
        DimeNetPlusPlus(**TINY, angular_kwargs={"dim": 8})

    model = tiny_model("hermite", "hermite")
    mols = random_molecules()
    b = batch_of(mols)
    loops = replace(b, edge_index=torch.cat([b.edge_index, torch.tensor([[0], [0]])], 1))
    with pytest.raises(ValueError, match="self loops"):
        model(loops)
    across = replace(b, edge_index=torch.cat([b.edge_index, torch.tensor([[0], [5]])], 1))
    with pytest.raises(ValueError, match="different molecules"):
        model(across)
    heavy = replace(b, z=torch.full_like(b.z, 99))
    with pytest.raises(ValueError, match="atomic numbers"):
        model(heavy)
    with pytest.raises(TypeError, match="dtype"):
        model(collate(mols, [0], cutoff=CUTOFF, dtype=torch.float32))
