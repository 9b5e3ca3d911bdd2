"""Tests of posenc.continuity (numpy measures), posenc.continuity_study and scripts/run_continuity.py."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.morse import MorsePotential

from posenc import toys
from posenc.continuity import (
    CONTINUITY,
    derivative_jumps,
    energy_conservation,
    finite_difference_hessian,
    harmonic_frequencies,
    pair_curvature,
    rigid_body_modes,
    running_max_deviation,
)
from posenc.continuity_study import (
    ENCODINGS,
    TOY_DATA_RANGE,
    TOY_POTENTIAL,
    TOY_TABLE,
    fit_toy,
    load_study,
    md17_config,
    molecule_study,
    nve,
    pair_derivatives,
    relax,
    save_study,
    toy_study,
    toy_training_data,
    vibrational_frequencies,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_continuity.py"


# --- posenc.continuity -------------------------------------------------------------------------
@pytest.mark.parametrize("potential", [toys.LennardJones(epsilon=1.3, sigma=0.9), toys.Morse(d_e=0.7, a=1.8, r_e=1.1),
                                       toys.ScreenedCoulomb(q=-0.6, kappa=0.4), toys.mixture()])
def test_pair_curvature_is_minus_the_force_derivative(potential):
    r = np.linspace(0.85, 3.0, 50)
    h = 1e-5
    fd = -(potential.force(r + h) - potential.force(r - h)) / (2 * h)
    np.testing.assert_allclose(pair_curvature(potential, r), fd, rtol=1e-6, atol=1e-6)


def test_pair_curvature_rejects_unknown_potentials_and_bad_r():
    class Flat(toys.PairPotential):
        def evaluate(self, r):
            return np.zeros_like(r), np.zeros_like(r)

    with pytest.raises(TypeError, match="no analytic curvature"):
        pair_curvature(Flat(), np.ones(3))
    with pytest.raises(ValueError, match="> 0"):
        pair_curvature(toys.LennardJones(), np.array([0.0, 1.0]))


def test_derivative_jumps_of_a_kink_and_a_smooth_curve():
    def kink(x, order):  # |x|: C0, its slope jumps by 2 at 0
        return [np.abs(x), np.sign(x), np.zeros_like(x)][order][:, None]

    def smooth(x, order):
        return [np.sin(x), np.cos(x), -np.sin(x)][order][:, None]

    jumps = derivative_jumps(kink, np.array([0.0]), eps=1e-7)
    assert jumps[0] < 1e-12 and jumps[1] == pytest.approx(2.0) and jumps[2] == 0.0
    assert derivative_jumps(smooth, np.linspace(-1, 1, 5), eps=1e-7).max() < 1e-6
    with pytest.raises(ValueError, match="non-empty"):
        derivative_jumps(smooth, np.array([]))
    with pytest.raises(ValueError, match="eps"):
        derivative_jumps(smooth, np.zeros(1), eps=0.0)


def test_finite_difference_hessian_of_a_quadratic_is_exact():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 9))
    a = a @ a.T
    x0 = rng.normal(size=(3, 3))
    hessian = finite_difference_hessian(lambda x: -(a @ x.ravel()).reshape(3, 3), x0, step=1e-2)
    np.testing.assert_allclose(hessian, a, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        finite_difference_hessian(lambda x: x, np.zeros(6))


def test_rigid_body_modes_count_and_orthonormality():
    masses = np.array([12.0, 1.0, 16.0, 1.0])
    bent = np.array([[0.0, 0.0, 0.0], [1.0, 0.2, 0.0], [0.1, 1.3, 0.4], [-0.9, 0.3, 0.2]])
    line = np.array([[0.0, 0.0, z] for z in (0.0, 1.1, 2.3, 3.0)])
    for pos, k in ((bent, 6), (line, 5), (bent[:1], 3)):
        modes = rigid_body_modes(pos, masses[: len(pos)])
        assert modes.shape == (3 * len(pos), k)
        np.testing.assert_allclose(modes.T @ modes, np.eye(k), atol=1e-12)
    with pytest.raises(ValueError, match="masses must be > 0"):
        rigid_body_modes(bent, -masses)


def _spring_hessian(pos, k):
    """Hessian of (k/2)(|r1 - r2| - r0)^2 at r0 = |r1 - r2|: k u u^T blocks."""
    u = (pos[0] - pos[1]) / np.linalg.norm(pos[0] - pos[1])
    block = k * np.outer(u, u)
    return np.block([[block, -block], [-block, block]])


def test_harmonic_frequency_of_a_diatomic_spring():
    k, masses = 35.0, np.array([1.008, 15.999])  # eV/A^2, amu
    pos = np.array([[0.1, -0.2, 0.3], [0.5, 0.4, 1.0]])
    freqs = harmonic_frequencies(_spring_hessian(pos, k), pos, masses)
    mu = masses.prod() / masses.sum()
    omega = np.sqrt(k / mu) * units.second  # rad/s, from ASE's unit system (independent constants)
    assert freqs.shape == (1,)
    assert freqs[0] == pytest.approx(omega / (2 * np.pi * units._c * 100), rel=1e-6)
    with pytest.raises(ValueError, match="hessian must be"):
        harmonic_frequencies(np.zeros((3, 3)), pos, masses)


def test_harmonic_frequencies_negative_for_a_saddle_and_rotation_invariant():
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(4, 3)) * 1.5
    masses = np.array([12.0, 1.0, 16.0, 14.0])
    potential = toys.Morse(d_e=1.0, a=1.5, r_e=1.2)

    def forces(p):
        return toys.cluster_energy_forces(potential, p)[1]

    freqs = harmonic_frequencies(finite_difference_hessian(forces, pos, 1e-4), pos, masses)
    assert freqs.shape == (6,) and np.all(np.diff(freqs) >= 0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    turned = pos @ q.T
    freqs_turned = harmonic_frequencies(finite_difference_hessian(forces, turned, 1e-4), turned, masses)
    np.testing.assert_allclose(freqs_turned, freqs, rtol=1e-5, atol=1e-3)
    minus = -_spring_hessian(pos[:2], 10.0)  # a maximum along the bond: imaginary, reported negative
    assert harmonic_frequencies(minus, pos[:2], masses[:2])[0] < 0


def test_energy_conservation_recovers_drift_and_fluctuation():
    t = np.linspace(0.0, 10.0, 20001)
    e = 5.0 + 0.3 * t + 0.2 * np.sin(2 * np.pi * t)
    stats = energy_conservation(t, e)
    assert stats["drift"] == pytest.approx(0.3, rel=2e-2)  # the oscillation tilts the fit a little
    assert stats["fluctuation"] == pytest.approx(0.2 / np.sqrt(2), rel=1e-2)
    assert stats["final_deviation"] == pytest.approx(3.0, abs=1e-9)
    assert stats["max_deviation"] == pytest.approx(np.abs(e - e[0]).max())
    with pytest.raises(ValueError, match="increasing"):
        energy_conservation(t[::-1], e)
    with pytest.raises(ValueError, match="NaN"):
        energy_conservation(t[:3], np.array([0.0, np.nan, 1.0]))


def test_running_max_deviation():
    np.testing.assert_allclose(running_max_deviation(np.array([1.0, 1.5, 0.2, 1.1])), [0.0, 0.5, 0.8, 0.8])
    with pytest.raises(ValueError, match="non-empty"):
        running_max_deviation(np.zeros((2, 2)))


def test_continuity_table():
    assert CONTINUITY == {"linear": 0, "hermite": 1, "bspline": 2, "hermite5": 2}
    assert ENCODINGS == tuple(CONTINUITY)


# --- posenc.continuity_study: toy --------------------------------------------------------------
def test_pair_derivatives_match_finite_differences():
    train = toys.pair_curve(toys.Morse(a=2.0, r_e=1.2), 64, 0.8, 3.0, seed=0)
    model = fit_toy(train, "hermite5", n_bin=8, dim=4, x_range=(0.75, 3.05), steps=5)
    r = np.linspace(0.9, 2.9, 7)
    energy, force, curvature = pair_derivatives(model, r)
    h = 1e-5
    e_plus, f_plus, _ = pair_derivatives(model, r + h)
    e_minus, f_minus, _ = pair_derivatives(model, r - h)
    np.testing.assert_allclose(force, -(e_plus - e_minus) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(curvature, -(f_plus - f_minus) / (2 * h), rtol=1e-5, atol=1e-6)
    assert energy.dtype == np.float64


def test_toy_study_measures_each_encodings_continuity():
    potential, train = TOY_POTENTIAL, toy_training_data(64)
    assert TOY_DATA_RANGE[0] <= train.r.min() < train.r.max() <= TOY_DATA_RANGE[1]
    x_range = TOY_TABLE["x_range"]
    assert x_range[0] < TOY_DATA_RANGE[0] and x_range[1] > TOY_DATA_RANGE[1]  # the tables cover the data
    summary, curves = toy_study(potential, train, x_range=x_range, n_bin=8, dim=4, steps=20, seeds=(0, 1),
                                n_grid=101)
    rows = {(row["encoding"], row["seed"]): row for row in summary["rows"]}
    assert len(rows) == 2 * len(ENCODINGS) and summary["steps"] == 20
    for seed in (0, 1):
        assert rows["linear", seed]["jump_force"] > 1e-3  # C0: the force jumps
        assert rows["hermite", seed]["jump_force"] < 1e-4 < rows["hermite", seed]["jump_curvature"]
        for enc in ("bspline", "hermite5"):  # C2: nothing up to the curvature jumps
            assert rows[enc, seed]["jump_curvature"] < 1e-3
    np.testing.assert_allclose(curves["curvature"], pair_curvature(potential, curves["r"]))
    assert {f"{enc}_force" for enc in ENCODINGS} <= set(curves) and curves["r"].shape == (101,)


def test_study_functions_reject_non_table_encodings():
    train = toys.pair_curve(toys.Morse(), 16, 0.8, 3.0)
    with pytest.raises(ValueError, match="encoding must be one of"):
        fit_toy(train, "gaussian", n_bin=4, dim=2, x_range=(0.7, 3.1), steps=1)
    with pytest.raises(ValueError, match="encoding must be one of"):
        md17_config("raw", epochs=1, out_dir="x")
    config = md17_config("bspline", epochs=3, out_dir="x", hidden=8)
    assert (config.encoding, config.epochs, config.hidden, config.md17_split, config.lr) == ("bspline", 3, 8, 1, 1e-3)


def test_save_and_load_study(tmp_path):
    summary = {"a": [1, 2], "b": {"c": 0.5}}
    arrays = {"x": np.arange(4.0), "y": np.ones((2, 3))}
    save_study(tmp_path / "sub" / "stem", summary, arrays)
    back, back_arrays = load_study(tmp_path / "sub" / "stem")
    assert back == summary
    assert set(back_arrays) == {"x", "y"} and back_arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(back_arrays["y"], arrays["y"])


# --- posenc.continuity_study: molecules (ASE's analytic Morse calculator) ----------------------
def _morse_triangle():
    atoms = Atoms("CCC", positions=[[0.0, 0.0, 0.0], [1.3, 0.1, 0.0], [0.6, 1.2, 0.1]])
    atoms.calc = MorsePotential(epsilon=1.0, rho0=6.0, r0=1.3)
    return atoms


def test_relax_and_frequencies_of_a_smooth_potential():
    atoms = _morse_triangle()
    info = relax(atoms, fmax=1e-5, steps=200)
    assert info["converged"] and info["fmax"] < 1e-5
    freqs = {h: vibrational_frequencies(atoms, h) for h in (1e-3, 1e-2)}
    assert freqs[1e-3].shape == (3,) and (freqs[1e-3] > 0).all()
    np.testing.assert_allclose(freqs[1e-2], freqs[1e-3], rtol=2e-3)  # smooth: the step barely matters
    with pytest.raises(ValueError, match="calculator"):
        relax(Atoms("H"))


def test_diatomic_frequency_matches_the_morse_curvature():
    atoms = Atoms("CO", positions=[[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])
    atoms.calc = MorsePotential(epsilon=2.0, rho0=5.0, r0=1.2)
    relax(atoms, fmax=1e-6)
    k = 2 * 2.0 * 5.0**2 / 1.2**2  # d2E/dr2 at r0 = 2 eps rho0^2 / r0^2 (eV/A^2)
    mu = np.prod(atoms.get_masses()) / atoms.get_masses().sum()
    expected = np.sqrt(k / mu) * units.second / (2 * np.pi * units._c * 100)
    assert vibrational_frequencies(atoms, 1e-4)[0] == pytest.approx(expected, rel=1e-4)


def test_nve_energy_error_is_second_order_in_the_time_step():
    atoms = _morse_triangle()
    errors = {}
    for dt in (1.0, 0.5):
        run = nve(atoms, timestep_fs=dt, duration_fs=40.0, temperature_K=600.0, seed=3)
        assert run["t_fs"][-1] == pytest.approx(40.0) and run["e_pot"].shape == run["t_fs"].shape
        e_tot = run["e_pot"] + run["e_kin"]
        errors[dt] = np.abs(e_tot - e_tot[0]).max()
    assert 3.0 < errors[1.0] / errors[0.5] < 5.0  # Verlet: error ~ dt^2
    np.testing.assert_allclose(atoms.positions, _morse_triangle().positions)  # the input is not moved
    assert run["stopped"] is None
    with pytest.raises(ValueError, match="timestep"):
        nve(atoms, timestep_fs=2.0, duration_fs=1.0)


def test_nve_keeps_the_trajectory_up_to_a_refused_geometry():
    class Fence(MorsePotential):  # refuses the 50th geometry, as an encoding refuses a distance off its range
        calls = 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            Fence.calls += 1
            if Fence.calls == 50:
                raise ValueError("x outside the encoding range")
            super().calculate(atoms, properties, system_changes)

    atoms = _morse_triangle()
    atoms.calc = Fence(epsilon=1.0, rho0=6.0, r0=1.3)
    run = nve(atoms, timestep_fs=1.0, duration_fs=200.0, seed=0)
    assert "outside the encoding range" in run["stopped"]
    assert 0 < run["t_fs"][-1] < 200.0 and np.isfinite(run["e_pot"]).all()


def test_molecule_study_summary(tmp_path):
    summary, traces = molecule_study(MorsePotential(epsilon=1.0, rho0=6.0, r0=1.3),
                                     _morse_triangle(), timesteps_fs=(1.0, 0.5), duration_fs=16.0,
                                     fd_steps=(1e-3,), n_keep=10)
    assert summary["relax"]["converged"]
    assert list(summary["frequencies"]) == ["0.001"] and len(summary["frequencies"]["0.001"]) == 3
    assert [run["timestep_fs"] for run in summary["nve"]] == [1.0, 0.5]
    for run in summary["nve"]:
        lengths = [row["length_fs"] for row in run["by_length"]]
        assert lengths == sorted(lengths) and lengths[-1] == pytest.approx(16.0)
        assert run["temperature_K"] > 0
    assert traces["dt0.5_t_fs"].shape == (10,) and traces["dt0.5_running_max_meV"][0] == 0.0
    assert np.all(np.diff(traces["dt1_running_max_meV"]) >= 0)
    save_study(tmp_path / "m", summary, traces)  # json-able
    assert json.loads((tmp_path / "m.json").read_text())["nve"][1]["steps"] == 32


# --- scripts/run_continuity.py -----------------------------------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location("run_continuity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_continuity"] = module
    spec.loader.exec_module(module)
    return module


def test_script_tiny_run_resumes_and_checks_its_budget(tmp_path):
    script = _script()
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    argv = ["--dataset", "synthetic:md17", "--epochs", "1", "--encodings", "linear", "bspline",
            "--train-overrides", '{"n_train": 16, "n_val": 8, "n_test": 8, "n_layers": 1, "hidden": 8}',
            "--timesteps", "1", "--nve-fs", "4", "--fd-steps", "0.001", "--toy-steps", "3", "--toy-seeds", "0",
            "--results", str(results), "--scratch", str(scratch), "--no-progress"]
    torch_threads = torch.get_num_threads()
    try:
        assert script.main(argv) == 0
        made = sorted(p.name for p in results.iterdir())
        assert made == ["meta.json", "synthetic_bspline.json", "synthetic_bspline.npz",
                        "synthetic_bspline_metrics.csv", "synthetic_linear.json", "synthetic_linear.npz",
                        "synthetic_linear_metrics.csv", "toy.json", "toy.npz"]
        for path in results.iterdir():  # no machine-local paths in the committed files
            if path.suffix in (".json", ".csv"):
                assert str(tmp_path) not in path.read_text()
        assert "--results '<elsewhere>/results'" in json.loads((results / "meta.json").read_text())["command"]
        summary, _ = load_study(results / "synthetic_bspline")
        assert summary["continuity"] == 2 and summary["training"]["config"]["epochs"] == 1
        assert summary["table"] == {"n_bin": 64, "dim": 32} and summary["table_jumps"][2] < 1e-3
        assert {row["encoding"] for row in load_study(results / "toy")[0]["rows"]} == {"linear", "bspline"}
        stamp = (results / "toy.json").stat().st_mtime_ns
        assert script.main(argv) == 0  # everything done: skipped
        assert (results / "toy.json").stat().st_mtime_ns == stamp
        with pytest.raises(SystemExit, match="budget"):
            script.main([*argv[:3], "2", *argv[4:]])
    finally:
        torch.set_num_threads(torch_threads)
        sys.modules.pop("run_continuity", None)
