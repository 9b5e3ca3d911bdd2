"""Baselines that use no geometry: what a model must beat before its distances count.

The composition baseline is QM9's twin of MD17's "F = 0" line: a property predicted from the
atom counts alone, ``y ≈ b + Σ_e c_e · n_e(molecule)``, fitted by least squares on the training
set. Extensive targets (U0, H, G, ...) are mostly explained by it; intensive ones (HOMO, μ) hardly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from posenc.data.molecules import Molecules


def composition_counts(mols: Molecules, elements: Sequence[int]) -> np.ndarray:
    """Atom counts per element of every molecule.

    Args:
      mols: M molecules.
      elements: the K atomic numbers to count, in column order.

    Returns:
      ``[M, K]`` float64 counts.

    Raises:
      ValueError: a molecule has an element outside ``elements`` (its count would be lost).
    """
    elements = [int(e) for e in elements]
    unknown = sorted(set(np.unique(mols.z).tolist()) - set(elements))
    if unknown:
        raise ValueError(f"{mols.name or 'molecules'} hold elements {unknown} that the baseline was not "
                         f"fitted on (it knows {elements})")
    molecule = np.repeat(np.arange(len(mols)), mols.n_atoms)  # [A] molecule of each atom
    column = np.searchsorted(np.asarray(elements), mols.z)  # [A]
    counts = np.zeros((len(mols), len(elements)))
    np.add.at(counts, (molecule, column), 1.0)
    return counts


@dataclass(frozen=True)
class CompositionModel:
    """``y ≈ intercept + counts @ coef`` for one target.

    Attributes:
      elements: the K atomic numbers, sorted.
      coef: ``[K]`` contribution per atom of each element, in the target's unit.
      intercept: the constant term, in the target's unit.
      target: the target's name; unit: its unit.
    """

    elements: tuple[int, ...]
    coef: np.ndarray
    intercept: float
    target: str
    unit: str

    def predict(self, mols: Molecules) -> np.ndarray:
        """``[M]`` predictions for ``mols`` (see :func:`composition_counts` for the errors)."""
        return self.intercept + composition_counts(mols, self.elements) @ self.coef


def fit_composition(train: Molecules, target: str | int = 0) -> CompositionModel:
    """Least-squares fit of one target on the atom counts of ``train`` (with an intercept).

    Args:
      train: the training molecules.
      target: the target's name or column in ``train.targets``.

    Raises:
      ValueError: an unknown target, or fewer molecules than parameters.
    """
    column = _column(train, target)
    elements = tuple(int(e) for e in np.unique(train.z))
    if len(train) <= len(elements):
        raise ValueError(f"{len(train)} molecules cannot fit {len(elements) + 1} parameters")
    design = np.column_stack([np.ones(len(train)), composition_counts(train, elements)])  # [M, K + 1]
    solution = np.linalg.lstsq(design, train.targets[:, column], rcond=None)[0]
    return CompositionModel(elements, solution[1:], float(solution[0]), train.target_names[column],
                            train.target_units[column])


def composition_mae(train: Molecules, test: Molecules, target: str | int = 0) -> float:
    """Test MAE of the composition baseline fitted on ``train``, in the target's unit."""
    model = fit_composition(train, target)
    return float(np.abs(model.predict(test) - test.targets[:, _column(test, target)]).mean())


def _column(mols: Molecules, target: str | int) -> int:
    if isinstance(target, str):
        if target not in mols.target_names:
            raise ValueError(f"unknown target {target!r}; {mols.name or 'the molecules'} have {mols.target_names}")
        return mols.target_names.index(target)
    if not 0 <= target < len(mols.target_names):
        raise ValueError(f"target column {target} out of range for {len(mols.target_names)} targets")
    return int(target)
