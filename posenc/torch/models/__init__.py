"""Backbones with a pluggable distance encoding (PyTorch): EGNN, the Transformer, DimeNet++.

Every model maps a :class:`posenc.torch.batching.Batch` to per-molecule outputs ``[M, T]``;
:func:`energy_and_forces` adds the forces -dE/dr by autograd. DimeNet++ lives in
``posenc.torch.models.dimenet`` and is built lazily by :func:`make_model`.
"""

from posenc.torch.models.common import (
    EnergyHead,
    OutputStats,
    WithOutputStats,
    build_distance_encoding,
    energy_and_forces,
    set_output_stats,
)
from posenc.torch.models.egnn import EGNN, EGNNLayer
from posenc.torch.models.registry import BACKBONES, graph_cutoff, make_model
from posenc.torch.models.transformer import Transformer, TransformerLayer

__all__ = [
    "BACKBONES",
    "EGNN",
    "EGNNLayer",
    "EnergyHead",
    "OutputStats",
    "Transformer",
    "TransformerLayer",
    "WithOutputStats",
    "build_distance_encoding",
    "energy_and_forces",
    "graph_cutoff",
    "make_model",
    "set_output_stats",
]
