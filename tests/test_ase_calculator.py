"""Tests of posenc.ase_calculator: ASE units, forces = -dE/dr, invariance, energy conservation."""

import json

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from scipy.spatial.transform import Rotation

from posenc.ase_calculator import PosencCalculator
from posenc.torch.batching import collate
from posenc.data.molecules import Molecules
from posenc.torch.models import energy_and_forces, make_model, set_output_stats
from posenc.torch.models.common import N_SPECIES
from posenc.torch.train import build_model
from posenc.trainer import train
from posenc.training import TrainConfig

#: Output scale of the untrained test models (meV): their forces are then of order 0.1-1 eV/Angstrom, like a molecule's.
SCALE_MEV = 1e5


def tiny_model(encoding: str = "hermite", dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = make_model("egnn", encoding=encoding, encoding_kwargs={"n_bin": 16, "dim": 8}, x_max=6.0,
                       n_layers=2, hidden=16, dtype=dtype)
    set_output_stats(model, scale=np.array([SCALE_MEV]), atom_ref=np.zeros((N_SPECIES, 1)), mol_shift=np.zeros(1))
    return model


@pytest.fixture
def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.calc = PosencCalculator(tiny_model())
    return atoms


def test_units_are_ev(ethanol):
    """The calculator's energy and forces are the model's meV values / 1000."""
    calc = ethanol.calc
    mols = Molecules(z=ethanol.numbers, pos=ethanol.positions, n_atoms=np.array([len(ethanol)]),
                     targets=np.zeros((1, 1)), target_names=("energy",), target_units=("meV",))
    energy_mev, forces_mev = energy_and_forces(calc.model, collate(mols, [0], dtype=torch.float64))
    assert ethanol.get_potential_energy() == pytest.approx(float(energy_mev[0, 0].detach()) / 1000, rel=1e-12)
    np.testing.assert_allclose(ethanol.get_forces(), forces_mev.detach().numpy() / 1000, rtol=1e-12, atol=1e-15)
    assert np.abs(ethanol.get_forces()).max() > 0.05  # the test model's forces are not trivially small


def test_forces_are_minus_energy_gradient(ethanol):
    """Central differences of get_potential_energy() over displaced atoms match get_forces()."""
    forces = ethanol.get_forces()
    h = 1e-5
    numeric = np.zeros_like(forces)
    for i in range(len(ethanol)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                shifted = ethanol.copy()
                shifted.calc = ethanol.calc
                shifted.positions[i, k] += sign * h
                energies.append(shifted.get_potential_energy())
            numeric[i, k] = -(energies[0] - energies[1]) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-6)


def test_rotation_translation_permutation(ethanol):
    """E invariant; F rotates with the molecule and follows a permutation of the atoms."""
    e0, f0 = ethanol.get_potential_energy(), ethanol.get_forces()
    rot = Rotation.random(random_state=3).as_matrix()
    moved = ethanol.copy()
    moved.calc = ethanol.calc
    moved.positions = ethanol.positions @ rot.T + np.array([1.0, -2.0, 0.5])
    assert moved.get_potential_energy() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(moved.get_forces(), f0 @ rot.T, atol=1e-10)
    perm = np.random.default_rng(0).permutation(len(ethanol))
    shuffled = ethanol[perm]
    shuffled.calc = ethanol.calc
    assert shuffled.get_potential_energy() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(shuffled.get_forces(), f0[perm], atol=1e-10)


def nve_drift(encoding: str, timestep: float = 0.25, steps: int = 150) -> float:
    """Largest |E_total(t) - E_total(0)| (eV) of a 300 K Velocity Verlet run of ethanol (``timestep`` in fs)."""
    atoms = molecule("CH3CH2OH")
    atoms.calc = PosencCalculator(tiny_model(encoding))
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    total = []
    dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    assert np.isfinite(total).all()
    return float(np.abs(np.array(total) - total[0]).max())


def test_nve_energy_error_is_second_order_with_hermite_not_linear():
    """Velocity Verlet's energy error falls as dt^2 on the C1 Hermite model (halving the step over
    the same 37.5 fs quarters it) but only as dt on the C0 linear table, whose forces jump at every
    bin centre, and the table's error is far larger; on a random (untrained) model of each."""
    hermite = nve_drift("hermite", 0.25, 150), nve_drift("hermite", 0.125, 300)
    linear = nve_drift("linear", 0.25, 150), nve_drift("linear", 0.125, 300)
    assert 3.5 < hermite[0] / hermite[1] < 4.5, f"Hermite: {hermite[0]:.2e} -> {hermite[1]:.2e} eV"
    assert linear[0] / linear[1] < 3.0, f"linear: {linear[0]:.2e} -> {linear[1]:.2e} eV"
    assert linear[0] > 20 * hermite[0], f"linear {linear[0]:.2e} eV vs Hermite {hermite[0]:.2e} eV"


def test_from_run_reproduces_the_trained_model(tmp_path):
    """A training run's output directory gives a calculator with the run's best weights."""
    out = tmp_path / "run"
    config = TrainConfig(dataset="synthetic:md17", encoding="hermite", n_layers=1, hidden=8, epochs=1,
                         n_train=16, n_val=8, n_test=8, progress=False, out_dir=str(out), dtype="float64")
    train(config)
    with pytest.raises(ValueError, match="energy_unit"):
        PosencCalculator.from_run(out)  # the toy data's reduced units are not an energy ASE knows
    calc = PosencCalculator.from_run(out, energy_unit="meV")
    state = torch.load(out / "best.pt", weights_only=True)["model"]
    for name, value in calc.model.state_dict().items():
        torch.testing.assert_close(value, state[name])
    atoms = Atoms("C6", positions=np.random.default_rng(1).normal(scale=1.2, size=(6, 3)))
    atoms.calc = calc
    x_range = json.loads((out / "result.json").read_text())["x_range"]
    assert calc.model.layers[0].encoding.x_max == pytest.approx(x_range[1])
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (6, 3)


def test_from_run_uses_the_runs_distance_scale(tmp_path):
    """A raw-d^2 run: the calculator's energies equal the trained model's, whose scale is the run's."""
    out = tmp_path / "run"
    config = TrainConfig(dataset="synthetic:md17", encoding="raw", n_layers=1, hidden=8, epochs=2, n_train=16,
                         n_val=8, n_test=8, progress=False, out_dir=str(out), dtype="float64")
    result = train(config)
    assert result.distance_scale == json.loads((out / "result.json").read_text())["distance_scale"] > 0
    calc = PosencCalculator.from_run(out, energy_unit="meV")
    assert float(calc.model.layers[0].encoding.scale) == pytest.approx(1.0 / result.distance_scale)
    trained = build_model(config, result.x_range, 1, result.distance_scale)
    trained.load_state_dict(torch.load(out / "best.pt", weights_only=True)["model"])
    pos = np.random.default_rng(2).normal(scale=1.2, size=(6, 3))
    mols = Molecules(z=np.full(6, 6), pos=pos, n_atoms=np.array([6]), targets=np.zeros((1, 1)),
                     target_names=("energy",), target_units=("meV",))
    energy, forces = energy_and_forces(trained.eval(), collate(mols, [0], dtype=torch.float64))
    atoms = Atoms("C6", positions=pos)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(float(energy[0, 0].detach()) * 1e-3, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), forces.detach().numpy() * 1e-3, rtol=1e-10, atol=1e-14)


def test_bad_input(ethanol, tmp_path):
    with pytest.raises(ValueError, match="energy_unit"):
        PosencCalculator(tiny_model(), energy_unit="kcal/mol")
    periodic = ethanol.copy()
    periodic.calc = ethanol.calc
    periodic.set_cell([10, 10, 10])
    periodic.pbc = True
    with pytest.raises(ValueError, match="pbc"):
        periodic.get_potential_energy()
    with pytest.raises(FileNotFoundError, match="result.json"):
        PosencCalculator.from_run(tmp_path)
