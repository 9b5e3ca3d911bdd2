"""Backbones with a pluggable distance encoding (Haiku): EGNN, the mirror of ``posenc.torch.models``."""

from posenc.haiku.models.common import EnergyHead, OutputStats, build_distance_encoding, energy_and_forces
from posenc.haiku.models.egnn import EGNN, EGNNLayer, stats_from_torch

__all__ = [
    "EGNN",
    "EGNNLayer",
    "EnergyHead",
    "OutputStats",
    "build_distance_encoding",
    "energy_and_forces",
    "stats_from_torch",
]
