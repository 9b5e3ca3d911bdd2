"""The torch EGNN: symmetry, forces, batching, encodings, output statistics, bad input."""

import numpy as np
import pytest
import torch

from model_checks import check_bad_input, check_batch_equals_single, check_forces_fd, check_symmetry
from molecule_factory import random_molecules
from posenc.torch.batching import collate
from posenc.torch import HermiteEncoding, RawEncoding
from posenc.torch.models import EGNN, make_model, set_output_stats

ENCODINGS = ["raw", "mlp", "gaussian", "bessel", "linear", "hermite"]


def egnn(encoding="hermite", **kwargs):
    torch.manual_seed(0)
    return EGNN(2, 8, encoding, x_max=6.0, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("update_coords", [False, True])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_symmetry(encoding, update_coords):
    check_symmetry(egnn(encoding, update_coords=update_coords), random_molecules([4, 5], seed=1))


@pytest.mark.parametrize("encoding,update_coords", [("raw", False), ("hermite", False), ("hermite", True),
                                                     ("mlp", True), ("gaussian", False), ("bessel", False)])
def test_forces_are_minus_energy_gradient(encoding, update_coords):
    check_forces_fd(egnn(encoding, update_coords=update_coords), random_molecules([4], seed=2))


@pytest.mark.parametrize("update_coords", [False, True])
def test_batch_equals_molecules_one_by_one(update_coords):
    check_batch_equals_single(egnn("hermite", update_coords=update_coords), random_molecules([3, 1, 5, 2], seed=3))


def test_bad_input_raises():
    check_bad_input(egnn(), random_molecules([3, 4], seed=4))


def test_one_table_per_layer_unless_shared():
    per_layer = EGNN(3, 8, "hermite", {"n_bin": 16, "dim": 4}, x_max=5.0)
    tables = [m for m in per_layer.modules() if isinstance(m, HermiteEncoding)]
    assert len(tables) == 3 and len({id(t.values) for t in tables}) == 3
    assert tables[0].values.shape == (16, 4) and tables[0].x_max == 5.0
    shared = EGNN(3, 8, "hermite", x_max=5.0, share_encoding=True)
    assert len([m for m in shared.modules() if isinstance(m, HermiteEncoding)]) == 1


def test_raw_encoding_is_the_squared_distance():
    enc = EGNN(1, 4, "raw").layers[0].encoding
    assert isinstance(enc, RawEncoding)
    torch.testing.assert_close(enc(torch.tensor([2.0, 3.0])), torch.tensor([[4.0], [9.0]]))


def test_output_statistics_scale_and_shift():
    mols = random_molecules([3, 4], seed=5)
    model = egnn()
    b = collate(mols, [0, 1], dtype=torch.float64)
    raw = model(b)
    atom_ref = np.zeros((100, 1))
    atom_ref[[1, 6, 7, 8], 0] = [0.5, -1.0, 2.0, 3.0]
    set_output_stats(model, np.array([2.0]), atom_ref, np.array([10.0]))
    per_mol_ref = [atom_ref[mols.z[mols.atom_index(np.array([m]))], 0].sum() for m in range(2)]
    expected = 2.0 * raw[:, 0] + torch.as_tensor(per_mol_ref) + 10.0
    torch.testing.assert_close(model(b)[:, 0], expected)
    with pytest.raises(ValueError, match="shape"):
        set_output_stats(model, np.ones(2), atom_ref, np.zeros(1))


def test_make_model_builds_every_encoding_with_several_outputs():
    b = collate(random_molecules([3, 4], seed=6, n_targets=3), [0, 1])
    for encoding in ENCODINGS:
        out = make_model("egnn", encoding=encoding, n_layers=1, hidden=8, n_outputs=3, x_max=6.0)(b)
        assert out.shape == (2, 3) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="unknown backbone"):
        make_model("schnet")
    with pytest.raises(ValueError, match="unknown encoding"):
        make_model("egnn", encoding="fourier")
