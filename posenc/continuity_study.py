"""The experiments of *How smooth must an encoding be?*: toy fits, MD17 runs, vibrations, NVE.

The chapter (``notebooks/13_how_smooth.ipynb``) and its full-budget script
(``scripts/run_continuity.py``) share these, so the quick path and the committed results run the
same code. Models are the torch backend's; the measures are :mod:`posenc.continuity` (numpy), and
the molecular tools (relaxation, frequencies, dynamics) take any ASE calculator.

* toy: :func:`fit_toy` trains a :class:`~posenc.torch.pair.PairEnergy` with one table encoding
  on a pair curve; :func:`pair_derivatives` gives its E, F and d^2E/dr^2 by autograd and
  :func:`toy_errors` their errors against the analytic potential;
* MD17: :func:`md17_config` is the training engine's default recipe for one encoding, and
  :func:`load_calculator` the trained model as a float64 ASE calculator;
* molecules: :func:`relax` (BFGS), :func:`vibrational_frequencies` (central differences of the
  forces) and :func:`nve` (velocity Verlet from Maxwell-Boltzmann velocities);
* the whole measurement of one encoding: :func:`toy_study` and :func:`molecule_study`, which
  return a json-able summary and arrays that :func:`save_study` / :func:`load_study` keep as
  ``<stem>.json`` and ``<stem>.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from posenc.ase_calculator import PosencCalculator
from posenc.continuity import (
    CONTINUITY,
    derivative_jumps,
    energy_conservation,
    finite_difference_hessian,
    harmonic_frequencies,
    pair_curvature,
    running_max_deviation,
)
from posenc.toys import Morse, PairCurve, PairPotential, pair_curve
from posenc.torch.encodings import TableEncoding, make_encoding
from posenc.torch.pair import PairEnergy, fit
from posenc.training import TrainConfig

#: The encodings compared, C0 to C2 (see :data:`posenc.continuity.CONTINUITY`).
ENCODINGS: tuple[str, ...] = tuple(CONTINUITY)

#: The chapter's toy: a narrow Morse well (a = 2, minimum at 1.2 sigma), sampled over
#: ``TOY_DATA_RANGE`` (sigma) by :func:`toy_training_data`.
TOY_POTENTIAL = Morse(d_e=1.0, a=2.0, r_e=1.2)
TOY_DATA_RANGE = (0.8, 3.0)
#: The toy's tables: coarse (bins of about 0.15 sigma, against the well's width 1/a = 0.5 sigma),
#: covering the data with a 0.05 sigma margin; arguments of :func:`toy_study`.
TOY_TABLE: dict[str, Any] = {"n_bin": 16, "dim": 16, "x_range": (0.75, 3.05)}


def toy_training_data(n: int = 256, seed: int = 0) -> PairCurve:
    """``n`` random samples (energies and forces) of :data:`TOY_POTENTIAL` over :data:`TOY_DATA_RANGE`."""
    return pair_curve(TOY_POTENTIAL, n, *TOY_DATA_RANGE, seed=seed)


def fit_toy(train: PairCurve, encoding: str, *, n_bin: int, dim: int, x_range: tuple[float, float],
            steps: int, seed: int = 0, lr: float = 3e-3, hidden: int = 64) -> PairEnergy:
    """A float64 :class:`PairEnergy` with a table ``encoding``, fitted to energies and forces.

    Every encoding gets the same table size (``n_bin`` x ``dim``), readout (2 SiLU layers of
    ``hidden``), seed, steps and learning rate (:func:`posenc.torch.pair.fit`, cosine schedule,
    batches of 64).

    Args:
      train: the training samples of the pair curve (energies and forces).
      encoding: a name of :data:`ENCODINGS`.
      n_bin, dim: table size.
      x_range: ``(x_min, x_max)`` of the table (sigma), covering the data.
      steps, seed, lr: of the fit.
      hidden: readout width.

    Returns:
      the trained model (float64).
    """
    if encoding not in CONTINUITY:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    torch.manual_seed(seed)  # the same readout initialisation for every encoding
    enc = make_encoding(encoding, n_bin=n_bin, dim=dim, x_min=x_range[0], x_max=x_range[1], dtype=torch.float64)
    model = PairEnergy(enc, hidden=hidden, n_layers=2, dtype=torch.float64)
    fit(model, train, steps=steps, lr=lr, batch_size=64, seed=seed, progress=False)
    return model


def pair_derivatives(model: PairEnergy, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy, force and curvature of a pair model by autograd.

    Args:
      model: a :class:`PairEnergy`.
      r: ``[n]`` distances inside the encoding's range.

    Returns:
      ``(E, F = -dE/dr, d^2E/dr^2)``, each ``[n]`` float64 numpy.
    """
    like = model.shift
    x = torch.as_tensor(np.asarray(r), dtype=like.dtype, device=like.device).requires_grad_(True)
    energy = model(x)
    (d1,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    return tuple(t.detach().cpu().double().numpy() for t in (energy, -d1, d2))  # type: ignore[return-value]


def pair_jumps(model: PairEnergy) -> np.ndarray:
    """``[3]``: the largest jumps of E, dE/dr and d^2E/dr^2 of a pair model across its interior bin centres."""
    sign = (1.0, -1.0, 1.0)  # pair_derivatives gives E, -dE/dr, d2E/dr2

    def evaluate(x: np.ndarray, order: int) -> np.ndarray:
        return sign[order] * pair_derivatives(model, x)[order]

    return derivative_jumps(evaluate, first_table(model).centres.detach().double().numpy()[1:-1])


def toy_errors(potential: PairPotential, r: np.ndarray, energy: np.ndarray, force: np.ndarray,
               curvature: np.ndarray) -> dict[str, float]:
    """Mean absolute errors of a model's energy, force and curvature against the analytic potential.

    The energy error is taken after removing the mean offset (a constant shifts no force).

    Returns:
      ``{"energy_mae", "force_mae", "curvature_mae", "curvature_max"}`` in eps, eps/sigma and
      eps/sigma^2.
    """
    e_true, f_true = potential.evaluate(r)
    c_true = pair_curvature(potential, r)
    de = energy - e_true
    return {"energy_mae": float(np.abs(de - de.mean()).mean()), "force_mae": float(np.abs(force - f_true).mean()),
            "curvature_mae": float(np.abs(curvature - c_true).mean()),
            "curvature_max": float(np.abs(curvature - c_true).max())}


def md17_config(encoding: str, *, epochs: int, out_dir: str | Path, dataset: str = "md17:ethanol",
                **overrides: Any) -> TrainConfig:
    """The training engine's default recipe for one encoding (rMD17 split 1, seed 0).

    Everything but the encoding is :class:`~posenc.training.TrainConfig`'s default (EGNN 4x64,
    64 bins x 32, Adam 1e-3 with warm-up and cosine) unless ``overrides`` changes it, so the
    encodings differ only in their table form.
    """
    if encoding not in CONTINUITY:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    values = {"dataset": dataset, "encoding": encoding, "epochs": epochs, "seed": 0, "md17_split": 1,
              "progress": False, "out_dir": str(out_dir), **overrides}
    return TrainConfig(**values)


def load_calculator(out_dir: str | Path, energy_unit: str | None = None) -> PosencCalculator:
    """The best checkpoint of a torch run as an ASE calculator, its model in float64.

    Float64 keeps round-off far below the effects measured (energy drift of a few meV, Hessians
    by finite differences).
    """
    calc = PosencCalculator.from_run(out_dir, energy_unit=energy_unit)
    return PosencCalculator(calc.model.double(), energy_unit=calc.energy_unit, cutoff=calc.cutoff)


def relax(atoms: Atoms, *, fmax: float = 1e-3, steps: int = 500) -> dict[str, Any]:
    """Relaxes ``atoms`` in place with ASE's BFGS (its calculator attached).

    Args:
      atoms: with a calculator.
      fmax: converged when every atom's force is below this (eV/Angstrom).
      steps: the most BFGS steps.

    Returns:
      ``{"converged", "steps", "fmax"}``: whether it converged, the steps taken and the largest
      remaining force (eV/Angstrom).
    """
    if atoms.calc is None:
        raise ValueError("atoms needs a calculator to relax")
    opt = BFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    f_max = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    return {"converged": converged, "steps": int(opt.get_number_of_steps()), "fmax": f_max}


def vibrational_frequencies(atoms: Atoms, step: float = 1e-3) -> np.ndarray:
    """Harmonic wavenumbers (cm^-1) of ``atoms`` from central differences of its calculator's forces.

    Args:
      atoms: at a stationary point (see :func:`relax`), with a calculator; left unchanged.
      step: finite-difference displacement (Angstrom).

    Returns:
      ``[3N - 6]`` ascending (negative: imaginary), see
      :func:`posenc.continuity.harmonic_frequencies`.
    """
    if atoms.calc is None:
        raise ValueError("atoms needs a calculator")
    probe = atoms.copy()
    probe.calc = atoms.calc

    def forces(positions: np.ndarray) -> np.ndarray:
        probe.positions = positions
        return probe.get_forces()

    hessian = finite_difference_hessian(forces, atoms.get_positions(), step)
    return harmonic_frequencies(hessian, atoms.get_positions(), atoms.get_masses())


def nve(atoms: Atoms, *, timestep_fs: float, duration_fs: float, temperature_K: float = 300.0,
        seed: int = 0) -> dict[str, Any]:
    """A velocity-Verlet (constant-energy) trajectory from Maxwell-Boltzmann velocities.

    The velocities are drawn at ``temperature_K`` from ``seed`` (the same for every time step and
    model), with the net momentum and rotation removed; ``atoms`` (with a calculator) is copied,
    not moved.

    Args:
      atoms: the starting geometry, with a calculator.
      timestep_fs: the Verlet step (fs, > 0).
      duration_fs: simulated time (fs), rounded to whole steps.
      temperature_K: of the initial velocities.
      seed: of the initial velocities.

    Returns:
      ``{"t_fs", "e_pot", "e_kin"}``: ``[steps + 1]`` arrays, energies in eV, recorded every step,
      and ``"stopped"``: None, or why the run ended early -- the calculator raised a ValueError
      (e.g. a distance left the encoding's range) or the energy turned non-finite; the arrays then
      end at the last finite step.
    """
    if atoms.calc is None:
        raise ValueError("atoms needs a calculator")
    if not (timestep_fs > 0 and duration_fs >= timestep_fs):
        raise ValueError(f"need 0 < timestep_fs <= duration_fs, got {timestep_fs} and {duration_fs}")
    run = atoms.copy()
    run.calc = atoms.calc
    thermalize_momenta(run, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(run)
    ZeroRotation(run)
    dyn = VelocityVerlet(run, timestep=timestep_fs * units.fs)
    rows: list[tuple[float, float, float]] = []

    def record() -> None:
        rows.append((dyn.get_time() / units.fs, run.get_potential_energy(), run.get_kinetic_energy()))

    dyn.attach(record, interval=1)
    stopped = None
    try:
        dyn.run(int(round(duration_fs / timestep_fs)))
    except ValueError as err:  # the model refused the geometry: keep the trajectory up to here
        stopped = f"at {dyn.get_time() / units.fs:g} fs: {err}"
    t_fs, e_pot, e_kin = (np.array(col) for col in zip(*rows))
    finite = np.isfinite(e_pot) & np.isfinite(e_kin)
    if not finite.all():
        end = int(np.argmin(finite))
        stopped = stopped or f"at {t_fs[end]:g} fs: non-finite energy"
        t_fs, e_pot, e_kin = t_fs[:end], e_pot[:end], e_kin[:end]
    return {"t_fs": t_fs, "e_pot": e_pot, "e_kin": e_kin, "stopped": stopped}


def first_table(model: torch.nn.Module) -> TableEncoding:
    """The first table encoding among ``model``'s modules (an EGNN's first layer's)."""
    enc = next((m for m in model.modules() if isinstance(m, TableEncoding)), None)
    if enc is None:
        raise ValueError(f"{type(model).__name__} has no table encoding")
    return enc


def table_jumps(model: torch.nn.Module, max_order: int = 2) -> list[float]:
    """Derivative jumps of a model's first table encoding across its interior bin centres.

    Returns:
      ``[max_order + 1]`` largest jumps of h, dh/dx, d^2h/dx^2 over all dimensions
      (:func:`posenc.continuity.derivative_jumps` with its default ``eps``).
    """
    enc = first_table(model)

    def evaluate(x: np.ndarray, order: int) -> np.ndarray:
        with torch.no_grad():
            return enc(torch.as_tensor(x, dtype=enc.values.dtype), order=order).double().numpy()

    return derivative_jumps(evaluate, enc.centres.detach().double().numpy()[1:-1], max_order).tolist()


def toy_study(potential: PairPotential, train: PairCurve, *, x_range: tuple[float, float], n_bin: int, dim: int,
              steps: int, seeds: Sequence[int] = (0,), encodings: Sequence[str] = ENCODINGS,
              n_grid: int = 2001, progress: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every encoding fitted to one pair curve, and its errors and jumps against the analytic answer.

    Args:
      potential: the analytic pair potential (for the errors).
      train: its training samples (energies and forces).
      x_range: the tables' range (sigma); errors are measured on ``n_grid`` evenly spaced r over
        the training samples' range.
      n_bin, dim, steps: table size and optimiser steps, the same for every encoding.
      seeds: one fit per seed and encoding (the seed sets the readout's initial weights and the
        batch order).
      encodings: names from :data:`ENCODINGS`.
      n_grid: points of the error grid.
      progress: a tqdm bar over the fits.

    Returns:
      ``(summary, curves)``: ``summary["rows"]`` has one dict per fit (``encoding``, ``seed``,
      ``continuity`` and the :func:`toy_errors`, plus ``jump_energy``, ``jump_force``,
      ``jump_curvature``: the model's largest jumps across the bin centres); ``curves`` holds
      ``r`` and the analytic ``energy``/``force``/``curvature``, and ``<encoding>_energy`` etc.
      of the first seed's model, each ``[n_grid]``.
    """
    from tqdm.auto import tqdm

    r = np.linspace(train.r.min(), train.r.max(), n_grid)
    e_true, f_true = potential.evaluate(r)
    curves = {"r": r, "energy": e_true, "force": f_true, "curvature": pair_curvature(potential, r)}
    rows = []
    fits = [(enc, seed) for enc in encodings for seed in seeds]
    for enc, seed in tqdm(fits, desc="toy fits", disable=not progress):
        model = fit_toy(train, enc, n_bin=n_bin, dim=dim, x_range=x_range, steps=steps, seed=seed)
        energy, force, curvature = pair_derivatives(model, r)
        jumps = pair_jumps(model)
        rows.append({"encoding": enc, "seed": int(seed), "continuity": CONTINUITY[enc],
                     **toy_errors(potential, r, energy, force, curvature),
                     "jump_energy": jumps[0], "jump_force": jumps[1], "jump_curvature": jumps[2]})
        if seed == seeds[0]:
            curves.update({f"{enc}_energy": energy, f"{enc}_force": force, f"{enc}_curvature": curvature})
    summary = {"potential": potential.name, "x_range": list(x_range), "n_bin": n_bin, "dim": dim, "steps": steps,
               "n_train": int(train.r.size), "rows": rows}
    return summary, curves


def molecule_study(calc: Any, start: Atoms, *, timesteps_fs: Sequence[float], duration_fs: float,
                   fd_steps: Sequence[float] = (1e-3, 3e-3, 1e-2), temperature_K: float = 300.0, seed: int = 0,
                   fmax: float = 1e-3, relax_steps: int = 500, n_keep: int = 2000,
                   progress: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Relaxation, harmonic frequencies and NVE energy conservation of one model.

    1. A copy of ``start`` is relaxed (:func:`relax`) and its frequencies are computed with each
       finite-difference step of ``fd_steps`` (a C2 model's agree; a C0 model's depend on the
       step, since its Hessian is infinite where a distance sits on a bin centre).
    2. From ``start`` itself (not the relaxed geometry), one NVE run per time step, all from the
       same velocities (:func:`nve`); total-energy statistics (meV, ps) over the whole run and
       over its first 1/8, 1/4 and 1/2 (:func:`posenc.continuity.energy_conservation`).

    Args:
      calc: an ASE calculator in eV (e.g. :func:`load_calculator`).
      start: the starting geometry.
      timesteps_fs, duration_fs: the Verlet steps compared, and the simulated time of each run.
      fd_steps: finite-difference displacements of the Hessian (Angstrom).
      temperature_K, seed: of the initial velocities.
      fmax, relax_steps: of :func:`relax`.
      n_keep: samples kept of each energy trace.
      progress: a tqdm bar over the simulations.

    Returns:
      ``(summary, traces)``: ``summary`` has ``relax`` ({converged, steps, fmax}),
      ``frequencies`` (step -> ``[3N - 6]`` cm^-1, ascending) and ``nve`` (one dict per time step:
      ``timestep_fs``, ``steps``, ``stopped`` (see :func:`nve`), ``temperature_K`` (mean
      kinetic), and ``by_length``, a list of
      ``{"length_fs", "drift_meV_per_ps", "fluctuation_meV", "max_deviation_meV",
      "final_deviation_meV"}``); ``traces`` has ``dt<step>_t_fs``, ``dt<step>_dE_meV`` (thinned
      to ``n_keep``) and ``dt<step>_running_max_meV`` (the same samples of
      :func:`posenc.continuity.running_max_deviation`).
    """
    from tqdm.auto import tqdm

    relaxed = start.copy()
    relaxed.calc = calc
    summary: dict[str, Any] = {"relax": relax(relaxed, fmax=fmax, steps=relax_steps)}
    summary["frequencies"] = {f"{h:g}": vibrational_frequencies(relaxed, h).tolist() for h in fd_steps}
    summary["nve"], traces = [], {}
    begin = start.copy()
    begin.calc = calc
    n_atoms = len(start)
    for dt in tqdm(timesteps_fs, desc="NVE runs", disable=not progress):
        run = nve(begin, timestep_fs=dt, duration_fs=duration_fs, temperature_K=temperature_K, seed=seed)
        t_fs, e_tot = run["t_fs"], 1000.0 * (run["e_pot"] + run["e_kin"])  # meV
        by_length = []
        for fraction in (0.125, 0.25, 0.5, 1.0):
            keep = t_fs <= fraction * t_fs[-1] + 1e-9
            if keep.sum() < 3:
                continue
            stats = energy_conservation(t_fs[keep] / 1000.0, e_tot[keep])  # per ps
            by_length.append({"length_fs": float(t_fs[keep][-1]), "drift_meV_per_ps": stats["drift"],
                              "fluctuation_meV": stats["fluctuation"], "max_deviation_meV": stats["max_deviation"],
                              "final_deviation_meV": stats["final_deviation"]})
        kinetic_k = 2.0 * run["e_kin"].mean() / (3.0 * n_atoms * units.kB)  # equipartition temperature
        summary["nve"].append({"timestep_fs": float(dt), "steps": int(t_fs.size - 1), "stopped": run["stopped"],
                               "temperature_K": float(kinetic_k), "by_length": by_length})
        idx = np.unique(np.linspace(0, t_fs.size - 1, min(n_keep, t_fs.size)).round().astype(int))  # thinned
        traces[f"dt{dt:g}_t_fs"] = t_fs[idx]
        traces[f"dt{dt:g}_dE_meV"] = e_tot[idx] - e_tot[0]
        traces[f"dt{dt:g}_running_max_meV"] = running_max_deviation(e_tot)[idx]
    return summary, traces


def save_study(stem: str | Path, summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Writes ``<stem>.json`` (the summary) and ``<stem>.npz`` (the arrays, float32)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    np.savez_compressed(stem.with_suffix(".npz"), **payload)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")


def load_study(stem: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``(summary, arrays)`` that :func:`save_study` wrote at ``stem``."""
    stem = Path(stem)
    summary = json.loads(stem.with_suffix(".json").read_text())
    with np.load(stem.with_suffix(".npz"), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return summary, arrays
