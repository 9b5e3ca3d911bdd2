"""An ASE calculator around a trained posenc torch model: energies and forces for ASE's tools.

ASE (the Atomic Simulation Environment) runs molecular dynamics, geometry optimisation and
vibrational analysis with any object that follows its ``Calculator`` interface. This one wraps a
posenc energy model (EGNN, Transformer, DimeNet++ built by :func:`posenc.torch.models.make_model`)
so that a learned force field can drive an ASE simulation::

    calc = PosencCalculator.from_run("runs/md17-ethanol_egnn_hermite_lam0.01_seed0")
    atoms.calc = calc
    atoms.get_potential_energy()   # eV
    atoms.get_forces()             # eV/Angstrom, -dE/dr by autograd

Units: posenc models predict MD17 energies in meV (forces meV/Angstrom); ASE works in eV and
eV/Angstrom, so both are divided by 1000. Forces are the exact negative gradient of the
predicted energy, so an ASE integrator conserves the model's energy up to its time-step error --
as long as the energy is smooth (C1) in the positions, which the Hermite encoding is and the
linear-interpolation encoding (C0) is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from torch import nn

from posenc.torch.batching import collate
from posenc.data.molecules import Molecules
from posenc.torch.models import energy_and_forces, graph_cutoff
from posenc.torch.models.common import N_SPECIES

#: Energy units a model may predict in, and their size in eV.
ENERGY_UNITS_IN_EV: dict[str, float] = {"meV": 1e-3, "eV": 1.0}
CHECKPOINTS = ("best", "last")


class PosencCalculator(Calculator):
    """ASE calculator of a posenc model's energy (eV) and forces (eV/Angstrom).

    The model's first output is taken as the energy. The molecule is one graph: fully connected
    (EGNN, Transformer) or with the radius ``cutoff`` (DimeNet++). Periodic cells are rejected:
    the models know no periodic images.

    Args:
      model: ``model(batch) -> [1, T]`` energy in ``energy_unit`` (it is put in eval mode).
      energy_unit: the unit of the model's energy, ``"meV"`` (posenc's MD17 models) or ``"eV"``.
      cutoff: graph radius in Angstrom, None for a fully connected molecule.
      **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Raises:
      ValueError: an unknown ``energy_unit``.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: nn.Module, *, energy_unit: str = "meV", cutoff: float | None = None,
                 **kwargs: Any) -> None:
        if energy_unit not in ENERGY_UNITS_IN_EV:
            raise ValueError(f"energy_unit must be one of {sorted(ENERGY_UNITS_IN_EV)}, got {energy_unit!r}; "
                             "pass the unit the model's energy is in")
        super().__init__(**kwargs)
        self.model = model.eval()
        self.energy_unit = energy_unit
        self.to_ev = ENERGY_UNITS_IN_EV[energy_unit]
        self.cutoff = cutoff
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device

    @classmethod
    def from_run(cls, out_dir: str | Path, checkpoint: str = "best", *, energy_unit: str | None = None,
                 device: str = "cpu", **kwargs: Any) -> PosencCalculator:
        """The calculator of a training run's output directory (``result.json`` + a checkpoint).

        Args:
          out_dir: the ``out_dir`` of a torch run of :func:`posenc.trainer.train`.
          checkpoint: ``"best"`` (lowest validation error, what the test errors are of) or ``"last"``.
          energy_unit: overrides the unit from ``result.json`` (needed for the toy data sets,
            whose energies are in reduced units).
          device: torch device of the model.

        Raises:
          FileNotFoundError: no ``result.json`` or checkpoint in ``out_dir``.
          ValueError: a corrupt or foreign checkpoint, or a model whose energy unit is not an energy.
        """
        from posenc.torch.train import build_model, load_checkpoint
        from posenc.training import TrainConfig

        out_dir = Path(out_dir)
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
        result_path, ckpt_path = out_dir / "result.json", out_dir / f"{checkpoint}.pt"
        for path in (result_path, ckpt_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {out_dir} the output directory of a training run?")
        result = json.loads(result_path.read_text())
        config = TrainConfig.from_dict({**result["config"], "device": device})
        if config.backend != "torch":
            raise ValueError(f"{out_dir} is a {config.backend} run; the ASE calculator wraps torch models")
        unit = energy_unit or result["units"][0]
        state = load_checkpoint(ckpt_path)
        # the model's distance scale and range are the run's (the scale is also a buffer in the weights)
        model = build_model(config, tuple(state["x_range"]), len(result["units"]), state["distance_scale"])
        model.load_state_dict(state["model"])
        return cls(model, energy_unit=unit, cutoff=graph_cutoff(config.backbone), **kwargs)

    def calculate(self, atoms: Any = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = tuple(all_changes)) -> None:
        """Fills ``self.results`` with ``energy`` (eV) and ``forces`` ([N, 3] eV/Angstrom)."""
        super().calculate(atoms, list(properties), list(system_changes))
        if self.atoms.pbc.any():
            raise ValueError("PosencCalculator models isolated molecules: set atoms.pbc = False")
        z = self.atoms.get_atomic_numbers()
        if z.size == 0:
            raise ValueError("empty Atoms: no atoms to compute")
        if z.max() >= N_SPECIES:
            raise ValueError(f"atomic number {z.max()} exceeds the model's {N_SPECIES - 1}")
        mols = Molecules(z=z, pos=self.atoms.get_positions(), n_atoms=np.array([z.size]), targets=np.zeros((1, 1)),
                         target_names=("energy",), target_units=(self.energy_unit,))
        batch = collate(mols, [0], cutoff=self.cutoff, dtype=self.dtype, device=self.device)
        energy, forces = energy_and_forces(self.model, batch)
        self.results["energy"] = float(energy[0, 0].detach()) * self.to_ev
        self.results["forces"] = forces.detach().cpu().double().numpy() * self.to_ev
