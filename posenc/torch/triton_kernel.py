"""Fused Triton kernels for the table interpolation, differentiable to every order (PyTorch).

``posenc.torch.spline.interpolate`` is the reference: an ``embedding_bag`` forward, a
sparse-dense product for the table gradient and an ``[E, D]`` derivative for the x gradient.
Here the same mathematics runs as three Triton kernels (``posenc.torch._triton_kernels``) that
never materialise per-basis or ``[E, D]`` intermediates:

* ``interp``      ``out[e] = sum_b w_b^(k)(t_e) T[i_e + o_b]``               ``[E, D]``
* ``interp_dot``  ``y[e] = <g[e], sum_b w_b^(k)(t_e) T[i_e + o_b]>``         ``[E]``
* ``scatter``     ``G[r] = sum_{e,b: i_e + o_b = r} w_b^(k)(t_e) g[e]``       ``[R, D]``

(``w^(k)``: basis polynomials differentiated k times w.r.t. x). The family is closed under
differentiation, which is what makes every order work: each kernel is wrapped in a
``torch.autograd.Function`` whose backward calls the three Functions again (at order k or k+1),
so the backward is itself differentiable, mirroring ``posenc.torch.spline._Interpolate``.
Forces (a gradient inside a loss) and coordinate-updating models (one order more) therefore run
on the kernels all the way down.

:func:`interpolate` is a drop-in for the reference's: :func:`enable` registers it through
``posenc.torch.spline.set_fused_interpolate``, so every CUDA call of the reference, forward and
backward, runs on the kernels.

Selection: :func:`configure` reads ``POSENC_KERNEL`` = ``auto`` (default: Triton on CUDA tensors
when Triton and a GPU are present), ``torch`` (reference only) or ``triton`` (force). The kernels
need CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how the tests run them without a
GPU). Importing this module does not import Triton; the first kernel call does. Atomic adds
make the backward's float sums order-dependent (last-bit differences between runs).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from posenc.torch.spline import set_fused_interpolate

KERNEL_ENV = "POSENC_KERNEL"
KERNEL_CHOICES: tuple[str, ...] = ("auto", "torch", "triton")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _kernels() -> ModuleType:
    """The Triton kernel module, imported on first use (Triton's import takes seconds)."""
    from posenc.torch import _triton_kernels

    return _triton_kernels


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


# --- selection -------------------------------------------------------------------------------

def is_available() -> bool:
    """True when Triton is installed and a CUDA device is present (what ``auto`` selects on)."""
    return _triton_installed() and torch.cuda.is_available()


def enable() -> None:
    """Uses the fused kernels for the interpolation on CUDA tensors (forward and backward).

    Raises:
      ImportError: Triton is not installed.
    """
    if not _triton_installed():
        raise ImportError("Triton is not installed; install the optional extra: pip install 'posenc[triton]'")
    set_fused_interpolate(interpolate)


def disable() -> None:
    """Back to the plain-torch reference implementation everywhere."""
    set_fused_interpolate(None)


def configure(mode: str | None = None) -> str:
    """Selects the implementation: ``mode`` or, if None, the ``POSENC_KERNEL`` environment variable.

    Args:
      mode: ``"auto"`` (Triton iff :func:`is_available`), ``"torch"`` or ``"triton"``; the
        environment variable's default is ``"auto"``.

    Returns:
      ``"triton"`` or ``"torch"``: what CUDA tensors will use (CPU tensors always use torch).

    Raises:
      ValueError: an unknown mode.
      ImportError: ``"triton"`` was forced but Triton is not installed.
    """
    chosen = os.environ.get(KERNEL_ENV, "auto") if mode is None else mode
    if chosen not in KERNEL_CHOICES:
        source = f"{KERNEL_ENV}={chosen!r}" if mode is None else f"mode {chosen!r}"
        raise ValueError(f"{source} is not one of {KERNEL_CHOICES}")
    if chosen == "triton" or (chosen == "auto" and is_available()):
        enable()
        return "triton"
    disable()
    return "torch"


# --- checks ----------------------------------------------------------------------------------

def _check(x: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor, coeffs: np.ndarray) -> None:
    """Rejects inputs the kernels cannot take, naming the problem."""
    if x.dim() != 1 or table.dim() != 2:
        raise ValueError(f"x must be [E] and table [R, D]; got shapes {tuple(x.shape)} and {tuple(table.shape)}")
    if table.dtype not in SUPPORTED_DTYPES or x.dtype != table.dtype:
        raise TypeError(f"x and table must share one of {SUPPORTED_DTYPES}; got {x.dtype} and {table.dtype}")
    if not (x.device == table.device == offsets.device):
        raise ValueError(f"x, table and offsets must be on one device; "
                         f"got {x.device}, {table.device}, {offsets.device}")
    if coeffs.ndim != 2 or coeffs.shape[0] not in (2, 4, 6):
        raise ValueError("coefficients must be [B, P] with B = 2 (linear), 4 (Hermite, B-spline) or 6 "
                         f"(quintic Hermite); got {coeffs.shape}")
    if offsets.dtype != torch.int64 or offsets.shape != (coeffs.shape[0],):
        raise ValueError(f"offsets must be int64 [{coeffs.shape[0]}]; got {offsets.dtype} {tuple(offsets.shape)}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the Triton kernels need CUDA tensors (x is on {x.device}); "
                         "CPU tensors only run under TRITON_INTERPRET=1, for testing")


# --- the differentiable family ---------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Spline:
    """The non-differentiable description of the interpolation: rows, bases and grid."""

    offsets: torch.Tensor  # [B] int64 row offsets
    coeffs_all: tuple[np.ndarray, ...]  # [B, P] power-basis coefficients for orders 0..P
    x_min: float
    delta: float
    n_bin: int

    def coeffs(self, order: int) -> np.ndarray:
        """``[B, P]`` coefficients of derivative order ``order`` (all zero beyond the degree)."""
        return self.coeffs_all[min(order, len(self.coeffs_all) - 1)]

    def grid(self) -> tuple[float, float, int]:
        return self.x_min, self.delta, self.n_bin


def _interp(x: torch.Tensor, table: torch.Tensor, sp: _Spline, order: int) -> torch.Tensor:
    c = sp.coeffs(order)
    if not c.any():  # past the polynomial degree every derivative is zero
        return x.new_zeros(x.shape[0], table.shape[1])
    return _kernels().interp(x, table, sp.offsets, c, order, *sp.grid())


class _Interp(torch.autograd.Function):
    """``out[e] = sum_b w_b^(k)(t_e) table[i_e + o_b]`` ``[E, D]``."""

    @staticmethod
    def forward(ctx, x, table, sp, order):
        ctx.save_for_backward(x, table)
        ctx.sp, ctx.order = sp, order
        return _interp(x, table, sp, order)

    @staticmethod
    def backward(ctx, grad_out):
        x, table = ctx.saved_tensors
        sp, k = ctx.sp, ctx.order
        grad_x = grad_table = None
        if ctx.needs_input_grad[0]:  # d out / dx is the order-(k+1) interpolant, dotted with grad_out
            grad_x = _InterpDot.apply(x, table, grad_out, sp, k + 1)
        if ctx.needs_input_grad[1]:
            grad_table = _Scatter.apply(x, grad_out, sp, k, table.shape[0])
        return grad_x, grad_table, None, None


class _InterpDot(torch.autograd.Function):
    """``y[e] = <g[e], sum_b w_b^(k)(t_e) table[i_e + o_b]>`` ``[E]`` (the interpolant is not stored)."""

    @staticmethod
    def forward(ctx, x, table, g, sp, order):
        ctx.save_for_backward(x, table, g)
        ctx.sp, ctx.order = sp, order
        c = sp.coeffs(order)
        if not c.any():
            return x.new_zeros(x.shape[0])
        return _kernels().interp_dot(x, table, g, sp.offsets, c, order, *sp.grid())

    @staticmethod
    def backward(ctx, grad_y):
        x, table, g = ctx.saved_tensors
        sp, k = ctx.sp, ctx.order
        grad_x = grad_table = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y * _InterpDot.apply(x, table, g, sp, k + 1)
        if ctx.needs_input_grad[1]:
            grad_table = _Scatter.apply(x, grad_y[:, None] * g, sp, k, table.shape[0])
        if ctx.needs_input_grad[2]:
            grad_g = grad_y[:, None] * _Interp.apply(x, table, sp, k)
        return grad_x, grad_table, grad_g, None, None


class _Scatter(torch.autograd.Function):
    """``G[r] = sum_{e, b: i_e + o_b = r} w_b^(k)(t_e) g[e]`` ``[R, D]``: the table gradient."""

    @staticmethod
    def forward(ctx, x, g, sp, order, n_rows):
        ctx.save_for_backward(x, g)
        ctx.sp, ctx.order = sp, order
        c = sp.coeffs(order)
        if not c.any():
            return g.new_zeros(n_rows, g.shape[1])
        return _kernels().scatter(x, g, sp.offsets, c, order, *sp.grid(), n_rows)

    @staticmethod
    def backward(ctx, grad_table):
        x, g = ctx.saved_tensors
        sp, k = ctx.sp, ctx.order
        grad_x = grad_g = None
        if ctx.needs_input_grad[0]:  # d/dx_e of <grad_table, G> = <g[e], order-(k+1) interpolant of grad_table>
            grad_x = _InterpDot.apply(x, grad_table, g, sp, k + 1)
        if ctx.needs_input_grad[1]:
            grad_g = _Interp.apply(x, grad_table, sp, k)
        return grad_x, grad_g, None, None, None


# --- entry points ----------------------------------------------------------------------------

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
    """Drop-in for ``posenc.torch.spline.interpolate`` whose forward and backward are all kernels.

    Args:
      x: ``[E]`` positions inside ``[x_min, x_max]`` (CUDA; CPU only under ``TRITON_INTERPRET=1``).
      table: ``[R, D]`` stacked rows; interval i uses rows ``i + offsets``.
      offsets: ``[B]`` int64 row offsets (B = 4 Hermite, 2 linear).
      coeffs_all: power-basis coefficients ``[B, P]`` for derivative orders 0..P.
      x_min, delta, n_bin: the grid.
      order: derivative order w.r.t. x.

    Returns:
      ``[E, D]`` tensor, differentiable w.r.t. x and table to any order.
    """
    order = min(order, len(coeffs_all) - 1)
    _check(x, table, offsets, coeffs_all[order])
    return _Interp.apply(x.contiguous(), table, _Spline(offsets, coeffs_all, x_min, delta, n_bin), order)

