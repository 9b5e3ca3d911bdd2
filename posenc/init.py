"""Initial value/slope (and curvature) tables for the table encodings, in numpy (shared by both backends).

Why this matters: a calibration run on MD17 ethanol (invariant EGNN 4x64, 1,000 training frames,
12 CPU-minutes per arm; ``../shared/notes/calibration-md17-ethanol.md``) gave test force MAE of
54.2 meV/A for an i.i.d. N(0, 1) table with zero slopes, 19.3 for Gaussian bumps and 13.3 for a
sinusoidal table (against 11.5 for the raw r^2 baseline). An i.i.d. table makes h(x) rough, so its
x-derivative (the force) is noisy and the model overfits. A smooth basis sampled at the centres,
with slopes set to that basis's exact derivative, starts the encoding as a good fixed basis that
training then refines. ``"sinusoidal"`` is therefore the default; ``benchmarks/init_study.py``
re-measures the ranking on toy potentials.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from posenc.spline import TABLE_FORMS, bin_centres, bspline_interpolation_matrix, check_form

InitKind = Literal["sinusoidal", "gaussian", "normal"]
INITS: tuple[str, ...] = ("sinusoidal", "gaussian", "normal")


def _sinusoid_phases(n_bin: int, dim: int, x_min: float, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """``(omega [dim], arg [n_bin, dim])`` of :func:`sinusoidal_tables`: dimension k is ``sin(arg[:, k])``."""
    length = x_max - x_min
    c = bin_centres(n_bin, x_min, x_max)[:, None] - x_min  # [n_bin, 1]
    half_periods_max = max(1.0, min(dim / 2.0, (n_bin - 1) / 8.0))
    half_periods = np.linspace(1.0, half_periods_max, dim)  # number of half periods over the range
    omega = np.pi * half_periods / length  # [dim]
    phase = (np.arange(dim) % 2) * (np.pi / 2)
    return omega, omega * c + phase  # [dim], [n_bin, dim]


def sinusoidal_tables(n_bin: int, dim: int, x_min: float, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Sines and cosines of increasing frequency, sampled at the centres, with exact slopes.

    Dimension k is ``sin(w_k (x - x_min) + phi_k)`` with ``phi_k`` alternating 0 and pi/2 and
    ``w_k`` spaced linearly from half a period over the range up to a quarter of the grid's
    Nyquist frequency, so every dimension is resolved by the centres (at least 8 centres per period).

    Returns:
      ``(values, slopes)``, each ``[n_bin, dim]`` float64; slopes in units of 1/x.
    """
    omega, arg = _sinusoid_phases(n_bin, dim, x_min, x_max)
    return np.sin(arg), omega * np.cos(arg)


def _gaussian_z(n_bin: int, dim: int, x_min: float, x_max: float) -> tuple[np.ndarray, float]:
    """``(z [n_bin, dim], sigma)`` of :func:`gaussian_tables`: dimension k is ``exp(-z[:, k]^2 / 2)``."""
    c = bin_centres(n_bin, x_min, x_max)[:, None]  # [n_bin, 1]
    mu = np.linspace(x_min, x_max, dim)  # [dim]
    sigma = (x_max - x_min) / max(dim - 1, 1)
    # Never narrower than ~1.5 bins: a bump the centres cannot resolve is as rough as noise.
    sigma = max(sigma, 1.5 * (x_max - x_min) / (n_bin - 1))
    return (c - mu) / sigma, sigma


def gaussian_tables(n_bin: int, dim: int, x_min: float, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian bumps with evenly spaced means over the range and width of one spacing.

    Returns:
      ``(values, slopes)``, each ``[n_bin, dim]`` float64; slopes in units of 1/x.
    """
    z, sigma = _gaussian_z(n_bin, dim, x_min, x_max)
    values = np.exp(-0.5 * z**2)
    return values, -z / sigma * values


def initial_curvatures(kind: str, n_bin: int, dim: int, x_min: float, x_max: float, *,
                       scale: float = 1.0) -> np.ndarray:
    """The exact second derivatives d^2h/dx^2 at the centres of the ``kind`` basis (zeros for "normal").

    The third table of the quintic Hermite form, matching :func:`initial_tables`'s values and slopes.

    Returns:
      ``[n_bin, dim]`` float64, in units of 1/x^2.
    """
    if kind == "sinusoidal":
        omega, arg = _sinusoid_phases(n_bin, dim, x_min, x_max)
        curvatures = -(omega**2) * np.sin(arg)
    elif kind == "gaussian":
        z, sigma = _gaussian_z(n_bin, dim, x_min, x_max)
        curvatures = (z**2 - 1.0) / sigma**2 * np.exp(-0.5 * z**2)
    elif kind == "normal":
        curvatures = np.zeros((n_bin, dim))
    else:
        raise ValueError(f"init must be one of {INITS}, got {kind!r}")
    return scale * curvatures


def initial_form_tables(form: str, kind: str, n_bin: int, dim: int, x_min: float, x_max: float, *,
                        rng: np.random.Generator | None = None, scale: float = 1.0) -> dict[str, np.ndarray]:
    """The initial tables of table form ``form`` (``posenc.spline.TABLE_FORMS``), by name.

    ``linear`` and ``hermite`` take :func:`initial_tables` as they are; ``hermite5`` adds
    :func:`initial_curvatures`. For ``bspline`` the control values are solved for
    (:func:`posenc.spline.bspline_interpolation_matrix`) so that the curve passes through the
    ``kind`` values at every centre; its slopes then match the basis's to the spline's accuracy
    (O(delta^4) inside, O(delta^2) within a few bins of the ends, where the natural end condition
    sets h'' = 0). Under ``"normal"`` the random values are used as control values directly
    (the rough start is the point of that initialisation).

    Returns:
      ``{name: [n_bin, dim] float64}`` for each name of ``TABLE_FORMS[form]``.
    """
    check_form(form)
    values, slopes = initial_tables(kind, n_bin, dim, x_min, x_max, rng=rng, scale=scale)
    tables = {"values": values, "slopes": slopes}
    if form == "hermite5":
        tables["curvatures"] = initial_curvatures(kind, n_bin, dim, x_min, x_max, scale=scale)
    if form == "bspline" and kind != "normal":
        tables["values"] = bspline_interpolation_matrix(n_bin) @ values
    return {name: tables[name] for name in TABLE_FORMS[form]}


def initial_tables(
    kind: str,
    n_bin: int,
    dim: int,
    x_min: float,
    x_max: float,
    *,
    rng: np.random.Generator | None = None,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(values, slopes)`` tables of an initialisation ``kind``, as float64 numpy arrays.

    Args:
      kind: ``"sinusoidal"`` (default of the encodings), ``"gaussian"`` or ``"normal"`` (i.i.d.
        N(0, scale^2) values and zero slopes, the rough start the calibration warns about).
      n_bin, dim, x_min, x_max: the grid and embedding size.
      rng: random generator, used by ``"normal"`` only.
      scale: multiplies the values and slopes.

    Returns:
      ``(values, slopes)``, each ``[n_bin, dim]``.
    """
    if kind == "sinusoidal":
        values, slopes = sinusoidal_tables(n_bin, dim, x_min, x_max)
    elif kind == "gaussian":
        values, slopes = gaussian_tables(n_bin, dim, x_min, x_max)
    elif kind == "normal":
        rng = np.random.default_rng() if rng is None else rng
        values, slopes = rng.standard_normal((n_bin, dim)), np.zeros((n_bin, dim))
    else:
        raise ValueError(f"init must be one of {INITS}, got {kind!r}")
    return scale * values, scale * slopes
