"""Default distance encodings for the backbones, and the distance range they cover (numpy).

The paper's rows "backbone", "+MLP", "+PosEnc" and "+Smooth" are one model with a different
distance encoding (and lambda). The backbones take the encoding as a name plus keyword arguments;
this module holds the defaults both backends use, so a name alone gives a sensible model:

=========  ==================================================================================
raw        EGNN's own scalar, the squared distance ``d^2`` (``power=2``), a 1-vector
mlp        the paper's 2-layer ReLU MLP of d, 32 outputs, 64 hidden
gaussian   50 Gaussians on ``[0, x_max]`` (SchNet-style width: gamma = 0.1 / spacing^2)
bessel     16 radial Bessel functions with DimeNet's envelope, cutoff ``x_max``
linear     64 bins x 32 dims on ``[0, x_max]``, sinusoidal init, linear extension outside
hermite    64 bins x 32 dims on ``[0, x_max]``, sinusoidal init, linear extension outside
bspline    64 bins x 32 dims on ``[0, x_max]``, sinusoidal init, linear extension outside (C2)
hermite5   64 bins x 32 dims on ``[0, x_max]``, sinusoidal init, linear extension outside
=========  ==================================================================================

The range: the graphs are fully connected inside a molecule, so the encoding must cover the
longest distance of the data set, not just a bonding cutoff. :func:`distance_range` takes the
longest distance in the training set, adds a 0.5 Angstrom margin and rounds up to 0.5 Angstrom
(measured: rMD17 training frames, ethanol 4.3 -> 5.0, aspirin 8.6 -> 9.5, azobenzene
11.6 -> 12.5; QM9's 100,000 training molecules of the EGNN split, 12.0 -> 13.0). The range is
saved with each run (``result.json``, ``encoding_tables.npz``). ``out_of_range="extrapolate"`` keeps
the table encodings C1 (the B-spline C2) and finite for the rare longer distance of a test molecule, instead of
stopping an evaluation.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Iterator

import numpy as np

from posenc.data.molecules import Molecules
from posenc.spline import TABLE_FORMS

#: The learned-table encodings (``posenc.spline.TABLE_FORMS``): the ones with ``n_bin`` and
#: ``init``, a smoothness loss, and tables that ``freeze_tables`` / ``table_lr_scale`` act on.
TABLE_ENCODINGS: tuple[str, ...] = tuple(TABLE_FORMS)
#: The parameters a table encoding may have (every form has ``values``).
TABLE_PARAMETERS = ("values", "slopes", "curvatures")
#: Encodings laid out over ``[x_min, x_max]`` (the tables and the Gaussian centres).
RANGED_ENCODINGS: tuple[str, ...] = (*TABLE_ENCODINGS, "gaussian")

DISTANCE_ENCODING_DEFAULTS: dict[str, dict[str, Any]] = {
    "raw": {"power": 2, "scale": 1.0},
    "mlp": {"dim": 32, "hidden": 64},
    "gaussian": {"n_centres": 50, "x_min": 0.0},
    "bessel": {"n_basis": 16},
    "linear": {"n_bin": 64, "dim": 32, "x_min": 0.0, "init": "sinusoidal", "out_of_range": "extrapolate"},
    "hermite": {"n_bin": 64, "dim": 32, "x_min": 0.0, "init": "sinusoidal", "out_of_range": "extrapolate"},
    "bspline": {"n_bin": 64, "dim": 32, "x_min": 0.0, "init": "sinusoidal", "out_of_range": "extrapolate"},
    "hermite5": {"n_bin": 64, "dim": 32, "x_min": 0.0, "init": "sinusoidal", "out_of_range": "extrapolate"},
}

#: Margin (Angstrom) added to the longest training distance by :func:`distance_range`.
RANGE_MARGIN = 0.5


def distance_encoding_kwargs(name: str, x_max: float, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of encoding ``name`` for distances up to ``x_max`` Angstrom.

    Args:
      name: one of ``raw | mlp | gaussian | bessel | linear | hermite | bspline | hermite5``.
      x_max: upper end of the range (table encodings, Gaussians) or the Bessel cutoff.
      overrides: entries that replace the defaults (e.g. ``{"n_bin": 32, "init": "normal"}``).

    Returns:
      A new dict, ready for ``make_encoding(name, **kwargs)`` of either backend.
    """
    if name not in DISTANCE_ENCODING_DEFAULTS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {sorted(DISTANCE_ENCODING_DEFAULTS)}")
    if not x_max > 0:
        raise ValueError(f"x_max must be > 0, got {x_max}")
    kwargs = dict(DISTANCE_ENCODING_DEFAULTS[name])
    if name == "gaussian" or name in TABLE_ENCODINGS:
        kwargs["x_max"] = float(x_max)
    elif name == "bessel":
        kwargs["cutoff"] = float(x_max)
    kwargs.update(overrides or {})
    return kwargs


def _squared_pair_distances(mols: Molecules) -> Iterator[np.ndarray]:
    """``[m, n(n-1)/2]`` squared distances of every pair inside the molecules of ``mols``
    (Angstrom^2), molecules of one size at a time, in chunks of 1,024 (so memory stays bounded)."""
    for n in np.unique(mols.n_atoms):
        if n < 2:
            continue
        same_size = np.flatnonzero(mols.n_atoms == n)
        iu = np.triu_indices(int(n), k=1)
        for sel in np.array_split(same_size, -(-same_size.size // 1024)):
            pos = mols.pos[mols.atom_index(sel)].reshape(sel.size, n, 3)  # [m, n, 3]
            yield np.sum((pos[:, iu[0]] - pos[:, iu[1]]) ** 2, axis=-1)  # [m, pairs]


def distance_extent(mols: Molecules) -> tuple[float, float]:
    """The shortest and the longest interatomic distance inside any molecule of ``mols`` (Angstrom).

    Raises:
      ValueError: no molecule has two atoms.
    """
    shortest, longest = np.inf, 0.0
    for sq in _squared_pair_distances(mols):
        shortest, longest = min(shortest, float(sq.min())), max(longest, float(sq.max()))
    shortest, longest = float(np.sqrt(shortest)), float(np.sqrt(longest))
    if not np.isfinite(shortest):
        raise ValueError("no molecule has two atoms: there is no interatomic distance")
    return shortest, longest


def encoding_init_bound(enc_dim: int) -> float:
    """The bound b of ``U(-b, b)`` for the edge layer's weights that read the encoding: ``sqrt(3 / D)``.

    Initialised with the layer's joint fan-in ``2H + D`` (torch's default), EGNN's one raw
    feature ``d^2`` starts with weights of about 0.09 among 128 inputs of unit size: the energy
    barely depends on the geometry, the forces start at zero, and the run sits on the plateau of
    predicting F = 0 for tens of epochs (measured on MD17 ethanol at lr 1e-3: 30 epochs, with
    this bound 3). Weights of variance 1/D give the encoded distances, of any width D, a
    contribution of unit size to each message, as the atom features have. Both backends' EGNN
    use it.
    """
    return math.sqrt(3.0 / enc_dim)


#: Encodings that read the distance itself and so get ``scale = 1 / distance_scale(train)``.
SCALED_ENCODINGS = ("raw", "mlp")


def distance_scale(mols: Molecules) -> float:
    """The root-mean-square interatomic distance inside the molecules of ``mols`` (Angstrom).

    EGNN's raw feature ``d^2`` grows with molecular size (its mean is 5.4 A^2 for ethanol, 18.6
    for aspirin, ~150 for QM9); divided by this statistic squared it has mean one for any data
    set. Training computes it on the training set and saves it with the model (a buffer of the
    encoding), so inference and the ASE calculator use the same number.

    Raises:
      ValueError: no molecule has two atoms.
    """
    total, count = 0.0, 0
    for sq in _squared_pair_distances(mols):
        total, count = total + float(sq.sum()), count + sq.size
    if count == 0:
        raise ValueError("no molecule has two atoms: there is no interatomic distance")
    return float(np.sqrt(total / count))


def max_distance(mols: Molecules) -> float:
    """The longest interatomic distance inside any molecule of ``mols`` (Angstrom; 0 without pairs)."""
    try:
        return distance_extent(mols)[1]
    except ValueError:
        return 0.0


def distance_range(mols: Molecules) -> tuple[float, float]:
    """``(0, x_max)``: the longest distance plus :data:`RANGE_MARGIN`, rounded up to 0.5 Angstrom."""
    return 0.0, float(np.ceil((max_distance(mols) + RANGE_MARGIN) * 2.0) / 2.0)
