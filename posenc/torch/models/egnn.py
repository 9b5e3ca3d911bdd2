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

from typing import Any

import torch
from torch import nn

from posenc.torch.batching import Batch
from posenc.torch.models.common import (
    MLP,
    N_SPECIES,
    AtomEmbedding,
    EnergyHead,
    check_batch,
    edge_geometry,
    layer_encodings,
)


class EGNNLayer(nn.Module):
    """One EGNN layer (see the module docstring).

    Args:
      hidden: width H of the atom features.
      encoding: this layer's distance encoding, or None when the model shares one (then ``forward``
        gets the encoded distances).
      enc_dim: output size of the encoding.
      update_coords: also update the positions.
      dtype, device: of the parameters.
    """

    def __init__(self, hidden: int, encoding: nn.Module | None, enc_dim: int, *, update_coords: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        if encoding is not None:
            self.encoding = encoding
        self.edge_mlp = MLP([2 * hidden + enc_dim, hidden, hidden], act_last=True, **factory)
        self.node_mlp = MLP([2 * hidden, hidden, hidden], **factory)
        self.update_coords = update_coords
        if update_coords:
            self.coord_mlp = MLP([hidden, hidden, 1], **factory)
            # EGNN's small last layer: coordinate steps start tiny, so training starts stable
            nn.init.xavier_uniform_(self.coord_mlp.linear_1.weight, gain=0.001)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor,
                shared: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``[A, H]``, ``pos`` ``[A, 3]`` -> updated ``(h, pos)``."""
        j, i = edge_index
        vec, dist = edge_geometry(pos, edge_index)  # [E, 3], [E]
        enc = (shared if shared is not None else self.encoding)(dist)  # [E, D]
        m = self.edge_mlp(torch.cat([h[i], h[j], enc], dim=-1))  # [E, H]
        agg = h.new_zeros(h.shape).index_add(0, i, m)  # [A, H]
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        if self.update_coords:
            deg = torch.bincount(i, minlength=pos.shape[0]).clamp(min=1).to(pos.dtype)  # [A]
            step = pos.new_zeros(pos.shape).index_add(0, i, vec * self.coord_mlp(m))  # [A, 3]
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
        factory = {"dtype": dtype, "device": device}
        self.n_species = n_species
        self.embedding = AtomEmbedding(hidden, n_species, **factory)
        shared, per_layer, enc_dim = layer_encodings(encoding, x_max, encoding_kwargs, n_layers, share_encoding,
                                                     **factory)
        if shared is not None:
            self.encoding = shared
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
        h = self.embedding(batch.z)  # [A, H]
        pos = batch.pos
        for layer in self.layers:
            h, pos = layer(h, pos, batch.edge_index, shared)
        return self.head(h, batch.z, batch.batch, batch.n_molecules)
