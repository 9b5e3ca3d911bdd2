"""Measures of how smooth a learned potential is, and what its smoothness does (numpy).

Backend-agnostic tools of the chapter *How smooth must an encoding be?*: each takes arrays, or a
callable that returns arrays, so it serves a torch model, a Haiku model or an analytic toy alike.

* :func:`pair_curvature`: the analytic second derivative d^2E/dr^2 of the toy pair potentials
  (:mod:`posenc.toys` gives E and F = -dE/dr);
* :func:`derivative_jumps`: how far each derivative of a curve jumps across given points (the
  bin centres of a table encoding);
* :func:`finite_difference_hessian`, :func:`rigid_body_modes`, :func:`harmonic_frequencies`: the
  harmonic vibrational frequencies (cm^-1) of a molecule from its forces;
* :func:`energy_conservation`, :func:`running_max_deviation`: how well a constant-energy (NVE)
  trajectory conserves its total energy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from posenc.toys import LennardJones, Morse, PairPotential, ScreenedCoulomb, SumPotential

#: The table encodings compared, from least to most continuous, and the order of their
#: continuity (C^k: the encoding and its first k derivatives are continuous).
CONTINUITY: dict[str, int] = {"linear": 0, "hermite": 1, "bspline": 2, "hermite5": 2}

# CODATA 2018 constants for the frequency unit conversion (exact, or as ASE's defaults).
_ELECTRON_VOLT_J = 1.602176634e-19  # J per eV
_AMU_KG = 1.66053906660e-27  # kg per atomic mass unit
_LIGHT_CM_PER_S = 2.99792458e10  # speed of light, cm/s
#: sqrt(eV / (Angstrom^2 amu)) in rad/s, divided by 2 pi c: the factor from the square root of a
#: mass-weighted Hessian eigenvalue (eV / (Angstrom^2 amu)) to a wavenumber (cm^-1).
EIGENVALUE_TO_WAVENUMBER = float(np.sqrt(_ELECTRON_VOLT_J / (1e-20 * _AMU_KG)) / (2 * np.pi * _LIGHT_CM_PER_S))


def pair_curvature(potential: PairPotential, r: np.ndarray | float) -> np.ndarray:
    """The analytic curvature d^2E/dr^2 of a toy pair potential.

    Args:
      potential: a :class:`~posenc.toys.LennardJones`, :class:`~posenc.toys.Morse`,
        :class:`~posenc.toys.ScreenedCoulomb` or a :class:`~posenc.toys.SumPotential` of them.
      r: ``[...]`` distances (sigma), where the potential is defined.

    Returns:
      ``[...]`` float64 curvature in eps/sigma^2.

    Raises:
      TypeError: a potential of another kind (its curvature is not known here).
      ValueError: distances the potential rejects (r <= 0 for Lennard-Jones, NaN).
    """
    energy, force = potential.evaluate(r)  # also validates r
    r = np.asarray(r, dtype=np.float64)
    if isinstance(potential, SumPotential):
        return sum((pair_curvature(part, r) for part in potential.parts), np.zeros_like(r))
    if isinstance(potential, LennardJones):
        s6 = (potential.sigma / r) ** 6
        return 4.0 * potential.epsilon * (156.0 * s6 * s6 - 42.0 * s6) / r**2
    if isinstance(potential, Morse):
        x = np.exp(-potential.a * (r - potential.r_e))
        return 2.0 * potential.d_e * potential.a**2 * x * (2.0 * x - 1.0)
    if isinstance(potential, ScreenedCoulomb):
        # E' = -E (kappa + 1/r) = -F, so E'' = E (kappa + 1/r)^2 + E / r^2
        return energy * ((potential.kappa + 1.0 / r) ** 2 + 1.0 / r**2)
    raise TypeError(f"no analytic curvature for {type(potential).__name__}; "
                    "use LennardJones, Morse, ScreenedCoulomb or a sum of them")


def derivative_jumps(evaluate: Callable[[np.ndarray, int], np.ndarray], points: np.ndarray,
                     max_order: int = 2, eps: float = 1e-7) -> np.ndarray:
    """The largest jump of each derivative of a curve across the given points.

    The jump of derivative k at a point c is ``|f^(k)(c + eps) - f^(k)(c - eps)|``, maximised
    over the points and the curve's components. A C^m curve has jumps of order ``eps`` (its
    next derivative times ``2 eps``) for k <= m and of order one for k = m + 1.

    Args:
      evaluate: ``evaluate(x [n], order) -> [n, ...]``, the ``order``-th derivative at ``x``
        (e.g. a table encoding's ``enc(x, order=k)`` as numpy).
      points: ``[P]`` where to look (a table's interior bin centres).
      max_order: the highest derivative measured (>= 0).
      eps: half the gap straddling each point (in the unit of x, > 0).

    Returns:
      ``[max_order + 1]`` float64: the largest jump of derivative 0, 1, ..., max_order.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 1 or points.size == 0:
        raise ValueError(f"points must be a non-empty 1-D array, got shape {points.shape}")
    if max_order < 0 or not eps > 0:
        raise ValueError(f"need max_order >= 0 and eps > 0, got max_order={max_order}, eps={eps}")
    jumps = []
    for order in range(max_order + 1):
        above = np.asarray(evaluate(points + eps, order), dtype=np.float64)
        below = np.asarray(evaluate(points - eps, order), dtype=np.float64)
        jumps.append(float(np.abs(above - below).max()))
    return np.array(jumps)


def finite_difference_hessian(forces: Callable[[np.ndarray], np.ndarray], positions: np.ndarray,
                              step: float = 1e-3) -> np.ndarray:
    """The Hessian d^2E/dx dx of a molecule by central differences of its forces.

    Row ``3 i + a`` is ``-(F(x + step e_ia) - F(x - step e_ia)) / (2 step)``, flattened; the
    result is symmetrised, ``(H + H^T) / 2``. 6 N force calls.

    Args:
      forces: ``forces(positions [N, 3]) -> [N, 3]`` (e.g. eV/Angstrom; must not keep
        ``positions``).
      positions: ``[N, 3]`` where (e.g. Angstrom).
      step: displacement (the unit of ``positions``, > 0).

    Returns:
      ``[3N, 3N]`` float64 Hessian (e.g. eV/Angstrom^2).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {positions.shape}")
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    n = positions.size
    hessian = np.empty((n, n))
    for k in range(n):
        shift = np.zeros(n)
        shift[k] = step
        plus = np.asarray(forces(positions + shift.reshape(positions.shape)), dtype=np.float64).ravel()
        minus = np.asarray(forces(positions - shift.reshape(positions.shape)), dtype=np.float64).ravel()
        hessian[k] = -(plus - minus) / (2.0 * step)
    return 0.5 * (hessian + hessian.T)


def rigid_body_modes(positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the translations and rotations in mass-weighted coordinates.

    Translation along axis a: ``sqrt(m_i) e_a`` for every atom; rotation about axis a:
    ``sqrt(m_i) e_a x (x_i - centre of mass)``. A linear molecule has 5 such modes, a single
    atom 3, any other molecule 6 (the rank decides).

    Args:
      positions: ``[N, 3]`` (Angstrom).
      masses: ``[N]`` (amu, > 0).

    Returns:
      ``[3N, k]`` with orthonormal columns, k = 3, 5 or 6.
    """
    positions = np.asarray(positions, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3 or masses.shape != (positions.shape[0],):
        raise ValueError(f"need positions [N, 3] and masses [N], got {positions.shape} and {masses.shape}")
    if not (masses > 0).all():
        raise ValueError("masses must be > 0")
    root = np.sqrt(masses)[:, None]  # [N, 1]
    centred = positions - (masses[:, None] * positions).sum(0) / masses.sum()
    vectors = []
    for axis in np.eye(3):
        vectors.append((root * axis).ravel())  # translation
        vectors.append((root * np.cross(axis, centred)).ravel())  # rotation
    u, s, _ = np.linalg.svd(np.stack(vectors, axis=1), full_matrices=False)  # [3N, 6]
    return u[:, s > 1e-8 * s.max()]


def harmonic_frequencies(hessian: np.ndarray, positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Harmonic vibrational wavenumbers (cm^-1) of a molecule at a stationary point.

    The Hessian is mass-weighted, ``H_ij / sqrt(m_i m_j)``, and diagonalised on the complement of
    the rigid-body modes (:func:`rigid_body_modes`), so exactly 3N - 6 (linear: 3N - 5)
    vibrations come out, whatever small forces remain at the geometry.

    Args:
      hessian: ``[3N, 3N]`` in eV/Angstrom^2 (e.g. :func:`finite_difference_hessian`).
      positions: ``[N, 3]`` in Angstrom.
      masses: ``[N]`` in amu.

    Returns:
      ``[3N - k]`` ascending wavenumbers in cm^-1; an imaginary frequency (a negative eigenvalue:
      not a minimum) is returned as a negative number.
    """
    hessian = np.asarray(hessian, dtype=np.float64)
    modes = rigid_body_modes(positions, masses)
    n = modes.shape[0]
    if hessian.shape != (n, n):
        raise ValueError(f"hessian must be [{n}, {n}] for {n // 3} atoms, got {hessian.shape}")
    if not np.isfinite(hessian).all():
        raise ValueError("hessian contains NaN or inf")
    inv_root = 1.0 / np.sqrt(np.repeat(np.asarray(masses, dtype=np.float64), 3))
    weighted = hessian * inv_root[:, None] * inv_root[None, :]
    # an orthonormal basis of the vibrations: the left singular vectors beyond the rigid modes
    basis = np.linalg.svd(modes, full_matrices=True)[0][:, modes.shape[1]:]  # [3N, 3N - k]
    eig = np.linalg.eigvalsh(basis.T @ weighted @ basis)
    return np.sign(eig) * np.sqrt(np.abs(eig)) * EIGENVALUE_TO_WAVENUMBER


def energy_conservation(t: np.ndarray, e_total: np.ndarray) -> dict[str, float]:
    """Drift and fluctuation of the total energy along a constant-energy trajectory.

    A straight line is fitted to ``E_tot(t)`` by least squares: its slope is the *drift*, the
    standard deviation of the residual the *fluctuation*. Any consistent units: drift is in
    energy per time unit (e.g. meV/ps), the others in the energy unit.

    Args:
      t: ``[T]`` times (T >= 3, strictly increasing).
      e_total: ``[T]`` total energies.

    Returns:
      ``{"drift", "fluctuation", "max_deviation", "final_deviation"}``: slope, residual std,
      ``max |E(t) - E(0)|`` and ``E(t_end) - E(0)``.
    """
    t = np.asarray(t, dtype=np.float64)
    e_total = np.asarray(e_total, dtype=np.float64)
    if t.ndim != 1 or t.shape != e_total.shape or t.size < 3:
        raise ValueError(f"need t and e_total of the same shape [T], T >= 3; got {t.shape} and {e_total.shape}")
    if not (np.diff(t) > 0).all():
        raise ValueError("t must be strictly increasing")
    if not np.isfinite(e_total).all():
        raise ValueError("e_total contains NaN or inf (did the simulation blow up?)")
    slope, intercept = np.polyfit(t, e_total, 1)
    residual = e_total - (slope * t + intercept)
    deviation = e_total - e_total[0]
    return {"drift": float(slope), "fluctuation": float(residual.std()),
            "max_deviation": float(np.abs(deviation).max()), "final_deviation": float(deviation[-1])}


def running_max_deviation(e_total: np.ndarray) -> np.ndarray:
    """``[T]``: ``max_{s <= t} |E(s) - E(0)|``, the worst energy error seen up to each step."""
    e_total = np.asarray(e_total, dtype=np.float64)
    if e_total.ndim != 1 or e_total.size == 0:
        raise ValueError(f"e_total must be a non-empty 1-D array, got shape {e_total.shape}")
    return np.maximum.accumulate(np.abs(e_total - e_total[0]))
