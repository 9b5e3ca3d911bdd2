"""The Triton kernels behind ``posenc.torch.triton_kernel`` and their launchers.

Imported lazily (importing Triton costs seconds), only once a kernel is needed. Three kernels
cover every derivative order of the interpolation ``out[e] = sum_b w_b(t_e) T[i_e + o_b]``:

* :func:`interp`: the ``[E, D]`` encoding, in one pass (read x, locate, evaluate the B weights,
  gather B rows, write), without the ``[E, B, D]`` intermediate.
* :func:`interp_dot`: ``y[e] = <g[e], out[e]>``, the d/dx building block (``out`` never written).
* :func:`scatter`: the table gradient ``G[i_e + o_b] += w_b(t_e) g[e]``, reduced per block
  before its atomics (:func:`_scatter_kernel`).

Atomics (scatter; interp_dot when D > 128) make float sums order-dependent: results can vary
between runs in the last bits.

The weights are polynomials in t with power-basis coefficients ``c[b, p]`` already divided by
``delta**order``; they travel with ``x_min`` and ``delta`` in one small "consts" tensor of the
compute dtype (float64 for float64 data, float32 otherwise), because Triton passes Python
floats as float32 and float64 grids would lose their exact bin boundaries.

Block sizes are heuristics, not tuned on a GPU yet (``benchmarks/bench_triton.py`` measures).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

# A scatter block reduces in registers when its x span at most this many intervals (see
# _scatter_kernel); otherwise it issues one atomic per x.
SCATTER_MAX_BINS = 4
# Launch options of every kernel. FMA contraction stays on (Triton 3.9's implicit default,
# which 3.10 flips): it only rounds the weights and sums better, never the interval choice.
LAUNCH_OPTIONS = {"num_warps": 4, "enable_fp_fusion": True}


@triton.jit
def _locate(x, consts_ptr, n_bin):
    """Interval index (int32) and local coordinate t, as ``posenc.torch.spline.locate`` on CPU.

    (torch on CUDA multiplies by the reciprocal of delta instead, which can choose the other
    interval for x within an ulp of a centre: only derivatives of order >= 2 differ there.)
    """
    x_min = tl.load(consts_ptr)
    delta = tl.load(consts_ptr + 1)
    # IEEE division, as torch's: the same interval as the reference for x exactly on a centre,
    # where derivatives of order >= 2 jump. Triton's float32 '/' is approximate on NVIDIA (its
    # float64 '/' is IEEE, and div_rn is float32 only).
    if x.dtype == tl.float64:
        u = (x - x_min) / delta
    else:
        u = tl.math.div_rn(x - x_min, delta)
    i = tl.minimum(tl.maximum(tl.floor(u), 0.0), (n_bin - 2).to(u.dtype))
    return i.to(tl.int32), u - i


@triton.jit
def _weight(t, consts_ptr, b: tl.constexpr, P: tl.constexpr):
    """Basis polynomial b at t by Horner's rule: ``sum_p c[b, p] t**p``."""
    w = tl.zeros_like(t) + tl.load(consts_ptr + 2 + b * P + P - 1)
    for q in tl.static_range(1, P):
        w = w * t + tl.load(consts_ptr + 2 + b * P + P - 1 - q)
    return w


@triton.jit
def _interp_kernel(
    x_ptr, table_ptr, out_ptr, consts_ptr, off_ptr,
    E, D, n_bin, stride_tr, stride_td,
    B: tl.constexpr, P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``out[e, d] = sum_b w_b(t_e) table[i_e + off_b, d]`` for one [BLOCK_E, BLOCK_D] tile."""
    ct = consts_ptr.dtype.element_ty
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    me = e < E
    mask = me[:, None] & (d < D)[None, :]
    x = tl.load(x_ptr + e, mask=me, other=0.0).to(ct)
    i, t = _locate(x, consts_ptr, n_bin)
    acc = tl.zeros((BLOCK_E, BLOCK_D), dtype=ct)
    for b in tl.static_range(B):
        row = i + tl.load(off_ptr + b).to(tl.int32)
        rows = tl.load(table_ptr + row[:, None] * stride_tr + d[None, :] * stride_td, mask=mask, other=0.0)
        acc += _weight(t, consts_ptr, b, P)[:, None] * rows.to(ct)
    out = out_ptr + e.to(tl.int64)[:, None] * D + d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interp_dot_kernel(
    x_ptr, table_ptr, g_ptr, out_ptr, consts_ptr, off_ptr,
    E, D, n_bin, stride_tr, stride_td, stride_ge, stride_gd,
    B: tl.constexpr, P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``out[e] += sum_{d in tile} g[e, d] sum_b w_b(t_e) table[i_e + off_b, d]`` (``out`` zeroed).

    A grid axis over D blocks (partial row sums added atomically, one atomic per row and block)
    rather than a loop over D: the loop-carried tiles doubled the register use.
    """
    ct = consts_ptr.dtype.element_ty
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    me = e < E
    mask = me[:, None] & (d < D)[None, :]
    x = tl.load(x_ptr + e, mask=me, other=0.0).to(ct)
    i, t = _locate(x, consts_ptr, n_bin)
    h = tl.zeros((BLOCK_E, BLOCK_D), dtype=ct)
    for b in tl.static_range(B):
        row = i + tl.load(off_ptr + b).to(tl.int32)
        rows = tl.load(table_ptr + row[:, None] * stride_tr + d[None, :] * stride_td, mask=mask, other=0.0)
        h += _weight(t, consts_ptr, b, P)[:, None] * rows.to(ct)
    g = tl.load(g_ptr + e.to(tl.int64)[:, None] * stride_ge + d[None, :] * stride_gd, mask=mask, other=0.0)
    tl.atomic_add(out_ptr + e, tl.sum(g.to(ct) * h, axis=1).to(out_ptr.dtype.element_ty), mask=me)


@triton.jit
def _scatter_kernel(
    x_ptr, g_ptr, perm_ptr, out_ptr, consts_ptr, off_ptr,
    E, D, n_bin, stride_ge, stride_gd,
    B: tl.constexpr, P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
    MAX_BINS: tl.constexpr, HAS_PERM: tl.constexpr,
):
    """``out[i_e + off_b, d] += w_b(t_e) g[e, d]`` for a block of x (in ``perm`` order if given).

    Contention: when many x share a bin, one atomic per x serialises on the same rows. So when
    the block's x fall into at most ``MAX_BINS`` consecutive intervals (the usual case once the
    x are sorted by bin and there are many per interval, see :func:`scatter`), the block sums
    each interval's contributions in registers and issues B atomics per interval and column;
    otherwise (x spread over many bins, where atomics rarely collide) one atomic per x. Plain
    sums (a prefix-sum formulation cancelled badly in float32); any order of the x is correct.
    """
    ct = consts_ptr.dtype.element_ty
    pos = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mp = pos < E
    md = d < D
    mask = mp[:, None] & md[None, :]
    if HAS_PERM:
        src = tl.load(perm_ptr + pos, mask=mp, other=0)
    else:
        src = pos
    x = tl.load(x_ptr + src, mask=mp, other=0.0).to(ct)
    i, t = _locate(x, consts_ptr, n_bin)
    g = tl.load(g_ptr + src.to(tl.int64)[:, None] * stride_ge + d[None, :] * stride_gd, mask=mask, other=0.0)
    g = g.to(ct)
    i_lo = tl.min(tl.where(mp, i, n_bin), axis=0)
    i_hi = tl.max(tl.where(mp, i, 0), axis=0)
    if i_hi - i_lo < MAX_BINS:  # reduce per interval in registers
        for k in range(i_lo, i_hi + 1):
            in_k = mp & (i == k)
            for b in tl.static_range(B):
                w = tl.where(in_k, _weight(t, consts_ptr, b, P), 0.0)
                s = tl.sum(w[:, None] * g, axis=0)  # [BLOCK_D]
                row = k + tl.load(off_ptr + b).to(tl.int32)
                tl.atomic_add(out_ptr + row * D + d, s.to(out_ptr.dtype.element_ty), mask=md)
    else:  # bins spread out: one atomic per x
        for b in tl.static_range(B):
            c = _weight(t, consts_ptr, b, P)[:, None] * g
            row = i + tl.load(off_ptr + b).to(tl.int32)
            tl.atomic_add(out_ptr + row[:, None] * D + d[None, :], c.to(out_ptr.dtype.element_ty), mask=mask)


# --- launchers -------------------------------------------------------------------------------

def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic and accumulation dtype: float64 for float64 data, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=256)
def _consts_cached(
    coeffs_bytes: bytes, shape: tuple[int, int], order: int, x_min: float, delta: float,
    dtype: torch.dtype, device: torch.device,
) -> torch.Tensor:
    coeffs = np.frombuffer(coeffs_bytes, dtype=np.float64).reshape(shape)
    # exactly the reference's constants: coefficients / delta**order in float64, then cast
    flat = np.concatenate([[x_min, delta], (coeffs / delta**order).ravel()])
    return torch.tensor(flat, dtype=dtype, device=device)


def consts(coeffs: np.ndarray, order: int, x_min: float, delta: float, dtype: torch.dtype,
           device: torch.device) -> torch.Tensor:
    """``[2 + B*P]`` tensor ``[x_min, delta, c / delta**order (row-major)]`` in the compute dtype.

    Cached per grid, order, dtype and device, so steady-state calls copy nothing to the device.
    """
    c = np.ascontiguousarray(coeffs, dtype=np.float64)
    return _consts_cached(c.tobytes(), c.shape, int(order), float(x_min), float(delta),
                          compute_dtype(dtype), device)


def _blocks(D: int, max_d: int = 128, tile: int = 1024) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_D): BLOCK_D covers D up to ``max_d``; a tile holds about ``tile`` elements.

    1024-element tiles (8 per thread at 4 warps): ptxas for sm_90 gives every kernel <= 117
    registers and no spills for float16/32/64 at the tiles D = 3..256 selects (checked without
    a GPU); 4096-element tiles spilled in the gather kernels, whose B row loads are in flight
    together.
    """
    block_d = min(triton.next_power_of_2(D), max_d)
    return max(8, tile // block_d), block_d


def interp(x: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor, coeffs: np.ndarray, order: int,
           x_min: float, delta: float, n_bin: int) -> torch.Tensor:
    """``[E, D]`` interpolation of ``table`` ``[R, D]`` at ``x`` ``[E]`` (weights: ``coeffs`` at ``order``)."""
    E, D = x.shape[0], table.shape[1]
    out = torch.empty(E, D, dtype=table.dtype, device=x.device)
    if E == 0:
        return out
    block_e, block_d = _blocks(D)
    grid = (triton.cdiv(E, block_e), triton.cdiv(D, block_d))
    _interp_kernel[grid](
        x, table, out, consts(coeffs, order, x_min, delta, table.dtype, x.device), offsets,
        E, D, n_bin, table.stride(0), table.stride(1),
        B=coeffs.shape[0], P=coeffs.shape[1], BLOCK_E=block_e, BLOCK_D=block_d, **LAUNCH_OPTIONS,
    )
    return out


def interp_dot(x: torch.Tensor, table: torch.Tensor, g: torch.Tensor, offsets: torch.Tensor, coeffs: np.ndarray,
               order: int, x_min: float, delta: float, n_bin: int) -> torch.Tensor:
    """``[E]`` row dot products ``<g[e], interp(x, table)[e]>`` without writing the ``[E, D]`` interpolant."""
    E, D = x.shape[0], table.shape[1]
    out = torch.zeros(E, dtype=compute_dtype(table.dtype), device=x.device)
    if E == 0:
        return out.to(table.dtype)
    block_e, block_d = _blocks(D)
    grid = (triton.cdiv(E, block_e), triton.cdiv(D, block_d))
    _interp_dot_kernel[grid](
        x, table, g, out, consts(coeffs, order, x_min, delta, table.dtype, x.device), offsets,
        E, D, n_bin, table.stride(0), table.stride(1), g.stride(0), g.stride(1),
        B=coeffs.shape[0], P=coeffs.shape[1], BLOCK_E=block_e, BLOCK_D=block_d, **LAUNCH_OPTIONS,
    )
    return out.to(table.dtype)


def scatter(x: torch.Tensor, g: torch.Tensor, offsets: torch.Tensor, coeffs: np.ndarray, order: int,
            x_min: float, delta: float, n_bin: int, n_rows: int, sort: bool | None = None) -> torch.Tensor:
    """``[n_rows, D]`` table gradient: row ``i_e + off_b`` receives ``w_b(t_e) g[e]``.

    Args:
      sort: process the x in bin order (one ``argsort`` of 16-bit bin keys first). None: sort when
        a sorted block of BLOCK_E x then spans at most SCATTER_MAX_BINS intervals on average
        (``BLOCK_E * (n_bin - 1) / E + 1 <= SCATTER_MAX_BINS``), i.e. when sorting turns
        per-x atomics into per-bin ones.
    """
    E, D = g.shape
    block_e, block_d = _blocks(D, max_d=64)
    if sort is None:
        sort = block_e * (n_bin - 1) <= (SCATTER_MAX_BINS - 1) * E
    acc = torch.zeros(n_rows, D, dtype=compute_dtype(g.dtype), device=x.device)
    if E == 0:
        return acc.to(g.dtype)
    perm = None
    if sort:
        # Any order is correct; the key only has to group equal bins (truncation is floor for x >= x_min).
        key = ((x - x_min) / delta).to(torch.int16 if n_bin < 2**15 else torch.int32)
        perm = torch.argsort(key)
    grid = (triton.cdiv(E, block_e), triton.cdiv(D, block_d))
    _scatter_kernel[grid](
        x, g, perm if perm is not None else x, acc, consts(coeffs, order, x_min, delta, g.dtype, x.device), offsets,
        E, D, n_bin, g.stride(0), g.stride(1),
        B=coeffs.shape[0], P=coeffs.shape[1], BLOCK_E=block_e, BLOCK_D=block_d,
        MAX_BINS=SCATTER_MAX_BINS, HAS_PERM=perm is not None, **LAUNCH_OPTIONS,
    )
    return acc.to(g.dtype)
