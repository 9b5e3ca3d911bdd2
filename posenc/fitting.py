"""Backend-agnostic pieces of the pair-model training loops (numpy): statistics, batches, results.

``posenc.torch.pair.fit`` and ``posenc.haiku.pair.fit`` both use these, so the same seed visits
the same batches with the same normalisation in either backend, and both return a
:class:`FitResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posenc.data.molecules import Molecules
from posenc.toys import PairCurve


@dataclass
class FitResult:
    """What a pair-model ``fit`` returns.

    Attributes:
      loss: ``[steps]`` total training loss per step (normalised units, including lam * L_smooth).
      energy_loss, force_loss: ``[steps]`` the two data terms (normalised mean squared errors).
      smoothness: ``[steps]`` L_smooth of the model's tables (0 without a table encoding).
      energy_mae: test energy MAE (target units, e.g. eps).
      force_mae: test force MAE (e.g. eps/sigma; per Cartesian component for clusters).
      seconds: wall time of the training loop.
      stats: the normalisation constants used (see :func:`normalisation`).
      params: the trained parameters (Haiku only; torch trains the module in place and leaves None).
    """

    loss: np.ndarray
    energy_loss: np.ndarray
    force_loss: np.ndarray
    smoothness: np.ndarray
    energy_mae: float
    force_mae: float
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)
    params: Any = None


def n_samples(data: PairCurve | Molecules) -> int:
    """Samples (pair curve) or molecules (clusters) in ``data``."""
    if isinstance(data, PairCurve):
        return len(data.r)
    if isinstance(data, Molecules):
        return len(data)
    raise TypeError(f"data must be a PairCurve or Molecules, got {type(data).__name__}")


def normalisation(data: PairCurve | Molecules) -> dict[str, float]:
    """Training-set statistics: ``shift``/``scale`` for the model and the loss scales.

    Pair curve: ``shift = mean(E)``, ``scale = energy_std = std(E)``. Clusters: ``shift`` is the mean
    energy per pair, ``sum E / sum P``; ``scale`` the rms over molecules of ``(E - shift P) /
    sqrt(P)`` (the spread of one pair term); ``energy_std`` the std of E over molecules.
    ``force_rms`` is the rms of all force components. Scales are floored at 1e-12 so a constant
    target does not divide by zero.

    Returns:
      ``{"shift", "scale", "energy_std", "force_rms"}`` as floats.
    """
    if isinstance(data, PairCurve):
        energy, forces = np.asarray(data.energy), np.asarray(data.force)
        shift, scale = float(energy.mean()), float(energy.std())
    elif isinstance(data, Molecules):
        if data.forces is None:
            raise ValueError("cluster data needs forces")
        energy, forces = data.targets[:, 0], data.forces
        n_pairs = data.n_atoms * (data.n_atoms - 1) / 2.0
        if (n_pairs == 0).any():
            raise ValueError("every molecule needs at least two atoms (one pair)")
        shift = float(energy.sum() / n_pairs.sum())
        scale = float(np.sqrt(np.mean((energy - shift * n_pairs) ** 2 / n_pairs)))
    else:
        raise TypeError(f"data must be a PairCurve or Molecules, got {type(data).__name__}")
    floor = 1e-12
    return {"shift": shift, "scale": max(scale, floor), "energy_std": max(float(energy.std()), floor),
            "force_rms": max(float(np.sqrt(np.mean(forces**2))), floor)}


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``[steps, min(batch_size, n)]`` sample indices: reshuffled epochs from a numpy RNG.

    Every batch has the same size (the remainder of an epoch is dropped), which keeps shapes
    static for ``jax.jit``.
    """
    if n < 1 or batch_size < 1 or steps < 1:
        raise ValueError(f"need n, batch_size, steps >= 1, got {n}, {batch_size}, {steps}")
    b = min(batch_size, n)
    per_epoch = n // b
    rng = np.random.default_rng(seed)
    n_epochs = math.ceil(steps / per_epoch)
    order = np.concatenate([rng.permutation(n)[: per_epoch * b] for _ in range(n_epochs)])
    return order.reshape(-1, b)[:steps]
