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
"""

from __future__ import annotations

import math
from typing import Literal

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
) -> np.ndarray:
    """Direct numpy evaluation of the k-th x-derivative of the interpolant (inside the range).

    The test-suite oracle: written for clarity, not speed.

    Args:
      x: ``[...]`` positions, all within ``[x_min, x_max]``.
      values: ``[n_bin, dim]`` values at the centres.
      slopes: ``[n_bin, dim]`` dh/dx at the centres (Hermite) or None (linear interpolation).
      x_min, x_max: the range covered by the centres.
      order: derivative order w.r.t. x.

    Returns:
      ``[..., dim]`` array (float64).
    """
    values = np.asarray(values, dtype=np.float64)
    n_bin = values.shape[0]
    delta = check_grid(n_bin, x_min, x_max)
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < x_min) or np.any(x > x_max):
        raise ValueError(out_of_range_message(x.min(), x.max(), x_min, x_max))
    u = (x - x_min) / delta
    i = np.clip(np.floor(u).astype(np.int64), 0, n_bin - 2)
    t = u - i
    if slopes is None:
        coeffs, rows = LINEAR_POWER_COEFFS, [values[i], values[i + 1]]
    else:
        slopes = np.asarray(slopes, dtype=np.float64)
        coeffs = HERMITE_POWER_COEFFS
        rows = [values[i], values[i + 1], delta * slopes[i], delta * slopes[i + 1]]
    d = derivative_coeffs(coeffs, order)
    powers = np.stack([t**p for p in range(coeffs.shape[1])], axis=-1)  # [..., P]
    w = powers @ d.T / delta**order  # [..., B]
    return sum(w[..., b, None] * rows[b] for b in range(len(rows)))
