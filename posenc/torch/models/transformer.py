"""The paper's Transformer backbone: atom self-attention biased by the encoded distance (PyTorch).

Footnote 2 of the paper: "It uses self attention mechanism to model the interaction among atoms.
The interatomic distance is sent to a multi-layer perceptron (MLP) as the bias vector for the
multi-head attention." One pre-norm layer, for receiver i and the atoms j of its molecule::

    b_ij   = bias_mlp(enc(d_ij))                                    [heads]  additive bias per head
    a_ij   = softmax_j( q_i . k_j / sqrt(d_head) + b_ij )          per head, over j != i
    h_i    = h_i + out( sum_j a_ij v_j )                            (q, k, v from norm_0(h))
    h_i    = h_i + ffn(norm_1(h_i))

Attention runs over the batch's edges (fully connected inside each molecule, never across), with
a per-receiver softmax, so molecules of any size share one batch without padding; the atom's own
value enters through the residual. The energy is the sum over atoms (:class:`EnergyHead`), as for
EGNN. Distances enter only through the bias, so the energy is invariant and -dE/dr equivariant.
One encoding per layer (``layers.{i}.encoding``) unless ``share_encoding``.
"""

from __future__ import annotations

import math
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


def edge_softmax(scores: torch.Tensor, receivers: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Softmax of edge scores over the incoming edges of each receiver.

    Args:
      scores: ``[E, heads]``.
      receivers: ``[E]`` int64 receiver of each edge.
      n_nodes: number of atoms.

    Returns:
      ``[E, heads]`` weights summing to one over each receiver's edges.
    """
    idx = receivers[:, None].expand_as(scores)
    # The per-receiver max only guards exp() against overflow; it cancels in the ratio, so it
    # carries no gradient (and needs no double-backward rule).
    peak = scores.new_full((n_nodes, scores.shape[1]), -torch.inf)
    peak = peak.scatter_reduce(0, idx, scores.detach(), reduce="amax", include_self=True)  # [A, heads]
    w = torch.exp(scores - peak[receivers])  # [E, heads]
    total = w.new_zeros(n_nodes, w.shape[1]).index_add(0, receivers, w)  # [A, heads]
    return w / total[receivers]


class TransformerLayer(nn.Module):
    """One pre-norm attention + feed-forward layer with a distance bias (see the module docstring).

    Args:
      hidden: width H (divisible by ``n_heads``).
      n_heads: attention heads.
      encoding: this layer's distance encoding, or None when shared.
      enc_dim: output size of the encoding.
      ffn_mult: the feed-forward hidden width is ``ffn_mult * hidden``.
      dtype, device: of the parameters.
    """

    def __init__(self, hidden: int, n_heads: int, encoding: nn.Module | None, enc_dim: int, *, ffn_mult: int = 2,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        factory: dict[str, Any] = {"dtype": dtype, "device": device}
        if encoding is not None:
            self.encoding = encoding
        self.n_heads, self.d_head = n_heads, hidden // n_heads
        self.bias_mlp = MLP([enc_dim, hidden, n_heads], **factory)
        self.norm_0 = nn.LayerNorm(hidden, **factory)
        self.qkv = nn.Linear(hidden, 3 * hidden, **factory)
        self.out = nn.Linear(hidden, hidden, **factory)
        self.norm_1 = nn.LayerNorm(hidden, **factory)
        self.ffn = MLP([hidden, ffn_mult * hidden, hidden], **factory)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor,
                shared: nn.Module | None = None) -> torch.Tensor:
        """``h`` ``[A, H]`` -> ``[A, H]``."""
        j, i = edge_index
        n_atoms, n_heads, d_head = h.shape[0], self.n_heads, self.d_head
        _, dist = edge_geometry(pos, edge_index)  # [E]
        bias = self.bias_mlp((shared if shared is not None else self.encoding)(dist))  # [E, heads]
        q, k, v = self.qkv(self.norm_0(h)).view(n_atoms, 3, n_heads, d_head).unbind(1)  # each [A, heads, dh]
        scores = (q[i] * k[j]).sum(-1) / math.sqrt(d_head) + bias  # [E, heads]
        alpha = edge_softmax(scores, i, n_atoms)  # [E, heads]
        attended = h.new_zeros(n_atoms, n_heads, d_head).index_add(0, i, alpha[..., None] * v[j])  # [A, heads, dh]
        h = h + self.out(attended.reshape(n_atoms, -1))
        return h + self.ffn(self.norm_1(h))


class Transformer(nn.Module):
    """Atom Transformer with distance-biased attention and a sum-pooled energy.

    Args:
      n_layers: number of layers.
      hidden: feature width H.
      n_heads: attention heads per layer.
      encoding: distance encoding name (``raw | mlp | gaussian | bessel | linear | hermite``); the
        paper's plain Transformer feeds the distance itself to the bias MLP, i.e. ``raw`` with
        ``encoding_kwargs={"power": 1}``; the default ``raw`` here is the squared distance, as for EGNN.
      encoding_kwargs: overrides of the defaults in :mod:`posenc.encoding_defaults`.
      x_max: upper end of the distance range, Angstrom.
      share_encoding: one encoding for all layers.
      ffn_mult: feed-forward expansion.
      n_outputs: T, outputs per molecule.
      n_species: embedded atomic numbers ``0..n_species-1``.
      dtype, device: of parameters and buffers.
    """

    def __init__(self, n_layers: int = 4, hidden: int = 64, n_heads: int = 4, encoding: str = "raw",
                 encoding_kwargs: dict[str, Any] | None = None, *, x_max: float = 5.0, share_encoding: bool = False,
                 ffn_mult: int = 2, n_outputs: int = 1, n_species: int = N_SPECIES,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
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
        self.layers = nn.ModuleList(
            TransformerLayer(hidden, n_heads, per_layer[k], enc_dim,
                             ffn_mult=ffn_mult, **factory)
            for k in range(n_layers)
        )
        self.norm = nn.LayerNorm(hidden, **factory)
        self.head = EnergyHead(hidden, n_outputs, n_species, **factory)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Per-molecule outputs ``[M, T]``."""
        check_batch(batch, self.embedding.weight, self.n_species)
        shared = getattr(self, "encoding", None)
        h = self.embedding(batch.z)  # [A, H]
        for layer in self.layers:
            h = layer(h, batch.pos, batch.edge_index, shared)
        return self.head(self.norm(h), batch.z, batch.batch, batch.n_molecules)
