"""posenc.encoding_defaults: the distance range and extent set from the data."""

import numpy as np
import pytest

from posenc.data.molecules import Molecules
from posenc.encoding_defaults import RANGE_MARGIN, distance_extent, distance_range, max_distance


def molecules(pos, n_atoms):
    return Molecules(z=np.ones(len(pos), dtype=int), pos=np.asarray(pos, dtype=float), n_atoms=np.asarray(n_atoms),
                     targets=np.zeros((len(n_atoms), 1)), target_names=("e",), target_units=("meV",))


def test_extent_and_range_from_every_pair_of_every_molecule():
    # a 2-atom molecule (distance 5), a lone atom, and a 3-atom one (1, 2, sqrt 5)
    mols = molecules([[0, 0, 0], [3, 4, 0], [9, 9, 9], [0, 0, 0], [1, 0, 0], [0, 2, 0]], [2, 1, 3])
    assert distance_extent(mols) == pytest.approx((1.0, 5.0))
    assert max_distance(mols) == pytest.approx(5.0)
    lo, hi = distance_range(mols)
    assert lo == 0.0 and hi == np.ceil((5.0 + RANGE_MARGIN) * 2) / 2 and hi >= 5.0 + RANGE_MARGIN


def test_no_pairs_is_an_error_for_the_extent():
    lone = molecules([[0, 0, 0], [1, 1, 1]], [1, 1])
    with pytest.raises(ValueError, match="no molecule has two atoms"):
        distance_extent(lone)
    assert max_distance(lone) == 0.0
