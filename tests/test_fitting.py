"""posenc.fitting: the backend-agnostic statistics and batch order of the pair-model fits."""

import numpy as np
import pytest

from posenc import toys
from posenc.data.molecules import Molecules
from posenc.fitting import batch_indices, n_samples, normalisation


def test_batch_indices_are_reshuffled_epochs():
    b = batch_indices(10, 4, 7, seed=0)
    assert b.shape == (7, 4)
    per_epoch = 10 // 4
    for start in range(0, 6, per_epoch):  # no repeats inside an epoch
        epoch = b[start:start + per_epoch].ravel()
        assert len(set(epoch.tolist())) == epoch.size
    np.testing.assert_array_equal(b, batch_indices(10, 4, 7, seed=0))
    assert not np.array_equal(b, batch_indices(10, 4, 7, seed=1))
    assert batch_indices(3, 8, 2, seed=0).shape == (2, 3)  # batch larger than the data: one full batch
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0, 5, seed=0)


def test_normalisation_of_a_pair_curve():
    curve = toys.pair_curve(toys.Morse(), 50, 0.9, 3.0, seed=0)
    stats = normalisation(curve)
    assert stats["shift"] == pytest.approx(curve.energy.mean())
    assert stats["scale"] == pytest.approx(curve.energy.std()) == stats["energy_std"]
    assert stats["force_rms"] == pytest.approx(np.sqrt(np.mean(curve.force**2)))
    assert n_samples(curve) == 50


def test_normalisation_of_clusters_recovers_a_constant_pair_energy():
    # every pair contributes exactly c: shift = c per pair and no per-pair spread is left
    n_atoms = np.array([2, 3, 4])
    n_pairs = n_atoms * (n_atoms - 1) / 2
    c = -0.7
    mols = Molecules(z=np.ones(9, int), pos=np.random.default_rng(0).normal(size=(9, 3)), n_atoms=n_atoms,
                     targets=(c * n_pairs)[:, None], target_names=("energy",), target_units=("eps",),
                     forces=np.ones((9, 3)))
    stats = normalisation(mols)
    assert stats["shift"] == pytest.approx(c)
    assert stats["scale"] == pytest.approx(1e-12)  # floored, not zero
    assert stats["energy_std"] == pytest.approx((c * n_pairs).std())
    assert n_samples(mols) == 3


def test_normalisation_rejects_bad_data():
    single = Molecules(z=np.ones(1, int), pos=np.zeros((1, 3)), n_atoms=np.array([1]), targets=np.zeros((1, 1)),
                       target_names=("energy",), target_units=("eps",), forces=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="two atoms"):
        normalisation(single)
    no_forces = Molecules(z=np.ones(2, int), pos=np.eye(2, 3), n_atoms=np.array([2]), targets=np.zeros((1, 1)),
                          target_names=("energy",), target_units=("eps",))
    with pytest.raises(ValueError, match="forces"):
        normalisation(no_forces)
    with pytest.raises(TypeError, match="PairCurve or Molecules"):
        normalisation(np.zeros(3))
