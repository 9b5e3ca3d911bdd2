"""EGNN with a pluggable distance encoding in Haiku: the mirror of ``posenc.torch.models.egnn``.

Same layers, names and numbers as the torch model (see its docstring for the equations), on the
padded graphs of ``posenc.haiku.batching.collate_jax``: padding edges carry no message, padding
atoms belong to no molecule. The top module is called ``"egnn"``, so
``posenc.convert.torch_to_haiku(torch_egnn, "egnn")`` gives parameters for this model; the torch
model's output statistics (buffers, not parameters) are passed as ``stats``
(:func:`stats_from_torch`).

Example:
  >>> import haiku as hk
  >>> forward = hk.without_apply_rng(hk.transform(lambda g: EGNN(2, 16, "hermite")(g)))
  >>> # params = forward.init(None, graph); energies = forward.apply(params, graph)  # [M_pad, 1]
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple
from collections.abc import Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from posenc.encoding_defaults import encoding_init_bound
from posenc.haiku.encodings import encoding_dim, project_all
from posenc.haiku.models.common import (
    MLP,
    block_uniform,
    N_SPECIES,
    AtomEmbedding,
    EnergyHead,
    build_distance_encoding,
    check_batch,
    edge_geometry,
)


class PairGeometry(NamedTuple):
    """The pairs a layer sends messages over (the mirror of the torch ``PairGeometry``).

    Always the padded edge list here: the torch model's dense layout for equal-size molecules
    was measured slower than this edge list under XLA (``benchmarks/results/training_cpu.md``),
    whose gathers and segment sums compile well.

    Attributes:
      vec: ``pos_i - pos_j`` ``[E, 3]``.
      dist: the distances to encode: one per unordered pair, ``[P_pad]`` (the graph's ``pairs``),
        or ``[E]`` for a graph without pairs. Padding entries hold 1 Angstrom.
      edge_index, edge_mask: ``[2, E]``, ``[E]``.
      pair_of: ``[E]`` the pair of each edge, or None (one distance per edge).
    """

    vec: jax.Array
    dist: jax.Array
    edge_index: jax.Array
    edge_mask: jax.Array
    pair_of: jax.Array | None

    def to_pairs(self, per_distance: jax.Array) -> jax.Array:
        """Rows per distance ``[len(dist), C]`` -> per edge ``[E, C]``."""
        return per_distance if self.pair_of is None else per_distance[self.pair_of]


def pair_geometry(pos: jax.Array, graph: Mapping[str, jax.Array]) -> PairGeometry:
    """The :class:`PairGeometry` of positions ``[A, 3]`` on a ``collate_jax`` graph: each distance
    encoded once when the graph lists its unordered pairs (``collate_jax`` does)."""
    edge_index, edge_mask = graph["edge_index"], graph["edge_mask"]
    vec, dist = edge_geometry(pos, edge_index, edge_mask)
    if "pair_of" not in graph:
        return PairGeometry(vec, dist, edge_index, edge_mask, None)
    dist = edge_geometry(pos, graph["pairs"], graph["pair_mask"])[1]  # [P_pad]
    return PairGeometry(vec, dist, edge_index, edge_mask, graph["pair_of"])


class EGNNLayer(hk.Module):
    """One EGNN layer (the mirror of ``posenc.torch.models.egnn.EGNNLayer``).

    Args:
      hidden: width H of the atom features.
      encoding: ``(name, kwargs, x_max)`` of this layer's own encoding (the submodule
        ``encoding``), or None when the model shares one.
      enc_dim: output size of the shared encoding (only with ``encoding=None``).
      update_coords: also update the positions.
      name: module name (``layers_{i}``).
    """

    def __init__(self, hidden: int, encoding: tuple[str, dict[str, Any] | None, float] | None,
                 enc_dim: int | None = None, *, update_coords: bool = False, name: str | None = None) -> None:
        super().__init__(name=name)
        self.hidden = hidden
        if encoding is not None:
            enc_name, kwargs, x_max = encoding
            self.encoding = build_distance_encoding(enc_name, x_max, kwargs)
            enc_dim = encoding_dim(self.encoding)
        elif enc_dim is None:
            raise ValueError("a layer without its own encoding needs enc_dim (the shared encoding's size)")
        # the encoding's rows at their own fan-in (see posenc.encoding_defaults.encoding_init_bound)
        self.edge_mlp = MLP([2 * hidden + enc_dim, hidden, hidden], act_last=True,
                            first_w_init=block_uniform([2 * hidden, enc_dim], [1.0 / math.sqrt(2 * hidden + enc_dim),
                                                                                encoding_init_bound(enc_dim)]),
                            name="edge_mlp")
        self.node_mlp = MLP([2 * hidden, hidden, hidden], name="node_mlp")
        self.update_coords = update_coords
        if update_coords:
            # EGNN's small last layer (xavier uniform, gain 0.001): coordinate steps start tiny
            tiny = hk.initializers.VarianceScaling(0.001**2, "fan_avg", "uniform")
            self.coord_mlp = MLP([hidden, hidden, 1], last_w_init=tiny, name="coord_mlp")

    def encoding_weight(self, dtype: Any) -> jax.Array:
        """``[D, H]``: the rows of the edge MLP's first layer that read the encoded distance."""
        w, _ = self.edge_mlp.linears[0].params(dtype)
        return w[2 * self.hidden:]

    def __call__(self, h: jax.Array, pos: jax.Array, geometry: PairGeometry,
                 pair_term: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One message-passing step (the mirror of the torch layer).

        Args:
          h: ``[A, H]`` atom features.
          pos: ``[A, 3]`` positions (used only with ``update_coords``).
          geometry: the pairs (:func:`pair_geometry` of ``pos``).
          pair_term: ``enc(d) @ encoding_weight()`` per edge ``[E, H]``
            (:meth:`PairGeometry.to_pairs` of :func:`posenc.haiku.encodings.project_all`).

        Returns:
          Updated ``(h [A, H], pos [A, 3])``.
        """
        n_atoms, hid = h.shape[0], self.hidden
        w, b = self.edge_mlp.linears[0].params(h.dtype)  # [2H + D, H], [H]
        receiver = h @ w[:hid] + b  # [A, H], the h_i part, once per atom
        sender = h @ w[hid:2 * hid]  # [A, H], the h_j part
        j, i = geometry.edge_index[0], geometry.edge_index[1]
        edge_mask = geometry.edge_mask[:, None].astype(h.dtype)  # [E, 1]
        pre = receiver[i] + sender[j] + pair_term  # [E, H]
        m = jax.nn.silu(self.edge_mlp.linears[1](jax.nn.silu(pre))) * edge_mask  # [E, H]
        agg = jax.ops.segment_sum(m, i, num_segments=n_atoms)  # [A, H]
        h = h + self.node_mlp(jnp.concatenate([h, agg], axis=-1))
        if self.update_coords:
            deg = jnp.maximum(jax.ops.segment_sum(edge_mask[:, 0], i, num_segments=n_atoms), 1.0)  # [A]
            step = jax.ops.segment_sum(geometry.vec * self.coord_mlp(m) * edge_mask, i, num_segments=n_atoms)
            pos = pos + step / deg[:, None]  # [A, 3]
        return h, pos


class EGNN(hk.Module):
    """EGNN energy / property model (the mirror of ``posenc.torch.models.egnn.EGNN``).

    Args:
      n_layers, hidden, encoding, encoding_kwargs, x_max: as in the torch model.
      share_encoding, update_coords, n_outputs, n_species: as in the torch model.
      stats: the output statistics ``{"scale", "atom_ref", "mol_shift"}`` (see
        ``posenc.haiku.models.common.OutputStats``); None for the untrained defaults.
      name: module name (keep ``"egnn"`` to convert torch weights).

    Call: ``model(graph) -> [M_pad, T]`` on a ``collate_jax`` graph; rows of padding molecules
    are meaningless (mask them with ``graph["mol_mask"]``).
    """

    def __init__(self, n_layers: int = 4, hidden: int = 64, encoding: str = "raw",
                 encoding_kwargs: dict[str, Any] | None = None, *, x_max: float = 5.0,
                 share_encoding: bool = False, update_coords: bool = False, n_outputs: int = 1,
                 n_species: int = N_SPECIES, stats: Mapping[str, np.ndarray] | None = None,
                 name: str | None = "egnn") -> None:
        super().__init__(name=name)
        if n_layers < 1 or hidden < 1:
            raise ValueError(f"n_layers and hidden must be >= 1, got {n_layers} and {hidden}")
        self.n_species = n_species
        spec = (encoding, encoding_kwargs, x_max)
        self.embedding = AtomEmbedding(hidden, n_species, name="embedding")
        self.encoding = build_distance_encoding(encoding, x_max, encoding_kwargs) if share_encoding else None
        enc_dim = encoding_dim(self.encoding) if self.encoding is not None else None
        self.update_coords = update_coords
        self.layers = [EGNNLayer(hidden, None if share_encoding else spec, enc_dim, update_coords=update_coords,
                                 name=f"layers_{k}") for k in range(n_layers)]
        self.head = EnergyHead(hidden, n_outputs, stats, n_species, name="head")

    def __call__(self, graph: Mapping[str, jax.Array]) -> jax.Array:
        """Per-molecule outputs ``[M_pad, T]``."""
        check_batch(graph, self.n_species)
        pos = graph["pos"]
        encodings = [self.encoding or layer.encoding for layer in self.layers]
        h = self.embedding(graph["z"], pos.dtype)  # [A, H]
        geometry = pair_geometry(pos, graph)
        if self.update_coords:  # each layer sees the distances its predecessor moved
            for layer, encoding in zip(self.layers, encodings):
                (term,) = project_all([encoding], [layer.encoding_weight(pos.dtype)], geometry.dist.reshape(-1))
                h, pos = layer(h, pos, geometry, geometry.to_pairs(term))
                geometry = pair_geometry(pos, graph)
        else:  # fixed distances: every layer's encoding in one call
            weights = [layer.encoding_weight(pos.dtype) for layer in self.layers]
            for layer, term in zip(self.layers, project_all(encodings, weights, geometry.dist.reshape(-1))):
                h, pos = layer(h, pos, geometry, geometry.to_pairs(term))
        n_molecules = graph["mol_mask"].shape[0]
        return self.head(h, graph["z"], graph["batch"], n_molecules)


def stats_from_torch(model: Any) -> dict[str, np.ndarray]:
    """The output statistics of a torch backbone (its ``OutputStats`` buffers) as numpy arrays."""
    from posenc.torch.models.common import OutputStats

    (stats,) = [m for m in model.modules() if isinstance(m, OutputStats)]
    return {name: getattr(stats, name).detach().cpu().numpy() for name in ("scale", "atom_ref", "mol_shift")}
