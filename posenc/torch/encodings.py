"""Positional encodings x -> h(x) in PyTorch: the learned Hermite encoding and its baselines.

Every encoding maps x of any shape ``[...]`` to ``[..., dim]`` and exposes ``dim``, so a model
swaps them by name through :func:`make_encoding` (names in :data:`ENCODINGS`). ``posenc.haiku``
has the same classes under the same names.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from posenc.init import initial_tables
from posenc.spline import (
    HERMITE_POWER_COEFFS,
    LINEAR_POWER_COEFFS,
    check_dim,
    check_grid,
    check_policy,
    check_scale,
    out_of_range_message,
)
from posenc.torch.cutoff import smooth_cutoff
from posenc.torch.spline import all_derivative_coeffs, check_finite, interpolate

_HERMITE_COEFFS = all_derivative_coeffs(HERMITE_POWER_COEFFS)
_LINEAR_COEFFS = all_derivative_coeffs(LINEAR_POWER_COEFFS)


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
    """Shared machinery of the interpolated-table encodings (Hermite and linear).

    Subclasses define the stacked table, its row offsets and the basis coefficients.
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
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        if init == "normal":  # torch's own RNG, so torch.manual_seed governs it
            values = torch.randn(n_bin, dim, **factory) * init_scale
            slopes = torch.zeros(n_bin, dim, **factory)
        else:
            v, g = initial_tables(init, n_bin, dim, x_min, x_max, scale=init_scale)
            values, slopes = torch.as_tensor(v, **factory), torch.as_tensor(g, **factory)
        self.values = nn.Parameter(values)  # [n_bin, dim]
        if self._has_slopes:
            self.slopes = nn.Parameter(slopes)  # [n_bin, dim]

    # --- defined by subclasses -------------------------------------------------------------
    _coeffs: tuple[np.ndarray, ...]
    _has_slopes: bool

    def stacked_table(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def row_offsets(self) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------
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

    def _extend(self, x: torch.Tensor, x_c: torch.Tensor, out: torch.Tensor, args: tuple, order: int) -> torch.Tensor:
        """Linear extension with the end slope beyond the range: C1 at both ends.

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

    _coeffs = _HERMITE_COEFFS
    _has_slopes = True

    def stacked_table(self) -> torch.Tensor:
        """``[2 n_bin, dim]``: the values, then the slopes scaled by delta (t-units)."""
        return torch.cat([self.values, self.slopes * self.delta], dim=0)

    def row_offsets(self) -> list[int]:
        return [0, 1, self.n_bin, self.n_bin + 1]  # h_i, h_{i+1}, delta g_i, delta g_{i+1}


class LinearEncoding(TableEncoding):
    """The paper's C0 variant: linear interpolation of learned values (no slopes).

    Same arguments as :class:`HermiteEncoding`; ``n_bin * dim`` parameters. Its derivative jumps
    at every centre, which is why force fields need the Hermite form.
    """

    _coeffs = _LINEAR_COEFFS
    _has_slopes = False

    def stacked_table(self) -> torch.Tensor:
        return self.values

    def row_offsets(self) -> list[int]:
        return [0, 1]


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
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
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
    if isinstance(first, TableEncoding) and all(first.same_grid(e) for e in encodings):
        tables = [e.stacked_table() @ w.T for e, w in zip(encodings, weights)]  # K x [R, out_k]
        out = first.interpolate_table(x, torch.cat(tables, dim=1))  # [..., sum out_k]
        return list(out.split([w.shape[0] for w in weights], dim=-1))
    return [e.project(x, w) if isinstance(e, TableEncoding) else e(x) @ w.T for e, w in zip(encodings, weights)]


ENCODINGS: dict[str, Callable[..., nn.Module]] = {
    "raw": RawEncoding,
    "mlp": MLPEncoding,
    "gaussian": GaussianEncoding,
    "bessel": BesselEncoding,
    "linear": LinearEncoding,
    "hermite": HermiteEncoding,
}


def make_encoding(name: str, **kwargs: Any) -> nn.Module:
    """Builds the encoding registered as ``name`` (one of :data:`ENCODINGS`) with ``kwargs``."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {sorted(ENCODINGS)}")
    return ENCODINGS[name](**kwargs)
