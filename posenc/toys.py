"""Toy physics for the book: pair potentials with analytic forces, and data generators (numpy).

Everything here is in *reduced units*: distances in units of a length sigma (written ``"sigma"``)
and energies in units of an energy epsilon (written ``"eps"``), so forces are in eps/sigma. The
potentials are the classic test cases of a distance encoding: Lennard-Jones (a steep wall and a
shallow well), Morse (a well of tunable width) and the screened Coulomb (Yukawa) potential (long
range), plus sums of them, which put two effects at two length scales into one curve.

A potential is a :class:`PairPotential`: ``energy(r)``, ``force(r) = -dE/dr`` and a ``name``, so
a chapter can loop over a list of them. ``pair_curve`` samples a 1-D curve; ``random_clusters``
builds small non-overlapping clusters whose total energy is the sum over all pairs and whose
forces are the exact ``-dE/dx_i``, returned as :class:`posenc.data.molecules.Molecules`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from posenc.data.molecules import Molecules

ENERGY_UNIT = "eps"
LENGTH_UNIT = "sigma"
FORCE_UNIT = "eps/sigma"


def _distances(r: np.ndarray | float, *, allow_zero: bool) -> np.ndarray:
    """``r`` as a float64 array, after checking it is finite and positive (or >= 0)."""
    r = np.asarray(r, dtype=np.float64)
    if not np.isfinite(r).all():
        raise ValueError("r contains NaN or inf")
    if allow_zero and (r < 0).any():
        raise ValueError(f"distances must be >= 0, got min {r.min()}")
    if not allow_zero and (r <= 0).any():
        raise ValueError(f"distances must be > 0 (the potential diverges at r = 0), got min {r.min()}")
    return r


def _positive(**kwargs: float) -> None:
    for key, value in kwargs.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a finite number > 0, got {value}")


# --- the potentials as plain functions: (energy, force) ----------------------------------------
def lennard_jones(r: np.ndarray | float, epsilon: float = 1.0, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Lennard-Jones ``E = 4 eps ((sigma/r)^12 - (sigma/r)^6)`` and ``F = -dE/dr``.

    The minimum ``-eps`` sits at ``r = 2^(1/6) sigma``; the wall rises as ``r^-12``.

    Args:
      r: ``[...]`` distances (> 0).
      epsilon: well depth (> 0).
      sigma: the distance where E = 0 (> 0).

    Returns:
      ``(energy, force)``, each ``[...]`` float64.

    Raises:
      ValueError: r <= 0, NaN/inf in r, or a non-positive parameter.
    """
    _positive(epsilon=epsilon, sigma=sigma)
    r = _distances(r, allow_zero=False)
    s6 = (sigma / r) ** 6
    energy = 4.0 * epsilon * (s6 * s6 - s6)
    force = 24.0 * epsilon * (2.0 * s6 * s6 - s6) / r
    return energy, force


def morse(r: np.ndarray | float, d_e: float = 1.0, a: float = 1.0, r_e: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Morse ``E = d_e ((1 - exp(-a (r - r_e)))^2 - 1)`` and ``F = -dE/dr``.

    Zero at infinity, minimum ``-d_e`` at ``r_e``; ``1/a`` sets the width of the well. Finite at
    r = 0, so r = 0 is allowed.

    Args:
      r: ``[...]`` distances (>= 0).
      d_e: well depth (> 0).
      a: inverse width (> 0).
      r_e: equilibrium distance (> 0).

    Returns:
      ``(energy, force)``, each ``[...]`` float64.
    """
    _positive(d_e=d_e, a=a, r_e=r_e)
    r = _distances(r, allow_zero=True)
    x = np.exp(-a * (r - r_e))
    energy = d_e * ((1.0 - x) ** 2 - 1.0)
    force = -2.0 * d_e * a * x * (1.0 - x)
    return energy, force


def screened_coulomb(r: np.ndarray | float, q: float = 1.0, kappa: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Screened Coulomb (Yukawa) ``E = q exp(-kappa r) / r`` and ``F = -dE/dr``.

    Long-ranged: it decays over ``1/kappa``, much further than LJ or Morse. ``q`` is the product
    of the two charges (positive: repulsive; negative: attractive).

    Args:
      r: ``[...]`` distances (> 0).
      q: charge product (any finite non-zero number).
      kappa: inverse screening length (> 0).

    Returns:
      ``(energy, force)``, each ``[...]`` float64.
    """
    if not (math.isfinite(q) and q != 0):
        raise ValueError(f"q must be a finite non-zero number, got {q}")
    _positive(kappa=kappa)
    r = _distances(r, allow_zero=False)
    energy = q * np.exp(-kappa * r) / r
    force = energy * (kappa + 1.0 / r)
    return energy, force


# --- the same as objects a chapter can loop over -----------------------------------------------
class PairPotential:
    """A pair potential E(r) with its analytic force F(r) = -dE/dr.

    Subclasses implement :meth:`evaluate`; ``p1 + p2`` gives a :class:`SumPotential`.
    """

    name: str = "pair potential"

    def evaluate(self, r: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """``(energy, force)`` at distances ``r`` ``[...]``."""
        raise NotImplementedError

    def energy(self, r: np.ndarray | float) -> np.ndarray:
        """``[...]`` energy in eps."""
        return self.evaluate(r)[0]

    def force(self, r: np.ndarray | float) -> np.ndarray:
        """``[...]`` radial force ``-dE/dr`` in eps/sigma (positive = repulsive)."""
        return self.evaluate(r)[1]

    def __call__(self, r: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return self.evaluate(r)

    def __add__(self, other: PairPotential) -> SumPotential:
        if not isinstance(other, PairPotential):
            return NotImplemented
        return SumPotential((self, other))


@dataclass(frozen=True)
class LennardJones(PairPotential):
    """:func:`lennard_jones` as an object."""

    epsilon: float = 1.0
    sigma: float = 1.0
    name: str = "Lennard-Jones"

    def __post_init__(self) -> None:
        _positive(epsilon=self.epsilon, sigma=self.sigma)

    def evaluate(self, r: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return lennard_jones(r, self.epsilon, self.sigma)


@dataclass(frozen=True)
class Morse(PairPotential):
    """:func:`morse` as an object."""

    d_e: float = 1.0
    a: float = 1.0
    r_e: float = 1.0
    name: str = "Morse"

    def __post_init__(self) -> None:
        _positive(d_e=self.d_e, a=self.a, r_e=self.r_e)

    def evaluate(self, r: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return morse(r, self.d_e, self.a, self.r_e)


@dataclass(frozen=True)
class ScreenedCoulomb(PairPotential):
    """:func:`screened_coulomb` as an object."""

    q: float = 1.0
    kappa: float = 0.5
    name: str = "screened Coulomb"

    def __post_init__(self) -> None:
        screened_coulomb(1.0, self.q, self.kappa)  # validates the parameters

    def evaluate(self, r: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return screened_coulomb(r, self.q, self.kappa)


@dataclass(frozen=True)
class SumPotential(PairPotential):
    """The sum of several pair potentials (energies and forces add)."""

    parts: tuple[PairPotential, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.parts) == 0 or not all(isinstance(p, PairPotential) for p in self.parts):
            raise ValueError("SumPotential needs at least one PairPotential")
        if not self.name:
            object.__setattr__(self, "name", " + ".join(p.name for p in self.parts))

    def evaluate(self, r: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        energy, force = self.parts[0].evaluate(r)
        for part in self.parts[1:]:
            e, f = part.evaluate(r)
            energy, force = energy + e, force + f
        return energy, force


def mixture(*parts: PairPotential, name: str = "") -> SumPotential:
    """A sum of pair potentials; with no arguments, the book's two-scale example.

    The default is a Morse well (``d_e=1, a=2, r_e=1.2``: short range, narrow) plus a repulsive
    screened Coulomb tail (``q=0.5, kappa=0.5``: long range), i.e. two effects at two scales.
    """
    if not parts:
        parts = (Morse(d_e=1.0, a=2.0, r_e=1.2), ScreenedCoulomb(q=0.5, kappa=0.5))
    return SumPotential(tuple(parts), name=name)


# --- data --------------------------------------------------------------------------------------
class PairCurve(NamedTuple):
    """Samples of a 1-D pair curve: ``r``, ``energy``, ``force``, each ``[n]`` float64."""

    r: np.ndarray
    energy: np.ndarray
    force: np.ndarray


def _check_count(name: str, n: int, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return int(n)


def pair_curve(
    potential: PairPotential,
    n: int,
    r_min: float,
    r_max: float,
    noise: float = 0.0,
    force_noise: float = 0.0,
    seed: int = 0,
    grid: bool = False,
) -> PairCurve:
    """Samples ``n`` points of a pair curve, optionally with Gaussian label noise.

    Args:
      potential: the pair potential.
      n: number of samples (>= 1).
      r_min, r_max: the sampled range (``0 <= r_min < r_max``; the potential must be finite there).
      noise: std of Gaussian noise added to the energies (eps).
      force_noise: std of Gaussian noise added to the forces (eps/sigma).
      seed: seeds the positions (unless ``grid``) and the noise.
      grid: evenly spaced r instead of uniform random r (for test sets and plots).

    Returns:
      :class:`PairCurve` with ``r`` sorted ascending.
    """
    n = _check_count("n", n)
    if not (math.isfinite(r_min) and math.isfinite(r_max) and 0 <= r_min < r_max):
        raise ValueError(f"need 0 <= r_min < r_max, got r_min={r_min}, r_max={r_max}")
    if noise < 0 or force_noise < 0:
        raise ValueError(f"noise levels must be >= 0, got noise={noise}, force_noise={force_noise}")
    rng = np.random.default_rng(seed)
    r = np.linspace(r_min, r_max, n) if grid else np.sort(rng.uniform(r_min, r_max, n))
    energy, force = potential.evaluate(r)
    energy = energy + noise * rng.standard_normal(n)
    force = force + force_noise * rng.standard_normal(n)
    return PairCurve(r, energy, force)


def pair_indices(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n (n - 1) / 2`` index pairs ``i < j`` of one molecule: ``(i [P], j [P])``."""
    i, j = np.triu_indices(int(n_atoms), k=1)
    return i.astype(np.int64), j.astype(np.int64)


def cluster_energy_forces(potential: PairPotential, pos: np.ndarray) -> tuple[float, np.ndarray]:
    """Total energy and per-atom forces of one cluster under a pair potential.

    ``E = sum_{i<j} V(r_ij)``; ``F_i = -dE/dx_i = sum_j F(r_ij) (x_i - x_j) / r_ij`` with the radial
    force ``F = -dV/dr``.

    Args:
      potential: the pair potential V.
      pos: ``[N, 3]`` positions (sigma), no two atoms at the same place.

    Returns:
      ``(energy, forces [N, 3])``.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be [N, 3], got {pos.shape}")
    i, j = pair_indices(pos.shape[0])
    d = pos[i] - pos[j]  # [P, 3]
    r = np.linalg.norm(d, axis=-1)  # [P]
    if i.size == 0:
        return 0.0, np.zeros_like(pos)
    e, f = potential.evaluate(r)
    fij = (f / r)[:, None] * d  # [P, 3] force on i from j
    forces = np.zeros_like(pos)
    np.add.at(forces, i, fij)
    np.add.at(forces, j, -fij)
    return float(e.sum()), forces


def _sample_cluster(rng: np.random.Generator, n: int, radius: float, min_dist: float, max_tries: int) -> np.ndarray:
    """``[n, 3]`` points uniform in a ball, pairwise at least ``min_dist`` apart (rejection sampling)."""
    pos = np.zeros((0, 3))
    tries = 0
    while pos.shape[0] < n:
        tries += 1
        if tries > max_tries:
            raise RuntimeError(
                f"could not place {n} atoms at min_dist={min_dist} in a ball of radius {radius:.3g} after "
                f"{max_tries} tries; lower the density or min_dist")
        direction = rng.standard_normal(3)
        p = direction / np.linalg.norm(direction) * radius * rng.uniform() ** (1.0 / 3.0)
        if pos.shape[0] == 0 or np.linalg.norm(pos - p, axis=1).min() >= min_dist:
            pos = np.vstack([pos, p])
    return pos


def random_clusters(
    potential: PairPotential,
    n_clusters: int,
    n_atoms: int | tuple[int, int] = (3, 13),
    min_dist: float = 0.9,
    density: float = 0.3,
    seed: int = 0,
    z: int = 18,
    max_tries: int = 100_000,
) -> Molecules:
    """Random non-overlapping clusters labelled with their exact pair-sum energy and forces.

    Atoms are placed uniformly in a ball sized for the requested number density, rejecting any
    atom closer than ``min_dist`` to one already placed, so every pair distance is ``>= min_dist``
    and at most the ball's diameter ``2 (3 n / (4 pi density))^(1/3)``.

    Args:
      potential: the pair potential.
      n_clusters: number of clusters M (>= 1).
      n_atoms: atoms per cluster: an int, or an inclusive range ``(lo, hi)`` sampled uniformly.
      min_dist: smallest allowed pair distance (sigma, > 0).
      density: atoms per sigma^3 of the ball (> 0).
      seed: seeds sizes and positions.
      z: atomic number given to every atom (18, argon, the Lennard-Jones classic).
      max_tries: rejection-sampling budget per cluster.

    Returns:
      :class:`Molecules` with ``targets [M, 1]`` (``target_names=("energy",)``, unit ``"eps"``),
      ``forces [A, 3]`` in eps/sigma and positions in sigma.

    Raises:
      ValueError / TypeError: bad counts, range or parameters.
      RuntimeError: the atoms do not fit (density too high for ``min_dist``).
    """
    n_clusters = _check_count("n_clusters", n_clusters)
    lo, hi = (n_atoms, n_atoms) if isinstance(n_atoms, (int, np.integer)) else tuple(n_atoms)
    lo, hi = _check_count("n_atoms (low)", lo), _check_count("n_atoms (high)", hi)
    if hi < lo:
        raise ValueError(f"n_atoms range must have low <= high, got ({lo}, {hi})")
    _positive(min_dist=min_dist, density=density)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lo, hi + 1, size=n_clusters)
    positions, energies, forces = [], [], []
    for n in sizes:
        radius = (3.0 * n / (4.0 * np.pi * density)) ** (1.0 / 3.0)
        pos = _sample_cluster(rng, int(n), radius, min_dist, max_tries)
        e, f = cluster_energy_forces(potential, pos)
        positions.append(pos)
        energies.append(e)
        forces.append(f)
    return Molecules(
        z=np.full(int(sizes.sum()), z, dtype=np.int64),
        pos=np.concatenate(positions),
        n_atoms=sizes,
        targets=np.asarray(energies)[:, None],
        target_names=("energy",),
        target_units=(ENERGY_UNIT,),
        forces=np.concatenate(forces),
        name=f"toy:{potential.name}",
    )


def pair_distances(molecules: Molecules) -> np.ndarray:
    """``[P]`` all intra-molecule pair distances of a :class:`Molecules` (to choose an encoding range)."""
    out = []
    for off, n in zip(molecules.offsets, molecules.n_atoms):
        i, j = pair_indices(n)
        p = molecules.pos[off:off + n]
        out.append(np.linalg.norm(p[i] - p[j], axis=-1))
    return np.concatenate(out)
