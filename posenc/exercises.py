"""Exercises that check themselves: call a checker on your answer and read what is wrong.

Each ``check_*`` function runs your function on inputs it chooses, compares the result with the
library's reference and, where they differ, tries the usual mistakes one by one so that it can
name the one you made. It returns a :class:`CheckResult`, which prints as a ✔/✘ report and has
``.passed``. A wrong answer never raises, and neither does an answer that crashes: the report
says where it crashed. Only a wrong call raises, e.g. passing something that is not a function.

Your function may use numpy (the checkers pass float64 numpy arrays and scalars) or torch: if
torch is imported and your function fails on numpy input, it is called again with float64
tensors. A function that only handles one number at a time is called point by point.

=========================================  ==================================================
checker                                    your function
=========================================  ==================================================
:func:`check_hermite_basis`                ``basis(t) -> (h00, h01, h10, h11)``
:func:`check_linear_interpolation`         ``interp(x, values, x_min, x_max) -> [P, dim]``
:func:`check_hermite_encoding`             ``h(x, values, slopes, x_min, x_max) -> [P, dim]``
:func:`check_smoothness_loss`              ``loss(values) -> float``
:func:`check_pair_force`                   ``force(r) -> [P]``, the radial force ``-dE/dr``
:func:`check_cluster_forces`               ``forces(pos) -> [N, 3]``, ``-dE/dx_i``
=========================================  ==================================================

Example:
  >>> from posenc.exercises import check_hermite_basis
  >>> def basis(t):
  ...     return 2*t**3 - 3*t**2 + 1, -2*t**3 + 3*t**2, t**3 - 2*t**2 + t, t**3 + t**2
  >>> result = check_hermite_basis(basis)
  >>> result.passed
  False
  >>> print(result)
  ✘ Hermite basis: 3 of 6 checks failed
    ✔ returns four arrays shaped like t
    ✔ finite everywhere
    ✔ each function is a cubic polynomial in t
    ✘ wrong value at an end: h11(1) = 2, should be 0
    ✘ wrong derivative at an end: h11'(1) = 5, should be 1
    ✘ differs from the reference basis at 9 of 10 points of t
    → your h11 is t³ + t², expected t³ - t²
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np

from posenc.spline import (
    HERMITE_POWER_COEFFS,
    bin_centres,
    check_grid,
    interpolate_reference,
)
from posenc.toys import PairPotential, cluster_energy_forces

__all__ = [
    "Check",
    "CheckResult",
    "check_cluster_forces",
    "check_hermite_basis",
    "check_hermite_encoding",
    "check_linear_interpolation",
    "check_pair_force",
    "check_smoothness_loss",
]

# Relative tolerance of every comparison. Loose enough for an answer computed in float32
# (torch's default dtype), tight enough that every mistake below is far outside it.
RTOL = 1e-5
BASIS_NAMES = ("h00", "h01", "h10", "h11")
REPORT_WIDTH = 92  # characters per report line: fits a notebook output cell without scrolling
# Points per interval where an answer is sampled to fit its polynomial pieces: interior points
# only, because a centre belongs to the interval on its right.
_T_FIT = (np.arange(8) + 0.5) / 8


# --- the report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One property of an answer: whether it holds and what it says in words."""

    passed: bool
    message: str


@dataclass
class CheckResult:
    """What a checker found: a list of checks and hints about the likely mistake.

    Prints (and displays in a notebook) as a ✔/✘ report; ``bool(result)`` is ``result.passed``.

    Attributes:
      exercise: the exercise's name, the report's first line.
      checks: the properties tested, in order.
      hints: what the mistake most likely is (empty when the answer passes).
    """

    exercise: str
    checks: list[Check] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def add(self, passed: bool, ok: str, wrong: str | None = None) -> bool:
        """Records a check: ``ok`` is said when it passes, ``wrong`` (default ``ok``) when not."""
        self.checks.append(Check(bool(passed), ok if passed or wrong is None else wrong))
        return bool(passed)

    def hint(self, text: str) -> None:
        """Adds a hint, once."""
        if text not in self.hints:
            self.hints.append(text)

    def __str__(self) -> str:
        n_failed = sum(not c.passed for c in self.checks)
        if self.passed:
            head = f"✔ {self.exercise}: all {len(self.checks)} checks passed"
        else:
            head = f"✘ {self.exercise}: {n_failed} of {len(self.checks)} checks failed"
        lines = [head]
        lines += [_wrap(c.message, "✔" if c.passed else "✘") for c in self.checks]
        lines += [_wrap(h, "→") for h in self.hints]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def _wrap(text: str, mark: str) -> str:
    """One report line: ``"  ✔ text"``, wrapped at :data:`REPORT_WIDTH` with a hanging indent."""
    return textwrap.fill(text, REPORT_WIDTH, initial_indent=f"  {mark} ", subsequent_indent="    ",
                         break_long_words=False, break_on_hyphens=False)


# --- calling an answer -----------------------------------------------------------------------
class _AnswerFailed(Exception):
    """The answer raised, or returned something of the wrong kind (not a misuse of the checker)."""


def _check_callable(fn: Any, name: str = "fn") -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be your function (a callable), got {type(fn).__name__}")


def _to_numpy(out: Any) -> np.ndarray:
    """An answer's output (numpy, torch, JAX, tuples of those) as a float64 array."""
    if isinstance(out, (tuple, list)):
        parts = [_to_numpy(o) for o in out]
        try:
            return np.stack(np.broadcast_arrays(*parts))
        except ValueError as err:
            raise _AnswerFailed(f"returns {len(parts)} arrays of different shapes "
                                f"{[p.shape for p in parts]}") from err
    if out is None:
        raise _AnswerFailed("returns None (is a `return` missing?)")
    if hasattr(out, "detach"):  # a torch tensor, perhaps with gradients
        out = out.detach().cpu().numpy()
    try:
        return np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _AnswerFailed(f"returns a {type(out).__name__}, not numbers") from err


def _as_torch(arg: Any) -> Any:
    torch = sys.modules["torch"]
    return torch.as_tensor(arg) if isinstance(arg, (np.ndarray, np.floating)) else arg


def _call(fn: Callable[..., Any], *args: Any) -> np.ndarray:
    """``fn(*args)`` as float64 numpy; retried with torch tensors if numpy input fails.

    Any exception of the answer is caught on purpose: a wrong answer may raise anything, and the
    checker's job is to report it, not to stop.
    """
    args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)  # answers may write in place
    # The answer's own warnings (overflow, deprecations) would only clutter the report.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return _to_numpy(fn(*args))
        except Exception as err:  # noqa: BLE001 - see the docstring
            first = err
        if "torch" in sys.modules:
            try:
                return _to_numpy(fn(*map(_as_torch, args)))
            except Exception:  # noqa: BLE001 - the numpy error is the one to report
                pass
    if isinstance(first, _AnswerFailed):
        raise first
    raise _AnswerFailed(f"{type(first).__name__}: {first}") from first


def _evaluate(fn: Callable[..., Any], points: np.ndarray, rest: tuple,
              shape: Callable[[np.ndarray, int | None], np.ndarray], what: str) -> tuple[np.ndarray, dict[int, str]]:
    """Runs an answer on all points at once, or point by point if that fails.

    Args:
      fn: the answer, called as ``fn(points, *rest)`` or ``fn(points[k], *rest)``.
      points: ``[P]`` float64 inputs.
      rest: the other arguments.
      shape: puts an output in canonical form; ``shape(out, P)`` for all points and
        ``shape(out, None)`` for one point; raises :class:`_AnswerFailed` on a wrong shape.
      what: the name of the input, for messages.

    Each point is tried as a one-element array, then as a number.

    Returns:
      ``(out, errors)``: ``out`` stacks the points along axis 0 (NaN where the answer raised),
      ``errors`` maps the index of each failed point to its error.

    Raises:
      _AnswerFailed: the answer fails on every point; the message is the error for all points.
    """
    try:
        return shape(_call(fn, points, *rest), len(points)), {}
    except _AnswerFailed as err:
        whole = err
    rows: list[np.ndarray | None] = []
    failures: dict[int, tuple[str, str]] = {}  # point -> (error as an array, error as a number)
    n_array = n_number = 0  # successes of each way of calling
    for k in range(len(points)):
        try:  # a vectorised answer that fails at some points only
            rows.append(shape(_call(fn, points[k:k + 1], *rest), 1)[0])
            n_array += 1
            continue
        except _AnswerFailed as err:
            as_array = str(err)
        try:  # an answer written for one number at a time
            rows.append(shape(_call(fn, points[k], *rest), None))
            n_number += 1
        except _AnswerFailed as err:
            rows.append(None)
            failures[k] = (as_array, str(err))
    # report each failure as it happens in the way of calling that works elsewhere
    errors = {k: pair[int(n_number > n_array)] for k, pair in failures.items()}
    good = [r for r in rows if r is not None]
    if not good:
        raise _AnswerFailed(f"{whole} (when called with an array of {len(points)} values of {what})")
    filler = np.full_like(good[0], np.nan)
    return np.stack([filler if r is None else r for r in rows]), errors


def _close(a: np.ndarray, b: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Elementwise ``a ≈ b`` relative to the size of ``b`` (NaN counts as different)."""
    scale = float(np.max(np.abs(b))) if scale is None else scale
    with np.errstate(invalid="ignore"):
        return np.abs(a - b) <= RTOL * (1.0 + scale)


def _all_close(a: np.ndarray, b: np.ndarray, scale: float | None = None) -> bool:
    return a.shape == b.shape and bool(np.all(_close(a, b, scale)))


def _fmt(v: float) -> str:
    """A number for a message: 4 significant digits, round-off (below 1e-9) shown as 0."""
    v = float(v)
    return f"{0.0 if abs(v) < 1e-9 else v:.4g}"


def _list(xs: np.ndarray, limit: int = 5) -> str:
    shown = [_fmt(v) for v in np.atleast_1d(xs)]
    return ", ".join(shown[:limit]) + (f", ... ({len(shown)} in all)" if len(shown) > limit else "")


def _report_crash(result: CheckResult, err: _AnswerFailed, call: str) -> CheckResult:
    result.add(False, f"your function raised or returned the wrong kind of thing: {err}")
    result.hint(f"it is called as {call}")
    return result


def _report_point_errors(result: CheckResult, errors: dict[int, str], points: np.ndarray, what: str) -> None:
    if errors:
        first = next(iter(errors.values()))
        result.add(False, "", f"raises at {what} = {_list(points[list(errors)])} ({first})")


# --- Hermite basis ---------------------------------------------------------------------------
def _poly_str(coeffs: np.ndarray, var: str = "t") -> str:
    """``[c0, c1, c2, c3]`` as ``"2t³ - 3t² + 1"`` (coefficients rounded to 3 decimals)."""
    sup = {0: "", 1: "", 2: "²", 3: "³"}
    terms = []
    for p in range(len(coeffs) - 1, -1, -1):
        c = round(float(coeffs[p]), 3)
        if c == 0:
            continue
        mag = abs(c)
        body = (_fmt(mag) if p == 0 or mag != 1 else "") + (var + sup[p] if p > 0 else "")
        terms.append(("- " if c < 0 else "+ ") + body)
    if not terms:
        return "0"
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


def _basis_shape(out: np.ndarray, n: int | None) -> np.ndarray:
    """``[P, 4]`` (or ``[4]`` for one point) from a tuple of four or an array ``[4, P]``/``[P, 4]``."""
    if n is None:
        if out.shape in ((4,), (4, 1)):
            return out.reshape(4)
    elif out.shape == (4, n):
        return out.T
    elif out.shape == (n, 4):
        return out
    raise _AnswerFailed(f"returns shape {out.shape}; expected the four basis functions "
                        "(h00, h01, h10, h11), each shaped like t")


def check_hermite_basis(fn: Callable[[Any], Any]) -> CheckResult:
    """Checks your four cubic Hermite basis polynomials of ``t`` in ``[0, 1]``.

    The basis in the order of the table ``[h_i, h_{i+1}, Δ g_i, Δ g_{i+1}]``: ``h00`` and
    ``h01`` weigh the values (1 at their own end, 0 at the other), ``h10`` and ``h11`` the slopes
    (0 at both ends, derivative 1 at their own end). Reference: ``posenc.spline.HERMITE_POWER_COEFFS``.

    Args:
      fn: ``fn(t) -> (h00, h01, h10, h11)``, ``t`` a ``[P]`` array (or one number): a tuple of
        four arrays shaped like ``t`` (an array ``[4, P]`` or ``[P, 4]`` also works).

    Returns:
      The report.

    Raises:
      TypeError: ``fn`` is not callable.
    """
    _check_callable(fn)
    result = CheckResult("Hermite basis")
    t = np.concatenate([[0.0], _T_FIT, [1.0]])  # [P]
    powers = t[:, None] ** np.arange(4)  # [P, 4]
    want = HERMITE_POWER_COEFFS @ powers.T  # [4, P]
    try:
        got, errors = _evaluate(fn, t, (), _basis_shape, "t")  # [P, 4]
    except _AnswerFailed as err:
        return _report_crash(result, err, "basis(t) with t a numpy array of values in [0, 1]")
    result.add(True, "returns four arrays shaped like t")
    _report_point_errors(result, errors, t, "t")
    got = got.T  # [4, P]
    ok = ~np.isnan(got).any(axis=0)  # [P] points where it did not raise
    result.add(bool(np.isfinite(got[:, ok]).all()), "finite everywhere", "returns NaN or inf")
    coeffs, cubic = [], []
    for b in range(4):  # least-squares cubic through the points: exact if the answer is a cubic
        finite = np.isfinite(got[b, ok]).all()
        c = np.linalg.lstsq(powers[ok], got[b, ok], rcond=None)[0] if finite else np.full(4, np.nan)
        coeffs.append(c)
        cubic.append(_all_close(powers[ok] @ c, got[b, ok], 1.0))
    result.add(all(cubic), "each function is a cubic polynomial in t",
               f"not a cubic polynomial in t: {', '.join(n for n, c in zip(BASIS_NAMES, cubic) if not c)}")

    ends_want = HERMITE_POWER_COEFFS @ np.array([[1, 0, 0, 0], [1, 1, 1, 1]], float).T  # [4, 2]
    d_coeffs = HERMITE_POWER_COEFFS[:, 1:] * np.arange(1, 4)  # [4, 3] derivative coefficients
    slope_want = d_coeffs @ np.array([[1, 0, 0], [1, 1, 1]], float).T  # [4, 2] values at t = 0, 1
    ends_got = got[:, [0, -1]]
    bad_ends = [f"{BASIS_NAMES[b]}({e}) = {_fmt(ends_got[b, k])}, should be {_fmt(ends_want[b, k])}"
                for b in range(4) for k, e in enumerate((0, 1)) if not _close(ends_got[b, k], ends_want[b, k], 1.0)]
    result.add(not bad_ends, "h00(0) = h01(1) = 1 and the other end values are 0",
               "wrong value at an end: " + "; ".join(bad_ends))
    bad_slopes = []
    for b in range(4):
        if not cubic[b]:
            continue  # no derivative to read off a non-polynomial
        d = np.array([coeffs[b][1], coeffs[b][1:] @ np.arange(1, 4)])  # derivative at t = 0, 1
        bad_slopes += [f"{BASIS_NAMES[b]}'({k}) = {_fmt(d[k])}, should be {_fmt(slope_want[b, k])}"
                       for k in range(2) if not _close(d[k], slope_want[b, k], 1.0)]
    if all(cubic):
        result.add(not bad_slopes, "derivatives at the ends: h10'(0) = h11'(1) = 1, all others 0",
                   "wrong derivative at an end: " + "; ".join(bad_slopes))
    n_bad = int((~_close(got, want, 1.0)).any(axis=0).sum())
    result.add(n_bad == 0, "matches the reference basis at every t",
               f"differs from the reference basis at {n_bad} of {len(t)} points of t")
    if not result.passed:
        _basis_hints(result, got, want, coeffs, cubic)
    return result


def _basis_hints(result: CheckResult, got: np.ndarray, want: np.ndarray, coeffs: list[np.ndarray],
                 cubic: list[bool]) -> None:
    """Names the mistake: a wrong order, a sign, or a wrong polynomial (shown as a formula)."""
    same = [[k for k in range(4) if _all_close(got[b], want[k], 1.0)] for b in range(4)]
    if all(len(s) == 1 for s in same) and sorted(s[0] for s in same) == [0, 1, 2, 3]:
        order = ", ".join(BASIS_NAMES[s[0]] for s in same)
        result.hint(f"these are the right four polynomials in the order ({order}); return them as "
                    "(h00, h01, h10, h11), the weights of h_i, h_{i+1}, Δ·g_i, Δ·g_{i+1}")
        return
    for b in range(4):
        if _all_close(got[b], want[b], 1.0):
            continue
        if _all_close(-got[b], want[b], 1.0):
            result.hint(f"your {BASIS_NAMES[b]} has the wrong sign")
        elif cubic[b]:
            expected = _poly_str(HERMITE_POWER_COEFFS[b])
            result.hint(f"your {BASIS_NAMES[b]} is {_poly_str(coeffs[b])}, expected {expected}")


# --- interpolated tables: linear and Hermite -------------------------------------------------
def _table_shape(dim: int) -> Callable[[np.ndarray, int | None], np.ndarray]:
    def shape(out: np.ndarray, n: int | None) -> np.ndarray:
        want = (dim,) if n is None else (n, dim)
        if out.shape == want:
            return out
        if n is None and out.shape == (1, dim):
            return out[0]
        raise _AnswerFailed(f"returns shape {out.shape}; expected [len(x), dim] = {list(want)}")
    return shape


@dataclass(frozen=True)
class _Grid:
    """The sample points of a table check: the centres, then 8 interior points per interval."""

    n_bin: int
    x_min: float
    x_max: float

    @property
    def delta(self) -> float:
        return (self.x_max - self.x_min) / (self.n_bin - 1)

    @property
    def centres(self) -> np.ndarray:
        return bin_centres(self.n_bin, self.x_min, self.x_max)

    @property
    def inner(self) -> np.ndarray:
        """``[n_bin - 1, 8]`` interior points of each interval."""
        return self.centres[:-1, None] + self.delta * _T_FIT[None, :]

    @property
    def points(self) -> np.ndarray:
        return np.concatenate([self.centres, self.inner.ravel()])


def _variant(x: np.ndarray, values: np.ndarray, slopes: np.ndarray | None, x_min: float, x_max: float, *,
             slope_factor: float = 1.0, t_unscaled: bool = False, swap_values: bool = False,
             swap_slopes: bool = False, index: str = "floor", n_intervals: int | None = None,
             step: bool = False) -> np.ndarray:
    """A deliberately wrong interpolation, one mistake per keyword (the diagnosis of an answer).

    With no keyword it equals :func:`posenc.spline.interpolate_reference` (the tests check this).
    """
    n_bin = values.shape[0]
    delta = (x_max - x_min) / (n_intervals or n_bin - 1)
    u = (x - x_min) / delta
    if step:  # a table look-up without interpolation: the last centre is a valid index here
        return values[np.clip((np.round(u) if index == "round" else np.floor(u)).astype(np.int64), 0, n_bin - 1)]
    i = np.clip((np.round(u) if index == "round" else np.floor(u)).astype(np.int64), 0, n_bin - 2)
    t = (x - (x_min + i * delta)) if t_unscaled else u - i
    a, b = (values[i + 1], values[i]) if swap_values else (values[i], values[i + 1])
    if slopes is None:
        return a * (1 - t)[:, None] + b * t[:, None]
    g = slopes * delta * slope_factor
    c, d = (g[i + 1], g[i]) if swap_slopes else (g[i], g[i + 1])
    w = (t[:, None] ** np.arange(4)) @ HERMITE_POWER_COEFFS.T  # [P, 4]
    return w[:, :1] * a + w[:, 1:2] * b + w[:, 2:3] * c + w[:, 3:] * d


def _piece_fits(got_inner: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares polynomials in t through each interval's samples.

    Args:
      got_inner: ``[n_bin - 1, 8, dim]`` the answer at :attr:`_Grid.inner`.
      degree: 3 (Hermite) or 1 (linear).

    Returns:
      ``(coeffs [n_bin - 1, degree + 1, dim], max_residual [n_bin - 1])``.
    """
    powers = _T_FIT[:, None] ** np.arange(degree + 1)  # [8, K]
    coeffs = np.stack([np.linalg.lstsq(powers, g, rcond=None)[0] for g in got_inner])  # [I, K, D]
    resid = np.abs(np.einsum("pk,ikd->ipd", powers, coeffs) - got_inner).max(axis=(1, 2))
    return coeffs, resid


def _check_table(result: CheckResult, fn: Callable[..., Any], grid: _Grid, values: np.ndarray,
                 slopes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The checks shared by the linear and Hermite exercises.

    Returns:
      ``(answer [P, dim], raised [P])`` at ``grid.points`` (``raised``: the answer raised there,
      already reported), or None if the answer does not run at all.
    """
    dim = values.shape[1]
    args = (values, slopes, grid.x_min, grid.x_max) if slopes is not None else (values, grid.x_min, grid.x_max)
    call = ("h(x, values, slopes, x_min, x_max)" if slopes is not None else "interp(x, values, x_min, x_max)")
    x = grid.points
    try:
        got, errors = _evaluate(fn, x, args, _table_shape(dim), "x")
    except _AnswerFailed as err:
        _report_crash(result, err, f"{call} with x a numpy array [P] and values {list(values.shape)}")
        return None
    result.add(True, f"returns [len(x), dim] = [{len(x)}, {dim}]")
    _report_point_errors(result, errors, x, "x")
    if errors and np.isclose(x[list(errors)], grid.x_max).any():
        result.hint("x = x_max is the last centre: it belongs to the last interval (i = n_bin - 2, t = 1); "
                    "clip the interval index to n_bin - 2 so that values[i + 1] exists")
    raised = np.zeros(len(x), bool)
    raised[list(errors)] = True
    result.add(bool(np.isfinite(got[~raised]).all()), "finite everywhere", "returns NaN or inf")

    n_bin = grid.n_bin
    at_c = got[:n_bin]
    ok_c = _close(at_c, values).all(axis=1) | raised[:n_bin]
    result.add(bool(ok_c.all()), "h(c_i) = values[i] at every centre c_i",
               f"h(c_i) ≠ values[i] at x = {_list(grid.centres[~ok_c])}")
    return got, raised


def _centre_hints(result: CheckResult, got: np.ndarray, values: np.ndarray, grid: _Grid) -> None:
    """Hints from the values at the centres, for when no known mistake matched the answer."""
    ok_c = _close(got[:grid.n_bin], values).all(axis=1) | np.isnan(got[:grid.n_bin]).all(axis=1)
    if not ok_c.all() and ok_c[:-1].all():
        result.hint("only the last centre x = x_max is wrong: it belongs to the last interval (i = n_bin - 2, t = 1)")
    elif (~ok_c).sum() > grid.n_bin // 2:
        result.hint(f"the centres are c_i = x_min + i·Δ with Δ = (x_max - x_min)/(n_bin - 1) = {_fmt(grid.delta)}: "
                    "the first is x_min, the last x_max")


def _table_data(n_bin: int, dim: int, x_min: float, x_max: float, seed: int) -> tuple[_Grid, np.ndarray, np.ndarray]:
    check_grid(n_bin, x_min, x_max)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    rng = np.random.default_rng(seed)
    values, slopes = rng.standard_normal((n_bin, dim)), rng.standard_normal((n_bin, dim))
    return _Grid(n_bin, float(x_min), float(x_max)), values, slopes


def _t_hint(delta: float) -> str:
    return f"t must be (x - c_i)/Δ, a fraction of the bin; yours is not divided by Δ = {_fmt(delta)}"


def _name_mistake(result: CheckResult, got: np.ndarray, x: np.ndarray, mistakes: list[tuple[dict, str]],
                  args: tuple) -> bool:
    """Adds the hint of the first mistake whose output equals the answer's; True if one did."""
    for kwargs, text in mistakes:
        if _all_close(got, _variant(x, *args, **kwargs)):
            result.hint(text)
            return True
    return False


def check_linear_interpolation(fn: Callable[..., Any], *, n_bin: int = 6, dim: int = 3, x_min: float = 0.5,
                               x_max: float = 3.0, seed: int = 0) -> CheckResult:
    """Checks your linear interpolation of a value table (the paper's C0 encoding).

    ``h(x) = (1 - t) h_i + t h_{i+1}`` on ``[c_i, c_{i+1}]`` with ``t = (x - c_i)/Δ``; centres
    ``c_i = x_min + i Δ``, ``Δ = (x_max - x_min)/(n_bin - 1)``. Reference:
    :func:`posenc.spline.interpolate_reference` with ``slopes=None``.

    Args:
      fn: ``fn(x, values, x_min, x_max) -> [P, dim]`` with ``x`` a ``[P]`` array in
        ``[x_min, x_max]`` and ``values`` ``[n_bin, dim]``.
      n_bin, dim, x_min, x_max: the test table's grid and width (keep Δ ≠ 1, or a missing
        division by Δ cannot be seen).
      seed: of the random test table.

    Returns:
      The report.

    Raises:
      TypeError: ``fn`` is not callable.
      ValueError: an invalid grid.
    """
    _check_callable(fn)
    grid, values, _ = _table_data(n_bin, dim, x_min, x_max, seed)
    result = CheckResult("Linear interpolation")
    checked = _check_table(result, fn, grid, values, None)
    if checked is None:
        return result
    got, raised = checked
    x = grid.points
    _, resid = _piece_fits(got[n_bin:].reshape(n_bin - 1, len(_T_FIT), dim), 1)
    straight = resid <= RTOL * (1 + np.abs(values).max())
    result.add(bool(straight.all()), "a straight line between neighbouring centres",
               f"not a straight line on the interval(s) starting at x = {_list(grid.centres[:-1][~straight])}")
    want = interpolate_reference(x, values, None, grid.x_min, grid.x_max)
    bad = ~_close(got, want).all(axis=1) & ~raised
    result.add(not bad.any(), "matches the reference between the centres",
               f"differs from the reference at {int(bad.sum())} of {len(x)} points")
    if not result.passed:
        args = (values, None, grid.x_min, grid.x_max)
        named = _name_mistake(result, got, x, [
            ({"t_unscaled": True}, _t_hint(grid.delta)),
            ({"swap_values": True}, "the weights are swapped: h_i gets (1 - t) and h_{i+1} gets t"),
            ({"step": True}, "your h is constant on each interval (values[i] of the centre on the left): "
                             "interpolate between values[i] and values[i + 1]"),
            ({"step": True, "index": "round"}, "your h is the value of the nearest centre: "
                                               "interpolate between the two centres around x instead"),
            ({"n_intervals": n_bin}, "Δ = (x_max - x_min)/(n_bin - 1): n_bin centres make n_bin - 1 intervals"),
        ], args)
        if not named:
            _centre_hints(result, got, values, grid)
    return result


def check_hermite_encoding(fn: Callable[..., Any], *, n_bin: int = 6, dim: int = 3, x_min: float = 0.5,
                           x_max: float = 3.0, seed: int = 0) -> CheckResult:
    """Checks your Hermite encoding h(x) from a value table and a slope table.

    ``h(x) = h00(t) h_i + h01(t) h_{i+1} + Δ (h10(t) g_i + h11(t) g_{i+1})`` on ``[c_i, c_{i+1}]``,
    ``t = (x - c_i)/Δ``; the slopes ``g_i`` are ``dh/dx`` in units of h per unit of x, hence
    the factor Δ. Reference: :func:`posenc.spline.interpolate_reference`. The checker samples your
    h inside every interval, fits a cubic there, and reads off the one-sided values and
    derivatives at the centres, so it can say where h is not C1.

    Args:
      fn: ``fn(x, values, slopes, x_min, x_max) -> [P, dim]`` with ``x`` a ``[P]`` array in
        ``[x_min, x_max]``, ``values`` and ``slopes`` ``[n_bin, dim]``.
      n_bin, dim, x_min, x_max: the test table's grid and width (keep Δ ≠ 1, or a missing factor
        Δ cannot be seen).
      seed: of the random test tables.

    Returns:
      The report.

    Raises:
      TypeError: ``fn`` is not callable.
      ValueError: an invalid grid.
    """
    _check_callable(fn)
    grid, values, slopes = _table_data(n_bin, dim, x_min, x_max, seed)
    result = CheckResult("Hermite encoding")
    checked = _check_table(result, fn, grid, values, slopes)
    if checked is None:
        return result
    got, raised = checked
    x, delta, c = grid.points, grid.delta, grid.centres
    coeffs, resid = _piece_fits(got[n_bin:].reshape(n_bin - 1, len(_T_FIT), dim), 3)
    scale = np.abs(values).max() + delta * np.abs(slopes).max()
    cubic = resid <= 10 * RTOL * (1 + scale)
    result.add(bool(cubic.all()), "a cubic polynomial between neighbouring centres",
               f"not a cubic on the interval(s) starting at x = {_list(c[:-1][~cubic])}")
    # one-sided derivatives dh/dx at the centres, from the fitted cubics: [n_bin - 1, dim] each
    right = coeffs[:, 1] / delta  # at c_i, t = 0 of interval i
    left = np.einsum("k,ikd->id", np.arange(1, 4.0), coeffs[:, 1:]) / delta  # at c_{i+1}, t = 1
    dscale = np.abs(slopes).max()
    tol = 1e2 * RTOL * (1 + dscale)  # looser: a derivative read off a fit
    bad_g = np.zeros(n_bin, bool)
    bad_g[:-1] |= (np.abs(right - slopes[:-1]) > tol).any(axis=1)
    bad_g[1:] |= (np.abs(left - slopes[1:]) > tol).any(axis=1)
    bad_g[:-1] |= ~cubic  # no trustworthy derivative there
    bad_g[1:] |= ~cubic
    result.add(not bad_g.any(), "dh/dx(c_i) = slopes[i] at every centre",
               f"dh/dx(c_i) ≠ slopes[i] at x = {_list(c[bad_g])}")
    jump = np.abs(left[:-1] - right[1:]).max(axis=1)  # at the interior centres c_1 .. c_{n-2}
    c1 = (jump <= tol) & cubic[:-1] & cubic[1:]
    result.add(bool(c1.all()), "C1: dh/dx is continuous at every interior centre",
               f"not C1: dh/dx jumps at x = {_list(c[1:-1][~c1])} (by up to {_fmt(jump.max())})")
    want = interpolate_reference(x, values, slopes, grid.x_min, grid.x_max)
    bad = ~_close(got, want).all(axis=1) & ~raised
    result.add(not bad.any(), "matches the reference between the centres",
               f"differs from the reference at {int(bad.sum())} of {len(x)} points")
    if not result.passed:
        _hermite_hints(result, got, x, values, slopes, grid)
    return result


def _hermite_hints(result: CheckResult, got: np.ndarray, x: np.ndarray, values: np.ndarray, slopes: np.ndarray,
                   grid: _Grid) -> None:
    """Names the mistake: the factor on the slope terms, or one of the other usual slips."""
    args = (values, slopes, grid.x_min, grid.x_max)
    delta = grid.delta
    # h is linear in the slopes: answer = no-slope part + a * slope part, for some factor a
    base = _variant(x, values, np.zeros_like(slopes), grid.x_min, grid.x_max)
    part = _variant(x, *args) - base
    rows = np.isfinite(got).all(axis=1)  # the points where the answer did not raise
    if rows.any():
        ans, base, part = got[rows], base[rows], part[rows]
        a = float(np.sum((ans - base) * part) / np.sum(part * part))
        if _all_close(ans, base + a * part) and not np.isclose(a, 1.0, rtol=1e-3):
            factors = {1 / delta: f"off by a factor Δ: your slope terms are not multiplied by the bin width "
                                  f"Δ = {_fmt(delta)}. The slopes are dh/dx per unit of x while h10, h11 are "
                                  "polynomials in t = (x - c_i)/Δ, so the slope terms are "
                                  "Δ·(h10(t) g_i + h11(t) g_{i+1})",
                     1 / delta**2: f"your slope terms are divided by Δ = {_fmt(delta)} instead of multiplied by it",
                     delta: f"your slope terms are multiplied by Δ = {_fmt(delta)} twice",
                     0.0: "your h ignores the slopes",
                     -1.0: "your slope terms have the wrong sign"}
            for factor, text in factors.items():
                if np.isclose(a, factor, rtol=1e-3, atol=1e-6):
                    result.hint(text)
                    return
            result.hint(f"your slope terms are {_fmt(a)} times what they should be")
            return
    named = _name_mistake(result, got, x, [
        ({"t_unscaled": True}, _t_hint(delta)),
        ({"swap_values": True}, "h00 and h01 are swapped: h00 weighs h_i (it is 1 at t = 0), h01 weighs h_{i+1}"),
        ({"swap_slopes": True}, "h10 and h11 are swapped: h10 weighs g_i (slope 1 at t = 0), h11 weighs g_{i+1}"),
        ({"index": "round"}, "the interval is [c_i, c_{i+1}] with i = floor((x - x_min)/Δ), not the nearest centre"),
        ({"n_intervals": grid.n_bin}, "Δ = (x_max - x_min)/(n_bin - 1): n_bin centres make n_bin - 1 intervals"),
    ], args)
    if not named:
        _centre_hints(result, got, values, grid)


# --- smoothness loss -------------------------------------------------------------------------
def _norms(v: np.ndarray, p: float = 2.0, axis: int = 1) -> np.ndarray:
    return np.linalg.norm(v, ord=p, axis=axis)


# The loss and its usual mistakes, as (function of the table [n, dim], what the mistake is).
# The first entry is the paper's L_smooth (Section 3.2): both sums over the first n - 1 rows.
_SMOOTHNESS_VARIANTS: list[tuple[Callable[[np.ndarray], float], str]] = [
    (lambda v: _norms(np.diff(v, axis=0)).sum() / _norms(v[:-1]).sum(), ""),
    (lambda v: _norms(np.diff(v, axis=0)).sum(),
     "missing normalisation: divide by Σ_i ||h_i|| so that the loss does not depend on the scale of the table"),
    (lambda v: (_norms(np.diff(v, axis=0)) ** 2).sum() / (_norms(v[:-1]) ** 2).sum(),
     "you use squared norms; L_smooth uses the norms themselves, ||h_{i+1} - h_i|| and ||h_i||"),
    (lambda v: (_norms(np.diff(v, axis=0)) ** 2).sum() / _norms(v[:-1]).sum(),
     "the differences are squared; L_smooth uses the norms themselves, ||h_{i+1} - h_i||"),
    (lambda v: _norms(np.diff(v, axis=0)).sum() / _norms(v).sum(),
     "the denominator sums over all n rows; the paper sums both sums over i = 1 .. n-1 (the first n - 1 rows)"),
    (lambda v: _norms(np.diff(v, axis=0)).sum() / _norms(v[1:]).sum(),
     "the denominator sums over rows 2 .. n; the paper sums both sums over i = 1 .. n-1 (the first n - 1 rows)"),
    (lambda v: _norms(np.diff(v, axis=0)).mean() / _norms(v[:-1]).sum(),
     "the numerator is a mean and the denominator a sum: use sums in both (or means in both)"),
    (lambda v: _norms(np.diff(v, axis=0), 1).sum() / _norms(v[:-1], 1).sum(),
     "you use 1-norms (sums of absolute values); L_smooth uses 2-norms over the embedding dimension"),
    (lambda v: np.linalg.norm(np.diff(v, axis=0)) / np.linalg.norm(v[:-1]),
     "you take one norm of the whole table; L_smooth sums the norms of the rows, Σ_i ||h_{i+1} - h_i||"),
    (lambda v: _norms(np.diff(v, axis=0), axis=0).sum() / _norms(v[:-1], axis=0).sum(),
     "the norms run over the bins (axis 0); take them over the embedding dimension (axis 1), one per row"),
    (lambda v: np.abs(np.diff(_norms(v))).sum() / _norms(v[:-1]).sum(),
     "you take differences of norms, | ||h_{i+1}|| - ||h_i|| |; L_smooth takes the norm of the difference, "
     "||h_{i+1} - h_i||"),
    (lambda v: _norms(v[:-1]).sum() / _norms(np.diff(v, axis=0)).sum(),
     "the fraction is upside down: Σ ||h_{i+1} - h_i|| over Σ ||h_i||"),
]


def _scalar(out: np.ndarray) -> float:
    if out.size != 1:
        raise _AnswerFailed(f"returns an array of shape {out.shape}, not one number (did you forget a sum?)")
    return float(out.reshape(()))


def check_smoothness_loss(fn: Callable[[Any], Any], *, seed: int = 0) -> CheckResult:
    """Checks your smoothness loss ``L_smooth = Σ_i ||h_{i+1} - h_i|| / Σ_i ||h_i||``.

    Both sums run over ``i = 1 .. n-1`` (the first n - 1 rows, as in Section 3.2 of the paper);
    the norms are 2-norms over the embedding dimension. Reference: ``posenc.torch.smoothness_loss``
    (the tests hold the two equal).

    Args:
      fn: ``fn(values) -> float`` with ``values`` a ``[n_bin, dim]`` array; a 0-d array or tensor
        is fine.
      seed: of the random test tables.

    Returns:
      The report.

    Raises:
      TypeError: ``fn`` is not callable.
    """
    _check_callable(fn)
    result = CheckResult("Smoothness loss")
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((7, 4)) + np.linspace(0.0, 3.0, 7)[:, None]  # [7, 4]
    reference = _SMOOTHNESS_VARIANTS[0][0]
    try:
        got = _scalar(_call(fn, table))
        scaled = _scalar(_call(fn, 3.7 * table))
        constant = _scalar(_call(fn, np.tile(np.arange(1.0, 5.0), (7, 1))))
    except _AnswerFailed as err:
        return _report_crash(result, err, "loss(values) with values a numpy array [n_bin, dim]")
    result.add(True, "returns one number")
    want = reference(table)
    result.add(bool(_close(np.float64(got), np.float64(want))),
               f"equals L_smooth on a random table ({_fmt(want)})",
               f"gives {_fmt(got)} on a random table; L_smooth is {_fmt(want)}")
    result.add(bool(_close(np.float64(scaled), np.float64(got), abs(got))),
               "scale-free: multiplying the table by 3.7 leaves it unchanged",
               f"not scale-free: {_fmt(got)} for the table, {_fmt(scaled)} for 3.7 × the table")
    result.add(bool(abs(constant) <= RTOL), "zero for a constant table (all rows equal)",
               f"gives {_fmt(constant)} for a constant table; it should be 0 (no row differs from the next)")
    if not result.passed:
        for variant, text in _SMOOTHNESS_VARIANTS[1:]:
            same = _close(np.float64(got), np.float64(variant(table)))
            if same and _close(np.float64(scaled), np.float64(variant(3.7 * table))):
                result.hint(text)
                break
    return result


# --- forces ----------------------------------------------------------------------------------
def _evaluate_potential(potential: Any, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(potential, PairPotential) or callable(potential)):
        raise TypeError("potential must be a posenc.toys.PairPotential (or a function r -> (energy, force)), "
                        f"got {type(potential).__name__}")
    energy, force = potential(r)
    return np.asarray(energy, dtype=np.float64), np.asarray(force, dtype=np.float64)


def _force_shape(out: np.ndarray, n: int | None) -> np.ndarray:
    if n is None and out.size == 1:
        return out.reshape(())
    if n is not None and out.shape in ((n,), (n, 1)):
        return out.reshape(n)
    raise _AnswerFailed(f"returns shape {out.shape}; expected one force per distance, shaped like r")


def check_pair_force(fn: Callable[[Any], Any], potential: PairPotential, *, r: Any = None) -> CheckResult:
    """Checks your radial force ``F(r) = -dE/dr`` of a pair potential.

    Positive F pushes the two atoms apart (repulsion). Reference: ``potential.force``, e.g. the
    analytic forces of :class:`posenc.toys.LennardJones`.

    Args:
      fn: ``fn(r) -> [P]``, ``r`` a ``[P]`` array of distances.
      potential: the pair potential your force belongs to (a :class:`posenc.toys.PairPotential`,
        or any function ``r -> (energy, force)``).
      r: ``[P]`` distances to test at (default: 36 points from 0.9 to 3.0, in σ).

    Returns:
      The report.

    Raises:
      TypeError: ``fn`` is not callable, or ``potential`` is not a potential.
      ValueError: ``r`` is empty or not finite.
    """
    _check_callable(fn)
    r = np.linspace(0.9, 3.0, 36) if r is None else np.asarray(r, dtype=np.float64).reshape(-1)
    if r.size == 0 or not np.isfinite(r).all():
        raise ValueError("r must be a non-empty array of finite distances")
    energy, force = _evaluate_potential(potential, r)
    result = CheckResult(f"Pair force ({getattr(potential, 'name', 'potential')})")
    try:
        got, errors = _evaluate(fn, r, (), _force_shape, "r")
    except _AnswerFailed as err:
        return _report_crash(result, err, "force(r) with r a numpy array of distances")
    result.add(True, "returns one force per distance")
    _report_point_errors(result, errors, r, "r")
    raised = np.zeros(len(r), bool)
    raised[list(errors)] = True
    result.add(bool(np.isfinite(got[~raised]).all()), "finite everywhere", "returns NaN or inf")
    bad = ~(_close(got, force) | raised)
    result.add(not bad.any(), "F(r) = -dE/dr at every distance",
               f"F(r) ≠ -dE/dr at r = {_list(r[bad])}")
    if not result.passed and np.isfinite(got).all():
        _force_hints(result, got, force, energy, r)
    return result


def _force_hints(result: CheckResult, got: np.ndarray, force: np.ndarray, energy: np.ndarray, r: np.ndarray) -> None:
    named = [
        (-force, "the sign is wrong: the force is -dE/dr (yours is +dE/dr); a positive force means repulsion"),
        (energy, "you return the energy E(r), not the force -dE/dr"),
        (-energy, "you return -E(r); the force is minus the *derivative* of the energy, -dE/dr"),
        (force / r, "you return F/r (the factor that multiplies the vector x_i - x_j); the radial force is F itself"),
        (force * r, "your force has an extra factor r: did you forget a 1/r from the chain rule, "
                    "d(r^-n)/dr = -n r^-(n+1)?"),
    ]
    for candidate, text in named:
        if _all_close(got, candidate):
            result.hint(text)
            return
    a = float(np.sum(got * force) / np.sum(force * force))
    if np.max(np.abs(got - force)) <= 1e-2 * np.max(np.abs(force)):
        result.hint("close, but not exact: a finite difference? Differentiate E analytically or use autograd")
    elif _all_close(got, a * force):
        result.hint(f"your force is {_fmt(a)} times the right one: a missing or extra constant factor")


def check_cluster_forces(fn: Callable[[Any], Any], potential: PairPotential, *, n_atoms: int = 5,
                         seed: int = 0) -> CheckResult:
    """Checks your per-atom forces ``F_i = -dE/dx_i`` of a cluster with ``E = Σ_{i<j} V(r_ij)``.

    ``F_i = Σ_j F(r_ij) (x_i - x_j) / r_ij`` with the radial force ``F = -dV/dr``. Reference:
    :func:`posenc.toys.cluster_energy_forces`.

    Args:
      fn: ``fn(pos) -> [N, 3]``, ``pos`` an ``[N, 3]`` array of positions (σ).
      potential: the pair potential V (a :class:`posenc.toys.PairPotential`).
      n_atoms: atoms in the test cluster (>= 2).
      seed: of the test cluster's positions.

    Returns:
      The report.

    Raises:
      TypeError: ``fn`` is not callable, or ``potential`` is not a potential.
      ValueError: ``n_atoms < 2``.
    """
    _check_callable(fn)
    if not isinstance(potential, PairPotential):
        raise TypeError(f"potential must be a posenc.toys.PairPotential, got {type(potential).__name__}")
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 2:
        raise ValueError(f"n_atoms must be an int >= 2, got {n_atoms!r}")
    rng = np.random.default_rng(seed)
    # atoms on a jittered line 1.1 σ apart: every pair distance is well inside the potential's range
    pos = np.arange(n_atoms)[:, None] * np.array([1.1, 0.0, 0.0]) + 0.05 * rng.standard_normal((n_atoms, 3))
    _, want = cluster_energy_forces(potential, pos)
    result = CheckResult(f"Cluster forces ({potential.name})")
    try:
        got = _call(fn, pos)
    except _AnswerFailed as err:
        return _report_crash(result, err, "forces(pos) with pos a numpy array [N, 3]")
    if not result.add(got.shape == pos.shape, f"returns [N, 3] = {list(pos.shape)}",
                      f"returns shape {got.shape}; expected one 3-vector per atom, {list(pos.shape)}"):
        return result
    if not result.add(bool(np.isfinite(got).all()), "finite everywhere", "returns NaN or inf"):
        return result
    scale = float(np.abs(want).max())
    result.add(_all_close(got.sum(axis=0), np.zeros(3), scale), "the forces sum to zero (Newton's third law)",
               f"the forces sum to {np.round(got.sum(axis=0), 4).tolist()}, not zero: every pair pushes i and j "
               "equally and oppositely")
    bad = ~_close(got, want, scale).all(axis=1)
    result.add(not bad.any(), "F_i = -dE/dx_i on every atom",
               f"F_i ≠ -dE/dx_i on atom(s) {np.flatnonzero(bad).tolist()}")
    if result.passed:
        return result
    i, j = np.triu_indices(n_atoms, k=1)
    d = pos[i] - pos[j]  # [P, 3]
    r = np.linalg.norm(d, axis=1)  # [P]
    f = potential.force(r)  # [P]
    one_sided = np.zeros_like(pos)
    np.add.at(one_sided, i, (f / r)[:, None] * d)
    unnormalised = np.zeros_like(pos)
    np.add.at(unnormalised, i, f[:, None] * d)
    np.add.at(unnormalised, j, -f[:, None] * d)
    for candidate, text in [
        (-want, "the sign is wrong: the force on i points along x_i - x_j when F(r) > 0 (repulsion)"),
        (2 * want, "twice the right forces: each pair counted twice (sum over i < j, or halve a double sum)"),
        (one_sided, "each pair's force is added to atom i only: add the opposite force to atom j as well"),
        (unnormalised, "the direction is not a unit vector: use (x_i - x_j) / r_ij"),
    ]:
        if _all_close(got, candidate, scale):
            result.hint(text)
            break
    return result
