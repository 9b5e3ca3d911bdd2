"""posenc.table_change: how far tables moved, where, and the two-group similarity test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from posenc.interpret import Tables
from posenc.table_change import (end_row_ratios, group_test, mean_pair_similarity, movement, relative_change,
                                 row_change_profile, same_tables, shared_start)


def table(values, slopes=None):
    return Tables(np.asarray(values, dtype=float), None if slopes is None else np.asarray(slopes, dtype=float),
                  0.0, 1.0)


def test_relative_change_is_the_frobenius_ratio():
    start = np.array([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    assert relative_change(np.full((2, 2), 0.5), start) == pytest.approx(1.0 / 5.0)
    with pytest.raises(ValueError, match="shape"):
        relative_change(np.zeros(3), start)
    with pytest.raises(ValueError, match="zero"):
        relative_change(start, np.zeros((2, 2)))


def test_movement_averages_layers_and_skips_missing_slopes():
    start = [table(np.eye(2) * 2, np.eye(2)), table(np.eye(2) * 2)]  # values norm 2*sqrt(2)
    change = [table(np.eye(2) * 0.2, np.eye(2) * 0.5), table(np.eye(2) * 0.6)]
    moved = movement(change, start)
    assert moved["values moved"] == pytest.approx((0.1 + 0.3) / 2)
    assert moved["slopes moved"] == pytest.approx(0.5)  # the one layer with slopes
    assert np.isnan(movement([table(np.eye(2))], [table(np.eye(2))])["slopes moved"])
    with pytest.raises(ValueError, match="same number"):
        movement(change, start[:1])


def test_row_change_profile_and_end_ratios_find_the_moved_rows():
    start = [table(np.ones((5, 2)))]  # every start row has norm sqrt(2)
    delta = np.zeros((5, 2))
    delta[0] = [3.0, 4.0]  # norm 5
    delta[1:4] = [0.6, 0.8]  # norm 1
    change = [table(delta)]
    np.testing.assert_allclose(row_change_profile(change, start), np.linalg.norm(delta, axis=1) / np.sqrt(2))
    assert end_row_ratios(change) == pytest.approx((5.0, 0.0))
    with pytest.raises(ValueError, match="median"):
        end_row_ratios([table(np.zeros((5, 2)))])


def test_same_tables_and_shared_start():
    a = [table(np.eye(3), np.ones((3, 3)))]
    b = [table(np.eye(3), np.ones((3, 3)))]
    c = [table(np.eye(3), np.zeros((3, 3)))]
    assert same_tables(a, b) and not same_tables(a, c) and not same_tables(a, a + b)
    assert not same_tables(a, [table(np.eye(3))])  # slopes against none
    assert shared_start({"U0": a, "H": b}) and not shared_start({"U0": a, "H": c})
    with pytest.raises(ValueError, match="no targets"):
        shared_start({})


def similarity(groups_within: float, between: float, names: list[str], group_of: dict[str, int]) -> np.ndarray:
    n = len(names)
    m = np.empty((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        m[i, j] = 1.0 if i == j else groups_within if group_of[names[i]] == group_of[names[j]] else between
    return m


def test_group_test_separates_clean_groups_and_counts_the_splits():
    names = ["a", "b", "c", "x", "y", "z"]
    mat = similarity(0.9, 0.2, names, {"a": 0, "b": 0, "c": 0, "x": 1, "y": 1, "z": 1})
    test = group_test(names, mat, {"one": ["a", "b", "c"], "two": ["x", "y", "z", "missing"]})
    assert test is not None
    assert test.within_mean == pytest.approx(0.9) and test.between_mean == pytest.approx(0.2)
    assert test.within_min > test.between_max
    # C(6, 3) = 20 splits; only the true split and its mirror image reach the observed difference
    assert test.n_splits == 20 and test.n_as_high == 2 and test.p_value == pytest.approx(0.1)


def test_group_test_without_structure_is_not_significant():
    names = ["a", "b", "c", "d"]
    mat = np.full((4, 4), 0.5) + 0.5 * np.eye(4)
    test = group_test(names, mat, {"one": ["a", "b"], "two": ["c", "d"]})
    assert test is not None and test.difference == pytest.approx(0.0) and test.p_value == 1.0


def test_group_test_needs_pairs_and_valid_input():
    names = ["a", "b", "c"]
    mat = np.eye(3)
    assert group_test(names, mat, {"one": ["a"], "two": ["b"]}) is None  # no pair inside a group
    with pytest.raises(ValueError, match="two groups"):
        group_test(names, mat, {"one": ["a"]})
    with pytest.raises(ValueError, match="shape"):
        group_test(names, np.eye(2), {"one": ["a"], "two": ["b"]})
    with pytest.raises(ValueError, match="both groups"):
        group_test(names, mat, {"one": ["a", "b"], "two": ["b", "c"]})


def test_mean_pair_similarity_within_and_between():
    names = ["a", "b", "c"]
    mat = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert mean_pair_similarity(names, mat, ["a", "b", "c"]) == pytest.approx(0.4)
    assert mean_pair_similarity(names, mat, ["a"], ["b", "c", "zz"]) == pytest.approx(0.3)
    assert np.isnan(mean_pair_similarity(names, mat, ["a", "zz"]))
