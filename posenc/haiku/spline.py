"""Piecewise-polynomial interpolation of a table (JAX), the mirror of ``posenc.torch.spline``.

JAX differentiates the gather-and-weight expression to any order by itself (the interval index
carries no gradient; t is linear in x), and XLA fuses the gather with the weighted sum, so no
custom derivative rule is needed here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from posenc.spline import all_derivative_coeffs

__all__ = ["all_derivative_coeffs", "basis_weights", "check_finite", "interpolate", "is_concrete", "locate"]


def locate(x: jax.Array, x_min: float, delta: float, n_bin: int) -> tuple[jax.Array, jax.Array]:
    """Interval index ``[E]`` (int32, in ``[0, n_bin - 2]``) and local coordinate t ``[E]`` of x ``[E]``."""
    u = (x - x_min) / delta
    idx = jnp.clip(jnp.floor(jax.lax.stop_gradient(u)), 0, n_bin - 2).astype(jnp.int32)
    return idx, u - idx.astype(u.dtype)


def basis_weights(t: jax.Array, coeffs: np.ndarray, order: int, delta: float) -> jax.Array:
    """``[E, B]`` basis weights ``d^order w_b / dx^order`` at ``t`` ``[E]`` (coeffs already differentiated)."""
    n_pow = coeffs.shape[1]
    powers = jnp.stack([t**p for p in range(n_pow)], axis=-1)  # [E, P]
    return powers @ jnp.asarray(coeffs.T / delta**order, dtype=t.dtype)  # [E, B]


def interpolate(
    x: jax.Array,
    table: jax.Array,
    offsets: jax.Array,
    coeffs_all: tuple[np.ndarray, ...],
    x_min: float,
    delta: float,
    n_bin: int,
    order: int,
) -> jax.Array:
    """Order-``order`` x-derivative of the piecewise polynomial stored in ``table``.

    The arguments of ``posenc.torch.spline.interpolate``.

    Args:
      x: ``[E]`` positions inside ``[x_min, x_max]``.
      table: ``[R, D]`` stacked rows; interval i uses rows ``i + offsets``.
      offsets: ``[B]`` integer row offsets of the B basis functions.
      coeffs_all: power-basis coefficients ``[B, P]`` for derivative orders 0..P (the last all
        zero), as :func:`all_derivative_coeffs` gives them.
      x_min, delta, n_bin: the grid.
      order: derivative order w.r.t. x.

    Returns:
      ``[E, D]`` array.
    """
    order = min(order, len(coeffs_all) - 1)  # all-zero beyond the degree
    coeffs = coeffs_all[order]
    if not coeffs.any():
        return jnp.zeros((x.shape[0], table.shape[1]), table.dtype)
    idx, t = locate(x, x_min, delta, n_bin)
    w = basis_weights(t, coeffs, order, delta)  # [E, B]
    rows = table[idx[:, None] + jnp.asarray(offsets)]  # [E, B, D]
    return jnp.einsum("eb,ebd->ed", w, rows)


def is_concrete(x: jax.Array) -> bool:
    """True when x holds values (eager use), False inside jit/grad tracing."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(x: jax.Array, name: str = "x") -> None:
    """Raises ValueError for NaN/inf in a concrete x; a no-op under tracing (see module docs)."""
    if is_concrete(x) and x.size and not bool(jnp.isfinite(x).all()):
        n_nan, n_inf = int(jnp.isnan(x).sum()), int(jnp.isinf(x).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf values; the encoding needs finite inputs")
