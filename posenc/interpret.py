"""Reading a learned encoding: the paper's metrics (Section 4.3), ĝ(x) (Section 4.4.1), PCA.

Everything here is numpy and backend-agnostic. An *encoding* is given as one of

* :class:`Tables` ``(values, slopes, x_min, x_max)`` (``slopes=None`` for linear interpolation;
  the optional ``curvatures`` and ``form`` name the C2 forms), or a plain 4-tuple in that order,
  or a dict with those keys;
* a torch encoding module (``posenc.torch.HermiteEncoding`` and friends, any ``nn.Module`` that
  maps ``x[P] -> [P, dim]``);
* Haiku parameters, turned into :class:`Tables` by :func:`tables_from_haiku` (a params entry
  ``{"values", "slopes"}`` is just the tables; the grid ``x_min, x_max`` and, for a B-spline,
  the form come from the caller);
* a results file, read by :func:`load_tables` (the learned tables, the initial ones, or
  the change training made to them).

A *list* of encodings is several layers (the paper's l). :func:`sample` turns any of them into
an embedding array ``[layers, points, dim]``; the metrics take such arrays, so they also work
for embeddings that were never tables (the polynomial baseline, an MLP encoding).

Definitions (``h_ij`` = dimension j of layer i sampled on a grid of x; l layers, s dimensions):

* non-linearity    = 1 - (1/(l s)) Σ_i Σ_j ρ_Pearson(h_ij, x)²
* non-monotonicity = 1 - (1/(l s)) Σ_i Σ_j ρ_Spearman(h_ij, x)²
* diversity        = 1 - (2/(l s (s-1))) Σ_i Σ_{j<k} ρ_Pearson(h_ij, h_ik)²
* smoothness       = 1 - L_smooth (the training regularizer on the value tables, averaged over
  layers; see :func:`smoothness`)
* similarity(a, b) = (1/(l s_a s_b)) Σ_i Σ_j Σ_k ρ_Pearson(h^a_ij, h^b_ik)²
* normalised derivative ``ĝ(x) = |g(x)| / std(g)``, with the exact reading in
  :func:`normalised_derivative`; :func:`bin_mean_derivative` gives the same reading of the value
  tables alone, and :func:`derivative_centroid` sums a ĝ profile up in one number.

Constant dimensions: a correlation with a dimension that does not vary over the grid is 0/0.
Policy: every correlation-based metric raises ``ValueError`` naming the layer and dimensions
(never a silent NaN, never a guessed value). A dimension counts as constant when its standard
deviation over the grid is at most ``1e-9`` times its largest absolute value (so round-off on
a constant table is caught). Drop such dimensions yourself if you want the rest measured.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.stats import rankdata

from posenc.spline import TABLE_FORMS, check_form, check_grid, interpolate_reference

CONSTANT_RTOL = 1e-9
METRICS: tuple[str, ...] = ("non_linearity", "non_monotonicity", "diversity", "smoothness")


class Tables(NamedTuple):
    """One table encoding, backend-free.

    Attributes:
      values: ``[n_bin, dim]`` values h_i at the centres.
      slopes: ``[n_bin, dim]`` slopes g_i = dh/dx at the centres, or None (linear interpolation).
      x_min, x_max: the range covered by the ``n_bin`` evenly spaced centres (unit of x).
      curvatures: ``[n_bin, dim]`` second derivatives at the centres (quintic Hermite), or None.
      form: the table form (``posenc.spline.TABLE_FORMS``); None infers ``linear``, ``hermite``
        or ``hermite5`` from the tables present. ``"bspline"`` must be named: its ``values``
        are control values, which alone look like a linear table.
    """

    values: np.ndarray
    slopes: np.ndarray | None
    x_min: float
    x_max: float
    curvatures: np.ndarray | None = None
    form: str | None = None


# --- getting tables out of every backend ------------------------------------------------------


def _check_table(values: Any, slopes: Any, x_min: Any, x_max: Any, curvatures: Any = None,
                 form: str | None = None) -> Tables:
    """Validates and converts one table to float64 numpy."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be [n_bin, dim], got shape {v.shape}")
    check_grid(v.shape[0], float(x_min), float(x_max))
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf")
    extra: dict[str, np.ndarray | None] = {}
    for name, table in (("slopes", slopes), ("curvatures", curvatures)):
        extra[name] = None
        if table is not None:
            t = np.asarray(table, dtype=np.float64)
            if t.shape != v.shape:
                raise ValueError(f"{name} shape {t.shape} differs from values shape {v.shape}")
            if not np.all(np.isfinite(t)):
                raise ValueError(f"{name} contain NaN or inf")
            extra[name] = t
    if form is not None:
        check_form(form)
        given = {"values", *(k for k, t in extra.items() if t is not None)}
        if given != set(TABLE_FORMS[form]):
            raise ValueError(f"a {form} table has {TABLE_FORMS[form]}, got {sorted(given)}")
    elif extra["curvatures"] is not None and extra["slopes"] is None:
        raise ValueError("curvatures without slopes: a quintic Hermite table needs both")
    return Tables(v, extra["slopes"], float(x_min), float(x_max), extra["curvatures"], form)


def tables_from_torch(module: Any) -> list[Tables]:
    """The tables of every ``posenc.torch`` table encoding inside ``module`` (itself included).

    Args:
      module: a torch module (an encoding or a whole model).

    Returns:
      One :class:`Tables` per ``TableEncoding`` found, in ``module.modules()`` order.

    Raises:
      ValueError: the module holds no table encoding.
    """
    from posenc.torch.encodings import TableEncoding

    out = []
    for m in module.modules():
        if isinstance(m, TableEncoding):
            tables = {name: getattr(m, name, None) for name in ("values", "slopes", "curvatures")}
            v, s, c = (None if t is None else t.detach().cpu().numpy() for t in tables.values())
            out.append(_check_table(v, s, m.x_min, m.x_max, c, m.form))
    if not out:
        raise ValueError(f"{type(module).__name__} holds no table encoding")
    return out


def tables_from_haiku(params: Mapping[str, Any], x_min: float, x_max: float, form: str | None = None) -> list[Tables]:
    """Tables from Haiku parameters: one params entry, or a whole params tree.

    Haiku parameters do not record the grid, so the caller passes it (the ``x_min, x_max`` the
    module was built with).

    Args:
      params: either one module's entry ``{"values": [n_bin, dim], "slopes": [n_bin, dim]}``
        (``slopes`` absent for a linear encoding), or a params tree ``{module_name: entry}``;
        every entry holding ``"values"`` counts, in the tree's order.
        (``curvatures`` too for a quintic Hermite encoding).
      x_min, x_max: the encoding range.
      form: the table form of every entry (``posenc.spline.TABLE_FORMS``); None infers it from
        the tables present, so a B-spline's ``{"values"}`` needs ``form="bspline"``.

    Returns:
      A list of :class:`Tables` (one item for a single entry).
    """
    if "values" in params:
        return [_check_table(params["values"], params.get("slopes"), x_min, x_max, params.get("curvatures"), form)]
    out = [_check_table(p["values"], p.get("slopes"), x_min, x_max, p.get("curvatures"), form)
           for p in params.values() if isinstance(p, Mapping) and "values" in p]
    if not out:
        raise ValueError("no params entry holds 'values': not a table encoding's parameters")
    return out


#: What :func:`load_tables` can return from a results file: the tables after training, before
#: training, or the difference training made.
PARTS: tuple[str, ...] = ("learned", "initial", "change")
Part = Literal["learned", "initial", "change"]


def load_tables(path: str | os.PathLike, part: Part = "learned") -> list[Tables]:
    """Reads ``encoding_tables.npz``: the learned tables, the initial ones, or the change.

    The file holds ``values_layer{i}``, ``slopes_layer{i}`` (each ``[n_bin, dim]``), the scalars
    ``x_min``, ``x_max`` and, when the training code saved them, the tables before training
    ``init_values_layer{i}``, ``init_slopes_layer{i}`` (same shapes). Layer indices must be
    contiguous (from 0 or 1); a layer without ``slopes_layer{i}`` is a linear encoding.

    ``part="change"`` gives ``values - init_values`` and ``slopes - init_slopes``. A Hermite (or
    linear) table is linear in its values and slopes, so sampling the change gives exactly
    ``h(x) - h0(x)`` (and ``g(x) - g0(x)`` for ``order=1``): what training added to the start.

    Args:
      path: the ``.npz`` file.
      part: ``"learned"`` (the tables after training, the default), ``"initial"`` (before
        training) or ``"change"`` (learned minus initial).

    Returns:
      One :class:`Tables` per layer, ``values`` and ``slopes`` ``[n_bin, dim]`` float64.

    Raises:
      ValueError: an unknown ``part``; no ``values_layer*`` key, gaps in the indices, a slopes key
        without values, non-scalar ``x_min``/``x_max``, or a bad table; for ``"initial"`` and
        ``"change"``, a file without the ``init_*`` arrays (files of older runs) or whose
        ``init_*`` arrays do not match the learned tables (missing layer or slopes, other shape).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    with np.load(path) as f:
        keys = set(f.files)
        idx = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"values_layer(\d+)", k)))
        if not idx:
            raise ValueError(f"{path}: no 'values_layer{{i}}' arrays (keys: {sorted(keys)})")
        if idx != list(range(idx[0], idx[0] + len(idx))) or idx[0] not in (0, 1):
            raise ValueError(f"{path}: layer indices {idx} are not contiguous from 0 or 1")
        orphans = {int(m.group(1)) for k in keys if (m := re.fullmatch(r"slopes_layer(\d+)", k))} - set(idx)
        if orphans:
            raise ValueError(f"{path}: slopes for layers {sorted(orphans)} without values")
        for key in ("x_min", "x_max"):
            if key not in keys:
                raise ValueError(f"{path}: missing {key!r}")
            if np.asarray(f[key]).size != 1:
                raise ValueError(f"{path}: {key!r} must be a scalar, got shape {np.shape(f[key])}")
        lo, hi = float(np.asarray(f["x_min"]).item()), float(np.asarray(f["x_max"]).item())
        form = str(np.asarray(f["form"]).item()) if "form" in keys else None
        names = [n for n in ("values", "slopes", "curvatures") if n == "values" or f"{n}_layer{idx[0]}" in keys]

        def layers(prefix: str) -> list[list[np.ndarray | None]]:
            return [[f[f"{prefix}{n}_layer{i}"] if n in names else None for n in ("values", "slopes", "curvatures")]
                    for i in idx]

        learned = layers("")
        if part == "learned":
            return [_check_table(v, s, lo, hi, c, form) for v, s, c in learned]
        if not any(k.startswith("init_") for k in keys):
            raise ValueError(f"{path}: part={part!r} needs the tables before training ('init_values_layer{{i}}', "
                             "'init_slopes_layer{i}'), which this file does not hold (a run saved before they "
                             "were recorded); only part='learned' can be read from it")
        for i, tables in zip(idx, learned):
            for name, table in zip(("values", "slopes", "curvatures"), tables):
                key = f"init_{name}_layer{i}"
                if table is not None and key not in keys:
                    raise ValueError(f"{path}: {name}_layer{i} has no {key!r} to compare with")
                if table is not None and np.shape(f[key]) != np.shape(table):
                    raise ValueError(f"{path}: {key!r} has shape {np.shape(f[key])}, "
                                     f"{name}_layer{i} {np.shape(table)}")
        initial = layers("init_")
        learned = [[None if t is None else np.asarray(t, dtype=np.float64) for t in ts] for ts in learned]
        initial = [[None if t is None else np.asarray(t, dtype=np.float64) for t in ts] for ts in initial]
    if part == "initial":
        return [_check_table(v0, s0, lo, hi, c0, form) for v0, s0, c0 in initial]
    def minus(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        return None if a is None or b is None else a - b

    # every form is linear in its tables, so the change of the tables is the change of h(x)
    return [_check_table(minus(v, v0), minus(s, s0), lo, hi, minus(c, c0), form)
            for (v, s, c), (v0, s0, c0) in zip(learned, initial)]


def as_tables(encoding: Any) -> list[Tables]:
    """Every accepted encoding form (or a list of them) as a list of :class:`Tables`.

    Raises:
      TypeError: a form that carries no tables (e.g. an MLP encoding, or a sampled array).
    """
    if isinstance(encoding, list):
        return [t for e in encoding for t in as_tables(e)]
    if isinstance(encoding, Tables):
        return [_check_table(*encoding)]
    if isinstance(encoding, tuple) and len(encoding) == 4:
        return [_check_table(*encoding)]
    if isinstance(encoding, Mapping) and {"values", "x_min", "x_max"} <= set(encoding):
        return [_check_table(encoding["values"], encoding.get("slopes"), encoding["x_min"], encoding["x_max"],
                             encoding.get("curvatures"), encoding.get("form"))]
    if _is_torch_module(encoding):
        return tables_from_torch(encoding)
    raise TypeError(
        f"cannot read tables from {type(encoding).__name__}: pass Tables(values, slopes, x_min, x_max), "
        "a dict with those keys, a torch table encoding, or use tables_from_haiku / load_tables"
    )


def _is_torch_module(obj: Any) -> bool:
    try:
        from torch import nn
    except ImportError:  # torch is optional: without it nothing is a torch module
        return False
    return isinstance(obj, nn.Module)


# --- sampling ---------------------------------------------------------------------------------


def _check_x(x: Any, name: str = "x", min_points: int = 3, varying: bool = True) -> np.ndarray:
    """A finite 1-D float64 grid of at least ``min_points`` points (not constant, if ``varying``)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D [points], got shape {x.shape}")
    if x.size < min_points:
        raise ValueError(f"{name} needs at least {min_points} points, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    if varying and np.ptp(x) == 0:
        raise ValueError(f"{name} is constant: correlations with it are undefined")
    return x


def _sample_torch(module: Any, x: np.ndarray, order: int) -> np.ndarray:
    """``[points, dim]`` from a torch encoding; order 1 of non-table encodings by autograd."""
    import torch

    from posenc.torch.encodings import TableEncoding

    p = next(module.parameters(), None)
    xt = torch.as_tensor(x, dtype=p.dtype if p is not None else torch.get_default_dtype(),
                         device=p.device if p is not None else None)
    if isinstance(module, TableEncoding):
        with torch.no_grad():
            return module(xt, order=order).cpu().numpy().astype(np.float64)
    if order == 0:
        with torch.no_grad():
            return module(xt).cpu().numpy().astype(np.float64)
    if order != 1:
        raise ValueError(f"order {order} needs a table encoding; {type(module).__name__} supports 0 and 1")
    with torch.enable_grad():
        xt.requires_grad_(True)
        out = module(xt)  # [points, dim]
        # Row p depends on x_p only, so the gradient of column d's sum is dh_d/dx at every point.
        cols = [torch.autograd.grad(out[:, d].sum(), xt, retain_graph=True)[0] for d in range(out.shape[-1])]
    return torch.stack(cols, dim=-1).cpu().numpy().astype(np.float64)


def _sample_one(encoding: Any, x: np.ndarray, order: int) -> list[np.ndarray]:
    # Encodings expose .dim; a model without it is read through the table encodings inside it.
    if _is_torch_module(encoding) and hasattr(encoding, "dim"):
        return [_sample_torch(encoding, x, order)]
    return [interpolate_reference(x, t.values, t.slopes, t.x_min, t.x_max, order, curvatures=t.curvatures, form=t.form)
            for t in as_tables(encoding)]


def sample(encoding_or_tables: Any, x_grid: Any, order: int = 0) -> np.ndarray:
    """Samples h(x) (order 0) or g(x) = dh/dx (order 1) of one or several encodings on a grid.

    Args:
      encoding_or_tables: one encoding in any form listed in the module docstring, or a list of
        them (the layers). A torch model that is not itself an encoding contributes every table
        encoding inside it.
      x_grid: ``[points]`` positions, inside every encoding's range (unit of x).
      order: derivative order w.r.t. x.

    Returns:
      ``[layers, points, dim]`` float64.

    Raises:
      ValueError: bad grid (not 1-D, NaN, out of range), layers of different dim, bad tables.
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be an int >= 0, got {order!r}")
    x = _check_x(x_grid, "x_grid", min_points=1, varying=False)
    items = encoding_or_tables if isinstance(encoding_or_tables, list) else [encoding_or_tables]
    if not items:
        raise ValueError("no encoding given (empty list)")
    layers = [h for e in items for h in _sample_one(e, x, order)]
    dims = {h.shape[-1] for h in layers}
    if len(dims) != 1:
        raise ValueError(f"layers have different dims {sorted(dims)}: sample them separately")
    return np.stack(layers)


def polynomial_embedding(x: Any, normalise: bool = True) -> np.ndarray:
    """The paper's reference embedding {x, x², x³}, ``[1, points, 3]``.

    Args:
      x: ``[points]`` grid.
      normalise: map x to x̂ = (x - min)/(max - min) in [0, 1] first (default). On x̂ the
        baseline's metrics match Table 3 of the paper (non-linearity ≈ .08, non-monotonicity 0,
        diversity ≈ .09), which is how the paper must have computed it.
    """
    x = _check_x(x, min_points=2)
    if normalise:
        x = (x - x.min()) / np.ptp(x)
    return np.stack([x, x**2, x**3], axis=-1)[None]


# --- correlations -----------------------------------------------------------------------------


def _as_embedding(emb: Any, name: str = "embedding") -> np.ndarray:
    """``[layers, points, dim]`` float64 from ``[points, dim]`` or ``[layers, points, dim]``."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim == 2:
        e = e[None]
    if e.ndim != 3:
        raise ValueError(f"{name} must be [points, dim] or [layers, points, dim], got shape {e.shape}")
    if 0 in e.shape:
        raise ValueError(f"{name} is empty: shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{name} contains NaN or inf")
    return e


def _check_not_constant(e: np.ndarray, name: str) -> None:
    """Raises naming the constant dimensions of ``e`` ``[layers, points, dim]``."""
    const = e.std(axis=1) <= CONSTANT_RTOL * np.abs(e).max(axis=1)  # [layers, dim]
    if const.any():
        where = ", ".join(f"layer {i} dim {j}" for i, j in zip(*np.nonzero(const)))
        raise ValueError(
            f"{name} has constant dimensions ({where}): their correlations are 0/0. "
            "Drop them (e.g. emb[..., keep]) before computing correlation metrics."
        )


def _unit_columns(a: np.ndarray) -> np.ndarray:
    """Centres ``a`` ``[..., points, m]`` over points and scales each column to unit norm."""
    c = a - a.mean(axis=-2, keepdims=True)
    return c / np.linalg.norm(c, axis=-2, keepdims=True)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[..., m, n]`` Pearson correlations between the columns of ``a`` ``[..., p, m]`` and ``b`` ``[..., p, n]``."""
    return np.clip(np.swapaxes(_unit_columns(a), -1, -2) @ _unit_columns(b), -1.0, 1.0)


def _prepare(emb: Any, x: Any | None, name: str = "embedding") -> tuple[np.ndarray, np.ndarray | None]:
    e = _as_embedding(emb, name)
    if x is not None:
        x = _check_x(x)
        if x.size != e.shape[1]:
            raise ValueError(f"x has {x.size} points but {name} has {e.shape[1]}: grids do not match")
    elif e.shape[1] < 3:
        raise ValueError(f"{name} needs at least 3 points, got {e.shape[1]}")
    _check_not_constant(e, name)
    return e, x


def non_linearity(emb: Any, x: Any) -> float:
    """1 - mean over layers and dims of ρ_Pearson(h_ij, x)²: 0 for an embedding linear in x.

    Args:
      emb: ``[points, dim]`` or ``[layers, points, dim]`` sampled on ``x``.
      x: ``[points]`` grid.
    """
    e, x = _prepare(emb, x)
    return float(1.0 - np.mean(_pearson(e, x[:, None]) ** 2))


def non_monotonicity(emb: Any, x: Any) -> float:
    """1 - mean over layers and dims of ρ_Spearman(h_ij, x)²: 0 for a monotone embedding.

    Spearman's ρ is Pearson's ρ of the ranks (ties get their average rank).
    """
    e, x = _prepare(emb, x)
    ranks = rankdata(e, axis=1)
    return float(1.0 - np.mean(_pearson(ranks, rankdata(x)[:, None]) ** 2))


def diversity(emb: Any) -> float:
    """1 - mean over layers and dimension pairs j < k of ρ_Pearson(h_ij, h_ik)².

    0 when all dimensions are affine copies of one another; needs dim >= 2.
    """
    e, _ = _prepare(emb, None)
    s = e.shape[-1]
    if s < 2:
        raise ValueError("diversity needs at least 2 dimensions")
    r2 = _pearson(e, e) ** 2  # [layers, s, s]
    j, k = np.triu_indices(s, k=1)
    return float(1.0 - r2[:, j, k].mean())


def similarity(emb_a: Any, emb_b: Any) -> float:
    """Cross-task similarity (1/(l s_a s_b)) Σ_i Σ_j Σ_k ρ_Pearson(h^a_ij, h^b_ik)².

    Both embeddings must be sampled on the same grid with the same number of layers. It is
    symmetric and, by Cauchy-Schwarz, similarity(a, b) <= sqrt(similarity(a, a) similarity(b, b)).
    Note that similarity(a, a) is not 1 (it is 1 only if all of a's dims are perfectly correlated)
    and is *not* always the largest entry of a's row: a task whose dims are all alike can score
    higher with a than a itself does.
    """
    a, _ = _prepare(emb_a, None, "emb_a")
    b, _ = _prepare(emb_b, None, "emb_b")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"emb_a [layers, points] = {a.shape[:2]} and emb_b {b.shape[:2]} differ: "
                         "sample both on the same grid with the same number of layers")
    return float(np.mean(_pearson(a, b) ** 2))


def smoothness_loss(values: Any) -> float:
    """L_smooth = Σ_i ||h_{i+1} - h_i|| / Σ_i ||h_i|| (i = 1 .. n-1): ``posenc.torch.smoothness_loss`` in numpy.

    Args:
      values: ``[n_bin, dim]`` value table.

    Raises:
      ValueError: wrong shape, NaN, or the first n-1 rows all zero (0/0).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"values must be [n_bin >= 2, dim], got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf")
    den = np.linalg.norm(v[:-1], axis=1).sum()
    if den == 0.0:
        raise ValueError("smoothness_loss is undefined for an all-zero table (0/0)")
    return float(np.linalg.norm(np.diff(v, axis=0), axis=1).sum() / den)


def smoothness(tables: Any) -> float:
    """1 - L_smooth of the value tables, averaged over layers (= 1 - L_smooth for one layer).

    Averaging (not summing, as the training loss does) keeps the number in the same range for
    any number of layers. Scale-free; 1 for a constant non-zero table.

    Args:
      tables: a value array ``[n_bin, dim]`` or ``[layers, n_bin, dim]`` (e.g. a sampled
        embedding, for baselines), or anything :func:`as_tables` accepts.
    """
    if isinstance(tables, np.ndarray) and tables.ndim in (2, 3):
        layers = list(tables[None] if tables.ndim == 2 else tables)
    else:
        layers = [t.values for t in as_tables(tables)]
    return float(1.0 - np.mean([smoothness_loss(v) for v in layers]))


# --- the derivative, where the embedding changes ----------------------------------------------


def normalised_derivative(g: Any) -> np.ndarray:
    """``ĝ(x) = |g(x)| / std(g)``, per layer (Section 4.4.1 of the paper).

    The paper writes abs(g(x)) / std(g(x)) without saying over what. Our reading, chosen so that
    ĝ is free of the units of x and h, does not grow with the embedding size, and stays finite
    for a flat profile:

    * ``|g_i(x)|`` is the root mean square over the s dimensions of layer i,
      sqrt((1/s) Σ_j g_ij(x)²), a length per point;
    * std(g_i) is the standard deviation of all entries g_ij(x) of layer i, over every grid
      point and dimension together (one number per layer).

    When g has mean ~0, ĝ² then averages to ~1 over the grid: a flat profile sits near 1, and a
    profile that concentrates at some x is large there and near 0 elsewhere.

    Args:
      g: ``[points, dim]`` or ``[layers, points, dim]`` derivatives, e.g. ``sample(enc, x, order=1)``.

    Returns:
      ``[layers, points]``.

    Raises:
      ValueError: NaN, bad shape, or a layer whose derivative is identically zero.
    """
    g = _as_embedding(g, "g")
    rms = np.sqrt(np.mean(g**2, axis=-1))  # [layers, points]
    std = g.reshape(g.shape[0], -1).std(axis=1)  # [layers]
    if np.any(std == 0.0):
        raise ValueError(f"g is constant in layers {np.nonzero(std == 0.0)[0].tolist()}: ĝ is 0/0")
    return rms / std[:, None]


def bin_mean_derivative(encoding: Any) -> tuple[np.ndarray, np.ndarray]:
    """The derivative averaged over each bin, (h_{i+1} - h_i) / delta, from the value tables alone.

    Why: L_smooth sees only the values at the centres. Between two centres a Hermite encoding can
    still bulge through its slopes, and those bulges (which average to zero over the bin) can
    dominate g(x) where the values are flat. The bin mean of g removes them exactly, since
    (1/delta) ∫ g dx over [c_i, c_{i+1}] = (h_{i+1} - h_i) / delta, and shows the trend that the
    regularizer acts on. Feed it to :func:`normalised_derivative` like g.

    Args:
      encoding: anything :func:`as_tables` accepts; every layer must share one grid.

    Returns:
      ``(x_mid [n_bin - 1], g_bar [layers, n_bin - 1, dim])``: bin midpoints and mean derivatives.
    """
    tables = as_tables(encoding)
    grids = {(t.values.shape[0], t.x_min, t.x_max) for t in tables}
    if len(grids) != 1:
        raise ValueError(f"layers have different grids (n_bin, x_min, x_max) {sorted(grids)}")
    n_bin, lo, hi = grids.pop()
    centres = np.linspace(lo, hi, n_bin)
    delta = (hi - lo) / (n_bin - 1)
    g_bar = np.stack([np.diff(t.values, axis=0) / delta for t in tables])
    return 0.5 * (centres[1:] + centres[:-1]), g_bar


def derivative_centroid(x: Any, ghat: Any) -> np.ndarray:
    """Where the embedding changes: the ĝ-weighted mean of x̂ = (x - min)/(max - min), in [0, 1].

    0.5 for a flat ĝ on an even grid; small when ĝ concentrates at short x. Trapezoid rule, so
    uneven grids are weighted correctly.

    Args:
      x: ``[points]`` grid.
      ghat: ``[points]`` or ``[layers, points]`` from :func:`normalised_derivative`.

    Returns:
      ``[]`` or ``[layers]`` array.
    """
    x = _check_x(x)
    w = np.asarray(ghat, dtype=np.float64)
    if w.shape[-1] != x.size:
        raise ValueError(f"ghat has {w.shape[-1]} points but x has {x.size}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("ghat must be finite and >= 0")
    xh = (x - x.min()) / np.ptp(x)
    return _trapezoid(w * xh, x) / _trapezoid(w, x)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """∫ y dx over the last axis by the trapezoid rule (numpy < 2 has no np.trapezoid)."""
    return np.sum(0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(x), axis=-1)


# --- PCA --------------------------------------------------------------------------------------


def pca_2d(embedding: Any) -> tuple[np.ndarray, np.ndarray]:
    """Projects the embedding curve on its first two principal components.

    Centres the points over the grid and takes the SVD. Signs are fixed so that each component's
    largest-magnitude coordinate is positive (deterministic output).

    Args:
      embedding: ``[points, dim]`` or ``[1, points, dim]`` (one layer).

    Returns:
      ``(coords [points, 2], explained [2])``: the coordinates and the fraction of the total
      variance each component explains.
    """
    e = _as_embedding(embedding)
    if e.shape[0] != 1:
        raise ValueError(f"pca_2d takes one layer, got {e.shape[0]}: pass emb[i]")
    e = e[0]
    if e.shape[0] < 2 or e.shape[1] < 2:
        raise ValueError(f"pca_2d needs >= 2 points and >= 2 dims, got {e.shape}")
    c = e - e.mean(axis=0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    total = np.sum(s**2)
    if total == 0.0:
        raise ValueError("the embedding is the same point everywhere: no principal components")
    coords = u[:, :2] * s[:2]  # [points, 2]
    peak = coords[np.abs(coords).argmax(axis=0), [0, 1]]  # [2]
    coords *= np.where(peak < 0, -1.0, 1.0)
    return coords, s[:2] ** 2 / total


# --- tables for the book ----------------------------------------------------------------------


def _common_grid(tables_by_task: Mapping[str, list[Tables]], n_points: int) -> np.ndarray:
    ranges = {name: {(t.x_min, t.x_max) for t in ts} for name, ts in tables_by_task.items()}
    distinct = set().union(*ranges.values())
    if len(distinct) != 1:
        raise ValueError(f"encodings cover different ranges {ranges}: metrics compare them on one grid")
    lo, hi = distinct.pop()
    return np.linspace(lo, hi, n_points)


def metrics(encoding: Any, x: Any) -> dict[str, float]:
    """The four Table-3 metrics of one (possibly multi-layer) table encoding on grid ``x``."""
    emb = sample(encoding, x)
    return {
        "non_linearity": non_linearity(emb, x),
        "non_monotonicity": non_monotonicity(emb, x),
        "diversity": diversity(emb),
        "smoothness": smoothness(encoding),
    }


def metrics_table(
    encodings: Mapping[str, Any], n_points: int = 512, baseline: bool = True
) -> dict[str, dict[str, float]]:
    """Table 3: the metrics of each task's learned encoding, plus the polynomial baseline.

    Args:
      encodings: task name -> encoding with tables (a list of layers allowed); all must cover the
        same range, and are sampled on ``n_points`` evenly spaced points over it.
      n_points: grid size for the correlation metrics.
      baseline: add a ``"polynomial"`` column: {x̂, x̂², x̂³} on the same grid, its smoothness
        measured on a grid of as many points as the first task's table has bins (so it is
        compared at the same resolution as the learned tables).

    Returns:
      ``{task: {metric: value}}`` with the metrics in :data:`METRICS`; ``pandas.DataFrame(result)``
      is Table 3's layout (metrics as rows, tasks as columns).
    """
    if not encodings:
        raise ValueError("no encodings given")
    tables = {name: as_tables(enc) for name, enc in encodings.items()}
    x = _common_grid(tables, n_points)
    out = {name: metrics(ts, x) for name, ts in tables.items()}
    if baseline:
        if "polynomial" in out:
            raise ValueError("a task is named 'polynomial', which is the baseline's column")
        poly = polynomial_embedding(x)
        n_bin = next(iter(tables.values()))[0].values.shape[0]
        out["polynomial"] = {
            "non_linearity": non_linearity(poly, x),
            "non_monotonicity": non_monotonicity(poly, x),
            "diversity": diversity(poly),
            "smoothness": smoothness(polynomial_embedding(np.linspace(x[0], x[-1], n_bin))),
        }
    return out


def similarity_matrix(encodings: Mapping[str, Any], n_points: int = 512) -> tuple[list[str], np.ndarray]:
    """Fig. 4: pairwise :func:`similarity` of the tasks' encodings on one common grid.

    Returns:
      ``(task names, [tasks, tasks] matrix)``.
    """
    if not encodings:
        raise ValueError("no encodings given")
    tables = {name: as_tables(enc) for name, enc in encodings.items()}
    x = _common_grid(tables, n_points)
    embs = {name: sample(ts, x) for name, ts in tables.items()}
    names = list(embs)
    mat = np.array([[similarity(embs[a], embs[b]) for b in names] for a in names])
    return names, mat


def load_results(
    pattern: str, part: Part = "learned", key: Callable[[str], str] | None = None
) -> dict[str, list[Tables]]:
    """Tables of every results file matching a glob, keyed by task.

    Examples:
      ``load_results("tables/*/encoding_tables.npz")`` -> ``{"U0": [...], ...}`` for files
      ``tables/U0/encoding_tables.npz``, ... (the default key is the name of the file's directory).

      ``load_results("results/runs/qm9-*/egnn/smooth/seed1/encoding_tables.npz", part="change",
      key=lambda p: Path(p).parts[-5].removeprefix("qm9-"))`` -> what training added, per target.

    Args:
      pattern: a glob (``glob.glob`` syntax), matched in sorted order.
      part: ``"learned"``, ``"initial"`` or ``"change"``, as in :func:`load_tables`.
      key: maps a matched path to the task name (default: the name of its directory).

    Returns:
      ``{task: [Tables per layer]}`` in the sorted order of the paths; an empty dict when nothing
      matches.

    Raises:
      ValueError: two files get the same key (pass ``key`` to tell them apart), or one of
        :func:`load_tables`'s errors.
    """
    key = key or (lambda p: os.path.basename(os.path.dirname(p)))
    out: dict[str, list[Tables]] = {}
    paths: dict[str, str] = {}
    for path in sorted(glob.glob(pattern)):
        name = key(path)
        if name in paths:
            raise ValueError(f"{paths[name]} and {path} both have the key {name!r}: pass key= to tell them apart")
        paths[name] = path
        out[name] = load_tables(path, part)
    return out


__all__ = [
    "METRICS",
    "PARTS",
    "Part",
    "Tables",
    "as_tables",
    "bin_mean_derivative",
    "derivative_centroid",
    "diversity",
    "load_results",
    "load_tables",
    "metrics",
    "metrics_table",
    "non_linearity",
    "non_monotonicity",
    "normalised_derivative",
    "pca_2d",
    "polynomial_embedding",
    "sample",
    "similarity",
    "similarity_matrix",
    "smoothness",
    "smoothness_loss",
    "tables_from_haiku",
    "tables_from_torch",
]
