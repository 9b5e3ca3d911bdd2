"""posenc.torch.pair / posenc.haiku.pair: forces by autograd, fitting, and torch <-> Haiku equality."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import posenc.haiku as ph
import posenc.torch as pt
from posenc import toys
from posenc.convert import haiku_to_torch, torch_to_haiku
from posenc.fitting import normalisation
from posenc.haiku import pair as hp
from posenc.torch import pair as tp

F64 = torch.float64
LJ = toys.LennardJones()
GRID = (16, 8, 0.85, 4.6)  # n_bin, dim, x_min, x_max: covers the clusters' pair distances below


def torch_pair_model(seed=0, encoding="hermite", hidden=16):
    torch.manual_seed(seed)
    enc = {"hermite": lambda: pt.HermiteEncoding(*GRID, dtype=F64),
           "mlp": lambda: pt.MLPEncoding(8, 16, dtype=F64),
           "gaussian": lambda: pt.GaussianEncoding(8, 0.85, 4.6, dtype=F64)}[encoding]()
    return tp.PairEnergy(enc, hidden=hidden, dtype=F64)


def haiku_factory(encoding="hermite"):
    return {"hermite": functools.partial(ph.HermiteEncoding, *GRID),
            "mlp": functools.partial(ph.MLPEncoding, 8, 16),
            "gaussian": functools.partial(ph.GaussianEncoding, 8, 0.85, 4.6)}[encoding]


@pytest.fixture(scope="module")
def clusters():
    return toys.random_clusters(toys.mixture(), 12, n_atoms=(2, 5), seed=0)


def test_intra_pairs_match_numpy_and_each_molecule():
    n_atoms = np.array([3, 1, 4, 2])
    idx_t, mol_t = tp.intra_pairs(torch.tensor(n_atoms))
    idx_h, mol_h = hp.intra_pairs(n_atoms)
    np.testing.assert_array_equal(idx_t.numpy(), idx_h)
    np.testing.assert_array_equal(mol_t.numpy(), mol_h)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    expected = np.concatenate([np.stack(toys.pair_indices(n)) + o for n, o in zip(n_atoms, offsets)], axis=1)
    np.testing.assert_array_equal(idx_h, expected)
    np.testing.assert_array_equal(mol_h, [0, 0, 0, 2, 2, 2, 2, 2, 2, 3])
    with pytest.raises(ValueError, match="n_atoms"):
        tp.intra_pairs(torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="n_atoms"):
        hp.intra_pairs(np.array([], dtype=np.int64))


def test_pair_forces_are_minus_derivative():
    model = torch_pair_model()
    r = torch.linspace(1.0, 4.0, 25, dtype=F64)
    energy, force = tp.energy_and_force(model, r)
    h = 1e-6
    fd = -(model(r + h) - model(r - h)) / (2 * h)
    torch.testing.assert_close(force, fd.detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(energy.detach(), model(r).detach())


def test_cluster_energy_is_sum_of_pairs_and_forces_are_gradient(clusters):
    model = tp.ClusterEnergy(pt.HermiteEncoding(*GRID, dtype=F64), hidden=16, dtype=F64)
    pos = torch.tensor(clusters.pos)
    n_atoms = torch.tensor(clusters.n_atoms)
    energy, forces = tp.energy_and_forces(model, pos, n_atoms)
    pair_index, pair_molecule = tp.intra_pairs(n_atoms)
    r = (pos[pair_index[0]] - pos[pair_index[1]]).norm(dim=-1)
    expected = torch.zeros(len(clusters), dtype=F64).index_add(0, pair_molecule, model.pair_energy(r))
    torch.testing.assert_close(energy.detach(), expected.detach())
    h = 1e-6
    fd = torch.zeros_like(pos)
    for a in range(pos.shape[0]):
        for c in range(3):
            step = torch.zeros_like(pos)
            step[a, c] = h
            e_plus = model(pos + step, pair_index, pair_molecule, len(clusters)).sum()
            e_minus = model(pos - step, pair_index, pair_molecule, len(clusters)).sum()
            fd[a, c] = -(e_plus - e_minus).detach() / (2 * h)
    torch.testing.assert_close(forces, fd, rtol=1e-5, atol=1e-7)
    # a rigid translation leaves energies unchanged and forces sum to zero per molecule
    shifted = model(pos + torch.tensor([0.3, -1.0, 2.0], dtype=F64), pair_index, pair_molecule, len(clusters))
    torch.testing.assert_close(shifted.detach(), energy.detach())
    torch.testing.assert_close(forces.sum(0), torch.zeros(3, dtype=F64), atol=1e-10, rtol=0)


def test_short_fit_reduces_loss_deterministically_and_freezes_normalisation():
    train = toys.pair_curve(toys.Morse(), 96, 0.9, 3.0, seed=0)
    test = toys.pair_curve(toys.Morse(), 64, 0.9, 3.0, grid=True)
    results, models = [], []
    for _ in range(2):
        model = torch_pair_model(seed=1)
        before = tp.evaluate(model, test)
        results.append(tp.fit(model, train, test, steps=60, lr=1e-2, batch_size=32, lam=0.01, progress=False))
        models.append(model)
    res = results[0]
    assert res.loss[-10:].mean() < 0.2 * res.loss[:10].mean()
    assert res.energy_mae < before[0] and res.force_mae < before[1]
    assert (res.smoothness > 0).all()
    np.testing.assert_array_equal(res.loss, results[1].loss)  # same seed, same weights: same run
    stats = normalisation(train)
    assert float(models[0].shift) == pytest.approx(stats["shift"])
    assert float(models[0].scale) == pytest.approx(stats["scale"])
    assert stats["scale"] == pytest.approx(np.std(train.energy))


def test_cluster_fit_energy_only_and_type_errors(clusters):
    torch.manual_seed(0)
    model = tp.ClusterEnergy(pt.HermiteEncoding(*GRID, dtype=F64), hidden=16, dtype=F64)
    res = tp.fit(model, clusters, steps=40, lr=1e-2, batch_size=4, force_weight=0.0, progress=False)
    assert (res.force_loss == 0).all() and res.energy_loss[-5:].mean() < res.energy_loss[:5].mean()
    with pytest.raises(TypeError, match="ClusterEnergy"):
        tp.fit(torch_pair_model(), clusters, steps=1, progress=False)
    with pytest.raises(TypeError, match="PairEnergy"):
        tp.fit(model, toys.pair_curve(LJ, 8, 1.0, 2.0), steps=1, progress=False)


@pytest.mark.parametrize("encoding", ["hermite", "mlp"])
def test_torch_to_haiku_pair_energy_is_equal(x64, encoding):
    model = torch_pair_model(encoding=encoding)
    with torch.no_grad():
        model.shift.fill_(0.3)
        model.scale.fill_(2.0)
    params = torch_to_haiku(model, "pair_energy")
    transformed = hp.pair_energy_model(haiku_factory(encoding), hidden=16)
    init = jax.jit(transformed.init)(jax.random.PRNGKey(0), jnp.ones(3))
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(
        jax.tree_util.tree_map(jnp.asarray, params))
    r = np.linspace(0.9, 4.5, 50)
    e_h, f_h = jax.jit(functools.partial(hp.energy_and_force, transformed.apply))(params, jnp.asarray(r))
    e_t, f_t = tp.energy_and_force(model, torch.tensor(r))
    np.testing.assert_allclose(np.asarray(e_h), e_t.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f_h), f_t.numpy(), rtol=0, atol=1e-6)
    # and back: Haiku's own init moved into a fresh torch model and out again is unchanged
    back = haiku_to_torch(init, torch_pair_model(seed=5, encoding=encoding), "pair_energy")
    jax.tree_util.tree_map(np.testing.assert_array_equal, torch_to_haiku(back, "pair_energy"),
                           jax.tree_util.tree_map(np.asarray, init))


def test_cluster_models_agree_and_fit_the_same_trajectory(x64, clusters):
    torch.manual_seed(2)
    model = tp.ClusterEnergy(pt.HermiteEncoding(*GRID, dtype=F64), hidden=16, dtype=F64)
    params = torch_to_haiku(model, "cluster_energy")
    transformed = hp.cluster_energy_model(haiku_factory(), hidden=16)
    pair_index, pair_molecule = hp.intra_pairs(clusters.n_atoms)
    forward = jax.jit(functools.partial(hp.energy_and_forces, transformed.apply), static_argnums=4)
    e_h, f_h = forward(params, jnp.asarray(clusters.pos), pair_index, pair_molecule, len(clusters))
    e_t, f_t = tp.energy_and_forces(model, torch.tensor(clusters.pos), torch.tensor(clusters.n_atoms))
    np.testing.assert_allclose(np.asarray(e_h), e_t.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(f_h), f_t.numpy(), atol=1e-6)
    kw = {"steps": 8, "lr": 1e-2, "batch_size": 5, "lam": 0.1, "progress": False}
    res_h = hp.fit(transformed, params, clusters, **kw)  # padded batches in Haiku, ragged in torch
    res_t = tp.fit(model, clusters, **kw)
    np.testing.assert_allclose(res_h.loss, res_t.loss, rtol=1e-9)
    assert res_h.energy_mae == pytest.approx(res_t.energy_mae, rel=1e-9)
    assert res_h.force_mae == pytest.approx(res_t.force_mae, rel=1e-9)
    trained = haiku_to_torch(res_h.params, tp.ClusterEnergy(pt.HermiteEncoding(*GRID, dtype=F64), hidden=16,
                                                            dtype=F64), "cluster_energy")
    for a, b in zip(trained.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_haiku_pair_fit_matches_torch(x64):
    train = toys.pair_curve(LJ, 64, 0.9, 3.0, seed=0)
    model = torch_pair_model(seed=3)
    params = torch_to_haiku(model, "pair_energy")
    kw = {"steps": 10, "lr": 1e-2, "batch_size": 16, "lam": 0.05, "progress": False}
    res_h = hp.fit(hp.pair_energy_model(haiku_factory(), hidden=16), params, train, **kw)
    res_t = tp.fit(model, train, **kw)
    np.testing.assert_allclose(res_h.loss, res_t.loss, rtol=1e-9)
    assert res_h.loss[-1] < res_h.loss[0]
    np.testing.assert_allclose(res_h.smoothness, res_t.smoothness, rtol=1e-9)
