"""EGNN (Satorras, Hoogeboom & Welling 2021) with a pluggable distance encoding (PyTorch).

One layer, for the messages j -> i of a fully connected molecule::

    m_ij = phi_e(h_i, h_j, enc(d_ij))                           edge_mlp, SiLU after both linears
    h_i  = h_i + phi_h(h_i, sum_j m_ij)                          node_mlp (residual)
    x_i  = x_i + 1/deg(i) sum_j (x_i - x_j) phi_x(m_ij)          coord_mlp, only if update_coords

EGNN's own edge feature is the squared distance ``d^2``: ``encoding="raw"`` (the paper's
"backbone" row). "+MLP", "+PosEnc" and "+Smooth" swap in ``mlp`` or ``hermite`` (the last with
lambda > 0 in training) -- the same model otherwise.

One encoding per layer (``layers.{i}.encoding``) by default: the paper's interpretation metrics
average over "the embedding in the i-th layer", so each layer learns its own table.
``share_encoding=True`` uses one table (``encoding``) for all layers instead.

The invariant model (``update_coords=False``, the default) sees only distances, so its energy is
invariant and its forces -dE/dr equivariant; that is the model for QM9 and MD17 (forces by
autograd). ``update_coords=True`` adds EGNN's equivariant coordinate updates: later layers then
see distances that depend on earlier messages, so the forces differentiate through the encoding
twice (the table encodings support any order).

The Haiku twin is ``posenc.haiku.models.egnn.EGNN`` (module name ``"egnn"``); parameters move
between them with ``posenc.convert``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from posenc.encoding_defaults import encoding_init_bound
from posenc.torch.batching import Batch
from posenc.torch.encodings import project_all
from posenc.torch.models.common import (
    MLP,
    N_SPECIES,
    AtomEmbedding,
    EnergyHead,
    check_batch,
    edge_geometry,
    layer_encodings,
)


class PairGeometry(NamedTuple):
    """The pairs a layer sends messages over, as an edge list or, for equal-size molecules, dense.

    Attributes:
      vec: ``pos_i - pos_j``: ``[E, 3]`` on an edge list, ``[M, n, n, 3]`` dense (receiver i
        first, sender j second; zero on the diagonal).
      dist: the distances to encode: ``[E]`` on an edge list; dense, ``[M, P]`` over the
        ``P = n(n-1)/2`` unordered pairs only (``d_ij = d_ji``: each is encoded once).
      edge_index: ``[2, E]`` (senders j, receivers i), or None when dense.
      mask: ``[n, n, 1]`` 1 off the diagonal, 0 on it (dense), or None.
      pair_of: ``[n * n]`` int64, the unordered pair of each ordered (i, j) (dense; the
        diagonal points at pair 0 and is masked), or None.
    """

    vec: torch.Tensor
    dist: torch.Tensor
    edge_index: torch.Tensor | None
    mask: torch.Tensor | None
    pair_of: torch.Tensor | None

    def to_pairs(self, per_distance: torch.Tensor) -> torch.Tensor:
        """Rows per distance (``[E, C]`` or ``[M * P, C]``) -> per message (``[E, C]`` or ``[M, n, n, C]``)."""
        if self.pair_of is None or self.mask is None:
            return per_distance
        (m, n_pairs), n, c = self.dist.shape, self.mask.shape[0], per_distance.shape[-1]
        if n_pairs == 0:  # lone atoms: no pair, no message
            return per_distance.new_zeros(m, n, n, c)
        return per_distance.view(m, n_pairs, c).index_select(1, self.pair_of).view(m, n, n, c)


def pair_geometry(pos: torch.Tensor, edge_index: torch.Tensor, dense_size: int | None) -> PairGeometry:
    """The :class:`PairGeometry` of positions ``[A, 3]``: dense when ``dense_size`` is set.

    The dense layout (M molecules of n atoms, every ordered pair) replaces the gathers and
    scatters of an edge list, and their double backward, by broadcasts and sums, and encodes
    each unordered pair once: the fast path for MD17, whose batches are all of it
    (:attr:`posenc.torch.batching.Batch.dense_size`).
    """
    if dense_size is None:
        vec, dist = edge_geometry(pos, edge_index)
        return PairGeometry(vec, dist, edge_index, None, None)
    n = dense_size
    p = pos.view(-1, n, 3)  # [M, n, 3]
    vec = p[:, :, None, :] - p[:, None, :, :]  # [M, n(i), n(j), 3]
    first, second, pair_of, mask = _dense_layout(n, pos.device, pos.dtype)
    dist = torch.linalg.vector_norm(p[:, first] - p[:, second], dim=-1)  # [M, P]
    return PairGeometry(vec, dist, None, mask, pair_of)


@functools.lru_cache(maxsize=32)
def _dense_layout(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The index tensors of the dense layout of n-atom molecules, built once per (n, device, dtype)
    rather than in every forward: the unordered pairs ``first, second`` ``[P]``, the pair of each
    ordered (i, j) ``[n * n]`` (the diagonal points at pair 0) and the off-diagonal mask ``[n, n, 1]``."""
    first, second = torch.triu_indices(n, n, offset=1, device=device)  # [P] each
    pair_of = torch.zeros(n, n, dtype=torch.int64, device=device)
    pair_of[first, second] = pair_of[second, first] = torch.arange(first.numel(), device=device)
    mask = (~torch.eye(n, dtype=torch.bool, device=device)).to(dtype)[:, :, None]  # [n, n, 1]
    return first, second, pair_of.view(-1), mask


class EGNNLayer(nn.Module):
    """One EGNN layer (see the module docstring).

    Args:
      hidden: width H of the atom features.
      encoding: this layer's distance encoding, or None when the model shares one (then ``forward``
        gets the encoded distances).
      enc_dim: output size of the encoding.
      update_coords: also update the positions.
      dtype, device: of the parameters.

    The edge MLP's first linear layer reads ``[h_i, h_j, enc(d_ij)]``; it is applied by parts:
    the h_i and h_j columns once per atom (A rows, then broadcast or gathered to the pairs), the
    encoding columns folded into the encoding (:meth:`encoding_weight`, :func:`project_all`).
    Same parameters and numbers as the concatenation, a fraction of the work.
    """

    def __init__(self, hidden: int, encoding: nn.Module | None, enc_dim: int, *, update_coords: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        factory: dict[str, Any] = {"dtype": dtype, "device": device}
        if encoding is not None:
            self.encoding = encoding
        self.hidden = hidden
        self.edge_mlp = MLP([2 * hidden + enc_dim, hidden, hidden], act_last=True, **factory)
        with torch.no_grad():  # the encoding's columns at their own fan-in: see encoding_init_bound
            bound = encoding_init_bound(enc_dim)
            self.edge_mlp.linear(0).weight[:, 2 * hidden:].uniform_(-bound, bound)
        self.node_mlp = MLP([2 * hidden, hidden, hidden], **factory)
        self.update_coords = update_coords
        if update_coords:
            self.coord_mlp = MLP([hidden, hidden, 1], **factory)
            # EGNN's small last layer: coordinate steps start tiny, so training starts stable
            nn.init.xavier_uniform_(self.coord_mlp.linear(1).weight, gain=0.001)

    def encoding_weight(self) -> torch.Tensor:
        """``[H, D]``: the columns of the edge MLP's first layer that read the encoded distance."""
        return self.edge_mlp.linear(0).weight[:, 2 * self.hidden:]

    def forward(self, h: torch.Tensor, pos: torch.Tensor, geometry: PairGeometry,
                pair_term: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One message-passing step.

        Args:
          h: ``[A, H]`` atom features.
          pos: ``[A, 3]`` positions (used only with ``update_coords``).
          geometry: the pairs (:func:`pair_geometry` of ``pos``).
          pair_term: the encoded distances through the edge MLP's encoding columns,
            ``enc(d) @ encoding_weight().T`` per message: ``[E, H]``, or ``[M, n, n, H]`` dense
            (:meth:`PairGeometry.to_pairs`).

        Returns:
          Updated ``(h [A, H], pos [A, 3])``.
        """
        hid, lin0, lin1 = self.hidden, self.edge_mlp.linear(0), self.edge_mlp.linear(1)
        receiver = nn.functional.linear(h, lin0.weight[:, :hid], lin0.bias)  # [A, H], the h_i part
        sender = h @ lin0.weight[:, hid:2 * hid].T  # [A, H], the h_j part
        if geometry.mask is not None:
            n = geometry.mask.shape[0]
            pre = receiver.view(-1, n, 1, hid) + sender.view(-1, 1, n, hid) + pair_term  # [M, n, n, H]
            m = nn.functional.silu(lin1(nn.functional.silu(pre))) * geometry.mask
            agg = m.sum(2).reshape(h.shape)  # [A, H]
        else:
            if geometry.edge_index is None:
                raise ValueError("an edge-list geometry needs edge_index")
            j, i = geometry.edge_index
            m = nn.functional.silu(lin1(nn.functional.silu(receiver[i] + sender[j] + pair_term)))
            agg = h.new_zeros(h.shape).index_add(0, i, m)  # [A, H]
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        if self.update_coords:
            weighted = geometry.vec * self.coord_mlp(m)  # [E, 3] or [M, n, n, 3] (diagonal: vec = 0)
            if geometry.mask is not None:
                n = geometry.mask.shape[0]
                step, deg = weighted.sum(2).reshape(pos.shape), pos.new_full((pos.shape[0],), max(n - 1, 1))
            else:
                step = pos.new_zeros(pos.shape).index_add(0, i, weighted)  # [A, 3]
                deg = torch.bincount(i, minlength=pos.shape[0]).clamp(min=1).to(pos.dtype)  # [A]
            pos = pos + step / deg[:, None]
        return h, pos


class EGNN(nn.Module):
    """EGNN energy / property model with a pluggable distance encoding.

    Args:
      n_layers: number L of EGNN layers.
      hidden: feature width H.
      encoding: distance encoding name (``raw | mlp | gaussian | bessel | linear | hermite``).
      encoding_kwargs: overrides of the defaults in :mod:`posenc.encoding_defaults`.
      x_max: upper end of the distance range, Angstrom (see ``encoding_defaults.distance_range``).
      share_encoding: one encoding for all layers instead of one per layer.
      update_coords: EGNN's equivariant coordinate updates.
      n_outputs: T, outputs per molecule (1 for an energy).
      n_species: embedded atomic numbers ``0..n_species-1``.
      dtype, device: of parameters and buffers.

    Call: ``model(batch) -> [M, T]`` (see :class:`posenc.torch.batching.Batch`; the graph is the
    batch's ``edge_index``, fully connected by default).

    Example:
      >>> import numpy as np
      >>> from posenc.torch.batching import collate
      >>> from posenc.data.molecules import Molecules
      >>> from posenc.torch.models import energy_and_forces
      >>> water = Molecules(z=np.array([8, 1, 1]), pos=np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
      ...                   n_atoms=np.array([3]), targets=np.zeros((1, 1)), target_names=("E",), target_units=("meV",))
      >>> model = EGNN(n_layers=2, hidden=16, encoding="hermite", x_max=5.0)
      >>> energy, forces = energy_and_forces(model, collate(water, [0]))
      >>> energy.shape, forces.shape
      (torch.Size([1, 1]), torch.Size([3, 3]))
    """

    def __init__(self, n_layers: int = 4, hidden: int = 64, encoding: str = "raw",
                 encoding_kwargs: dict[str, Any] | None = None, *, x_max: float = 5.0,
                 share_encoding: bool = False, update_coords: bool = False, n_outputs: int = 1,
                 n_species: int = N_SPECIES, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if n_layers < 1 or hidden < 1:
            raise ValueError(f"n_layers and hidden must be >= 1, got {n_layers} and {hidden}")
        factory: dict[str, Any] = {"dtype": dtype, "device": device}
        self.n_species = n_species
        self.embedding = AtomEmbedding(hidden, n_species, **factory)
        shared, per_layer, enc_dim = layer_encodings(encoding, x_max, encoding_kwargs, n_layers, share_encoding,
                                                     **factory)
        if shared is not None:
            self.encoding = shared
        self.update_coords = update_coords
        self.layers = nn.ModuleList(
            EGNNLayer(hidden, per_layer[k], enc_dim,
                      update_coords=update_coords, **factory)
            for k in range(n_layers)
        )
        self.head = EnergyHead(hidden, n_outputs, n_species, **factory)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Per-molecule outputs ``[M, T]`` (an energy in meV for MD17)."""
        check_batch(batch, self.embedding.weight, self.n_species)
        shared = getattr(self, "encoding", None)
        layers = cast(list[EGNNLayer], list(self.layers))  # a ModuleList's items are typed nn.Module
        encodings = [shared if shared is not None else layer.encoding for layer in layers]
        h = self.embedding(batch.z)  # [A, H]
        pos = batch.pos
        geometry = pair_geometry(pos, batch.edge_index, batch.dense_size)
        if self.update_coords:  # each layer sees the distances its predecessor moved
            for layer, encoding in zip(layers, encodings):
                (term,) = project_all([encoding], [layer.encoding_weight()], geometry.dist.reshape(-1))
                h, pos = layer(h, pos, geometry, geometry.to_pairs(term))
                geometry = pair_geometry(pos, batch.edge_index, batch.dense_size)
        else:  # fixed distances: every layer's encoding in one call
            weights = [layer.encoding_weight() for layer in layers]
            terms = project_all(encodings, weights, geometry.dist.reshape(-1))
            for layer, term in zip(layers, terms):
                h, pos = layer(h, pos, geometry, geometry.to_pairs(term))
        return self.head(h, batch.z, batch.batch, batch.n_molecules)
