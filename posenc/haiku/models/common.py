"""Pieces the Haiku backbones share: input checks, the atom embedding, the energy head, forces.

The mirror of ``posenc.torch.models.common``: same names and parameter layout, so
``posenc.convert.torch_to_haiku`` moves weights across. Graphs are the padded dicts of
``posenc.haiku.batching.collate_jax``: padding atoms and edges are masked, and a padding edge's
length is replaced by 1 Angstrom before it is encoded, so its (zero) length never produces a NaN
gradient through ``sqrt``.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from posenc.encoding_defaults import distance_encoding_kwargs
from posenc.haiku.encodings import ENCODINGS
from posenc.haiku.spline import is_concrete

#: Atomic numbers 0..N_SPECIES-1 are embedded (every element up to Z = 99).
N_SPECIES = 100

GRAPH_KEYS = ("z", "pos", "batch", "atom_mask", "edge_index", "edge_mask", "mol_mask")


def build_distance_encoding(name: str, x_max: float, overrides: dict[str, Any] | None = None, *,
                            module_name: str = "encoding") -> hk.Module:
    """The distance encoding ``name`` with the defaults of :mod:`posenc.encoding_defaults` (inside a transform)."""
    kwargs = distance_encoding_kwargs(name, x_max, overrides)  # also rejects an unknown name
    return ENCODINGS[name](**kwargs, name=module_name)  # make_encoding's own first argument is `name`


def check_batch(graph: Mapping[str, jax.Array], n_species: int = N_SPECIES) -> None:
    """Raises a clear error for a graph a model cannot use (value checks only when not traced).

    Raises:
      KeyError: a key of :data:`GRAPH_KEYS` is missing.
      ValueError: no atoms, bad shapes, NaN/inf positions or atomic numbers out of range.
      TypeError: non-float positions.
    """
    missing = [k for k in GRAPH_KEYS if k not in graph]
    if missing:
        raise KeyError(f"graph lacks {missing}; build it with posenc.haiku.batching.collate_jax")
    pos = graph["pos"]
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be [A, 3], got {tuple(pos.shape)}")
    if pos.shape[0] == 0:
        raise ValueError("empty batch: it has no atoms")
    if not jnp.issubdtype(pos.dtype, jnp.floating):
        raise TypeError(f"pos must be floating point, got {pos.dtype}")
    if graph["edge_index"].ndim != 2 or graph["edge_index"].shape[0] != 2:
        raise ValueError(f"edge_index must be [2, E], got {tuple(graph['edge_index'].shape)}")
    if is_concrete(pos):
        if not bool(graph["atom_mask"].any()):
            raise ValueError("empty batch: every atom is padding")
        if not bool(jnp.isfinite(pos).all()):
            raise ValueError("positions contain NaN or inf")
        z = graph["z"]
        if bool((z < 0).any()) or bool((z >= n_species).any()):
            raise ValueError(f"atomic numbers must lie in [0, {n_species}), got [{int(z.min())}, {int(z.max())}]")


def edge_geometry(pos: jax.Array, edge_index: jax.Array, edge_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Edge vectors ``pos_i - pos_j`` ``[E, 3]`` and lengths ``[E]`` (1.0 on padding edges)."""
    j, i = edge_index[0], edge_index[1]
    vec = pos[i] - pos[j]  # [E, 3]
    sq = jnp.sum(vec * vec, axis=-1)  # [E]
    return vec, jnp.sqrt(jnp.where(edge_mask, sq, 1.0))


class Linear(hk.Linear):
    """``hk.Linear`` initialised like ``torch.nn.Linear`` (w and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
    whose parameters can also be read without applying it (:meth:`params`), so a caller can apply
    it by parts (the EGNN edge layer does).

    Args:
      size: output width.
      fan_in: input width (the parameters' shape is known before the first call).
      name: module name.
      w_init: weight initialiser (default: like torch's).
    """

    def __init__(self, size: int, fan_in: int, name: str, w_init: hk.initializers.Initializer | None = None) -> None:
        bound = 1.0 / math.sqrt(fan_in)
        super().__init__(size, w_init=w_init or hk.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                         b_init=hk.initializers.RandomUniform(-bound, bound), name=name)
        self.fan_in = fan_in

    def params(self, dtype: Any) -> tuple[jax.Array, jax.Array]:
        """``(w [fan_in, size], b [size])``: the very parameters ``__call__`` uses."""
        w = hk.get_parameter("w", [self.fan_in, self.output_size], dtype, init=self.w_init)
        b = hk.get_parameter("b", [self.output_size], dtype, init=self.b_init)
        return w, b


def block_uniform(rows: Sequence[int], bounds: Sequence[float]) -> hk.initializers.Initializer:
    """A ``[sum(rows), out]`` weight initialiser: rows of block k uniform in ``(-bounds[k], bounds[k])``.

    For a layer whose input concatenates parts of different widths (the EGNN edge layer's atom
    features and encoded distance), each part initialised at its own scale.
    """
    if len(rows) != len(bounds):
        raise ValueError(f"got {len(rows)} blocks but {len(bounds)} bounds")

    def init(shape: Sequence[int], dtype: Any) -> jax.Array:
        if shape[0] != sum(rows):
            raise ValueError(f"the blocks have {sum(rows)} rows, the weight {shape[0]}")
        return jnp.concatenate([hk.initializers.RandomUniform(-b, b)((r, *shape[1:]), dtype)
                                for r, b in zip(rows, bounds)], axis=0)

    return init


class MLP(hk.Module):
    """Linear layers ``linear_0, linear_1, ...`` with SiLU between them (and after the last if asked).

    The layers are built in ``__init__``, so Haiku names them ``<name>/~/linear_k`` (the naming
    rule of ``posenc.convert``); hence the input width in ``sizes``, as in the torch twin.

    Args:
      sizes: ``[in, hidden..., out]`` widths.
      act_last: also apply SiLU after the last layer.
      first_w_init: initialiser of the first layer's weights (default: like torch's ``nn.Linear``).
      last_w_init: initialiser of the last layer's weights (default: like torch's ``nn.Linear``).
      name: module name.
    """

    def __init__(self, sizes: Sequence[int], *, act_last: bool = False,
                 first_w_init: hk.initializers.Initializer | None = None,
                 last_w_init: hk.initializers.Initializer | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.act_last = act_last
        n = len(sizes) - 1
        inits = [first_w_init if k == 0 else None for k in range(n)]
        if last_w_init is not None:
            inits[n - 1] = last_w_init
        self.linears = [Linear(sizes[k + 1], sizes[k], f"linear_{k}", inits[k]) for k in range(n)]

    def __call__(self, x: jax.Array) -> jax.Array:
        for k, linear in enumerate(self.linears):
            x = linear(x)
            if k < len(self.linears) - 1 or self.act_last:
                x = jax.nn.silu(x)
        return x


class AtomEmbedding(hk.Module):
    """A learned vector per atomic number: parameter ``weight`` ``[n_species, hidden]``, N(0, 1) init."""

    def __init__(self, hidden: int, n_species: int = N_SPECIES, name: str | None = None) -> None:
        super().__init__(name=name)
        self.hidden, self.n_species = hidden, n_species

    def __call__(self, z: jax.Array, dtype: Any) -> jax.Array:
        """``[A]`` int -> ``[A, hidden]`` of ``dtype``."""
        weight = hk.get_parameter("weight", [self.n_species, self.hidden], dtype,
                                  init=hk.initializers.RandomNormal(1.0))
        return weight[z]


class OutputStats(hk.Module):
    """``y_m = scale * raw_m + sum_{i in m} atom_ref[z_i] + mol_shift`` with constant statistics.

    The mirror of the torch buffers: here they are constructor arguments (not parameters), e.g.
    read from a torch model by ``posenc.haiku.models.egnn.stats_from_torch``.

    Args:
      n_outputs: T.
      stats: ``{"scale": [T], "atom_ref": [n_species, T], "mol_shift": [T]}``; None for (1, 0, 0).
      n_species: rows of ``atom_ref``.
      name: module name.
    """

    def __init__(self, n_outputs: int = 1, stats: Mapping[str, np.ndarray] | None = None,
                 n_species: int = N_SPECIES, name: str | None = None) -> None:
        super().__init__(name=name)
        stats = stats or {}
        self.scale = np.asarray(stats.get("scale", np.ones(n_outputs)))
        self.atom_ref = np.asarray(stats.get("atom_ref", np.zeros((n_species, n_outputs))))
        self.mol_shift = np.asarray(stats.get("mol_shift", np.zeros(n_outputs)))
        for label, arr, shape in (("scale", self.scale, (n_outputs,)),
                                  ("atom_ref", self.atom_ref, (n_species, n_outputs)),
                                  ("mol_shift", self.mol_shift, (n_outputs,))):
            if arr.shape != shape:
                raise ValueError(f"stats[{label!r}] must have shape {shape}, got {arr.shape}")

    def __call__(self, raw: jax.Array, z: jax.Array, batch: jax.Array) -> jax.Array:
        """Raw outputs ``[M, T]`` -> outputs in the targets' units ``[M, T]`` (padding atoms dropped)."""
        dtype = raw.dtype
        ref = jax.ops.segment_sum(jnp.asarray(self.atom_ref, dtype)[z], batch, num_segments=raw.shape[0])  # [M, T]
        return jnp.asarray(self.scale, dtype) * raw + ref + jnp.asarray(self.mol_shift, dtype)


class EnergyHead(hk.Module):
    """Per-atom readout ``mlp`` (H -> H -> T), sum pooling over each molecule, :class:`OutputStats`."""

    def __init__(self, hidden: int, n_outputs: int = 1, stats: Mapping[str, np.ndarray] | None = None,
                 n_species: int = N_SPECIES, name: str | None = None) -> None:
        super().__init__(name=name)
        self.mlp = MLP([hidden, hidden, n_outputs], name="mlp")
        self.stats = OutputStats(n_outputs, stats, n_species, name="stats")

    def __call__(self, h: jax.Array, z: jax.Array, batch: jax.Array, n_molecules: int) -> jax.Array:
        """Atom features ``[A, H]`` -> per-molecule outputs ``[M, T]``; atoms with ``batch >= M`` are dropped."""
        per_atom = self.mlp(h)  # [A, T]
        raw = jax.ops.segment_sum(per_atom, batch, num_segments=n_molecules)  # [M, T]
        return self.stats(raw, z, batch)


def energy_and_forces(apply: Callable[[Any, Any], jax.Array], params: Any,
                      graph: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Outputs and forces ``F = -dE/dr`` of the first output (the energy), by ``jax.grad``.

    Args:
      apply: ``apply(params, graph) -> [M_pad, T]`` (a transformed model's ``apply``).
      params: its parameters.
      graph: a padded graph from ``collate_jax``.

    Returns:
      ``(y [M_pad, T], forces [A_pad, 3])``; padding molecules' outputs are left as computed and
      padding atoms get zero force.
    """

    def energy(pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        y = apply(params, {**graph, "pos": pos})  # [M_pad, T]
        return jnp.sum(jnp.where(graph["mol_mask"], y[:, 0], 0.0)), y

    grad, y = jax.grad(energy, has_aux=True)(graph["pos"])
    return y, -grad
