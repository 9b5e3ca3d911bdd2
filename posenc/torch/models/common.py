"""Pieces every torch backbone shares: input checks, the atom embedding, the energy head, forces.

The Haiku mirror is ``posenc.haiku.models.common`` (same names, same parameter layout).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from posenc.torch.batching import Batch
from posenc.encoding_defaults import distance_encoding_kwargs
from posenc.torch.encodings import encoding_dim, make_encoding

#: Atomic numbers 0..N_SPECIES-1 are embedded (every element up to Z = 99).
N_SPECIES = 100


def build_distance_encoding(name: str, x_max: float, overrides: dict[str, Any] | None = None, *,
                            dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> nn.Module:
    """The distance encoding ``name`` with the defaults of :mod:`posenc.encoding_defaults`.

    Args:
      name: ``raw | mlp | gaussian | bessel | linear | hermite``.
      x_max: the distance range's upper end, Angstrom.
      overrides: keyword arguments replacing the defaults.
      dtype, device: of the encoding's parameters (raw has none).
    """
    kwargs = distance_encoding_kwargs(name, x_max, overrides)
    if name != "raw":
        kwargs.update(dtype=dtype, device=device)
    return make_encoding(name, **kwargs)


def layer_encodings(name: str, x_max: float, overrides: dict[str, Any] | None, n_layers: int, share: bool, *,
                    dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> tuple[nn.Module | None, list[nn.Module | None], int]:
    """The distance encodings of an ``n_layers`` model: one per layer, or one shared by all.

    Returns:
      ``(shared, per_layer, dim)``: with ``share`` the one encoding, ``n_layers`` Nones and its
      output size; otherwise None, one new encoding per layer and their output size.
    """
    encodings = [build_distance_encoding(name, x_max, overrides, dtype=dtype, device=device)
                 for _ in range(1 if share else n_layers)]
    dim = encoding_dim(encodings[0])
    if share:
        return encodings[0], [None] * n_layers, dim
    return None, list(encodings), dim


def check_batch(batch: Batch, like: torch.Tensor, n_species: int = N_SPECIES) -> None:
    """Raises a clear error when ``batch`` cannot go through a model whose parameters are like ``like``.

    Raises:
      ValueError: no atoms, NaN/inf positions, atomic numbers out of range, a bad ``edge_index``,
        tensors on another device.
      TypeError: positions not of the parameters' float dtype, integer tensors not int64.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"expected a posenc.torch.batching.Batch, got {type(batch).__name__}")
    pos, z = batch.pos, batch.z
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be [A, 3], got {tuple(pos.shape)}")
    if pos.shape[0] == 0 or batch.n_molecules < 1:
        raise ValueError("empty batch: it has no atoms")
    if pos.dtype != like.dtype:
        raise TypeError(f"dtype mismatch: positions are {pos.dtype} but the model's parameters are {like.dtype}")
    if pos.device != like.device:
        raise ValueError(f"device mismatch: the batch is on {pos.device} but the model is on {like.device}")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("positions contain NaN or inf")
    for label, t in (("z", z), ("batch", batch.batch), ("edge_index", batch.edge_index)):
        if t.dtype != torch.int64:
            raise TypeError(f"{label} must be int64, got {t.dtype}")
    if z.shape != pos.shape[:1] or batch.batch.shape != pos.shape[:1]:
        raise ValueError(f"z and batch must be [A={pos.shape[0]}], got {tuple(z.shape)} and {tuple(batch.batch.shape)}")
    if bool((z < 0).any()) or bool((z >= n_species).any()):
        raise ValueError(f"atomic numbers must lie in [0, {n_species}), got [{int(z.min())}, {int(z.max())}]")
    ei = batch.edge_index
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must be [2, E], got {tuple(ei.shape)}")
    if ei.numel() and (bool((ei < 0).any()) or bool((ei >= pos.shape[0]).any())):
        raise ValueError(f"edge_index refers to atoms outside [0, {pos.shape[0]})")


def edge_geometry(pos: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge vectors and lengths of the messages j -> i.

    Args:
      pos: ``[A, 3]`` positions, Angstrom.
      edge_index: ``[2, E]`` (senders j, receivers i).

    Returns:
      ``(vec, dist)``: ``vec = pos_i - pos_j`` ``[E, 3]`` and ``dist = |vec|`` ``[E]``.
    """
    j, i = edge_index
    vec = pos[i] - pos[j]  # [E, 3]
    return vec, torch.linalg.vector_norm(vec, dim=-1)


class MLP(nn.Module):
    """Linear layers ``linear_0, linear_1, ...`` with SiLU between them (and after the last if asked).

    Args:
      sizes: ``[in, hidden..., out]`` widths.
      act_last: also apply SiLU after the last layer (EGNN's edge MLP does).
      dtype, device: of the parameters.
    """

    def __init__(self, sizes: Sequence[int], *, act_last: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.n_linear, self.act_last = len(sizes) - 1, act_last
        for k in range(self.n_linear):
            self.add_module(f"linear_{k}", nn.Linear(sizes[k], sizes[k + 1], dtype=dtype, device=device))

    def linear(self, k: int) -> nn.Linear:
        """Layer ``linear_k`` (0-based)."""
        layer: nn.Linear = getattr(self, f"linear_{k}")
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(self.n_linear):
            x = self.linear(k)(x)
            if k < self.n_linear - 1 or self.act_last:
                x = nn.functional.silu(x)
        return x


class AtomEmbedding(nn.Module):
    """A learned vector per atomic number: parameter ``weight`` ``[n_species, hidden]``, N(0, 1) init."""

    def __init__(self, hidden: int, n_species: int = N_SPECIES, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_species, hidden, dtype=dtype, device=device))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[A]`` int64 -> ``[A, hidden]``."""
        return self.weight[z]


class OutputStats(nn.Module):
    """The output statistics of the training data, applied to raw per-molecule outputs.

    ``y_m = scale * raw_m + sum_{i in m} atom_ref[z_i] + mol_shift``. The three are buffers (saved
    with the model, never trained), set by :func:`set_output_stats` from the training set: MD17
    energies get a per-atom reference (the energy is extensive) and the force scale; QM9 targets a
    per-element reference, the mean and the spread. The network itself then learns numbers of
    order one.

    Args:
      n_outputs: T.
      n_species: rows of ``atom_ref``.
      dtype, device: of the buffers.
    """

    scale: torch.Tensor
    atom_ref: torch.Tensor
    mol_shift: torch.Tensor

    def __init__(self, n_outputs: int = 1, n_species: int = N_SPECIES, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        factory: dict[str, Any] = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        self.register_buffer("scale", torch.ones(n_outputs, **factory))
        self.register_buffer("atom_ref", torch.zeros(n_species, n_outputs, **factory))
        self.register_buffer("mol_shift", torch.zeros(n_outputs, **factory))

    def forward(self, raw: torch.Tensor, z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[M, T]`` -> outputs in the targets' units ``[M, T]``."""
        ref = raw.new_zeros(raw.shape).index_add(0, batch, self.atom_ref[z])  # [M, T]
        return self.scale * raw + ref + self.mol_shift


def set_output_stats(model: nn.Module, scale: np.ndarray, atom_ref: np.ndarray, mol_shift: np.ndarray) -> None:
    """Sets the :class:`OutputStats` of ``model``.

    Args:
        model: a model holding one :class:`OutputStats`.
        scale: ``[T]``. atom_ref: ``[n_species, T]``. mol_shift: ``[T]``.
    """
    found = [m for m in model.modules() if isinstance(m, OutputStats)]
    if len(found) != 1:
        raise ValueError(f"the model must hold exactly one OutputStats module, found {len(found)}")
    for name, value in (("scale", scale), ("atom_ref", atom_ref), ("mol_shift", mol_shift)):
        buf = getattr(found[0], name)
        new = torch.as_tensor(np.asarray(value), dtype=buf.dtype, device=buf.device)
        if new.shape != buf.shape:
            raise ValueError(f"{name} must have shape {tuple(buf.shape)}, got {tuple(new.shape)}")
        buf.copy_(new)


class EnergyHead(nn.Module):
    """Per-atom readout ``mlp`` (H -> H -> T), sum pooling over each molecule, :class:`OutputStats`.

    Args:
      hidden: width of the atom features.
      n_outputs: T, the number of targets.
      n_species: rows of the per-element reference.
      dtype, device: of parameters and buffers.
    """

    def __init__(self, hidden: int, n_outputs: int = 1, n_species: int = N_SPECIES, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.mlp = MLP([hidden, hidden, n_outputs], dtype=dtype, device=device)
        self.stats = OutputStats(n_outputs, n_species, dtype=dtype, device=device)

    def forward(self, h: torch.Tensor, z: torch.Tensor, batch: torch.Tensor, n_molecules: int) -> torch.Tensor:
        """Atom features ``[A, H]`` -> per-molecule outputs ``[M, T]``."""
        per_atom = self.mlp(h)  # [A, T]
        raw = per_atom.new_zeros(n_molecules, per_atom.shape[1]).index_add(0, batch, per_atom)  # [M, T]
        return self.stats(raw, z, batch)


def energy_and_forces(model: nn.Module, batch: Batch, *,
                      create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and forces ``F = -dE/dr`` of the first output (the energy) by autograd.

    Args:
      model: a backbone, ``model(batch) -> [M, T]``.
      batch: the molecules.
      create_graph: keep the graph of the forces (to train on them).

    Returns:
      ``(y, forces)``: ``[M, T]`` in the model's units (meV) and ``[A, 3]`` (meV/Angstrom).
    """
    with torch.enable_grad():
        pos = batch.pos.detach().requires_grad_(True)
        y = model(dataclasses.replace(batch, pos=pos))  # [M, T]
        # materialize_grads: a batch of lone atoms has an energy that does not depend on pos
        (grad,) = torch.autograd.grad(y[:, 0].sum(), pos, create_graph=create_graph, allow_unused=True,
                                      materialize_grads=True)
    return y, -grad


class WithOutputStats(nn.Module):
    """Adds :class:`OutputStats` to a backbone that returns raw per-molecule outputs (DimeNet++).

    Args:
      model: ``model(batch) -> [M, T]``.
      n_outputs: T.
      n_species: rows of the per-element reference.
      dtype, device: of the buffers.
    """

    def __init__(self, model: nn.Module, n_outputs: int = 1, n_species: int = N_SPECIES, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.model = model
        self.stats = OutputStats(n_outputs, n_species, dtype=dtype, device=device)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Per-molecule outputs ``[M, T]`` in the targets' units."""
        return self.stats(self.model(batch), batch.z, batch.batch)
