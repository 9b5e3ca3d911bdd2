"""Piecewise-polynomial interpolation of a table, differentiable to every order (PyTorch).

One primitive serves the Hermite and the linear encodings: for each input x, find its interval
i and local coordinate t, then return ``sum_b w_b(t) * table[i + offset_b]`` where ``w_b`` are
the interval's basis polynomials (``posenc.spline``) differentiated ``order`` times.

Speed: the weighted sum of B gathered rows is one ``F.embedding_bag(..., mode="sum",
per_sample_weights=w)`` call, which never materialises the ``[E, B, dim]`` intermediate that a
gather-then-broadcast formulation writes and re-reads. ``embedding_bag`` has no double backward,
so it lives inside :class:`_Interpolate`, whose backward is written with differentiable ops and
calls :class:`_Interpolate` again at ``order + 1`` for d/dx. Any derivative order (forces need
two: the force is d/dx inside a loss that is differentiated again) therefore works.

On CUDA tensors :func:`interpolate` hands the whole operation, forward and every backward, to
the fused Triton kernels when they are enabled (``posenc.torch.triton_kernel``); this module's
path is the reference and the fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from posenc.spline import derivative_coeffs

# Set by posenc.torch.triton_kernel: a drop-in for interpolate() (same arguments, differentiable
# to every order) used for CUDA tensors when enabled. None means the plain-torch path only.
_FUSED_INTERPOLATE: Callable[..., torch.Tensor] | None = None


def set_fused_interpolate(fn: Callable[..., torch.Tensor] | None) -> None:
    """Registers (or removes, with None) an accelerated :func:`interpolate` used for CUDA tensors."""
    global _FUSED_INTERPOLATE
    _FUSED_INTERPOLATE = fn


def locate(x: torch.Tensor, x_min: float, delta: float, n_bin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval index and local coordinate of each x.

    Args:
      x: ``[E]`` positions inside ``[x_min, x_max]``.

    Returns:
      ``(idx, t)``: ``[E]`` int64 interval index in ``[0, n_bin - 2]`` and ``[E]`` local coordinate
      ``t = (x - c_idx) / delta`` in ``[0, 1]``, differentiable w.r.t. x (``dt/dx = 1/delta``).
    """
    u = (x - x_min) / delta
    idx = u.detach().floor().clamp_(0, n_bin - 2).long()
    return idx, u - idx.to(u.dtype)


def basis_weights(t: torch.Tensor, coeffs: np.ndarray, order: int, delta: float) -> torch.Tensor:
    """The ``[E, B]`` basis weights ``d^order w_b / dx^order`` at local coordinates ``t`` ``[E]``.

    ``coeffs`` are the ``[B, P]`` power-basis coefficients already differentiated ``order``
    times w.r.t. t (``posenc.spline.derivative_coeffs``); dividing by ``delta**order`` converts
    t-derivatives to x-derivatives.
    """
    n_pow = coeffs.shape[1]
    powers = [torch.ones_like(t)]
    for _ in range(1, n_pow):
        powers.append(powers[-1] * t)
    c = torch.as_tensor(coeffs.T / delta**order, dtype=t.dtype, device=t.device)  # [P, B]
    return torch.stack(powers, dim=-1) @ c  # [E, B]


def _weights_and_rows(x, offsets, coeffs, x_min, delta, n_bin, order) -> tuple[torch.Tensor, torch.Tensor]:
    """``[E, B]`` basis weights of order ``order`` and ``[E, B]`` table rows they multiply."""
    idx, t = locate(x, x_min, delta, n_bin)
    return basis_weights(t, coeffs, order, delta), idx[:, None] + offsets


def _x_grad(x, table, grad_out, offsets, coeffs_all, x_min, delta, n_bin, order) -> torch.Tensor:
    """``[E]`` gradient w.r.t. x of ``sum(grad_out * interpolant)``: the order-(k+1) interpolant,
    dotted with ``grad_out`` row by row. Built from :func:`interpolate`, so it is differentiable."""
    deriv = interpolate(x, table, offsets, coeffs_all, x_min, delta, n_bin, order + 1)  # [E, D]
    return (grad_out * deriv).sum(-1)


class _TableGrad(torch.autograd.Function):
    """``[R, D]`` gradient of the table: ``W^T grad_out`` with W the ``[E, R]`` matrix of weights.

    W has B non-zeros per row, so this is a sparse-dense product. Measured on CPU, a COO
    ``torch.sparse.mm`` is ~10x faster than ``index_add`` of the ``[E*B, D]`` outer products (which
    serialises on the few, heavily shared rows). ``torch.sparse.mm``'s gradient w.r.t. the sparse
    values carries no graph, so it runs inside this Function, whose backward is written with
    :func:`interpolate` (differentiable to every order): d/d grad_out is the order-k interpolant
    of the incoming ``[R, D]`` gradient, d/dx its order-(k+1) interpolant dotted with grad_out.
    """

    @staticmethod
    def forward(ctx, x, grad_out, n_rows, offsets, coeffs_all, x_min, delta, n_bin, order):
        ctx.save_for_backward(x, grad_out, offsets)
        ctx.consts = (coeffs_all, x_min, delta, n_bin, order)
        w, rows = _weights_and_rows(x, offsets, coeffs_all[order], x_min, delta, n_bin, order)  # [E, B] each
        rows = rows.flatten()  # [E*B]
        cols = torch.arange(x.shape[0], device=x.device).repeat_interleave(offsets.numel())  # [E*B]
        w_t = torch.sparse_coo_tensor(torch.stack([rows, cols]), w.flatten(), (n_rows, x.shape[0]),
                                      check_invariants=False)  # [R, E], indices valid by construction
        return torch.sparse.mm(w_t, grad_out)

    @staticmethod
    def backward(ctx, grad_table):
        x, grad_out, offsets = ctx.saved_tensors
        coeffs_all, x_min, delta, n_bin, order = ctx.consts
        grad_x = grad_grad_out = None
        if ctx.needs_input_grad[0]:
            grad_x = _x_grad(x, grad_table, grad_out, offsets, coeffs_all, x_min, delta, n_bin, order)
        if ctx.needs_input_grad[1]:
            grad_grad_out = interpolate(x, grad_table, offsets, coeffs_all, x_min, delta, n_bin, order)  # [E, D]
        return grad_x, grad_grad_out, None, None, None, None, None, None, None


class _Interpolate(torch.autograd.Function):
    """``out[e] = sum_b w_b^(order)(t_e) * table[idx_e + offsets[b]]`` with a differentiable backward."""

    @staticmethod
    def forward(ctx, x, table, offsets, coeffs_all, x_min, delta, n_bin, order):
        # x: [E]; table: [R, D]; offsets: [B] int64; coeffs_all: tuple of [B, P] per order.
        ctx.save_for_backward(x, table, offsets)
        ctx.consts = (coeffs_all, x_min, delta, n_bin, order)
        coeffs = coeffs_all[order]
        if not coeffs.any():  # past the polynomial degree every derivative is zero
            return x.new_zeros(x.shape[0], table.shape[1])
        w, rows = _weights_and_rows(x, offsets, coeffs, x_min, delta, n_bin, order)  # [E, B] each
        return F.embedding_bag(rows, table, mode="sum", per_sample_weights=w)

    @staticmethod
    def backward(ctx, grad_out):
        x, table, offsets = ctx.saved_tensors
        coeffs_all, x_min, delta, n_bin, order = ctx.consts
        grad_x = grad_table = None
        if ctx.needs_input_grad[0]:
            # d/dx of the order-k interpolant is the order-(k+1) interpolant: the same primitive,
            # so this backward is itself differentiable to any order.
            grad_x = _x_grad(x, table, grad_out, offsets, coeffs_all, x_min, delta, n_bin, order)
        if ctx.needs_input_grad[1]:
            grad_table = _TableGrad.apply(x, grad_out, table.shape[0], offsets, coeffs_all, x_min, delta, n_bin, order)
        return grad_x, grad_table, None, None, None, None, None, None


def interpolate(
    x: torch.Tensor,
    table: torch.Tensor,
    offsets: torch.Tensor,
    coeffs_all: tuple[np.ndarray, ...],
    x_min: float,
    delta: float,
    n_bin: int,
    order: int,
) -> torch.Tensor:
    """Evaluates the order-``order`` x-derivative of a piecewise polynomial stored in ``table``.

    Args:
      x: ``[E]`` positions, already inside ``[x_min, x_max]``.
      table: ``[R, D]`` stacked rows; interval i uses rows ``i + offsets``.
      offsets: ``[B]`` int64 row offsets of the B basis functions.
      coeffs_all: power-basis coefficients ``[B, P]`` for derivative orders 0..P (the last all zero).
      x_min, delta, n_bin: the grid.
      order: derivative order w.r.t. x.

    Returns:
      ``[E, D]`` tensor.
    """
    order = min(order, len(coeffs_all) - 1)  # all-zero beyond the degree
    if _FUSED_INTERPOLATE is not None and x.is_cuda:
        return _FUSED_INTERPOLATE(x, table, offsets, coeffs_all, x_min, delta, n_bin, order)
    return _Interpolate.apply(x, table, offsets, coeffs_all, x_min, delta, n_bin, order)


def all_derivative_coeffs(coeffs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Coefficient matrices for derivative orders 0..P (order P is identically zero)."""
    return tuple(derivative_coeffs(coeffs, k) for k in range(coeffs.shape[1] + 1))


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """Raises ValueError naming the problem if ``x`` has NaN or inf entries."""
    if x.numel() and not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf values; the encoding needs finite inputs")


