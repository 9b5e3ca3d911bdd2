"""The torch EGNN's fast paths equal the plain formulation (float64, energies and forces).

The model applies its edge MLP's first layer by parts, folds the encoding into that layer,
encodes each distance once for all layers, and uses dense pair tensors for equal-size
molecules. :func:`plain_energy` is EGNN written the obvious way on an edge list, with the same
parameters: concatenate ``[h_i, h_j, enc(d_ij)]``, apply the edge MLP, scatter-add the messages.
"""

import dataclasses

import pytest
import torch

from molecule_factory import random_molecules
from posenc.torch.batching import Batch, collate
from posenc.torch.encodings import GaussianEncoding, HermiteEncoding, project_all
from posenc.torch.models import EGNN
from posenc.torch.models.common import edge_geometry

ENCODINGS = ["raw", "mlp", "gaussian", "bessel", "linear", "hermite"]


def plain_energy(model: EGNN, batch: Batch) -> torch.Tensor:
    """The model's outputs computed on the edge list without any of its shortcuts."""
    h, pos = model.embedding(batch.z), batch.pos
    shared = getattr(model, "encoding", None)
    for layer in model.layers:
        j, i = batch.edge_index
        vec, dist = edge_geometry(pos, batch.edge_index)
        enc = (shared if shared is not None else layer.encoding)(dist)
        m = layer.edge_mlp(torch.cat([h[i], h[j], enc], dim=-1))
        h = h + layer.node_mlp(torch.cat([h, h.new_zeros(h.shape).index_add(0, i, m)], dim=-1))
        if layer.update_coords:
            deg = torch.bincount(i, minlength=pos.shape[0]).clamp(min=1).to(pos.dtype)
            pos = pos + pos.new_zeros(pos.shape).index_add(0, i, vec * layer.coord_mlp(m)) / deg[:, None]
    return model.head(h, batch.z, batch.batch, batch.n_molecules)


def energy_forces(fn, batch):
    pos = batch.pos.detach().requires_grad_(True)
    y = fn(dataclasses.replace(batch, pos=pos))
    (grad,) = torch.autograd.grad(y[:, 0].sum(), pos)
    return y.detach(), -grad


def perturbed(model: EGNN, seed: int) -> EGNN:
    """The model with every parameter moved off its initialisation (tables included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("update_coords", [False, True])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dense_and_edge_list_paths_equal_the_plain_model(encoding, update_coords, share):
    torch.manual_seed(0)
    kwargs = {"scale": 0.4} if encoding in ("raw", "mlp") else {}
    model = perturbed(EGNN(3, 8, encoding, kwargs, x_max=6.0, share_encoding=share, update_coords=update_coords,
                           dtype=torch.float64), seed=1)
    same_size = collate(random_molecules([5, 5, 5], seed=2), [0, 1, 2], dtype=torch.float64)
    assert same_size.dense_size == 5
    mixed = collate(random_molecules([4, 6, 3], seed=3), [0, 1, 2], dtype=torch.float64)
    assert mixed.dense_size is None
    for batch in (same_size, dataclasses.replace(same_size, dense_size=None), mixed):
        y_ref, f_ref = energy_forces(lambda b: plain_energy(model, b), batch)
        y, f = energy_forces(model, batch)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-6)


def test_dense_path_trains_like_the_edge_list_path():
    """Parameter gradients of a force loss (the double backward) agree between the two layouts."""
    torch.manual_seed(0)
    model = perturbed(EGNN(2, 8, "hermite", x_max=6.0, dtype=torch.float64), seed=4)
    batch = collate(random_molecules([6, 6], seed=5), [0, 1], dtype=torch.float64)

    def grads(b):
        model.zero_grad()
        y, f = energy_forces_graph(model, b)
        ((f - b.forces) ** 2).mean().add(y.pow(2).mean()).backward()
        return [p.grad.clone() for p in model.parameters()]

    for dense, listed in zip(grads(batch), grads(dataclasses.replace(batch, dense_size=None))):
        torch.testing.assert_close(dense, listed, rtol=0, atol=1e-8)


def energy_forces_graph(model, batch):
    pos = batch.pos.detach().requires_grad_(True)
    y = model(dataclasses.replace(batch, pos=pos))
    (grad,) = torch.autograd.grad(y[:, 0].sum(), pos, create_graph=True)
    return y, -grad


def test_project_all_folds_and_batches_tables():
    torch.manual_seed(0)
    encs = [HermiteEncoding(12, 5, 0.0, 4.0, out_of_range="extrapolate", dtype=torch.float64) for _ in range(3)]
    weights = [torch.randn(k + 2, 5, dtype=torch.float64) for k in range(3)]
    x = torch.tensor([0.0, 0.3, 2.2, 3.99, 4.5], dtype=torch.float64)  # 4.5: the linear extension
    for out, enc, w in zip(project_all(encs, weights, x), encs, weights):
        torch.testing.assert_close(out, enc(x) @ w.T)
    other = HermiteEncoding(10, 5, 0.0, 4.0, dtype=torch.float64)  # another grid: evaluated on its own
    mixed = project_all([encs[0], other], weights[:2], x.clamp(max=4.0))
    torch.testing.assert_close(mixed[1], other(x.clamp(max=4.0)) @ weights[1].T)
    with pytest.raises(ValueError, match="weights"):
        project_all(encs, weights[:2], x)
    gaussian = GaussianEncoding(5, 0.0, 4.0, dtype=torch.float64)  # shared by three layers: evaluated once
    calls = []
    gaussian.register_forward_hook(lambda module, args, out: calls.append(1))
    for out, w in zip(project_all([gaussian] * 3, weights, x), weights):
        torch.testing.assert_close(out, gaussian(x) @ w.T)
    assert len(calls) == 1 + 3  # one in project_all, three in the checks above


def test_raw_scale_is_saved_with_the_model():
    model = EGNN(1, 4, "raw", {"scale": 0.25}, dtype=torch.float64)
    state = model.state_dict()
    assert float(state["layers.0.encoding.scale"]) == 0.25
    fresh = EGNN(1, 4, "raw", dtype=torch.float64)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.layers[0].encoding(torch.tensor([2.0], dtype=torch.float64)),
                               torch.tensor([[0.25]], dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        EGNN(1, 4, "raw", {"scale": 0.0})


@pytest.mark.parametrize("encoding,dim", [("raw", 1), ("hermite", 32)])
def test_encoding_weights_start_at_their_own_fan_in(encoding, dim):
    """Both backends draw the edge layer's encoding weights from U(-sqrt(3/D), sqrt(3/D)), the
    atom-feature weights from torch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    import haiku as hk
    import jax
    import numpy as np

    from posenc.haiku.batching import collate_jax
    from posenc.haiku.models.egnn import EGNN as HaikuEGNN

    hidden, bound = 16, (3.0 / dim) ** 0.5
    joint = 1.0 / (2 * hidden + dim) ** 0.5
    torch.manual_seed(0)
    w_torch = EGNN(1, hidden, encoding, x_max=6.0).layers[0].edge_mlp.linear_0.weight.detach().numpy().T
    mols = random_molecules([4], seed=0)
    graph = collate_jax(mols, [0], max_atoms=4, max_edges=12)
    model = hk.transform(lambda g: HaikuEGNN(1, hidden, encoding, x_max=6.0)(g))
    w_haiku = np.asarray(model.init(jax.random.PRNGKey(0), graph)["egnn/~/layers_0/~/edge_mlp/~/linear_0"]["w"])
    for w in (w_torch, w_haiku):  # [2H + D, H]
        atoms, enc = np.abs(w[:2 * hidden]), np.abs(w[2 * hidden:])
        assert atoms.max() <= joint and enc.max() <= bound
        assert enc.max() > 0.8 * bound and atoms.max() > 0.8 * joint  # the whole range is used
