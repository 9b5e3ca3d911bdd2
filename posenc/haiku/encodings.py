"""Positional encodings x -> h(x) in Haiku: the mirror of ``posenc.torch.encodings``.

Same class names, arguments and numbers as the torch backend. Parameters take the dtype of the
input x (as ``hk.Linear`` does). Checks on x (NaN/inf, the range under ``out_of_range="error"``)
raise ValueError when x is concrete, e.g. in an un-jitted ``apply``; under ``jax.jit`` values are
not known at trace time, so offending entries come out as NaN instead of raising: never a
silently clamped number.
"""

from __future__ import annotations

import math
from typing import Any, cast
from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from posenc.haiku.cutoff import smooth_cutoff
from posenc.haiku.spline import all_derivative_coeffs, check_finite, interpolate, is_concrete
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

# Per table form, the coefficient matrices of derivative orders 0..P, computed once.
_FORM_COEFFS = {form: all_derivative_coeffs(coeffs) for form, coeffs in POWER_COEFFS.items()}


def _check_input(x: jax.Array) -> None:
    if not isinstance(x, (jax.Array, np.ndarray)):
        raise TypeError(f"x must be a JAX or numpy array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")


def _nan_where(bad: jax.Array, out: jax.Array) -> jax.Array:
    """Marks rows of ``out`` ``[E, D]`` whose ``bad`` ``[E]`` flag is set as NaN (traced inputs)."""
    return jnp.where(bad[:, None], jnp.nan, out)


def _constant(array: np.ndarray) -> hk.initializers.Initializer:
    """A Haiku initializer returning a precomputed numpy table."""

    def init(shape: Sequence[int], dtype: Any) -> jax.Array:
        if tuple(shape) != array.shape:
            raise ValueError(f"initial table has shape {array.shape}, parameter wants {tuple(shape)}")
        return jnp.asarray(array, dtype=dtype)

    return init


class TableEncoding(hk.Module):
    """Shared machinery of the interpolated-table encodings (linear, Hermite, B-spline, quintic Hermite).

    Subclasses name their table ``form`` (``posenc.spline.TABLE_FORMS``) and define the stacked table.
    """

    form: str

    def __init__(self, n_bin: int, dim: int, x_min: float, x_max: float, init: str, init_scale: float,
                 out_of_range: str, name: str | None) -> None:
        super().__init__(name=name)
        self.delta = check_grid(n_bin, x_min, x_max)
        check_dim(dim)
        check_policy(out_of_range)
        self.n_bin, self.dim = int(n_bin), int(dim)
        self.x_min, self.x_max = float(x_min), float(x_max)
        self.init, self.init_scale, self.out_of_range = init, float(init_scale), out_of_range

    def _tables(self, dtype: Any) -> list[jax.Array]:
        """The form's ``[n_bin, dim]`` parameters in ``TABLE_FORMS`` order (values first).

        Initialisers: Haiku's RNG for the values under "normal" (zeros for the other tables),
        the precomputed tables of ``posenc.init.initial_form_tables`` otherwise (computed only
        when Haiku initialises).
        """
        names = TABLE_FORMS[self.form]
        shape = [self.n_bin, self.dim]

        def precomputed(name: str) -> hk.initializers.Initializer:
            def init(shape: Sequence[int], dtype: Any) -> jax.Array:
                tables = initial_form_tables(self.form, self.init, self.n_bin, self.dim, self.x_min, self.x_max,
                                             scale=self.init_scale)
                return _constant(tables[name])(shape, dtype)

            return init

        if self.init == "normal":
            inits: list[hk.initializers.Initializer] = [hk.initializers.RandomNormal(stddev=self.init_scale)]
            inits += [hk.initializers.Constant(0.0)] * (len(names) - 1)
        else:
            inits = [precomputed(name) for name in names]
        return [hk.get_parameter(name, shape, dtype, init=init) for name, init in zip(names, inits)]

    def stacked_table(self, dtype: Any) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: jax.Array, order: int = 0) -> jax.Array:
        """Encodes x ``[...]`` (or its order-th x-derivative) as ``[..., dim]``."""
        _check_input(x)
        # parameters are created even for empty x
        return self.interpolate_table(x, self.stacked_table(jnp.asarray(x).dtype), order)

    def project(self, x: jax.Array, weight: jax.Array) -> jax.Array:
        """``h(x) @ weight`` without forming h(x): the interpolation of the mapped table.

        The mirror of ``posenc.torch.TableEncoding.project``, with Haiku's weight layout.

        Args:
          x: ``[...]`` positions.
          weight: ``[dim, out]`` (an ``hk.Linear`` weight, or the rows of one that read h).

        Returns:
          ``[..., out]``.
        """
        _check_input(x)
        return self.interpolate_table(x, self.stacked_table(jnp.asarray(x).dtype) @ weight)

    def same_grid(self, other: hk.Module) -> bool:
        """Whether ``other`` is a table encoding of this class on the same grid and range policy."""
        return (type(other) is type(self) and (other.n_bin, other.x_min, other.x_max, other.out_of_range)
                == (self.n_bin, self.x_min, self.x_max, self.out_of_range))

    def interpolate_table(self, x: jax.Array, table: jax.Array, order: int = 0) -> jax.Array:
        """The order-``order`` derivative of this encoding's interpolant of ``table`` ``[R, C]``: ``[..., C]``."""
        _check_input(x)
        if order < 0:
            raise ValueError(f"order must be >= 0, got {order}")
        shape = x.shape
        flat = jnp.reshape(x, (-1,))  # [E]
        if flat.size == 0:
            return jnp.zeros((*shape, table.shape[1]), flat.dtype)
        check_finite(flat)
        inside = (flat >= self.x_min) & (flat <= self.x_max)  # [E]; False for NaN
        if self.out_of_range == "error" and is_concrete(flat) and not bool(inside.all()):
            raise ValueError(out_of_range_message(float(flat.min()), float(flat.max()), self.x_min, self.x_max))
        x_c = jnp.clip(flat, self.x_min, self.x_max)
        args = (table, jnp.asarray(row_offsets(self.form, self.n_bin)), _FORM_COEFFS[self.form], self.x_min,
                self.delta, self.n_bin)
        out = interpolate(x_c, *args, order)  # [E, C]
        if self.out_of_range == "extrapolate":
            if order == 0:
                ends = interpolate(jnp.asarray([self.x_min, self.x_max], flat.dtype), *args, 1)  # [2, C]
                end_slope = jnp.where((flat < self.x_min)[:, None], ends[0], ends[1])  # [E, C]
                out = out + (flat - x_c)[:, None] * end_slope
            elif order >= 2:
                out = jnp.where(inside[:, None], out, 0.0)
        elif self.out_of_range == "clamp" and order >= 1:
            out = jnp.where(inside[:, None], out, 0.0)  # h is constant beyond the ends
        if self.out_of_range == "error":
            out = _nan_where(~inside, out)  # only reachable under tracing
        else:
            out = _nan_where(~jnp.isfinite(flat), out)
        return jnp.reshape(out, (*shape, table.shape[1]))


class HermiteEncoding(TableEncoding):
    """The paper's learned encoding: cubic Hermite interpolation of learned values and slopes.

    See ``posenc.torch.HermiteEncoding`` for the formula and arguments; parameters ``values`` and
    ``slopes`` are ``[n_bin, dim]`` and slopes are dh/dx in units of h per unit of x.

    Example:
      >>> import haiku as hk, jax.numpy as jnp
      >>> from posenc.haiku import HermiteEncoding
      >>> f = hk.without_apply_rng(hk.transform(lambda x: HermiteEncoding(64, 32, 0.0, 5.0)(x)))
      >>> params = f.init(None, jnp.zeros(3))
      >>> f.apply(params, jnp.array([0.9, 1.4, 4.9])).shape
      (3, 32)
    """

    form = "hermite"

    def __init__(self, n_bin: int, dim: int, x_min: float, x_max: float, *, init: str = "sinusoidal",
                 init_scale: float = 1.0, out_of_range: str = "error", name: str | None = None) -> None:
        super().__init__(n_bin, dim, x_min, x_max, init, init_scale, out_of_range, name)

    def stacked_table(self, dtype: Any) -> jax.Array:
        """``[2 n_bin, dim]``: the values, then the slopes scaled by delta."""
        values, slopes = self._tables(dtype)  # [n_bin, D] each
        return jnp.concatenate([values, slopes * self.delta], axis=0)


class LinearEncoding(TableEncoding):
    """The paper's C0 variant: linear interpolation of learned values (parameter ``values`` only)."""

    form = "linear"

    def __init__(self, n_bin: int, dim: int, x_min: float, x_max: float, *, init: str = "sinusoidal",
                 init_scale: float = 1.0, out_of_range: str = "error", name: str | None = None) -> None:
        super().__init__(n_bin, dim, x_min, x_max, init, init_scale, out_of_range, name)

    def stacked_table(self, dtype: Any) -> jax.Array:
        (values,) = self._tables(dtype)
        return values  # [n_bin, D]


class BSplineEncoding(TableEncoding):
    """A C2 learned encoding: the uniform cubic B-spline of learned control values ``values``.

    See ``posenc.torch.BSplineEncoding`` for the knots, the ghost rows, the initialisation and
    the range policies; parameter ``values`` is ``[n_bin, dim]`` (control values at the centres).
    """

    form = "bspline"

    def __init__(self, n_bin: int, dim: int, x_min: float, x_max: float, *, init: str = "sinusoidal",
                 init_scale: float = 1.0, out_of_range: str = "error", name: str | None = None) -> None:
        super().__init__(n_bin, dim, x_min, x_max, init, init_scale, out_of_range, name)

    def stacked_table(self, dtype: Any) -> jax.Array:
        """``[n_bin + 2, dim]``: the control values between their two ghost rows."""
        (values,) = self._tables(dtype)
        return bspline_padded(values, jnp.concatenate)


class QuinticHermiteEncoding(TableEncoding):
    """A C2 learned encoding: quintic Hermite interpolation of values, slopes and curvatures.

    See ``posenc.torch.QuinticHermiteEncoding``; parameters ``values``, ``slopes`` (dh/dx) and
    ``curvatures`` (d^2h/dx^2) are ``[n_bin, dim]``.
    """

    form = "hermite5"

    def __init__(self, n_bin: int, dim: int, x_min: float, x_max: float, *, init: str = "sinusoidal",
                 init_scale: float = 1.0, out_of_range: str = "error", name: str | None = None) -> None:
        super().__init__(n_bin, dim, x_min, x_max, init, init_scale, out_of_range, name)

    def stacked_table(self, dtype: Any) -> jax.Array:
        """``[3 n_bin, dim]``: the values, the slopes times delta, the curvatures times delta^2."""
        values, slopes, curvatures = self._tables(dtype)
        return jnp.concatenate([values, slopes * self.delta, curvatures * self.delta**2], axis=0)


class RawEncoding(hk.Module):
    """The backbone's own scalar ``(scale * x) ** power`` as a 1-vector (EGNN uses power=2)."""

    def __init__(self, scale: float = 1.0, power: int = 1, name: str | None = None) -> None:
        super().__init__(name=name)
        if power not in (1, 2):
            raise ValueError(f"power must be 1 or 2, got {power}")
        check_scale(scale)
        self.scale, self.power, self.dim = float(scale), int(power), 1

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[...]`` -> ``[..., 1]``."""
        _check_input(x)
        check_finite(x)
        return ((self.scale * x) ** self.power)[..., None]


class MLPEncoding(hk.Module):
    """The paper's "+MLP" baseline: a 2-layer ReLU MLP of ``scale * x``; see ``posenc.torch.MLPEncoding``."""

    def __init__(self, dim: int, hidden: int = 64, scale: float = 1.0, name: str | None = None) -> None:
        super().__init__(name=name)
        check_dim(dim)
        check_scale(scale)
        self.dim, self.scale = int(dim), float(scale)
        # built here, not in __call__, so Haiku names them "<name>/~/linear_k" (posenc.convert's rule)
        self.linear_0 = hk.Linear(int(hidden), name="linear_0")
        self.linear_1 = hk.Linear(self.dim, name="linear_1")

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[...]`` -> ``[..., dim]``."""
        _check_input(x)
        check_finite(x)
        return self.linear_1(jax.nn.relu(self.linear_0((self.scale * x)[..., None])))  # [..., hidden] -> [..., dim]


class GaussianEncoding(hk.Module):
    """Gaussian radial basis ``exp(-gamma (x - mu_k)^2)``; see ``posenc.torch.GaussianEncoding``."""

    def __init__(self, n_centres: int, x_min: float, x_max: float, gamma: float | None = None, *,
                 trainable: bool = False, name: str | None = None) -> None:
        super().__init__(name=name)
        spacing = check_grid(n_centres, x_min, x_max)
        gamma = 0.1 / spacing**2 if gamma is None else float(gamma)
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.dim, self.x_min, self.x_max, self.gamma0, self.trainable = int(n_centres), x_min, x_max, gamma, trainable

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[...]`` -> ``[..., n_centres]``."""
        _check_input(x)
        check_finite(x)
        mu0 = np.linspace(self.x_min, self.x_max, self.dim)
        if self.trainable:
            mu = hk.get_parameter("centres", [self.dim], x.dtype, init=_constant(mu0))
            gamma = hk.get_parameter("gamma", [], x.dtype, init=_constant(np.asarray(self.gamma0)))
        else:
            mu, gamma = jnp.asarray(mu0, x.dtype), jnp.asarray(self.gamma0, x.dtype)
        return jnp.exp(-gamma * (x[..., None] - mu) ** 2)


class BesselEncoding(hk.Module):
    """DimeNet's radial Bessel basis with its polynomial envelope; see ``posenc.torch.BesselEncoding``."""

    def __init__(self, n_basis: int, cutoff: float, envelope_exponent: int = 5, *, trainable: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        check_dim(n_basis)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.dim, self.cutoff, self.trainable = int(n_basis), float(cutoff), trainable
        self.p = int(envelope_exponent) + 1

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[...]`` -> ``[..., n_basis]``."""
        _check_input(x)
        check_finite(x)
        if is_concrete(x) and x.size and bool((x < 0).any()):
            raise ValueError(f"BesselEncoding needs x >= 0, got min {float(x.min())}")
        freq0 = np.arange(1, self.dim + 1, dtype=np.float64)
        freq = (hk.get_parameter("freq", [self.dim], x.dtype, init=_constant(freq0)) if self.trainable
                else jnp.asarray(freq0, x.dtype))
        c = self.cutoff
        s = x[..., None] / c  # [..., 1]
        radial = math.sqrt(2.0 / c) * (freq * math.pi / c) * jnp.sinc(freq * s)  # jnp.sinc is normalised
        out = radial * smooth_cutoff(x, c, self.p)[..., None]
        return jnp.where((x < 0)[..., None], jnp.nan, out)


class SmoothCutoff(hk.Module):
    """Wraps an encoding so it goes smoothly to zero at ``cutoff``: ``u(x/c) * enc(min(x, c))``."""

    def __init__(self, encoding: Callable[[jax.Array], jax.Array], cutoff: float, p: int = 6,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.encoding, self.cutoff, self.p = encoding, float(cutoff), int(p)
        self.dim = getattr(encoding, "dim", None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[...]`` -> ``[..., dim]``."""
        _check_input(x)
        check_finite(x)
        return smooth_cutoff(x, self.cutoff, self.p)[..., None] * self.encoding(jnp.minimum(x, self.cutoff))


def project_all(encodings: Sequence[hk.Module], weights: Sequence[jax.Array], x: jax.Array) -> list[jax.Array]:
    """``[enc_k(x) @ weights[k] for each k]``, table encodings folded and batched in one interpolation.

    The mirror of ``posenc.torch.encodings.project_all`` (weights ``[dim_k, out_k]``, Haiku's layout).

    Returns:
      K arrays ``[..., out_k]``.
    """
    if len(encodings) != len(weights):
        raise ValueError(f"got {len(encodings)} encodings but {len(weights)} weights")
    first = encodings[0] if encodings else None
    on_grid = [e for e in encodings if isinstance(e, TableEncoding) and isinstance(first, TableEncoding)
               and first.same_grid(e)]
    if isinstance(first, TableEncoding) and len(on_grid) == len(encodings):
        dtype = jnp.asarray(x).dtype
        tables = [e.stacked_table(dtype) @ w for e, w in zip(on_grid, weights)]  # K x [R, out_k]
        out = first.interpolate_table(x, jnp.concatenate(tables, axis=1))  # [..., sum out_k]
        return jnp.split(out, np.cumsum([w.shape[1] for w in weights])[:-1].tolist(), axis=-1)
    encoded: dict[int, jax.Array] = {}  # a shared encoding (the same module K times) is evaluated once
    terms = []
    for e, w in zip(encodings, weights):
        if isinstance(e, TableEncoding):
            terms.append(e.project(x, w))
            continue
        if id(e) not in encoded:
            encoded[id(e)] = cast(Callable[[jax.Array], jax.Array], e)(x)  # hk.Module declares no __call__
        terms.append(encoded[id(e)] @ w)
    return terms


ENCODINGS: dict[str, Callable[..., hk.Module]] = {
    "raw": RawEncoding,
    "mlp": MLPEncoding,
    "gaussian": GaussianEncoding,
    "bessel": BesselEncoding,
    "linear": LinearEncoding,
    "hermite": HermiteEncoding,
    "bspline": BSplineEncoding,
    "hermite5": QuinticHermiteEncoding,
}


def make_encoding(name: str, **kwargs: Any) -> hk.Module:
    """Builds the encoding registered as ``name`` (one of :data:`ENCODINGS`); call inside ``hk.transform``."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {sorted(ENCODINGS)}")
    return ENCODINGS[name](**kwargs)


def encoding_dim(encoding: hk.Module) -> int:
    """The output size ``dim`` of an encoding (every posenc encoding has one).

    Raises:
      TypeError: ``encoding`` has no integer ``dim`` (not a posenc encoding).
    """
    dim = getattr(encoding, "dim", None)
    if not isinstance(dim, int):
        raise TypeError(f"encoding must expose an int .dim (a posenc encoding), got {type(encoding).__name__}")
    return dim
