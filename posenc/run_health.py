"""Flags for a training run that is not learning: stuck, spiking or non-finite (numpy).

A run can look finished and still be no result: 14 committed runs once sat at the error of
predicting zero forces after a first-epoch spike. :class:`RunHealth` watches the per-step losses
the trainer fetches once per epoch and raises, after the learning-rate warm-up:

* ``stuck``: the epoch-mean training data loss stays at >= 0.9 x the zero-prediction loss
  (:func:`zero_prediction_loss`, the loss of a model whose raw output is 0) for 10 consecutive
  epochs, or for every post-warm-up epoch of a run with fewer than 10 of them. Ten, not fewer:
  models that read one scalar of the distance (EGNN's raw d^2, the MLP encoding) leave the
  plateau slowly but surely (measured at the default recipe: epoch 5 on MD17 ethanol, 8 on
  malonaldehyde), while the runs this flag is for never leave it;
* ``spike``: an epoch's mean training loss exceeds 10 x the median of the previous 10 epochs'
  means (at least :attr:`RunHealth.min_window` of them). Epoch means, not single steps: late in
  a healthy run one batch of 16 frames can cost 20 x the median step (measured on MD17 ethanol,
  raw d^2, around epoch 200 of 1,000) and the next steps are back to normal, while a run that
  diverges stays up for the rest of its epoch;

and, from the first step on, ``non-finite``: a step's loss is NaN or inf. The trainer then
stops at once and keeps the last good checkpoints. A flagged run is reported as such in its
metrics (``flags`` column), its ``result.json`` (``flags``, ``status``) and the CLI's last line,
and is never summarised as a result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from posenc.data.molecules import Molecules

FLAGS = ("stuck", "spike", "non-finite")


def zero_prediction_loss(train: Molecules, stats: dict[str, np.ndarray], *, loss: str = "mse",
                         energy_weight: float = 0.01, force_weight: float = 0.99) -> float:
    """The training data loss of a model whose raw output is 0, over the whole training set.

    Such a model predicts the per-atom reference fit of :func:`posenc.training.output_stats`
    (``sum_i atom_ref[z_i] + mol_shift``) and zero forces. With forces the loss is
    ``w_E err((E_fit - E*) / s) + w_F err(F* / s)``, whose force part is exactly ``w_F`` for the
    default MSE loss and force-RMS scale; without forces (QM9) ``err((y_fit - y*) / s)``.

    Args:
      train: the training set.
      stats: ``{"scale": [T], "atom_ref": [n_species, T], "mol_shift": [T]}``.
      loss: ``mse`` or ``l1``, as in the config.
      energy_weight, force_weight: the weights of the loss terms.

    Returns:
      The loss, dimensionless (targets divided by the training scale).
    """
    if loss not in ("mse", "l1"):
        raise ValueError(f"loss must be mse|l1, got {loss!r}")
    err = np.square if loss == "mse" else np.abs
    mol = np.repeat(np.arange(len(train)), train.n_atoms)
    fit = np.zeros_like(train.targets, dtype=np.float64)  # [M, T]
    np.add.at(fit, mol, stats["atom_ref"][train.z])
    fit += stats["mol_shift"]
    scale = np.asarray(stats["scale"], dtype=np.float64)
    energy = float(np.mean(err((fit - train.targets) / scale)))
    if train.forces is None:
        return energy
    return energy_weight * energy + force_weight * float(np.mean(err(train.forces / scale[0])))


@dataclass
class RunHealth:
    """Watches a run's per-step losses epoch by epoch and names what goes wrong.

    Attributes:
      zero_loss: the zero-prediction loss (:func:`zero_prediction_loss`).
      warmup_steps: steps of the learning-rate warm-up; ``stuck`` and ``spike`` wait for its end.
      steps_per_epoch: optimiser steps per epoch.
      epochs: epochs of the whole run (for a run with fewer than ``stuck_epochs`` after the warm-up).
      stuck_ratio, stuck_epochs: ``stuck`` when the epoch-mean data loss is >= ``stuck_ratio`` x
        ``zero_loss`` for ``stuck_epochs`` consecutive post-warm-up epochs.
      spike_factor, window, min_window: ``spike`` when an epoch's mean loss exceeds
        ``spike_factor`` x the median of the previous ``window`` epochs' means (at least
        ``min_window`` of them).
      recent: the last ``window`` epochs' mean losses (the running window).
      stuck_run: consecutive post-warm-up epochs at the zero-prediction loss so far.
      messages: one line per flag raised, ``"<flag> at epoch <k>...: <numbers>"``.
    """

    zero_loss: float
    warmup_steps: int
    steps_per_epoch: int
    epochs: int
    stuck_ratio: float = 0.9
    stuck_epochs: int = 10
    spike_factor: float = 10.0
    window: int = 10
    min_window: int = 3
    recent: list[float] = field(default_factory=list)
    stuck_run: int = 0
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1 or self.epochs < 1 or self.warmup_steps < 0:
            raise ValueError("steps_per_epoch and epochs must be >= 1 and warmup_steps >= 0")

    @property
    def first_checked_epoch(self) -> int:
        """The first epoch (0-based) that starts after the warm-up."""
        return -(-self.warmup_steps // self.steps_per_epoch)

    @property
    def stopped(self) -> bool:
        """True once a non-finite loss was seen: the run must stop without saving."""
        return any(m.startswith("non-finite") for m in self.messages)

    def check_epoch(self, epoch: int, steps: np.ndarray) -> list[str]:
        """Checks one epoch's steps and returns the flags it raised (names from :data:`FLAGS`).

        Args:
          epoch: the epoch, 0-based.
          steps: ``[n_steps, 3]`` per-step (loss, data loss, smoothness loss) of the epoch.
        """
        steps = np.asarray(steps, dtype=np.float64).reshape(-1, 3)
        first_step = epoch * self.steps_per_epoch
        raised: list[str] = []
        bad = np.flatnonzero(~np.isfinite(steps).all(axis=1))
        if bad.size:
            k = int(bad[0])
            self.messages.append(f"non-finite at epoch {epoch + 1} (step {first_step + k + 1}): loss "
                                 f"{steps[k, 0]:g}, data {steps[k, 1]:g}; run stopped, checkpoints kept")
            return ["non-finite"]
        mean = float(steps[:, 0].mean())
        if epoch >= self.first_checked_epoch and len(self.recent) >= self.min_window:
            median = float(np.median(self.recent))
            if mean > self.spike_factor * median:
                raised.append("spike")
                self.messages.append(f"spike at epoch {epoch + 1}: mean training loss {mean:.4g} > "
                                     f"{self.spike_factor:g} x the median {median:.4g} of the previous "
                                     f"{len(self.recent)} epochs")
        self.recent = [*self.recent[-(self.window - 1):], mean]
        if epoch >= self.first_checked_epoch:
            data = float(steps[:, 1].mean())
            self.stuck_run = self.stuck_run + 1 if data >= self.stuck_ratio * self.zero_loss else 0
            checked = self.epochs - self.first_checked_epoch
            needed = min(self.stuck_epochs, checked)
            if self.stuck_run == needed and (self.stuck_run == self.stuck_epochs or epoch + 1 == self.epochs):
                raised.append("stuck")
                self.messages.append(f"stuck at epoch {epoch + 1}: training data loss {data:.4g} >= "
                                     f"{self.stuck_ratio:g} x zero-prediction loss {self.zero_loss:.4g} "
                                     f"for {self.stuck_run} epochs after the warm-up")
        return raised

    def state(self) -> dict[str, Any]:
        """A plain dict (floats, ints, strings, lists) to save in a checkpoint."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunHealth:
        """The watcher saved by :meth:`state` (a resumed run continues its window and counts)."""
        return cls(**state)
