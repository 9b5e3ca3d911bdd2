"""Tests of posenc.baselines: the composition (atom-count) baseline."""

import dataclasses

import numpy as np
import pytest

from posenc.baselines import composition_counts, composition_mae, fit_composition
from molecule_factory import random_molecules


def _additive(mols, per_element: dict[int, float], offset: float, noise: float = 0.0, seed: int = 0):
    """The molecules relabelled with an exactly additive target (plus optional noise)."""
    counts = composition_counts(mols, sorted(per_element))
    y = offset + counts @ np.array([per_element[e] for e in sorted(per_element)])
    y = y + noise * np.random.default_rng(seed).normal(size=y.shape)
    return dataclasses.replace(mols, targets=y[:, None], target_names=("U0",), target_units=("eV",))


def test_counts_per_element():
    mols = random_molecules([3, 5, 2], seed=1)
    counts = composition_counts(mols, [1, 6, 7, 8])
    assert counts.shape == (3, 4)
    np.testing.assert_array_equal(counts.sum(axis=1), [3, 5, 2])
    first = mols.z[:3]
    np.testing.assert_array_equal(counts[0], [np.sum(first == e) for e in (1, 6, 7, 8)])


def test_an_additive_target_is_recovered_exactly():
    per_element = {1: -0.5, 6: -38.0, 7: -54.6, 8: -75.1}
    train = _additive(random_molecules([4, 6, 9, 5, 7, 8, 3, 6, 9, 5, 4, 7], seed=2), per_element, 1.5)
    test = _additive(random_molecules([5, 8, 6], seed=3), per_element, 1.5)
    model = fit_composition(train, "U0")
    assert model.intercept == pytest.approx(1.5, abs=1e-9)
    np.testing.assert_allclose(model.coef, [per_element[e] for e in model.elements], atol=1e-9)
    assert composition_mae(train, test, "U0") == pytest.approx(0.0, abs=1e-9)
    assert model.unit == "eV"


def test_noise_gives_a_positive_error():
    per_element = {1: 1.0, 6: 2.0, 7: 3.0, 8: 4.0}
    train = _additive(random_molecules([5] * 30, seed=4), per_element, 0.0, noise=0.1, seed=1)
    test = _additive(random_molecules([5] * 10, seed=5), per_element, 0.0, noise=0.1, seed=2)
    assert 0.01 < composition_mae(train, test) < 0.3


def test_bad_input_is_named():
    train = random_molecules([4, 5, 6, 7, 8, 6, 5], seed=6)
    only_h = dataclasses.replace(train, z=np.ones_like(train.z))
    with pytest.raises(ValueError, match=r"elements \[6, 7, 8\]|elements \[.*\] that the baseline"):
        fit_composition(only_h).predict(train)
    with pytest.raises(ValueError, match="unknown target 'mu'"):
        fit_composition(train, "mu")
    with pytest.raises(ValueError, match="cannot fit"):
        fit_composition(random_molecules([4, 5], seed=7))
