"""Backbones by name: ``egnn``, ``transformer`` and ``dimenet`` (DimeNet++), one call to build each.

The training loop and the CLI build every model through :func:`make_model`, so "backbone x
encoding" is two strings. DimeNet++ is imported on first use (it pulls in torch-geometric and
builds its spherical basis with sympy), and a failed import says so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from posenc.torch.models.common import WithOutputStats
from posenc.torch.models.egnn import EGNN
from posenc.torch.models.transformer import Transformer

BACKBONES: tuple[str, ...] = ("egnn", "transformer", "dimenet")

#: Radius (Angstrom) of DimeNet++'s graph; EGNN and the Transformer are fully connected.
DIMENET_CUTOFF = 5.0


def graph_cutoff(backbone: str) -> float | None:
    """The radius of the graph ``backbone`` expects: None (fully connected) or DimeNet++'s cutoff."""
    return DIMENET_CUTOFF if backbone == "dimenet" else None


def make_model(backbone: str, *, encoding: str = "raw", encoding_kwargs: dict[str, Any] | None = None,
               x_max: float = 5.0, n_layers: int = 4, hidden: int = 64, n_outputs: int = 1,
               dtype: torch.dtype = torch.float32, **extra: Any) -> nn.Module:
    """Builds ``backbone`` with a distance encoding.

    Args:
      backbone: ``egnn | transformer | dimenet``.
      encoding: distance encoding name (for DimeNet++ its radial basis; ``bessel`` is DimeNet's own,
        and the angle then uses DimeNet's spherical basis, otherwise the same encoding name).
      encoding_kwargs: overrides of the encoding's defaults.
      x_max: the distance range, Angstrom (DimeNet++ uses its cutoff instead).
      n_layers: layers (DimeNet++: interaction blocks).
      hidden: width (DimeNet++: hidden_channels).
      n_outputs: outputs per molecule.
      dtype: of parameters and buffers.
      **extra: further keyword arguments of the backbone's class.

    Returns:
      ``model(batch) -> [M, n_outputs]``, holding one :class:`OutputStats`.
    """
    if backbone == "egnn":
        return EGNN(n_layers, hidden, encoding, encoding_kwargs, x_max=x_max, n_outputs=n_outputs, dtype=dtype, **extra)
    if backbone == "transformer":
        return Transformer(n_layers, hidden, encoding=encoding, encoding_kwargs=encoding_kwargs, x_max=x_max,
                           n_outputs=n_outputs, dtype=dtype, **extra)
    if backbone == "dimenet":
        try:
            from posenc.torch.models.dimenet import DimeNetPlusPlus
        except ImportError as err:  # torch-geometric or the module itself missing
            raise ImportError("backbone 'dimenet' needs posenc.torch.models.dimenet, which failed to import: "
                              f"{err}") from err
        angular = "spherical" if encoding == "bessel" else encoding
        kwargs: dict[str, Any] = {"radial_encoding": encoding, "angular_encoding": angular,
                                  "cutoff": DIMENET_CUTOFF, **extra}
        if encoding != "bessel":
            kwargs.setdefault("radial_kwargs", encoding_kwargs)
        inner = DimeNetPlusPlus(hidden_channels=hidden, out_channels=n_outputs, num_blocks=n_layers, **kwargs)
        return WithOutputStats(inner.to(dtype), n_outputs, dtype=dtype)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
