"""The smoothness regularizer (JAX): the mirror of ``posenc.torch.losses``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _safe_norm(v: jax.Array) -> jax.Array:
    """Row 2-norms ``[N]`` of ``v`` ``[N, D]`` whose gradient is 0 (not NaN) at a zero row."""
    sq = jnp.sum(v * v, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def smoothness_loss(values: jax.Array) -> jax.Array:
    """The paper's L_smooth = sum_i ||h_{i+1} - h_i|| / sum_i ||h_i||, for i = 1 .. n-1.

    Args:
      values: ``[n_bin, dim]`` value table.

    Returns:
      Scalar. For an all-zero table the ratio is 0/0: eagerly this raises ValueError; under jit
      it is NaN.
    """
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"values must be [n_bin >= 2, dim], got shape {tuple(values.shape)}")
    num = jnp.sum(_safe_norm(values[1:] - values[:-1]))
    den = jnp.sum(_safe_norm(values[:-1]))
    if not isinstance(den, jax.core.Tracer) and float(den) == 0.0:
        raise ValueError("smoothness_loss is undefined for an all-zero table (0/0)")
    return num / den


def total_smoothness_loss(params: dict) -> jax.Array:
    """Sum of :func:`smoothness_loss` over every table encoding in a Haiku params tree.

    A table encoding is any module whose parameters include ``values`` (every form of
    ``posenc.spline.TABLE_FORMS``: linear, Hermite, B-spline control values, quintic Hermite).
    Returns 0.0 when there is none.
    """
    losses = [smoothness_loss(p["values"]) for p in params.values() if "values" in p]
    return sum(losses, jnp.zeros(()))
