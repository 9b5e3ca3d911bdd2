"""The smoothness regularizer (PyTorch)."""

from __future__ import annotations

import torch
from torch import nn


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Row 2-norms ``[N]`` of ``v`` ``[N, D]`` whose gradient is 0 (not NaN) at a zero row."""
    sq = (v * v).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def smoothness_loss(values: torch.Tensor) -> torch.Tensor:
    """The paper's L_smooth = sum_i ||h_{i+1} - h_i|| / sum_i ||h_i||, for i = 1 .. n-1.

    Both sums run over the first n-1 centres, as in Section 3.2 of the paper; norms are 2-norms
    over the embedding dimension. The loss is scale-free: multiplying the table by a constant
    leaves it unchanged.

    Args:
      values: ``[n_bin, dim]`` value table (``HermiteEncoding.values``).

    Returns:
      Scalar tensor.

    Raises:
      ValueError: fewer than 2 rows, or every one of the first n-1 rows is zero (0/0).
    """
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"values must be [n_bin >= 2, dim], got shape {tuple(values.shape)}")
    num = _safe_norm(values[1:] - values[:-1]).sum()
    den = _safe_norm(values[:-1]).sum()
    if not torch.jit.is_tracing() and den.detach().item() == 0.0:
        raise ValueError("smoothness_loss is undefined for an all-zero table (0/0)")
    return num / den


def total_smoothness_loss(module: nn.Module) -> torch.Tensor:
    """Sum of :func:`smoothness_loss` over every table encoding inside ``module``.

    Returns a zero tensor when ``module`` holds no table encoding, so ``loss + lam * this``
    works for every encoding choice.
    """
    from posenc.torch.encodings import TableEncoding

    losses = [smoothness_loss(m.values) for m in module.modules() if isinstance(m, TableEncoding)]
    if not losses:
        p = next(module.parameters(), None)
        return torch.zeros((), dtype=p.dtype if p is not None else torch.get_default_dtype(),
                           device=p.device if p is not None else None)
    return torch.stack(losses).sum()
