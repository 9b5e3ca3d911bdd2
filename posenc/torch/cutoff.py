"""Smooth cutoff envelope (PyTorch): takes an encoding to zero at a radius without breaking C1."""

from __future__ import annotations

import torch


def smooth_cutoff(x: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """DimeNet's polynomial envelope ``u(s)``, ``s = x / cutoff``; zero for ``x >= cutoff``.

    ``u(s) = 1 - (p+1)(p+2)/2 s^p + p(p+2) s^(p+1) - p(p+1)/2 s^(p+2)``: ``u(0) = 1`` and u, u'
    and u'' all vanish at ``s = 1``, so a C1 encoding multiplied by u stays C1 (indeed C2 at the
    cutoff).

    Args:
      x: ``[...]`` non-negative positions (same unit as ``cutoff``).
      cutoff: radius where the envelope reaches zero (> 0).
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
    sp = s**p
    u = 1.0 + sp * (a + s * (b + c * s))
    return torch.where(s < 1.0, u, torch.zeros_like(u))
