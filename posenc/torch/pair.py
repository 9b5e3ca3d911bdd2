"""Pair-potential models in PyTorch: an encoding of r followed by a smooth readout.

``PairEnergy`` learns a 1-D curve ``E(r) = shift + scale * MLP(encoding(r))``; ``ClusterEnergy``
sums the same pair term over every pair ``i < j`` of each molecule. Forces are ``-dE/dr`` and
``-dE/dx_i`` by autograd; the readout uses SiLU, so the model is as smooth as its encoding (a
linear-interpolation encoding gives forces that jump at every bin centre; the Hermite one does not).

Normalisation: ``shift`` and ``scale`` are frozen parameters (``requires_grad=False``, so an
optimiser never moves them, yet ``posenc.convert`` carries them to Haiku with the weights).
:func:`fit` sets them from the training energies before training, so the MLP works on numbers of
order one: for a pair curve ``shift = mean(E)`` and ``scale = std(E)``; for clusters ``shift`` is
the mean energy per pair and ``scale`` the per-pair spread. The loss is measured in normalised
units too (energies divided by their std, forces by their rms), so energy and force terms are
comparable and ``energy_weight`` / ``force_weight`` mean what they say.

``posenc.haiku.pair`` mirrors this module name for name.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from posenc.data.molecules import Molecules
from posenc.fitting import FitResult, batch_indices, n_samples, normalisation
from posenc.toys import PairCurve
from posenc.torch.encodings import encoding_dim
from posenc.torch.losses import total_smoothness_loss


class PairEnergy(nn.Module):
    """``E(r) = shift + scale * readout(encoding(r))`` with a SiLU MLP readout.

    Args:
      encoding: any posenc encoding module (it must expose ``dim``), e.g.
        ``HermiteEncoding(64, 16, 0.8, 3.0)``. Stored as submodule ``encoding``.
      hidden: width of the hidden layers.
      n_layers: number of hidden SiLU layers (>= 1); the output layer comes on top.
      dtype: of the readout parameters (the encoding keeps its own).

    Attributes:
      layers: ``layers.0 .. layers.n_layers`` linear layers (Haiku: ``layers_0 ...``).
      shift, scale: frozen ``[1]`` parameters, set by :func:`fit` from the training energies.
    """

    def __init__(self, encoding: nn.Module, hidden: int = 64, n_layers: int = 2, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        enc_dim = encoding_dim(encoding)  # raises for a module without .dim
        if n_layers < 1 or hidden < 1:
            raise ValueError(f"need n_layers >= 1 and hidden >= 1, got n_layers={n_layers}, hidden={hidden}")
        self.encoding = encoding
        widths = [enc_dim] + [hidden] * n_layers + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b, dtype=dtype) for a, b in zip(widths[:-1], widths[1:]))
        factory: dict[str, Any] = {"dtype": dtype or torch.get_default_dtype()}
        # [1], not 0-d: posenc.convert moves arrays of rank >= 1
        self.shift = nn.Parameter(torch.zeros(1, **factory), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(1, **factory), requires_grad=False)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``[...]`` distances -> ``[...]`` energies."""
        h = self.encoding(r)  # [..., dim]
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))  # [..., hidden]
        return self.shift[0] + self.scale[0] * self.layers[-1](h).squeeze(-1)


def intra_pairs(n_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``i < j`` inside each molecule of a ragged batch.

    Args:
      n_atoms: ``[M]`` int64 atoms per molecule (atoms concatenated in molecule order).

    Returns:
      ``(pair_index [2, P], pair_molecule [P])``: global atom indices and each pair's molecule.
    """
    n_atoms = torch.as_tensor(n_atoms, dtype=torch.int64)
    if n_atoms.ndim != 1 or n_atoms.numel() == 0 or bool((n_atoms < 1).any()):
        raise ValueError(f"n_atoms must be a non-empty [M] tensor of counts >= 1, got {n_atoms.tolist()}")
    offsets = torch.cumsum(n_atoms, 0) - n_atoms  # [M]
    n_max = int(n_atoms.max())
    tri = torch.triu_indices(n_max, n_max, offset=1, device=n_atoms.device)  # [2, P_max]
    keep = tri[1][None, :] < n_atoms[:, None]  # [M, P_max]: j inside molecule m (so is i < j)
    pair_molecule = torch.arange(n_atoms.numel(), device=n_atoms.device)[:, None].expand_as(keep)[keep]  # [P]
    pair_index = tri[:, None, :].expand(2, *keep.shape)[:, keep] + offsets[pair_molecule]  # [2, P]
    return pair_index, pair_molecule


class ClusterEnergy(nn.Module):
    """Total energy of each molecule as a sum of learned pair terms: ``E_m = sum_{i<j in m} V(r_ij)``.

    Args:
      encoding, hidden, n_layers, dtype: as for :class:`PairEnergy` (submodule ``pair_energy``).
    """

    def __init__(self, encoding: nn.Module, hidden: int = 64, n_layers: int = 2, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.pair_energy = PairEnergy(encoding, hidden, n_layers, dtype=dtype)

    def forward(self, pos: torch.Tensor, pair_index: torch.Tensor, pair_molecule: torch.Tensor,
                n_molecules: int) -> torch.Tensor:
        """Energies ``[M]`` from positions ``[A, 3]``, pairs ``[2, P]`` and their molecules ``[P]``."""
        if pos.ndim != 2 or pos.shape[-1] != 3:
            raise ValueError(f"pos must be [A, 3], got {tuple(pos.shape)}")
        d = pos[pair_index[0]] - pos[pair_index[1]]  # [P, 3]
        r = torch.linalg.vector_norm(d, dim=-1)  # [P]
        e_pair = self.pair_energy(r)  # [P]
        return e_pair.new_zeros(n_molecules).index_add(0, pair_molecule, e_pair)  # [M]


def energy_and_force(model: PairEnergy, r: torch.Tensor,
                     create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E [...], F = -dE/dr [...])`` of a :class:`PairEnergy` by autograd.

    Args:
      create_graph: keep the graph of F (needed to train on forces).
    """
    with torch.enable_grad():
        r = r.detach().requires_grad_(True)
        energy = model(r)
        (grad,) = torch.autograd.grad(energy.sum(), r, create_graph=create_graph)
    return energy, -grad


def energy_and_forces(model: ClusterEnergy, pos: torch.Tensor, n_atoms: torch.Tensor,
                      create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E [M], F = -dE/dpos [A, 3])`` of a :class:`ClusterEnergy` for a ragged batch by autograd."""
    pair_index, pair_molecule = intra_pairs(n_atoms)
    with torch.enable_grad():
        pos = pos.detach().requires_grad_(True)
        energy = model(pos, pair_index, pair_molecule, int(n_atoms.numel()))
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    return energy, -grad


# --- training ------------------------------------------------------------------------------------
def _tensors(data: PairCurve | Molecules, idx: np.ndarray, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The selected samples as tensors in ``like``'s dtype/device."""
    f: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
    if isinstance(data, PairCurve):
        return {"r": torch.as_tensor(data.r[idx], **f), "energy": torch.as_tensor(data.energy[idx], **f),
                "force": torch.as_tensor(data.force[idx], **f)}
    sub = data.subset(idx)
    return {"pos": torch.as_tensor(sub.pos, **f), "n_atoms": torch.as_tensor(sub.n_atoms, device=like.device),
            "energy": torch.as_tensor(sub.targets[:, 0], **f), "force": torch.as_tensor(sub.forces, **f)}


def _predict(model: PairEnergy | ClusterEnergy, batch: dict[str, torch.Tensor],
            create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(energy, force)`` of either model on a batch from the data (r, or pos and n_atoms)."""
    if isinstance(model, ClusterEnergy):
        return energy_and_forces(model, batch["pos"], batch["n_atoms"], create_graph)
    return energy_and_force(model, batch["r"], create_graph)


def _energy(model: PairEnergy | ClusterEnergy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Energies alone (no force pass), for energy-only training."""
    if isinstance(model, ClusterEnergy):
        pair_index, pair_molecule = intra_pairs(batch["n_atoms"])
        return model(batch["pos"], pair_index, pair_molecule, int(batch["n_atoms"].numel()))
    return model(batch["r"])


def _check_pairing(model: nn.Module, data: PairCurve | Molecules) -> None:
    if isinstance(data, PairCurve) and not isinstance(model, PairEnergy):
        raise TypeError("a PairCurve trains a PairEnergy")
    if isinstance(data, Molecules) and not isinstance(model, ClusterEnergy):
        raise TypeError("Molecules (clusters) train a ClusterEnergy")
    if not isinstance(data, (PairCurve, Molecules)):
        raise TypeError(f"data must be a PairCurve or Molecules, got {type(data).__name__}")


def evaluate(model: PairEnergy | ClusterEnergy, data: PairCurve | Molecules,
             batch_size: int = 1024) -> tuple[float, float]:
    """Energy and force MAE of ``model`` on ``data`` (target units), in chunks."""
    _check_pairing(model, data)
    like = (model.pair_energy if isinstance(model, ClusterEnergy) else model).shift
    n = n_samples(data)
    e_err, f_err, n_f = 0.0, 0.0, 0
    for start in range(0, n, batch_size):
        batch = _tensors(data, np.arange(start, min(n, start + batch_size)), like)
        energy, force = _predict(model, batch)
        e_err += float((energy.detach() - batch["energy"]).abs().sum())
        f_err += float((force.detach() - batch["force"]).abs().sum())
        n_f += batch["force"].numel()
    return e_err / n, f_err / n_f


def fit(
    model: PairEnergy | ClusterEnergy,
    train: PairCurve | Molecules,
    test: PairCurve | Molecules | None = None,
    *,
    steps: int = 2000,
    lr: float = 3e-3,
    lam: float = 0.0,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    cosine: bool = True,
    progress: bool = True,
) -> FitResult:
    """Trains ``model`` on energies (and forces) with Adam; returns histories and test MAEs.

    Loss per step: ``energy_weight * mean(((E - E*) / energy_std)^2) + force_weight *
    mean(((F - F*) / force_rms)^2) + lam * total_smoothness_loss(model)``. The model's ``shift`` and
    ``scale`` are first set from ``train`` (see :func:`posenc.fitting.normalisation`). Deterministic
    given the model's initial weights and ``seed``, which fixes the batch order
    (:func:`posenc.fitting.batch_indices`).

    Args:
      model: a :class:`PairEnergy` (train on a :class:`~posenc.toys.PairCurve`) or a
        :class:`ClusterEnergy` (train on :class:`~posenc.data.molecules.Molecules` with forces).
      train, test: data; ``test`` defaults to ``train``.
      steps: optimiser steps.
      lr: Adam learning rate (peak of the cosine schedule when ``cosine``).
      lam: weight of the smoothness loss.
      energy_weight, force_weight: weights of the two data terms (force_weight=0 skips the
        double backward pass).
      batch_size: samples (pair curve) or molecules (clusters) per step.
      seed: batch order.
      cosine: decay the learning rate to 0 along a cosine (as ``optax.cosine_decay_schedule``).
      progress: show a tqdm bar.

    Returns:
      :class:`posenc.fitting.FitResult` (``params`` is None: the model is trained in place).
    """
    _check_pairing(model, train)
    if test is not None:
        _check_pairing(model, test)
    stats = normalisation(train)
    pair = model.pair_energy if isinstance(model, ClusterEnergy) else model
    with torch.no_grad():
        pair.shift.fill_(stats["shift"])
        pair.scale.fill_(stats["scale"])
    like = pair.shift
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps)) if cosine else 1.0)
    batches = batch_indices(n_samples(train), batch_size, steps, seed)
    hist = np.zeros((4, steps))
    use_forces = force_weight != 0.0
    start = time.perf_counter()
    for k in tqdm(range(steps), disable=not progress, desc="fit", leave=False):
        batch = _tensors(train, batches[k], like)
        if use_forces:
            energy, force = _predict(model, batch, create_graph=True)
            f_loss = (((force - batch["force"]) / stats["force_rms"]) ** 2).mean()
        else:
            energy = _energy(model, batch)
            f_loss = energy.new_zeros(())
        e_loss = (((energy - batch["energy"]) / stats["energy_std"]) ** 2).mean()
        smooth = total_smoothness_loss(model)
        loss = energy_weight * e_loss + force_weight * f_loss + lam * smooth
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist[:, k] = torch.stack([loss, e_loss, f_loss, smooth]).detach().tolist()
    seconds = time.perf_counter() - start
    e_mae, f_mae = evaluate(model, train if test is None else test)
    return FitResult(hist[0], hist[1], hist[2], hist[3], energy_mae=e_mae, force_mae=f_mae, seconds=seconds,
                     stats=stats)
