"""The torch Transformer: distance-biased attention, symmetry, forces, batching, bad input."""

import pytest
import torch

from model_checks import check_bad_input, check_batch_equals_single, check_forces_fd, check_symmetry
from molecule_factory import random_molecules
from posenc.torch.batching import collate
from posenc.torch import HermiteEncoding
from posenc.torch.models import Transformer
from posenc.torch.models.transformer import edge_softmax

ENCODINGS = ["raw", "mlp", "gaussian", "bessel", "linear", "hermite"]


def transformer(encoding="hermite", **kwargs):
    torch.manual_seed(0)
    return Transformer(2, 8, 2, encoding, x_max=6.0, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_symmetry(encoding):
    check_symmetry(transformer(encoding), random_molecules([4, 5], seed=1))


@pytest.mark.parametrize("encoding", ["raw", "hermite", "mlp"])
def test_forces_are_minus_energy_gradient(encoding):
    check_forces_fd(transformer(encoding), random_molecules([4], seed=2))


def test_batch_equals_molecules_one_by_one():
    check_batch_equals_single(transformer(), random_molecules([3, 1, 5, 2], seed=3))


def test_bad_input_raises():
    check_bad_input(transformer(), random_molecules([3, 4], seed=4))
    with pytest.raises(ValueError, match="divisible"):
        Transformer(1, 10, 3)


def test_edge_softmax_normalises_per_receiver():
    receivers = torch.tensor([0, 0, 0, 2, 2])
    scores = torch.tensor([[1.0, 500.0], [2.0, 0.0], [3.0, -1.0], [0.5, 1e3], [0.5, 1e3 - 1]])
    w = edge_softmax(scores, receivers, 3)
    totals = torch.zeros(3, 2).index_add(0, receivers, w)
    torch.testing.assert_close(totals, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(w[:3, 0], torch.softmax(scores[:3, 0], 0))
    assert bool(torch.isfinite(w).all())  # large scores do not overflow


def test_the_distance_bias_steers_attention():
    """A bias shift shared by all edges cancels in the softmax; a new encoding of d changes the output."""
    model = transformer("hermite")
    b = collate(random_molecules([4], seed=5), [0], dtype=torch.float64)
    base = model(b)
    with torch.no_grad():
        model.layers[0].bias_mlp.linear_1.bias += torch.tensor([0.0, 5.0])  # constant bias: no effect
    torch.testing.assert_close(model(b), base)
    with torch.no_grad():
        model.layers[0].encoding.values.mul_(3.0)  # a different encoding of d: different attention
    assert not torch.allclose(model(b), base)


def test_one_table_per_layer_unless_shared():
    assert len([m for m in Transformer(3, 8, 2, "hermite").modules() if isinstance(m, HermiteEncoding)]) == 3
    shared = Transformer(3, 8, 2, "hermite", share_encoding=True)
    assert len([m for m in shared.modules() if isinstance(m, HermiteEncoding)]) == 1
