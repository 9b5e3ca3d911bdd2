"""What training changed in learned tables: how far they moved, where, and whether targets group.

A run that saves its tables before and after training (``posenc.interpret.load_tables`` with
``part="initial"``, ``"learned"`` or ``"change"``) gives, per target, one :class:`Tables` per
layer. These functions summarise the change ``learned - initial`` and compare it across targets;
chapter 8 reads the committed QM9 runs with them. Backend-neutral: numpy only.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from posenc.interpret import Tables


def relative_change(change: np.ndarray, start: np.ndarray) -> float:
    """``‖change‖_F / ‖start‖_F`` of two same-shape arrays.

    Raises:
      ValueError: different shapes, or a zero ``start`` (nothing to compare with).
    """
    change, start = np.asarray(change, dtype=np.float64), np.asarray(start, dtype=np.float64)
    if change.shape != start.shape:
        raise ValueError(f"change {change.shape} and start {start.shape} differ in shape")
    norm = float(np.linalg.norm(start))
    if norm == 0.0:
        raise ValueError("the start table is zero: its relative change is undefined")
    return float(np.linalg.norm(change)) / norm


def _check_layers(change: Sequence[Tables], start: Sequence[Tables]) -> None:
    if not change or len(change) != len(start):
        raise ValueError(f"need the same number (>= 1) of change and start layers, got {len(change)} and {len(start)}")


def movement(change: Sequence[Tables], start: Sequence[Tables]) -> dict[str, float]:
    """How far training moved a model's tables, as a fraction of their starting size.

    Args:
      change: per layer, the tables ``learned - initial``.
      start: per layer, the initial tables.

    Returns:
      ``{"values moved": ..., "slopes moved": ...}``: :func:`relative_change` of the value and
      slope tables, mean over the layers (slopes NaN for tables without slopes).
    """
    _check_layers(change, start)
    values = [relative_change(c.values, s.values) for c, s in zip(change, start)]
    slopes = [relative_change(c.slopes, s.slopes) for c, s in zip(change, start)
              if c.slopes is not None and s.slopes is not None]
    return {"values moved": float(np.mean(values)), "slopes moved": float(np.mean(slopes)) if slopes else np.nan}


def row_change_profile(change: Sequence[Tables], start: Sequence[Tables]) -> np.ndarray:
    """Where the value tables moved: ``[n_bin]``, each row's change over the RMS start row.

    Row i of layer l scores ``‖ΔV_l[i]‖ / sqrt(mean_j ‖V0_l[j]‖²)``; the result is the mean over
    the layers (1 means a row moved as far as a typical starting row is long).
    """
    _check_layers(change, start)
    per_layer = [np.linalg.norm(c.values, axis=1) / np.sqrt(np.mean(np.sum(np.square(s.values), axis=1)))
                 for c, s in zip(change, start)]
    return np.mean(per_layer, axis=0)


def end_row_ratios(change: Sequence[Tables]) -> tuple[float, float]:
    """How much the first and the last row moved, relative to the median row.

    Args:
      change: per layer, the tables ``learned - initial``.

    Returns:
      ``(first, last)``: the row-change norm (mean over layers) of row 0 and row ``n_bin - 1``,
      each divided by the median row's.

    Raises:
      ValueError: no layer, or a median row that did not move.
    """
    if not change:
        raise ValueError("need at least one layer")
    rows = np.mean([np.linalg.norm(c.values, axis=1) for c in change], axis=0)  # [n_bin]
    median = float(np.median(rows))
    if median == 0.0:
        raise ValueError("the median row did not move: the ratios are undefined")
    return float(rows[0] / median), float(rows[-1] / median)


def same_tables(a: Sequence[Tables], b: Sequence[Tables]) -> bool:
    """Whether two models' tables are identical, layer by layer (values, slopes, curvatures)."""
    if len(a) != len(b):
        return False

    def equal(x: np.ndarray | None, y: np.ndarray | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))

    return all(equal(s.values, t.values) and equal(s.slopes, t.slopes) and equal(s.curvatures, t.curvatures)
               for s, t in zip(a, b))


def shared_start(initial: Mapping[str, Sequence[Tables]]) -> bool:
    """Whether every target's initial tables are the same (a deterministic initialisation)."""
    tables = list(initial.values())
    if not tables:
        raise ValueError("no targets")
    return all(same_tables(tables[0], other) for other in tables[1:])


@dataclass(frozen=True)
class GroupTest:
    """Within-group against between-group similarity of two groups of targets.

    Attributes:
      within_mean, between_mean: mean similarity of the pairs inside a group / across the groups.
      difference: ``within_mean - between_mean``.
      within_min, between_max: the least similar pair inside a group, the most similar across.
      p_value: share of all splits of the same targets into groups of the same sizes whose
        difference is at least the observed one (an exact permutation test; the observed split
        is one of them, so p >= 1 / n_splits).
      n_splits: number of such splits; n_as_high: how many reach the observed difference.
    """

    within_mean: float
    between_mean: float
    difference: float
    within_min: float
    between_max: float
    p_value: float
    n_splits: int
    n_as_high: int


def mean_pair_similarity(names: Sequence[str], matrix: np.ndarray, a: Sequence[str],
                         b: Sequence[str] | None = None) -> float:
    """Mean of ``matrix`` over the pairs within ``a`` (or between ``a`` and ``b``); NaN without pairs.

    Args:
      names: the row (= column) names of the symmetric ``matrix`` ``[n, n]``.
      a, b: names; those not in ``names`` are skipped.
    """
    idx = {t: i for i, t in enumerate(names)}
    a = [t for t in a if t in idx]
    if b is None:
        values = [matrix[idx[x], idx[y]] for x, y in itertools.combinations(a, 2)]
    else:
        values = [matrix[idx[x], idx[y]] for x in a for y in b if y in idx]
    return float(np.mean(values)) if values else np.nan


def group_test(names: Sequence[str], matrix: np.ndarray, groups: Mapping[str, Sequence[str]]) -> GroupTest | None:
    """Do the targets of each of two groups resemble each other more than the other group's?

    Args:
      names: the row (= column) names of the symmetric similarity ``matrix`` ``[n, n]``.
      matrix: e.g. ``posenc.interpret.similarity_matrix(...)[1]``.
      groups: exactly two groups of names; names missing from ``names`` are left out.

    Returns:
      A :class:`GroupTest`, or None when the targets present leave no pair inside a group or no
      target in one of the groups.

    Raises:
      ValueError: not two groups, a matrix that does not match ``names``, or a name in both groups.
    """
    if len(groups) != 2:
        raise ValueError(f"need exactly two groups, got {len(groups)}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix has shape {matrix.shape}, names has {len(names)} entries")
    idx = {t: i for i, t in enumerate(names)}
    first, second = ([t for t in members if t in idx] for members in groups.values())
    if set(first) & set(second):
        raise ValueError(f"names in both groups: {sorted(set(first) & set(second))}")
    pool = first + second

    def split(members: Sequence[str]) -> tuple[list[float], list[float]]:
        others = [t for t in pool if t not in members]
        within = [matrix[idx[x], idx[y]] for grp in (members, others) for x, y in itertools.combinations(grp, 2)]
        between = [matrix[idx[x], idx[y]] for x in members for y in others]
        return within, between

    within, between = split(first)
    if not within or not between:
        return None
    observed = float(np.mean(within) - np.mean(between))
    null = np.array([np.mean(w) - np.mean(b)
                     for members in itertools.combinations(pool, len(first))
                     for w, b in [split(members)]])
    as_high = null >= observed - 1e-12  # the observed split itself counts, despite round-off
    return GroupTest(within_mean=float(np.mean(within)), between_mean=float(np.mean(between)), difference=observed,
                     within_min=float(np.min(within)), between_max=float(np.max(between)),
                     p_value=float(np.mean(as_high)), n_splits=len(null), n_as_high=int(np.sum(as_high)))
