"""Smooth cutoff envelope (JAX): the mirror of ``posenc.torch.cutoff``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_cutoff(x: jax.Array, cutoff: float, p: int = 6) -> jax.Array:
    """DimeNet's polynomial envelope ``u(x / cutoff)``, zero for ``x >= cutoff``; u, u', u'' vanish there.

    Args:
      x: ``[...]`` non-negative positions.
      cutoff: radius (> 0).
      p: polynomial order (>= 2).

    Returns:
      ``[...]`` envelope values in ``[0, 1]``.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    if p < 2:
        raise ValueError(f"envelope order p must be >= 2, got {p}")
    s = x / cutoff
    a, b, c = -(p + 1) * (p + 2) / 2.0, p * (p + 2.0), -p * (p + 1) / 2.0
    u = 1.0 + s**p * (a + s * (b + c * s))
    return jnp.where(s < 1.0, u, jnp.zeros_like(u))
