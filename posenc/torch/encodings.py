"""Positional encodings x -> h(x) in PyTorch: the learned Hermite encoding and its baselines.

Every encoding maps x of any shape ``[...]`` to ``[..., dim]`` and exposes ``dim``, so a model
swaps them by name through :func:`make_encoding` (names in :data:`ENCODINGS`). ``posenc.haiku``
has the same classes under the same names.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from posenc.init import initial_form_tables
from posenc.spline import (
    POWER_COEFFS,
    TABLE_FORMS,
    bspline_padded,
    check_dim,
    check_grid,
    check_policy,
    check_scale,
    out_of_range_message,
    row_offsets,
)
from posenc.torch.cutoff import smooth_cutoff
from posenc.torch.spline import all_derivative_coeffs, check_finite, interpolate

# Per table form, the coefficient matrices of derivative orders 0..P, computed once.
_FORM_COEFFS = {form: all_derivative_coeffs(coeffs) for form, coeffs in POWER_COEFFS.items()}


def _check_input(x: torch.Tensor, like: torch.Tensor | None = None) -> None:
    """Rejects non-tensors, non-float dtypes and a dtype/device that differs from the parameters."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if like is not None:
        if x.dtype != like.dtype:
            raise TypeError(f"dtype mismatch: x is {x.dtype} but the encoding's parameters are {like.dtype}")
        if x.device != like.device:
            raise ValueError(f"device mismatch: x is on {x.device} but the encoding is on {like.device}")


class TableEncoding(nn.Module):
    """Shared machinery of the interpolated-table encodings (linear, Hermite, B-spline, quintic Hermite).

    Subclasses name their table ``form`` (``posenc.spline.TABLE_FORMS``: which ``[n_bin, dim]``
    parameters they hold, the basis and the row offsets) and define the stacked table.
    """

    values: nn.Parameter

    def __init__(
        self,
        n_bin: int,
        dim: int,
        x_min: float,
        x_max: float,
        *,
        init: str = "sinusoidal",
        init_scale: float = 1.0,
        out_of_range: str = "error",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.delta = check_grid(n_bin, x_min, x_max)
        check_dim(dim)
        check_policy(out_of_range)
        self.n_bin, self.dim = int(n_bin), int(dim)
        self.x_min, self.x_max = float(x_min), float(x_max)
        self.out_of_range = out_of_range
        factory: dict[str, Any] = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        names = TABLE_FORMS[self.form]
        if init == "normal":  # torch's own RNG, so torch.manual_seed governs it
            tables = {"values": torch.randn(n_bin, dim, **factory) * init_scale}
            tables.update({name: torch.zeros(n_bin, dim, **factory) for name in names[1:]})
        else:
            arrays = initial_form_tables(self.form, init, n_bin, dim, x_min, x_max, scale=init_scale)
            tables = {name: torch.as_tensor(a, **factory) for name, a in arrays.items()}
        for name in names:  # values [n_bin, dim], then slopes and curvatures where the form has them
            setattr(self, name, nn.Parameter(tables[name]))

    # --- defined by subclasses -------------------------------------------------------------
    form: str

    def stacked_table(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------
    @property
    def _coeffs(self) -> tuple[np.ndarray, ...]:
        return _FORM_COEFFS[self.form]

    def row_offsets(self) -> list[int]:
        """The B row offsets of the basis: interval i reads rows ``i + offsets`` of the stacked table."""
        return list(row_offsets(self.form, self.n_bin))

    @property
    def centres(self) -> torch.Tensor:
        """``[n_bin]`` bin centres, in the parameters' dtype and device."""
        return torch.linspace(self.x_min, self.x_max, self.n_bin, dtype=self.values.dtype, device=self.values.device)

    def extra_repr(self) -> str:
        return (f"n_bin={self.n_bin}, dim={self.dim}, x_min={self.x_min}, x_max={self.x_max}, "
                f"out_of_range={self.out_of_range!r}")

    def forward(self, x: torch.Tensor, order: int = 0) -> torch.Tensor:
        """Encodes x, or its ``order``-th derivative d^k h / dx^k.

        Args:
          x: ``[...]`` positions, in the unit of ``x_min``/``x_max`` (e.g. Angstrom).
          order: 0 for h(x), 1 for g(x) = dh/dx, and so on (autograd also works to any order).

        Returns:
          ``[..., dim]`` tensor.

        Raises:
          TypeError: x is not a float tensor of the parameters' dtype.
          ValueError: NaN/inf in x; x outside ``[x_min, x_max]`` under ``out_of_range="error"``;
            x on another device.
        """
        return self.interpolate_table(x, self.stacked_table(), order)

    def project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``h(x) @ weight.T`` without forming h(x): the interpolation of the mapped table.

        A linear map of an interpolant is the interpolant of the mapped rows, so a network's
        first linear layer folds into the table: ``[R, dim] @ [dim, out]`` once, then each x
        gathers ``out`` columns instead of ``dim`` and skips the ``[E, dim] @ [dim, out]`` product.

        Args:
          x: ``[...]`` positions.
          weight: ``[out, dim]`` (an ``nn.Linear`` weight, or the columns of one that read h).

        Returns:
          ``[..., out]``, equal to ``self(x) @ weight.T`` (to rounding).
        """
        return self.interpolate_table(x, self.stacked_table() @ weight.T)

    def same_grid(self, other: nn.Module) -> bool:
        """Whether ``other`` is a table encoding of this class on the same grid and range policy
        (then one interpolation serves both: :func:`project_all`)."""
        return (type(other) is type(self) and (other.n_bin, other.x_min, other.x_max, other.out_of_range)
                == (self.n_bin, self.x_min, self.x_max, self.out_of_range))

    def interpolate_table(self, x: torch.Tensor, table: torch.Tensor, order: int = 0) -> torch.Tensor:
        """The order-``order`` derivative of this encoding's interpolant of ``table``, with its range policy.

        Args:
          x: ``[...]`` positions.
          table: ``[R, C]`` rows laid out as :meth:`stacked_table` (any number C of columns).
          order: derivative order w.r.t. x.

        Returns:
          ``[..., C]``.
        """
        _check_input(x, self.values)
        if order < 0:
            raise ValueError(f"order must be >= 0, got {order}")
        shape = x.shape
        flat = x.reshape(-1)  # [E]
        if flat.numel() == 0:
            return x.new_zeros(*shape, table.shape[1])
        check_finite(flat)
        x_c = self._apply_policy(flat)
        offsets = torch.tensor(self.row_offsets(), device=flat.device)
        args = (table, offsets, self._coeffs, self.x_min, self.delta, self.n_bin)
        out = interpolate(x_c, *args, order)  # [E, C]
        if self.out_of_range == "extrapolate":
            out = self._extend(flat, x_c, out, args, order)
        elif self.out_of_range == "clamp" and order >= 1:
            out = self._zero_outside(flat, x_c, out)  # h is constant beyond the ends
        return out.reshape(*shape, table.shape[1])

    @staticmethod
    def _zero_outside(x: torch.Tensor, x_c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` with the rows of points outside the range (where ``x != x_c``) set to zero."""
        outside = (x != x_c).nonzero().squeeze(-1)  # [M]
        return out if outside.numel() == 0 else out.index_fill(0, outside, 0.0)

    def _apply_policy(self, x: torch.Tensor) -> torch.Tensor:
        """x itself (checked) under "error"; x clamped into range under "clamp"/"extrapolate"."""
        if self.out_of_range == "error":
            if bool(((x < self.x_min) | (x > self.x_max)).any()):
                xd = x.detach()
                raise ValueError(out_of_range_message(float(xd.min()), float(xd.max()), self.x_min, self.x_max))
            return x
        return x.clamp(self.x_min, self.x_max)

    def _extend(self, x: torch.Tensor, x_c: torch.Tensor, out: torch.Tensor,
                args: tuple[torch.Tensor, torch.Tensor, tuple[np.ndarray, ...], float, float, int],
                order: int) -> torch.Tensor:
        """Linear extension with the end slope beyond the range: C1 at both ends (C2 where h'' = 0 there).

        Only the (usually few) outside points are touched. Written so that autograd through the
        order-0 result gives the extension's derivatives too.
        """
        if order >= 2:  # the extension is linear, so those derivatives are zero outside
            return self._zero_outside(x, x_c, out)
        if order == 1:  # the end slope is exactly what interpolate(x_c, 1) returns there
            return out
        outside = (x != x_c).nonzero().squeeze(-1)  # [M]
        if outside.numel() == 0:
            return out
        end_slope = interpolate(x_c[outside], *args, 1)  # [M, D]
        step = (x[outside] - x_c[outside])[:, None]  # [M, 1]
        return out.index_add(0, outside, step * end_slope)


class HermiteEncoding(TableEncoding):
    """The paper's learned encoding: cubic Hermite interpolation of learned values and slopes.

    ``h(x) = h00(t) h_i + h01(t) h_{i+1} + delta (h10(t) g_i + h11(t) g_{i+1})`` on the interval
    ``[c_i, c_{i+1}]``, ``t = (x - c_i)/delta``: h is C1, h(c_i) = values[i] and
    dh/dx(c_i) = slopes[i] (slopes in units of h per unit of x). ``2 * n_bin * dim`` parameters.

    Args:
      n_bin: number of bin centres (>= 2), evenly spaced from ``x_min`` to ``x_max``.
      dim: embedding size s.
      x_min, x_max: the covered range, in the unit of x.
      init: ``"sinusoidal"`` (default; smooth basis with exact slopes), ``"gaussian"`` (bumps) or
        ``"normal"`` (i.i.d. N(0, init_scale^2) values, zero slopes). See ``posenc.init``.
      init_scale: multiplies the initial tables.
      out_of_range: ``"error"`` (default: raise), ``"clamp"`` (h constant beyond the ends) or
        ``"extrapolate"`` (linear extension with the end slope; C1 everywhere).
      dtype, device: of the parameters.

    Example:
      >>> import torch
      >>> from posenc.torch import HermiteEncoding
      >>> enc = HermiteEncoding(n_bin=64, dim=32, x_min=0.0, x_max=5.0)
      >>> enc(torch.tensor([[0.9, 1.4], [2.0, 4.9]])).shape
      torch.Size([2, 2, 32])
      >>> bool(torch.allclose(enc(enc.centres), enc.values, atol=1e-5))
      True
    """

    form = "hermite"
    slopes: nn.Parameter

    def stacked_table(self) -> torch.Tensor:
        """``[2 n_bin, dim]``: the values, then the slopes scaled by delta (t-units)."""
        return torch.cat([self.values, self.slopes * self.delta], dim=0)


class LinearEncoding(TableEncoding):
    """The paper's C0 variant: linear interpolation of learned values (no slopes).

    Same arguments as :class:`HermiteEncoding`; ``n_bin * dim`` parameters. Its derivative jumps
    at every centre, which is why force fields need the Hermite form.
    """

    form = "linear"

    def stacked_table(self) -> torch.Tensor:
        return self.values


class BSplineEncoding(TableEncoding):
    """A C2 learned encoding: the uniform cubic B-spline of learned control values.

    The knots are the ``n_bin`` centres and control value ``values[j]`` sits at centre j; on
    ``[c_i, c_{i+1}]`` the curve blends the four control values ``j = i-1 .. i+2`` with the cubic
    B-spline basis, so h is C2 (its third derivative jumps at the centres) and each x reads 4
    rows. Two ghost rows, ``2 P_0 - P_1`` and ``2 P_{n-1} - P_{n-2}``, complete the end
    intervals (``posenc.spline``): then h(x_min) = values[0], h(x_max) = values[-1] and h'' = 0
    at both ends. Inside, h(c_i) = (values[i-1] + 4 values[i] + values[i+1]) / 6: the control
    values are a smoothed reading of the curve, and the smoothness loss acts on them.
    ``n_bin * dim`` parameters.

    Same arguments as :class:`HermiteEncoding`. Initialisation: the control values whose curve
    passes through the ``init`` table's values at every centre (``posenc.init.initial_form_tables``;
    ``"normal"`` uses i.i.d. control values). ``out_of_range="extrapolate"`` continues h linearly
    with the end slope; since h'' = 0 at the ends, h stays C2 across ``x_min`` and ``x_max``.
    ``"clamp"`` makes h constant beyond the ends (C0 there).

    Example:
      >>> import torch
      >>> from posenc.torch import BSplineEncoding
      >>> enc = BSplineEncoding(n_bin=64, dim=32, x_min=0.0, x_max=5.0)
      >>> enc(torch.tensor([0.9, 1.4, 4.9]), order=2).shape
      torch.Size([3, 32])
    """

    form = "bspline"

    def stacked_table(self) -> torch.Tensor:
        """``[n_bin + 2, dim]``: the control values between their two ghost rows."""
        return bspline_padded(self.values, torch.cat)


class QuinticHermiteEncoding(TableEncoding):
    """A C2 learned encoding: quintic Hermite interpolation of values, slopes and curvatures.

    On ``[c_i, c_{i+1}]`` h is the quintic with h(c_i) = values[i], h'(c_i) = slopes[i] and
    h''(c_i) = curvatures[i] at both ends (physical derivatives, per unit of x and of x^2), so h
    is C2 and exact at the centres like :class:`HermiteEncoding`. ``3 * n_bin * dim`` parameters.

    Same arguments as :class:`HermiteEncoding`; initialisations give exact values, slopes and
    curvatures of the basis (``posenc.init.initial_curvatures``; zero slopes and curvatures
    under ``"normal"``). ``out_of_range="extrapolate"`` continues h linearly with the end slope:
    C1 at ``x_min`` and ``x_max`` (h'' jumps from the end curvature to 0); ``"clamp"`` is C0 there.

    Example:
      >>> import torch
      >>> from posenc.torch import QuinticHermiteEncoding
      >>> enc = QuinticHermiteEncoding(n_bin=64, dim=32, x_min=0.0, x_max=5.0)
      >>> bool(torch.allclose(enc(enc.centres, order=2), enc.curvatures, atol=1e-3))
      True
    """

    form = "hermite5"
    slopes: nn.Parameter
    curvatures: nn.Parameter

    def stacked_table(self) -> torch.Tensor:
        """``[3 n_bin, dim]``: the values, the slopes times delta, the curvatures times delta^2."""
        return torch.cat([self.values, self.slopes * self.delta, self.curvatures * self.delta**2], dim=0)


class RawEncoding(nn.Module):
    """The backbone's own scalar: ``(scale * x) ** power`` as a 1-vector (EGNN uses power=2).

    Args:
      scale: multiplies x before the power (> 0). Training sets it to 1 / the training set's
        root-mean-square distance (:func:`posenc.encoding_defaults.distance_scale`), so the
        feature is of order one for any molecule size; it is a buffer, saved with the model.
      power: 1 (distance) or 2 (squared distance).
    """

    scale: torch.Tensor

    def __init__(self, scale: float = 1.0, power: int = 1) -> None:
        super().__init__()
        if power not in (1, 2):
            raise ValueError(f"power must be 1 or 2, got {power}")
        check_scale(scale)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.power, self.dim = int(power), 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[...]`` -> ``[..., 1]``."""
        _check_input(x)
        check_finite(x)
        return ((self.scale.to(x.dtype) * x) ** self.power).unsqueeze(-1)


class MLPEncoding(nn.Module):
    """The paper's "+MLP" baseline: a 2-layer ReLU MLP of the scalar ``scale * x``.

    Args:
      dim: output size.
      hidden: hidden width.
      scale: multiplies x first (> 0; a buffer, saved with the model): training sets it like
        :class:`RawEncoding`'s, so the MLP sees inputs of order one.
      dtype, device: of the parameters.
    """

    scale: torch.Tensor

    def __init__(self, dim: int, hidden: int = 64, scale: float = 1.0, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        check_dim(dim)
        check_scale(scale)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.dim = int(dim)
        self.linear_0 = nn.Linear(1, hidden, dtype=dtype, device=device)
        self.linear_1 = nn.Linear(hidden, dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[...]`` -> ``[..., dim]``."""
        _check_input(x, self.linear_0.weight)
        check_finite(x)
        return self.linear_1(torch.relu(self.linear_0((self.scale.to(x.dtype) * x).unsqueeze(-1))))


class GaussianEncoding(nn.Module):
    """Gaussian radial basis ``exp(-gamma (x - mu_k)^2)`` with centres spread over a range.

    Args:
      n_centres: number of Gaussians (= output dim).
      x_min, x_max: first and last centre.
      gamma: inverse squared width; default ``0.1 / spacing^2`` (SchNet's 10 A^-2 at 0.1 A spacing).
      trainable: learn the centres and gamma too.
      dtype, device: of the parameters.
    """

    def __init__(self, n_centres: int, x_min: float, x_max: float, gamma: float | None = None, *,
                 trainable: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        spacing = check_grid(n_centres, x_min, x_max)
        gamma = 0.1 / spacing**2 if gamma is None else float(gamma)
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.dim = int(n_centres)
        factory: dict[str, Any] = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        mu = torch.linspace(x_min, x_max, n_centres, **factory)
        g = torch.tensor(gamma, **factory)
        if trainable:
            self.centres, self.gamma = nn.Parameter(mu), nn.Parameter(g)
        else:
            self.register_buffer("centres", mu)
            self.register_buffer("gamma", g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[...]`` -> ``[..., n_centres]``."""
        _check_input(x, self.centres)
        check_finite(x)
        return torch.exp(-self.gamma * (x.unsqueeze(-1) - self.centres) ** 2)


class BesselEncoding(nn.Module):
    """DimeNet's radial Bessel basis with its smooth polynomial envelope.

    ``e_n(x) = sqrt(2/c) sin(n pi x / c) / x * u(x / c)`` for ``n = 1..n_basis``, evaluated through
    ``sinc`` so it is finite at x = 0; zero (with zero derivative) at and beyond the cutoff c.

    Args:
      n_basis: number of basis functions (= output dim).
      cutoff: radius c (> 0).
      envelope_exponent: DimeNet's p - 1 (default 5, i.e. p = 6).
      trainable: learn the frequencies.
      dtype, device: of the parameters.

    Raises (on call):
      ValueError: negative x.
    """

    def __init__(self, n_basis: int, cutoff: float, envelope_exponent: int = 5, *, trainable: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        check_dim(n_basis)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.dim, self.cutoff, self.p = int(n_basis), float(cutoff), int(envelope_exponent) + 1
        freq = torch.arange(1, n_basis + 1, dtype=dtype or torch.get_default_dtype(), device=device)
        if trainable:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[...]`` -> ``[..., n_basis]``."""
        _check_input(x, self.freq)
        check_finite(x)
        if bool((x < 0).any()):
            raise ValueError(f"BesselEncoding needs x >= 0, got min {float(x.min())}")
        c = self.cutoff
        s = x.unsqueeze(-1) / c  # [..., 1]
        # sin(n pi x / c) / x = (n pi / c) sinc(n x / c), with torch.sinc(y) = sin(pi y) / (pi y)
        radial = math.sqrt(2.0 / c) * (self.freq * math.pi / c) * torch.sinc(self.freq * s)
        return radial * smooth_cutoff(x, c, self.p).unsqueeze(-1)


class SmoothCutoff(nn.Module):
    """Wraps an encoding so it goes smoothly to zero at ``cutoff``: ``u(x/c) * enc(min(x, c))``.

    The envelope u and its first two derivatives vanish at the cutoff, so the product stays C1
    (the inner encoding is only evaluated up to the cutoff, where the envelope is already 0).

    Args:
      encoding: any encoding module whose range includes ``[0, cutoff]`` inputs.
      cutoff: radius (> 0).
      p: envelope order.
    """

    def __init__(self, encoding: nn.Module, cutoff: float, p: int = 6) -> None:
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.encoding, self.cutoff, self.p, self.dim = encoding, float(cutoff), int(p), encoding.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[...]`` -> ``[..., dim]``."""
        _check_input(x)
        check_finite(x)
        env = smooth_cutoff(x, self.cutoff, self.p).unsqueeze(-1)
        return env * self.encoding(torch.clamp(x, max=self.cutoff))


def project_all(encodings: Sequence[nn.Module], weights: Sequence[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """``[enc_k(x) @ weights[k].T for each k]``, with table encodings folded and batched.

    A backbone whose layers each map their encoded distances by a linear layer calls this once
    for all layers: table encodings on one grid (the same encoding repeated, or one per layer)
    become a single interpolation of their mapped tables stacked side by side, so the bin search,
    the basis weights and every derivative order are computed once instead of once per layer.
    Any other encoding is evaluated and multiplied.

    Args:
      encodings: K encodings (the same module may repeat).
      weights: K ``[out_k, dim_k]`` matrices.
      x: ``[...]`` positions.

    Returns:
      K tensors ``[..., out_k]``.
    """
    if len(encodings) != len(weights):
        raise ValueError(f"got {len(encodings)} encodings but {len(weights)} weights")
    first = encodings[0] if encodings else None
    on_grid = [e for e in encodings if isinstance(e, TableEncoding) and isinstance(first, TableEncoding)
               and first.same_grid(e)]
    if isinstance(first, TableEncoding) and len(on_grid) == len(encodings):
        tables = [e.stacked_table() @ w.T for e, w in zip(on_grid, weights)]  # K x [R, out_k]
        out = first.interpolate_table(x, torch.cat(tables, dim=1))  # [..., sum out_k]
        return list(out.split([w.shape[0] for w in weights], dim=-1))
    encoded: dict[int, torch.Tensor] = {}  # a shared encoding (the same module K times) is evaluated once
    terms = []
    for e, w in zip(encodings, weights):
        if isinstance(e, TableEncoding):
            terms.append(e.project(x, w))
            continue
        if id(e) not in encoded:
            encoded[id(e)] = e(x)
        terms.append(encoded[id(e)] @ w.T)
    return terms


ENCODINGS: dict[str, Callable[..., nn.Module]] = {
    "raw": RawEncoding,
    "mlp": MLPEncoding,
    "gaussian": GaussianEncoding,
    "bessel": BesselEncoding,
    "linear": LinearEncoding,
    "hermite": HermiteEncoding,
    "bspline": BSplineEncoding,
    "hermite5": QuinticHermiteEncoding,
}


def make_encoding(name: str, **kwargs: Any) -> nn.Module:
    """Builds the encoding registered as ``name`` (one of :data:`ENCODINGS`) with ``kwargs``."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {sorted(ENCODINGS)}")
    return ENCODINGS[name](**kwargs)


def encoding_dim(encoding: nn.Module) -> int:
    """The output size ``dim`` of an encoding (every posenc encoding has one).

    Raises:
      TypeError: ``encoding`` has no integer ``dim`` (not a posenc encoding).
    """
    dim = getattr(encoding, "dim", None)
    if not isinstance(dim, int):
        raise TypeError(f"encoding must expose an int .dim (a posenc encoding), got {type(encoding).__name__}")
    return dim
