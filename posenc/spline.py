"""The mathematics of the encoding, once, in numpy: bin grid, interpolation bases, reference.

Both backends import their constants from here, so the definition of the Hermite basis lives
in exactly one place.

Convention (documented once, used everywhere):

* ``n_bin`` centres ``c_i = x_min + i * delta`` for ``i = 0 .. n_bin - 1``, with
  ``delta = (x_max - x_min) / (n_bin - 1)``; the first and last centres are ``x_min`` and ``x_max``.
* For ``x`` in ``[c_i, c_{i+1}]`` let ``t = (x - c_i) / delta`` in ``[0, 1]``.
* Slopes are physical derivatives, ``g_i = dh/dx (c_i)`` in units of h per unit of x, so the
  slope terms of the cubic Hermite form are scaled by ``delta``::

      h(x) = h00(t) h_i + h01(t) h_{i+1} + delta * (h10(t) g_i + h11(t) g_{i+1})

  With ``delta = 1`` (x measured in bins) this is the paper's Section 3.1 formula.
* Each basis is a polynomial in ``t``; derivatives of order k w.r.t. x are the k-th t-derivative
  divided by ``delta**k``. The interval index is ``floor((x - x_min) / delta)`` clipped to
  ``[0, n_bin - 2]``, so ``x == x_max`` falls in the last interval with ``t = 1``.

Every table *form* (:data:`TABLE_FORMS`) is the same computation: stack the learned tables into
rows (:func:`stacked_rows`), and on interval i weight rows ``i + offset_b``
(:func:`row_offsets`) by the basis polynomials of :data:`POWER_COEFFS`:

* ``linear`` (C0): ``[h_i, h_{i+1}]``.
* ``hermite`` (C1, the paper's): ``[h_i, h_{i+1}, delta g_i, delta g_{i+1}]``.
* ``hermite5`` (C2): quintic Hermite, ``[h_i, h_{i+1}, delta g_i, delta g_{i+1}, delta^2 k_i,
  delta^2 k_{i+1}]`` with curvatures ``k_i = d^2h/dx^2 (c_i)``; exact value, slope and curvature
  at every centre.
* ``bspline`` (C2): the uniform cubic B-spline whose knots are the centres and whose ``n_bin``
  control values ``P_j`` sit at the centres. Interval i needs ``P_{i-1} .. P_{i+2}``, so the
  stacked table adds one ghost row at each end, ``P_{-1} = 2 P_0 - P_1`` and
  ``P_n = 2 P_{n-1} - P_{n-2}`` (:func:`bspline_padded`): linear in the parameters, and the
  natural end condition: h(x_min) = P_0, h(x_max) = P_{n-1} and h'' = 0 at both ends, so the
  linear extension beyond the range keeps the curve C2 there. Inside, h(c_i) =
  (P_{i-1} + 4 P_i + P_{i+1}) / 6, not P_i: :func:`bspline_interpolation_matrix` maps values
  wanted at the centres to the control values that give them.
"""

from __future__ import annotations

import math
from typing import Any, Literal
from collections.abc import Callable, Mapping

import numpy as np

OutOfRange = Literal["error", "clamp", "extrapolate"]
OUT_OF_RANGE_POLICIES: tuple[str, ...] = ("error", "clamp", "extrapolate")

# Power-basis coefficients: row b is basis function b, column p the coefficient of t**p.
# Hermite rows are ordered as the stacked table [h_i, h_{i+1}, delta*g_i, delta*g_{i+1}].
HERMITE_POWER_COEFFS = np.array(
    [
        [1.0, 0.0, -3.0, 2.0],  # h00 = 2t^3 - 3t^2 + 1   (weight of h_i)
        [0.0, 0.0, 3.0, -2.0],  # h01 = -2t^3 + 3t^2      (weight of h_{i+1})
        [0.0, 1.0, -2.0, 1.0],  # h10 = t^3 - 2t^2 + t    (weight of delta * g_i)
        [0.0, 0.0, -1.0, 1.0],  # h11 = t^3 - t^2         (weight of delta * g_{i+1})
    ]
)
# Linear interpolation (the paper's C0 variant): rows [h_i, h_{i+1}].
LINEAR_POWER_COEFFS = np.array(
    [
        [1.0, -1.0],  # 1 - t
        [0.0, 1.0],  # t
    ]
)


# Uniform cubic B-spline on [c_i, c_{i+1}]: rows [P_{i-1}, P_i, P_{i+1}, P_{i+2}] (control values).
BSPLINE_POWER_COEFFS = np.array(
    [
        [1.0, -3.0, 3.0, -1.0],  # (1 - t)^3 / 6
        [4.0, 0.0, -6.0, 3.0],  # (3t^3 - 6t^2 + 4) / 6
        [1.0, 3.0, 3.0, -3.0],  # (-3t^3 + 3t^2 + 3t + 1) / 6
        [0.0, 0.0, 0.0, 1.0],  # t^3 / 6
    ]
) / 6.0
# Quintic Hermite: rows [h_i, h_{i+1}, delta*g_i, delta*g_{i+1}, delta^2*k_i, delta^2*k_{i+1}].
QUINTIC_HERMITE_POWER_COEFFS = np.array(
    [
        [1.0, 0.0, 0.0, -10.0, 15.0, -6.0],  # value at 0
        [0.0, 0.0, 0.0, 10.0, -15.0, 6.0],  # value at 1
        [0.0, 1.0, 0.0, -6.0, 8.0, -3.0],  # slope at 0
        [0.0, 0.0, 0.0, -4.0, 7.0, -3.0],  # slope at 1
        [0.0, 0.0, 0.5, -1.5, 1.5, -0.5],  # curvature at 0
        [0.0, 0.0, 0.0, 0.5, -1.0, 0.5],  # curvature at 1
    ]
)

#: The learned ``[n_bin, dim]`` tables of each table form, in stacking order (see module docs).
TABLE_FORMS: dict[str, tuple[str, ...]] = {
    "linear": ("values",),
    "hermite": ("values", "slopes"),
    "bspline": ("values",),
    "hermite5": ("values", "slopes", "curvatures"),
}
#: The power-basis coefficients ``[B, P]`` of each table form.
POWER_COEFFS: dict[str, np.ndarray] = {
    "linear": LINEAR_POWER_COEFFS,
    "hermite": HERMITE_POWER_COEFFS,
    "bspline": BSPLINE_POWER_COEFFS,
    "hermite5": QUINTIC_HERMITE_POWER_COEFFS,
}


def check_form(form: str) -> None:
    """Raises ValueError unless ``form`` is one of :data:`TABLE_FORMS`."""
    if form not in TABLE_FORMS:
        raise ValueError(f"table form must be one of {tuple(TABLE_FORMS)}, got {form!r}")


def row_offsets(form: str, n_bin: int) -> tuple[int, ...]:
    """The B row offsets of ``form``'s stacked table: interval i reads rows ``i + offsets``."""
    check_form(form)
    if form == "bspline":
        return (0, 1, 2, 3)  # P_{i-1} .. P_{i+2}: row j of the padded table is P_{j-1}
    # one pair (row i, row i + 1) per table, each table a block of n_bin rows
    return tuple(k * n_bin + j for k in range(len(TABLE_FORMS[form])) for j in (0, 1))


def bspline_padded(values: Any, concatenate: Callable[..., Any]) -> Any:
    """``[n_bin + 2, D]``: the control values ``[n_bin, D]`` between their two ghost rows.

    Written once for every array library: ``concatenate`` is ``np.concatenate``,
    ``jnp.concatenate`` or ``torch.cat`` (each takes the axis as second argument).
    """
    return concatenate([2 * values[:1] - values[1:2], values, 2 * values[-1:] - values[-2:-1]], 0)


def bspline_interpolation_matrix(n_bin: int) -> np.ndarray:
    """``[n_bin, n_bin]`` M such that control values ``M @ v`` give a B-spline with h(c_i) = v_i.

    With the ghost rows of :func:`bspline_padded` the curve at the centres is ``A @ P`` with A
    tridiagonal ``(1, 4, 1) / 6`` inside and identity rows at both ends; ``M = A^{-1}`` (A is
    strictly diagonally dominant, so always invertible and well conditioned: ``||M|| <= 3``).
    """
    check_grid(n_bin, 0.0, 1.0)
    a = np.eye(n_bin)
    inner = np.arange(1, n_bin - 1)
    a[inner, inner] = 4.0 / 6.0
    a[inner, inner - 1] = a[inner, inner + 1] = 1.0 / 6.0
    return np.linalg.inv(a)


def stacked_rows(form: str, delta: float, tables: Mapping[str, np.ndarray | None]) -> np.ndarray:
    """The stacked ``[R, D]`` numpy table of ``form`` from its ``[n_bin, D]`` tables (float64).

    Table k of :data:`TABLE_FORMS` (values, slopes, curvatures) is a physical k-th derivative, so
    it is scaled by ``delta**k`` into t-units.
    """
    check_form(form)
    missing = [k for k in TABLE_FORMS[form] if tables.get(k) is None]
    if missing:
        raise ValueError(f"the {form} form needs tables {TABLE_FORMS[form]}; missing {missing}")
    blocks = [delta**k * np.asarray(tables[name], dtype=np.float64) for k, name in enumerate(TABLE_FORMS[form])]
    return bspline_padded(blocks[0], np.concatenate) if form == "bspline" else np.concatenate(blocks, 0)


def derivative_coeffs(coeffs: np.ndarray, order: int) -> np.ndarray:
    """Power-basis coefficients of the ``order``-th t-derivative of each basis polynomial.

    Args:
      coeffs: ``[B, P]`` coefficients of ``t**0 .. t**(P-1)``.
      order: derivative order k >= 0.

    Returns:
      ``[B, P]`` coefficients (columns beyond ``P - 1 - k`` are zero); all zeros once k >= P.
    """
    if order < 0:
        raise ValueError(f"derivative order must be >= 0, got {order}")
    n_pow = coeffs.shape[1]
    out = np.zeros_like(coeffs, dtype=np.float64)
    for p in range(order, n_pow):
        out[:, p - order] = coeffs[:, p] * math.perm(p, order)
    return out


def all_derivative_coeffs(coeffs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Coefficient matrices ``[B, P]`` for derivative orders 0..P (order P is identically zero)."""
    return tuple(derivative_coeffs(coeffs, k) for k in range(coeffs.shape[1] + 1))


def check_grid(n_bin: int, x_min: float, x_max: float) -> float:
    """Validates a bin grid and returns its spacing ``delta``.

    Raises:
      TypeError: ``n_bin`` is not an integer.
      ValueError: fewer than 2 bins, non-finite bounds, or ``x_max <= x_min``.
    """
    if isinstance(n_bin, bool) or not isinstance(n_bin, (int, np.integer)):
        raise TypeError(f"n_bin must be an int, got {type(n_bin).__name__}")
    if n_bin < 2:
        raise ValueError(f"n_bin must be >= 2 (one interval needs two centres), got {n_bin}")
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError(f"x_min and x_max must be finite, got {x_min}, {x_max}")
    if not x_max > x_min:
        raise ValueError(f"x_max must be > x_min, got x_min={x_min}, x_max={x_max}")
    return (x_max - x_min) / (n_bin - 1)


def check_policy(out_of_range: str) -> None:
    """Raises ValueError unless ``out_of_range`` is one of :data:`OUT_OF_RANGE_POLICIES`."""
    if out_of_range not in OUT_OF_RANGE_POLICIES:
        raise ValueError(
            f"out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}"
        )


def check_dim(dim: int) -> None:
    """Raises TypeError/ValueError unless ``dim`` is a positive int."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")


def check_scale(scale: float) -> None:
    """Raises ValueError unless ``scale`` (an input multiplier) is finite and > 0."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")


def bin_centres(n_bin: int, x_min: float, x_max: float) -> np.ndarray:
    """The ``[n_bin]`` evenly spaced centres from ``x_min`` to ``x_max`` (float64)."""
    check_grid(n_bin, x_min, x_max)
    return np.linspace(x_min, x_max, n_bin)


def out_of_range_message(lo: float, hi: float, x_min: float, x_max: float) -> str:
    """The error text for inputs outside the grid under the ``"error"`` policy."""
    return (
        f"x outside the encoding range [{x_min}, {x_max}]: observed min {lo}, max {hi}. "
        "Widen the range, or pass out_of_range='clamp' or 'extrapolate' explicitly."
    )


def interpolate_reference(
    x: np.ndarray,
    values: np.ndarray,
    slopes: np.ndarray | None,
    x_min: float,
    x_max: float,
    order: int = 0,
    *,
    curvatures: np.ndarray | None = None,
    form: str | None = None,
) -> np.ndarray:
    """Direct numpy evaluation of the k-th x-derivative of the interpolant (inside the range).

    The test-suite oracle: written for clarity, not speed.

    Args:
      x: ``[...]`` positions, all within ``[x_min, x_max]``.
      values: ``[n_bin, dim]`` values at the centres (control values for ``form="bspline"``).
      slopes: ``[n_bin, dim]`` dh/dx at the centres (Hermite forms) or None.
      x_min, x_max: the range covered by the centres.
      order: derivative order w.r.t. x.
      curvatures: ``[n_bin, dim]`` d^2h/dx^2 at the centres (``form="hermite5"``) or None.
      form: one of :data:`TABLE_FORMS`; None infers it from the tables given: ``linear``
        without slopes, ``hermite5`` with curvatures, ``hermite`` otherwise.

    Returns:
      ``[..., dim]`` array (float64).
    """
    if form is None:
        form = "linear" if slopes is None else "hermite" if curvatures is None else "hermite5"
    values = np.asarray(values, dtype=np.float64)
    n_bin = values.shape[0]
    delta = check_grid(n_bin, x_min, x_max)
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < x_min) or np.any(x > x_max):
        raise ValueError(out_of_range_message(x.min(), x.max(), x_min, x_max))
    table = stacked_rows(form, delta, {"values": values, "slopes": slopes, "curvatures": curvatures})
    u = (x - x_min) / delta
    i = np.clip(np.floor(u).astype(np.int64), 0, n_bin - 2)
    t = u - i
    coeffs = POWER_COEFFS[form]
    d = derivative_coeffs(coeffs, order)
    powers = np.stack([t**p for p in range(coeffs.shape[1])], axis=-1)  # [..., P]
    w = powers @ d.T / delta**order  # [..., B]
    return sum(w[..., b, None] * table[i + o] for b, o in enumerate(row_offsets(form, n_bin)))
