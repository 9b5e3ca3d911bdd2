"""The Haiku EGNN equals the torch EGNN on the same weights (float64), padding included.

The encodings themselves are compared across backends in test_haiku_encodings; here each case
compiles a model, so the cases cover the EGNN's own structure: a parameter-free encoding, one with
nested linears, per-layer tables with coordinate updates, and a shared table.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from molecule_factory import random_molecules
from posenc.convert import torch_to_haiku
from posenc.haiku.batching import collate_jax
from posenc.torch.batching import collate
from posenc.haiku.models import EGNN, energy_and_forces, stats_from_torch
from posenc.torch.models import EGNN as TorchEGNN
from posenc.torch.models import energy_and_forces as torch_energy_and_forces
from posenc.torch.models import set_output_stats

MOLS = random_molecules([3, 5, 4], seed=0)


def pair(n_layers, encoding, **kwargs):
    """A torch EGNN with output statistics, and the Haiku transform with the same settings."""
    torch.manual_seed(1)
    model = TorchEGNN(n_layers, 8, encoding, x_max=6.0, dtype=torch.float64, **kwargs)
    rng = np.random.default_rng(0)
    set_output_stats(model, np.array([1.7]), rng.normal(size=(100, 1)), np.array([-3.0]))
    stats = stats_from_torch(model)
    forward = hk.without_apply_rng(hk.transform(
        lambda g: EGNN(n_layers, 8, encoding, x_max=6.0, stats=stats, **kwargs)(g)))
    return model, forward


@pytest.mark.parametrize("n_layers,encoding,kwargs", [
    (1, "raw", {}), (1, "mlp", {}), (2, "hermite", {"update_coords": True}), (2, "hermite", {"share_encoding": True}),
])
def test_matches_torch_on_converted_weights(x64, n_layers, encoding, kwargs):
    model, forward = pair(n_layers, encoding, **kwargs)
    y_t, f_t = torch_energy_and_forces(model, collate(MOLS, [0, 1, 2], dtype=torch.float64))
    graph = collate_jax(MOLS, [0, 1, 2], max_atoms=16, max_edges=60, max_molecules=4)  # padded
    params = torch_to_haiku(model, "egnn")
    shapes = jax.eval_shape(forward.init, jax.random.PRNGKey(0), graph)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, params)  # same names and shapes
    y, f = jax.jit(lambda p, g: energy_and_forces(forward.apply, p, g))(params, graph)
    np.testing.assert_allclose(np.asarray(y)[:3], y_t.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f)[:12], f_t.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(f)[12:], 0.0)  # padding atoms feel no force
    # without the pair arrays the model encodes every edge's distance itself: the same numbers
    edges_only = {k: v for k, v in graph.items() if k not in ("pairs", "pair_mask", "pair_of")}
    y_e, f_e = jax.jit(lambda p, g: energy_and_forces(forward.apply, p, g))(params, edges_only)
    np.testing.assert_allclose(np.asarray(y_e), np.asarray(y), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(f_e), np.asarray(f), rtol=1e-10, atol=1e-10)


def test_bad_input_raises(x64):
    model, forward = pair(1, "hermite")
    params = torch_to_haiku(model, "egnn")
    graph = collate_jax(MOLS, [0], max_atoms=4, max_edges=8)
    with pytest.raises(ValueError, match="NaN"):
        forward.apply(params, {**graph, "pos": graph["pos"].at[0, 0].set(jnp.nan)})
    with pytest.raises(ValueError, match="empty batch"):
        forward.apply(params, {**graph, "atom_mask": jnp.zeros_like(graph["atom_mask"])})
    with pytest.raises(KeyError, match="collate_jax"):
        forward.apply(params, {k: v for k, v in graph.items() if k != "edge_mask"})
    with pytest.raises(ValueError, match="atomic numbers"):
        forward.apply(params, {**graph, "z": graph["z"] + 200})


@pytest.mark.parametrize("encoding,kwargs", [("raw", {}), ("hermite", {"update_coords": True}),
                                             ("hermite", {"share_encoding": True})])
def test_equal_size_molecules_with_a_padding_molecule(x64, encoding, kwargs):
    """MD17-shaped batches (equal sizes, a whole padding molecule): the torch numbers (its dense
    path), finite forces and a finite double backward despite the padding's zero distances."""
    mols = random_molecules([5, 5, 5], seed=3)
    model, forward = pair(2, encoding, **kwargs)
    y_t, f_t = torch_energy_and_forces(model, collate(mols, [0, 1, 2], dtype=torch.float64))
    graph = collate_jax(mols, [0, 1, 2], max_atoms=20, max_edges=80, max_molecules=4)
    params = torch_to_haiku(model, "egnn")
    run = jax.jit(lambda p, g: energy_and_forces(forward.apply, p, g))
    y, f = run(params, graph)
    np.testing.assert_allclose(np.asarray(y)[:3], y_t.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f)[:15], f_t.numpy(), rtol=1e-6, atol=1e-6)
    assert np.isfinite(np.asarray(f)).all()
    grads = jax.grad(lambda p: jnp.sum(run(p, graph)[1][:15] ** 2))(params)  # the double backward
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
