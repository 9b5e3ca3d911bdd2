"""posenc.toys: analytic forces, cluster forces, determinism, geometry and input validation."""

import numpy as np
import pytest

from posenc import toys

POTENTIALS = [
    toys.LennardJones(),
    toys.LennardJones(epsilon=0.5, sigma=1.3),
    toys.Morse(),
    toys.Morse(d_e=2.0, a=3.0, r_e=1.5),
    toys.ScreenedCoulomb(),
    toys.ScreenedCoulomb(q=-2.0, kappa=1.5),
    toys.mixture(),
    toys.LennardJones() + toys.ScreenedCoulomb(q=0.3),
]


@pytest.mark.parametrize("potential", POTENTIALS, ids=lambda p: p.name)
def test_force_is_minus_derivative_of_energy(potential):
    r = np.linspace(0.8, 6.0, 97)
    h = 1e-6
    fd = -(potential.energy(r + h) - potential.energy(r - h)) / (2 * h)
    np.testing.assert_allclose(potential.force(r), fd, rtol=1e-6, atol=1e-7)


def test_functions_match_objects_and_known_points():
    r = np.array([0.9, 1.1, 2.5])
    for fn, obj in ((toys.lennard_jones, toys.LennardJones()), (toys.morse, toys.Morse()),
                    (toys.screened_coulomb, toys.ScreenedCoulomb())):
        e, f = fn(r)
        np.testing.assert_array_equal(e, obj.energy(r))
        np.testing.assert_array_equal(f, obj.force(r))
    e, f = toys.lennard_jones(2 ** (1 / 6), epsilon=0.7)
    np.testing.assert_allclose([e, f], [-0.7, 0.0], atol=1e-12)
    np.testing.assert_allclose(toys.lennard_jones(1.0)[0], 0.0, atol=1e-12)
    e, f = toys.morse(1.5, d_e=2.0, r_e=1.5)
    np.testing.assert_allclose([e, f], [-2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(toys.screened_coulomb(2.0, q=1.0, kappa=0.5)[0], np.exp(-1.0) / 2.0)
    np.testing.assert_allclose(toys.morse(0.0)[0], (1 - np.e) ** 2 - 1)  # finite at r = 0


def test_sum_potential_adds_and_names():
    mix = toys.mixture()
    assert mix.name == "Morse + screened Coulomb"
    r = np.linspace(1.0, 4.0, 11)
    e = sum(p.energy(r) for p in mix.parts)
    np.testing.assert_allclose(mix.energy(r), e)
    assert toys.mixture(toys.Morse(), name="m").name == "m"
    with pytest.raises(ValueError, match="at least one"):
        toys.SumPotential(())


@pytest.mark.parametrize("potential", [toys.LennardJones(), toys.mixture()], ids=lambda p: p.name)
def test_cluster_forces_are_minus_gradient_of_total_energy(potential):
    mols = toys.random_clusters(potential, 3, n_atoms=(4, 6), seed=3)
    h = 1e-6
    for m in range(len(mols)):
        sub = mols.subset([m])
        pos = sub.pos
        fd = np.zeros_like(pos)
        for a in range(pos.shape[0]):
            for c in range(3):
                plus, minus = pos.copy(), pos.copy()
                plus[a, c] += h
                minus[a, c] -= h
                fd[a, c] = -(toys.cluster_energy_forces(potential, plus)[0]
                             - toys.cluster_energy_forces(potential, minus)[0]) / (2 * h)
        np.testing.assert_allclose(sub.forces, fd, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sub.forces.sum(0), 0.0, atol=1e-9)  # Newton's third law
        e, _ = toys.cluster_energy_forces(potential, pos)
        assert sub.targets[0, 0] == e


def test_random_clusters_layout_and_geometry():
    mols = toys.random_clusters(toys.LennardJones(), 40, n_atoms=(3, 9), min_dist=0.95, density=0.3, seed=0)
    assert len(mols) == 40 and mols.n_atoms.min() >= 3 and mols.n_atoms.max() <= 9
    assert mols.target_names == ("energy",) and mols.target_units == ("eps",)
    assert mols.forces.shape == mols.pos.shape and (mols.z == 18).all()
    d = toys.pair_distances(mols)
    assert d.size == int((mols.n_atoms * (mols.n_atoms - 1) // 2).sum())
    assert d.min() >= 0.95
    diameter = 2 * (3 * 9 / (4 * np.pi * 0.3)) ** (1 / 3)
    assert d.max() <= diameter
    fixed = toys.random_clusters(toys.Morse(), 5, n_atoms=4, seed=0)
    assert (fixed.n_atoms == 4).all()


def test_determinism_by_seed():
    lj = toys.LennardJones()
    a, b, c = (toys.pair_curve(lj, 50, 0.9, 3.0, noise=0.1, force_noise=0.1, seed=s) for s in (1, 1, 2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.r, c.r)
    assert np.all(np.diff(a.r) >= 0) and a.r.min() >= 0.9 and a.r.max() <= 3.0
    m1, m2, m3 = (toys.random_clusters(lj, 6, seed=s) for s in (4, 4, 5))
    np.testing.assert_array_equal(m1.pos, m2.pos)
    np.testing.assert_array_equal(m1.targets, m2.targets)
    assert m1.pos.shape != m3.pos.shape or not np.array_equal(m1.pos, m3.pos)


def test_pair_curve_grid_and_noise():
    lj = toys.LennardJones()
    clean = toys.pair_curve(lj, 11, 1.0, 2.0, grid=True)
    np.testing.assert_allclose(clean.r, np.linspace(1.0, 2.0, 11))
    np.testing.assert_allclose(clean.energy, lj.energy(clean.r))
    noisy = toys.pair_curve(lj, 2000, 1.0, 2.0, noise=0.05, force_noise=0.2, seed=0, grid=True)
    assert abs(np.std(noisy.energy - lj.energy(noisy.r)) - 0.05) < 0.005
    assert abs(np.std(noisy.force - lj.force(noisy.r)) - 0.2) < 0.02


def test_validation_errors():
    with pytest.raises(ValueError, match="> 0"):
        toys.lennard_jones(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="> 0"):
        toys.screened_coulomb(-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        toys.morse(-0.1)
    with pytest.raises(ValueError, match="NaN"):
        toys.LennardJones().energy(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="epsilon"):
        toys.LennardJones(epsilon=-1.0)
    with pytest.raises(ValueError, match="kappa"):
        toys.ScreenedCoulomb(kappa=0.0)
    with pytest.raises(ValueError, match="q must"):
        toys.ScreenedCoulomb(q=0.0)
    with pytest.raises(ValueError, match="n must be"):
        toys.pair_curve(toys.Morse(), 0, 1.0, 2.0)
    with pytest.raises(TypeError, match="n must be an int"):
        toys.pair_curve(toys.Morse(), 10.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="r_min < r_max"):
        toys.pair_curve(toys.Morse(), 10, 2.0, 1.0)
    with pytest.raises(ValueError, match="noise"):
        toys.pair_curve(toys.Morse(), 10, 1.0, 2.0, noise=-1.0)
    with pytest.raises(ValueError, match="n_clusters"):
        toys.random_clusters(toys.Morse(), 0)
    with pytest.raises(ValueError, match="low <= high"):
        toys.random_clusters(toys.Morse(), 3, n_atoms=(5, 3))
    with pytest.raises(TypeError, match="n_atoms"):
        toys.random_clusters(toys.Morse(), 3, n_atoms=True)
    with pytest.raises(ValueError, match="min_dist"):
        toys.random_clusters(toys.Morse(), 3, min_dist=0.0)
    with pytest.raises(RuntimeError, match="could not place"):
        toys.random_clusters(toys.Morse(), 1, n_atoms=30, min_dist=1.0, density=5.0, max_tries=2000)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        toys.cluster_energy_forces(toys.Morse(), np.zeros((4, 2)))
