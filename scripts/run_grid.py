"""The comparison grid of the paper's Tables 1 and 2, the lr study and the ablation study.

MD17 (Table 1): molecules x backbones {egnn, transformer} x arms {raw, posenc, smooth} x splits;
QM9 (Table 2): targets x egnn x arms {raw, mlp, posenc, smooth} x seeds. Every run goes through
:func:`posenc.trainer.train` with one :class:`posenc.training.TrainConfig`, ``--jobs`` at a time,
one torch thread each, as ``submitit`` jobs (``--executor local``: processes on this machine;
``--executor slurm``: SLURM jobs; with local and ``--jobs 1``, in this process). The main arms differ
only in the distance encoding and in the learning rate each was given by the lr study:

=======  ==========================================================================
raw      the backbone's own distance feature (EGNN: d^2)
mlp      the paper's 2-layer ReLU MLP of d (QM9's "+MLP" row)
posenc   Hermite table encoding (64 bins x 32, sinusoidal init), lambda = 0
smooth   the same table with the smoothness loss, lambda = :data:`LAM_SMOOTH`
=======  ==========================================================================

Studies (``--study``, MD17 ethanol in the committed results):

* ``lr``: raw, posenc and smooth at every rate of :data:`LR_CANDIDATES`; :func:`select_rates`
  picks each arm's rate by validation error, and :data:`TUNED_LR` holds the choice;
* ``ablation``: posenc with one knob changed (frozen tables, initialisation, n_bin, dim, range,
  lambda, the tables' learning rate, linear interpolation, a Gaussian basis), see :data:`ARMS`;
* ``long``: raw, posenc and posenc-frozen for :data:`LONG_EPOCHS` epochs.

Files: each run trains in the git-ignored scratch directory ``.scratch/`` (checkpoints are large and
deleted once the run is finished) and copies its small files to
``results/runs/<dataset>/<backbone>/<arm>/seed<k>/``: ``result.json``, ``metrics.csv`` and (for
table encodings) ``encoding_tables.npz`` from the training code, and ``run_info.json`` (wall and
CPU seconds, and for table encodings how far the tables moved from their initialisation). A finished run is
skipped on the next call, an unfinished one resumes from its scratch checkpoint. A run flagged by
:mod:`posenc.run_health` (stuck at the zero-prediction loss, a loss spike, a non-finite loss) has failed: it
is not rerun, never enters a summary, and is listed as failed in the log and in ``results/README.md``. Then the
finished, unflagged runs are aggregated into
``results/md17_summary.csv`` / ``results/qm9_summary.csv`` (mean and sample std over seeds) and
``results/README.md`` (commands, versions, machine, budget, date, the tables).

Examples::

    python scripts/run_grid.py --dataset md17 --molecules ethanol aspirin malonaldehyde \\
        --arms raw posenc smooth --seeds 1 2 3 --budget reduced --jobs 2
    python scripts/run_grid.py --dataset qm9 --targets U0 homo --arms raw posenc smooth --seeds 1
    python scripts/run_grid.py --dataset md17 --study lr --molecules ethanol --seeds 1 --jobs 2
    python scripts/run_grid.py --dataset md17 --study ablation --molecules ethanol --seeds 1 --jobs 2
    python scripts/run_grid.py --dataset md17 --study long --molecules ethanol --seeds 1 --jobs 2
    python scripts/run_grid.py --dataset md17 --seeds 1 2 3 5 --budget full --executor slurm \\
        --slurm-partition cpu --jobs 40
    python scripts/run_grid.py --aggregate-only
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from posenc.runs import is_flagged

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "results"
DEFAULT_SCRATCH = Path(os.environ.get("POSENC_GRID_SCRATCH", REPO / ".scratch"))

#: Weight lambda of the smoothness loss in the "smooth" arm. The paper gives no value; 0.01 is a
#: middle choice that was NOT tuned (the calibration note: 0.1 already flattens a smooth table;
#: the ablation's ``smooth-lam*`` arms measure 0.1 and 1).
LAM_SMOOTH = 0.01
#: Learning rates tried for every main arm, the same way (``--study lr``: MD17 ethanol, split 1).
LR_CANDIDATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: The rate each main arm uses: the candidate with the lowest *validation* force MAE in the lr
#: study (``results/runs/md17-ethanol/egnn/<arm>-lr*/``; ``tests/test_run_grid.py`` checks that
#: these agree with the committed study).
#: QM9 runs use one rate for every arm: the lr study is on MD17 forces, a different loss.
QM9_LR = 1e-3
TUNED_LR: dict[str, float] = {"raw": 3e-3, "mlp": 3e-3, "posenc": 1e-2, "smooth": 3e-3}


@dataclass(frozen=True)
class Arm:
    """One distance-encoding setting of the grid.

    Attributes:
      encoding: the TrainConfig encoding.
      lam: the smoothness weight lambda.
      config: further TrainConfig fields (init, n_bin, dim, range, freezing, table rate, lr).
      note: one line for the README and the ablation table.
    """

    encoding: str
    lam: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _main_arms() -> dict[str, Arm]:
    base = {"raw": Arm("raw", note="the backbone's own distance feature (EGNN: d^2)"),
            "mlp": Arm("mlp", note="the paper's 2-layer ReLU MLP of d"),
            "posenc": Arm("hermite", note="Hermite table, 64 bins x 32, sinusoidal init"),
            "smooth": Arm("hermite", LAM_SMOOTH, note=f"the same table with lambda = {LAM_SMOOTH:g}")}
    arms = {name: dataclasses.replace(arm, config={"lr": TUNED_LR[name]}) for name, arm in base.items()}
    for name in ("raw", "posenc", "smooth"):  # the lr study
        for lr in LR_CANDIDATES:
            arms[f"{name}-lr{lr:g}"] = dataclasses.replace(base[name], config={"lr": lr},
                                                           note=f"{name} at lr {lr:g} (lr study)")
    return arms


def _ablation_arms() -> dict[str, Arm]:
    """Variations of ``posenc`` one knob at a time (everything else, the rate included, as posenc)."""
    lr = {"lr": TUNED_LR["posenc"]}
    one = {  # name: (encoding, lambda, changes, note)
        "posenc-frozen": ("hermite", 0.0, {"freeze_tables": True}, "sinusoidal table never trained (fixed basis)"),
        "posenc-frozen-rate0.003": ("hermite", 0.0, {"freeze_tables": True, "lr": 3e-3},
                                    "the frozen control again at lr 3e-3 (posenc-lr0.003 is its trained twin)"),
        "posenc-normal": ("hermite", 0.0, {"init": "normal"}, "i.i.d. N(0, 1) values, zero slopes"),
        "posenc-normal-frozen": ("hermite", 0.0, {"init": "normal", "freeze_tables": True},
                                 "random table never trained"),
        "smooth-normal-lam0.1": ("hermite", 0.1, {"init": "normal"}, "random table, lambda = 0.1"),
        "posenc-gaussian-init": ("hermite", 0.0, {"init": "gaussian"}, "Gaussian-bump init"),
        "posenc-nbin16": ("hermite", 0.0, {"n_bin": 16}, "16 bins"),
        "posenc-nbin256": ("hermite", 0.0, {"n_bin": 256}, "256 bins"),
        "posenc-dim8": ("hermite", 0.0, {"dim": 8}, "dim 8"),
        "posenc-dim128": ("hermite", 0.0, {"dim": 128}, "dim 128"),
        "posenc-range-tight": ("hermite", 0.0, {"x_min": 0.7}, "range from 0.7 A (the shortest bond is 0.88 A)"),
        "posenc-range-wide": ("hermite", 0.0, {"x_max": 10.0}, "range to 10 A (half the bins unreached)"),
        "smooth-lam0.01": ("hermite", 0.01, {}, "lambda = 0.01 (the smooth arm's lambda at posenc's rate)"),
        "smooth-lam0.1": ("hermite", 0.1, {}, "lambda = 0.1"),
        "smooth-lam1": ("hermite", 1.0, {}, "lambda = 1"),
        "posenc-tablelr0.1": ("hermite", 0.0, {"table_lr_scale": 0.1}, "tables at 0.1 x lr"),
        "posenc-tablelr10": ("hermite", 0.0, {"table_lr_scale": 10.0}, "tables at 10 x lr"),
        "posenc-tablelr100": ("hermite", 0.0, {"table_lr_scale": 100.0}, "tables at 100 x lr"),
        "linear": ("linear", 0.0, {}, "linear (C0) interpolation of the same table"),
        "gaussian": ("gaussian", 0.0, {}, "Gaussian RBF expansion, 50 fixed centres (no table)"),
    }
    return {name: Arm(enc, lam, {**lr, **changes}, note) for name, (enc, lam, changes, note) in one.items()}


#: Epochs of the long check on a 9-atom molecule (ethanol): 5x the reduced budget, about 9
#: CPU-minutes for the Hermite EGNN on one thread here (raw: about 5; the calibration note: 12).
LONG_EPOCHS = 100


def _long_arms() -> dict[str, Arm]:
    """raw, posenc and posenc-frozen trained ``LONG_EPOCHS`` epochs: does the picture change nearer convergence?"""
    arms = {"raw": _main_arms()["raw"], "posenc": _main_arms()["posenc"],
            "posenc-frozen": _ablation_arms()["posenc-frozen"]}
    long = {f"{name}-long": dataclasses.replace(arm, config={**arm.config, "epochs": LONG_EPOCHS},
                                                note=f"{arm.note}, {LONG_EPOCHS} epochs")
            for name, arm in arms.items()}
    # raw at its tuned 3e-3 collapses to F = 0 over the longer schedule; 1e-3 is the calibration note's rate
    long["raw-long-lr0.001"] = dataclasses.replace(long["raw-long"], config={"lr": 1e-3, "epochs": LONG_EPOCHS},
                                                   note=f"raw d^2 at lr 1e-3, {LONG_EPOCHS} epochs")
    # posenc's 1e-2 collapses the frozen table over the longer schedule: the pair again at 3e-3
    for name in ("posenc-long", "posenc-frozen-long"):
        arm = long[name]
        long[f"{name}-rate0.003"] = dataclasses.replace(arm, config={**arm.config, "lr": 3e-3},
                                                        note=f"{arm.note}, lr 3e-3")
    return long


#: Epochs of the engine study: long enough to leave the warm-up and the zero-prediction plateau.
ENGINE_EPOCHS = 30
#: Epochs of the proof runs: about the calibration note's 650-800, with the default cosine.
PROOF_EPOCHS = 1000


def _engine_arms() -> dict[str, Arm]:
    """Every distance encoding at the default recipe (``TrainConfig``'s lr and warm-up, no tuning):
    the training engine's stability check, ``ENGINE_EPOCHS`` epochs each."""
    one = {  # name: (encoding, lambda, changes, note)
        "raw": ("raw", 0.0, {}, "EGNN's d^2 over the training set's mean"),
        "mlp": ("mlp", 0.0, {}, "2-layer ReLU MLP of the scaled distance"),
        "gaussian": ("gaussian", 0.0, {}, "Gaussian RBF, 50 fixed centres"),
        "bessel": ("bessel", 0.0, {}, "DimeNet's radial Bessel basis, 16 functions"),
        "linear": ("linear", 0.0, {}, "linear (C0) table, 64 bins x 32"),
        "hermite": ("hermite", 0.0, {}, "Hermite table, 64 bins x 32"),
        "hermite-frozen": ("hermite", 0.0, {"freeze_tables": True}, "Hermite table never trained"),
        "hermite-lam0.1": ("hermite", 0.1, {}, "Hermite table, lambda = 0.1"),
    }
    return {f"engine-{name}": Arm(enc, lam, {"epochs": ENGINE_EPOCHS, **changes},
                                  f"{note}; default recipe, {ENGINE_EPOCHS} epochs")
            for name, (enc, lam, changes, note) in one.items()}


def _proof_arms() -> dict[str, Arm]:
    """raw and Hermite at the default recipe for ``PROOF_EPOCHS`` epochs (the engine's proof)."""
    return {f"proof-{name}": Arm(name, 0.0, {"epochs": PROOF_EPOCHS}, f"default recipe, {PROOF_EPOCHS} epochs")
            for name in ("raw", "hermite")}


#: Arm name -> :class:`Arm`: the main arms, the lr study, the ablation study, the long check, the
#: engine's stability study and its proof runs.
ARMS: dict[str, Arm] = {**_main_arms(), **_ablation_arms(), **_long_arms(), **_engine_arms(), **_proof_arms()}
ABLATION_ARMS = tuple(_ablation_arms())
LONG_ARMS = tuple(_long_arms())
ENGINE_ARMS = tuple(_engine_arms())
PROOF_ARMS = tuple(_proof_arms())
MD17_ARMS = ("raw", "posenc", "smooth")
LR_STUDY_ARMS = tuple(f"{name}-lr{lr:g}" for name in MD17_ARMS for lr in LR_CANDIDATES)
QM9_ARMS = ("raw", "mlp", "posenc", "smooth")
MD17_BACKBONES = ("egnn", "transformer")
#: Files a run leaves in the results tree (small, committed); the tables only where the encoding has them.
KEPT_FILES = ("result.json", "metrics.csv")
KEPT_IF_PRESENT = ("encoding_tables.npz",)


def md17_atoms(molecule: str) -> int:
    """Atoms of an MD17 molecule (6 for ``synthetic``, the toy Morse clusters)."""
    from posenc.data.md17 import MD17_N_ATOMS

    return 6 if molecule == "synthetic" else MD17_N_ATOMS[molecule]


@dataclass(frozen=True)
class Budget:
    """How long and how big every run of a grid is (identical for all arms).

    Attributes:
      name: ``reduced``, ``full`` or a test's name.
      md17_epochs_9: epochs of a 9-atom MD17 molecule (ethanol, malonaldehyde).
      md17_cost_power: epochs of a molecule of n atoms are ``md17_epochs_9 * (9 / n) ** power``
        (rounded, at least ``min_epochs``), so every molecule costs about the same time: one
        epoch's time grows like n^1.6 between ethanol and aspirin on a CPU (measured). 0: the
        same epochs for every molecule.
      min_epochs: lower bound of the MD17 epochs.
      qm9_epochs, qm9_subset: QM9 epochs and molecules loaded in all (None: the whole split).
      config: further TrainConfig fields of every run (model size, batch, lr, test size, ...).
      description: one line for the README.
    """

    name: str
    md17_epochs_9: int
    md17_cost_power: float
    min_epochs: int
    qm9_epochs: int
    qm9_subset: int | None
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def md17_epochs(self, molecule: str) -> int:
        return max(self.min_epochs, round(self.md17_epochs_9 * (9 / md17_atoms(molecule)) ** self.md17_cost_power))


BUDGETS: dict[str, Budget] = {
    "reduced": Budget(
        name="reduced", md17_epochs_9=20, md17_cost_power=1.0, min_epochs=8, qm9_epochs=10, qm9_subset=2620,
        config={"n_layers": 4, "hidden": 64, "batch_size": 16, "schedule": "cosine", "device": "cpu"},
        description=("CPU, one torch thread per run, 1-3 CPU-minutes of training per MD17 run (sized so that "
                     "the grid, the lr study, the ablation and the QM9 runs fit in about an hour on 2 cores): "
                     "MD17 950 train + 50 val frames, all 1,000 test frames, EGNN 4x64, batch 16, Adam with "
                     "the arm's tuned lr and a per-step cosine decay to 1e-5, 20 epochs for a 9-atom molecule "
                     "(ethanol, malonaldehyde), max(8, 20 * 9/n) for n atoms (aspirin: 9); QM9: 2,620 molecules "
                     "of the EGNN split (2,003 train / 355 val / 262 test), 10 epochs"),
    ),
    "full": Budget(
        name="full", md17_epochs_9=2000, md17_cost_power=0.0, min_epochs=2000, qm9_epochs=1000, qm9_subset=None,
        config={"n_layers": 4, "hidden": 64, "batch_size": 16, "schedule": "cosine", "device": "cuda"},
        description=("one GPU per run (the paper's scale; the paper gives no hyperparameters, these are ours): "
                     "MD17 950 + 50 frames, 1,000 test, EGNN 4x64, batch 16, Adam 1e-3 cosine to 1e-5, "
                     "2,000 epochs; QM9 the whole EGNN split (100,000 / 17,748 / 13,083), 1,000 epochs"),
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: where its files go and its training config (as a dict)."""

    dataset: str  # TrainConfig.dataset, e.g. "md17:ethanol"
    backbone: str
    arm: str
    seed: int
    config: dict[str, Any]

    @property
    def rel_dir(self) -> Path:
        """``runs/<dataset>/<backbone>/<arm>/seed<k>`` (the dataset with ``:`` -> ``-``)."""
        return Path("runs") / Path(self.dataset.replace(":", "-")) / self.backbone / self.arm / f"seed{self.seed}"


def _spec(dataset: str, backbone: str, arm: str, seed: int, epochs: int, budget: Budget,
          extra: dict[str, Any]) -> RunSpec:
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")
    spec = ARMS[arm]
    config = {**budget.config, "epochs": epochs, **spec.config, **extra, "dataset": dataset, "backbone": backbone,
              "encoding": spec.encoding, "lam": spec.lam, "seed": seed}
    return RunSpec(dataset, backbone, arm, seed, config)


def expand_grid(*, md17_molecules: Sequence[str] = (), qm9_targets: Sequence[str] = (),
                backbones: Sequence[str] = ("egnn",), md17_arms: Sequence[str] = MD17_ARMS,
                qm9_arms: Sequence[str] = QM9_ARMS, seeds: Sequence[int] = (1,),
                budget: Budget = BUDGETS["reduced"]) -> list[RunSpec]:
    """Every run of the grid, seed-major (all of seed 1 first, so a cut-short grid is balanced).

    MD17 runs use split k with seed k (``md17_split`` = ``seed``); the molecule ``synthetic`` means
    the toy data set ``synthetic:md17``. QM9 runs always use the EGNN backbone (as in Table 2's
    EGNN rows) and seed k for the model; the QM9 split itself is the upstream one.

    Raises:
      ValueError: an unknown arm or backbone, or an MD17 split outside 1..5.
    """
    bad = [b for b in backbones if b not in MD17_BACKBONES]
    if bad:
        raise ValueError(f"unknown MD17 backbone(s) {bad}; choose from {MD17_BACKBONES}")
    specs = []
    for seed in seeds:
        for molecule in md17_molecules:
            if molecule != "synthetic" and not 1 <= seed <= 5:
                raise ValueError(f"MD17 has splits 1..5, got seed/split {seed}")
            dataset = "synthetic:md17" if molecule == "synthetic" else f"md17:{molecule}"
            extra = {} if molecule == "synthetic" else {"md17_split": seed, "md17_labels": "md17"}
            for backbone in backbones:
                for arm in md17_arms:
                    specs.append(_spec(dataset, backbone, arm, seed, budget.md17_epochs(molecule), budget, extra))
        for target in qm9_targets:
            dataset = "synthetic:qm9" if target == "synthetic" else f"qm9:{target}"
            extra = {"lr": QM9_LR, **({} if target == "synthetic" else {"qm9_subset": budget.qm9_subset})}
            for arm in qm9_arms:
                specs.append(_spec(dataset, "egnn", arm, seed, budget.qm9_epochs, budget, extra))
    return specs


# ----------------------------------------------------------------------------------------------
# One run (in a worker process)


def pair_distances(mols: Any) -> np.ndarray:
    """Every interatomic distance inside each molecule of a :class:`posenc.data.molecules.Molecules` (Angstrom)."""
    out = []
    for n in np.unique(mols.n_atoms):
        same = np.flatnonzero(mols.n_atoms == n)
        pos = mols.pos[mols.atom_index(same)].reshape(same.size, n, 3)  # [m, n, 3]
        iu = np.triu_indices(int(n), k=1)
        out.append(np.linalg.norm(pos[:, iu[0]] - pos[:, iu[1]], axis=-1).ravel())
    return np.concatenate(out)


def reached_bins(distances: np.ndarray, n_bin: int, x_min: float, x_max: float) -> np.ndarray:
    """``[n_bin]`` bool: the rows a Hermite/linear table reads for at least one of ``distances``.

    A distance in ``[c_i, c_{i+1})`` reads rows i and i+1; the other rows get no gradient from it.
    """
    from posenc.spline import bin_centres

    counts = np.histogram(distances, bins=bin_centres(n_bin, x_min, x_max))[0] > 0  # [n_bin - 1]
    reached = np.zeros(n_bin, dtype=bool)
    reached[:-1] |= counts
    reached[1:] |= counts
    return reached


def _rel_change(new: np.ndarray, old: np.ndarray) -> float:
    """||new - old|| / ||old|| (NaN for an empty or all-zero ``old``, e.g. zero initial slopes)."""
    norm = float(np.linalg.norm(old)) if old.size else 0.0
    return float(np.linalg.norm(new - old) / norm) if norm > 0 else float("nan")


def table_movement(npz_path: str | os.PathLike, init: str = "sinusoidal",
                   distances: np.ndarray | None = None) -> list[dict[str, float]]:
    """How far each layer's learned table moved from its initialisation.

    Args:
      npz_path: an ``encoding_tables.npz`` of the training code.
      init: the tables' initialisation, used when the file does not hold the initial tables
        (``init_values_layer{i}``; files of older runs); it must then be deterministic.
      distances: the training distances (Angstrom); with them the change is also split into the
        rows the data reach and the rows only the smoothness loss can move.

    Returns:
      One dict per layer: ``values_rel_change`` = ||V - V0||_F / ||V0||_F (and the same for the
      slopes when present), the smoothness ratio L_smooth of the table before and after, and with
      ``distances`` ``bins_reached`` and ``values_rel_change_reached`` / ``_unreached``.
    """
    from posenc.init import initial_tables
    from posenc.interpret import smoothness_loss

    with np.load(npz_path) as f:
        arrays = dict(f)
    x_min, x_max = float(arrays["x_min"]), float(arrays["x_max"])
    out = []
    for layer in range(sum(k.startswith("values_layer") for k in arrays)):
        values = arrays[f"values_layer{layer}"]
        if f"init_values_layer{layer}" in arrays:
            v0, s0 = arrays[f"init_values_layer{layer}"], arrays.get(f"init_slopes_layer{layer}")
        else:
            v0, s0 = initial_tables(init, values.shape[0], values.shape[1], x_min, x_max)
        row = {"layer": layer, "values_rel_change": _rel_change(values, v0),
               "smooth_init": smoothness_loss(v0), "smooth_final": smoothness_loss(values)}
        if distances is not None:
            reached = reached_bins(distances, values.shape[0], x_min, x_max)
            row["bins_reached"] = int(reached.sum())
            row["values_rel_change_reached"] = _rel_change(values[reached], v0[reached])
            row["values_rel_change_unreached"] = _rel_change(values[~reached], v0[~reached])
        if f"slopes_layer{layer}" in arrays:
            slopes = arrays[f"slopes_layer{layer}"]
            row["slopes_rel_change"] = _rel_change(slopes, s0)
        out.append(row)
    return out


def portable_result(path: Path, rel_dir: Path) -> None:
    """Rewrites a kept ``result.json`` so it names no machine-local path: its ``out_dir`` (and the
    config's) become the run's directory relative to the results tree."""
    result = json.loads(path.read_text())
    result["out_dir"] = result["config"]["out_dir"] = rel_dir.as_posix()
    path.write_text(json.dumps(result, indent=1))


def run_one(spec: RunSpec, results_dir: str, scratch_dir: str) -> dict[str, Any]:
    """Trains one run (resuming an unfinished scratch run), then copies its small files.

    Returns:
      The ``run_info.json`` payload.
    """
    import torch

    from posenc.trainer import train
    from posenc.training import TrainConfig

    torch.set_num_threads(1)
    scratch = Path(scratch_dir) / spec.rel_dir
    keep = Path(results_dir) / spec.rel_dir
    resume = any(scratch.glob("last.*"))
    config = TrainConfig.from_dict({**spec.config, "out_dir": str(scratch), "resume": resume,
                                    "threads": 1, "progress": False})
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    info: dict[str, Any] = {
        "dataset": spec.dataset, "backbone": spec.backbone, "arm": spec.arm, "seed": spec.seed,
        "finished": result.finished, "wall_seconds": wall, "cpu_seconds": cpu, "resumed": resume,
        "test": result.test, "best_epoch": result.best_epoch, "status": result.status, "flags": result.flags,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if result.finished:
        tables = table_stats(spec, scratch)
        if tables is not None:
            info["tables"] = tables
    keep.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        shutil.copyfile(scratch / name, keep / name)
    portable_result(keep / "result.json", spec.rel_dir)
    for name in KEPT_IF_PRESENT:
        if (scratch / name).is_file():
            shutil.copyfile(scratch / name, keep / name)
    (keep / "run_info.json").write_text(json.dumps(info, indent=1))
    if result.finished or result.flags:  # the checkpoints are no longer needed
        for path in [*scratch.glob("best.*"), *scratch.glob("last.*")]:
            path.unlink()
    return info


def table_stats(spec: RunSpec, scratch: Path) -> list[dict[str, float]] | None:
    """:func:`table_movement` of a finished run's tables with its training distances; None without tables."""
    from posenc.training import TrainConfig, load_data

    from posenc.encoding_defaults import TABLE_ENCODINGS

    path = scratch / "encoding_tables.npz"
    if spec.config["encoding"] not in TABLE_ENCODINGS or not path.is_file():
        return None
    config = TrainConfig.from_dict({**spec.config, "progress": False})
    return table_movement(path, config.init or "sinusoidal", pair_distances(load_data(config)["train"]))


def refresh_tables(specs: Sequence[RunSpec], results_dir: Path, scratch_dir: Path, log: Any = print) -> int:
    """Recomputes the ``tables`` entry of finished runs' ``run_info.json`` from their scratch tables.

    Returns:
      How many runs were updated.
    """
    updated = 0
    for spec in specs:
        info_path = results_dir / spec.rel_dir / "run_info.json"
        if run_state(spec, results_dir) != "done" or not info_path.is_file():
            continue
        tables = table_stats(spec, scratch_dir / spec.rel_dir)
        if tables is None:
            continue
        info = json.loads(info_path.read_text())
        info["tables"] = tables
        info_path.write_text(json.dumps(info, indent=1))
        updated += 1
        log(f"tables refreshed: {spec.rel_dir}")
    return updated


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# The grid


def select_rates(results_dir: Path, molecule: str = "ethanol", seed: int = 1) -> dict[str, float]:
    """The lr study's choice for each main MD17 arm: the candidate with the lowest validation force MAE.

    Only the validation error (``best_val`` of ``result.json``) is looked at, never the test error.

    Raises:
      RuntimeError: a candidate's run is missing or unfinished, or every candidate is flagged.
    """
    chosen = {}
    for arm in MD17_ARMS:
        vals = {}
        for lr in LR_CANDIDATES:
            run = results_dir / "runs" / f"md17-{molecule}" / "egnn" / f"{arm}-lr{lr:g}"
            path = run / f"seed{seed}" / "result.json"
            result = json.loads(path.read_text()) if path.is_file() else {}
            if not result.get("finished"):
                raise RuntimeError(f"the lr study's run {arm} at lr {lr:g} is missing or unfinished ({path})")
            if not is_flagged(result):  # a flagged run is no result, whatever its validation error
                vals[lr] = result["best_val"]
        if not vals:
            raise RuntimeError(f"every lr study run of {arm} is flagged")
        chosen[arm] = min(vals, key=vals.get)
    return chosen


#: Config keys that say where a run executes, not what it is: :func:`run_state` does not compare them.
EXECUTION_KEYS = frozenset({"device"})


def run_state(spec: RunSpec, results_dir: Path) -> str:
    """``done`` (finished with this config), ``failed`` (flagged with this config: rerunning
    repeats it), ``todo``, or ``conflict`` (finished or flagged with another config; the
    :data:`EXECUTION_KEYS` are not compared)."""
    path = results_dir / spec.rel_dir / "result.json"
    if not path.is_file():
        return "todo"
    saved = json.loads(path.read_text())
    if not saved.get("finished") and not is_flagged(saved):
        return "todo"
    differs = [k for k, v in spec.config.items() if k not in EXECUTION_KEYS and saved["config"].get(k) != v]
    if differs:
        return "conflict"
    return "failed" if is_flagged(saved) else "done"


def run_grid(specs: Sequence[RunSpec], results_dir: Path = DEFAULT_RESULTS, scratch_dir: Path = DEFAULT_SCRATCH,
             jobs: int = 1, overwrite: bool = False, log: Any = print, executor: str = "local",
             slurm: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Runs every spec not finished yet, ``jobs`` at a time.

    ``executor="local"`` with ``jobs`` 1 runs them one after the other in this process; otherwise
    each run is a job of :func:`submit_runs` (``submitit``: local processes, or SLURM jobs).

    Raises:
      RuntimeError: a finished run with a different config (another budget) is in the way and
        ``overwrite`` is off.
    """
    states = [run_state(s, results_dir) for s in specs]
    conflicts = [str(s.rel_dir) for s, st in zip(specs, states) if st == "conflict"]
    if conflicts and not overwrite:
        raise RuntimeError(f"finished runs with a different config (another budget?): {conflicts}; "
                           "pass --overwrite to replace them")
    todo = [s for s, st in zip(specs, states) if st not in ("done", "failed")]
    failed = [str(s.rel_dir) for s, st in zip(specs, states) if st == "failed"]
    log(f"grid: {len(specs)} runs, {len(specs) - len(todo)} already finished, {len(todo)} to run, jobs={jobs}")
    for rel_dir in failed:
        log(f"FAILED (flagged earlier, not rerun) {rel_dir}")
    if jobs > 1 or executor != "local":
        return submit_runs(todo, results_dir, scratch_dir, jobs=jobs, executor=executor, slurm=slurm, log=log)
    infos = []
    for k, spec in enumerate(todo, 1):
        info = run_one(spec, str(results_dir), str(scratch_dir))
        infos.append(info)
        log(_line(k, len(todo), spec, info))
    return infos


#: ``--executor``: ``submitit``'s local processes, or SLURM jobs.
EXECUTORS = ("local", "slurm")
#: Time limit of a local job (minutes): a week, so that no run of this machine is ever cut by it.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


def _run_job(spec: RunSpec, results_dir: str, scratch_dir: str) -> dict[str, Any]:
    """One run in a job's fresh process: one thread (set before torch is imported), then :func:`run_one`."""
    _worker_init()
    return run_one(spec, results_dir, scratch_dir)


def make_executor(kind: str, folder: Path, slurm: dict[str, Any] | None = None) -> Any:
    """A ``submitit`` executor whose jobs log to ``folder``.

    Args:
      kind: ``local`` (a process per run on this machine) or ``slurm`` (a SLURM job per run).
      folder: where submitit keeps each job's pickled call, result and logs.
      slurm: SLURM settings: ``partition``, ``minutes`` (time limit), ``gpus`` (per job), and
        any further ``slurm_*`` parameter of ``submitit.AutoExecutor.update_parameters``.

    Raises:
      ValueError: an unknown ``kind``.
      RuntimeError: ``slurm`` on a machine without SLURM (``sbatch`` not found), from submitit.
    """
    import submitit

    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")
    if kind == "local":
        local = submitit.LocalExecutor(folder=folder)
        # submitit's local default is a 2-minute limit, after which it kills the job: a run takes minutes to hours
        local.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
        return local
    options = dict(slurm or {})
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(name="posenc-grid", cpus_per_task=1, timeout_min=int(options.pop("minutes", 24 * 60)),
                               gpus_per_node=int(options.pop("gpus", 0)),
                               slurm_partition=options.pop("partition", None),
                               slurm_setup=["export OMP_NUM_THREADS=1"], **options)
    return executor


def submit_runs(todo: Sequence[RunSpec], results_dir: Path, scratch_dir: Path, *, jobs: int, executor: str,
                slurm: dict[str, Any] | None = None, log: Any = print, poll_seconds: float = 1.0,
                refill: Callable[[], Sequence[RunSpec]] | None = None) -> list[dict[str, Any]]:
    """Runs ``todo`` as ``submitit`` jobs, at most ``jobs`` at a time, and reports each as it ends.

    Each job is :func:`run_one` (which resumes an unfinished scratch run), so a grid interrupted
    anywhere, local or on a cluster, continues where its runs stopped on the next call. A failed
    job is reported and does not stop the others. submitit's files (the pickled call, logs) go to
    ``scratch_dir/submitit``.

    Args:
      refill: instead of a fixed ``todo`` (pass it empty), a plan that changes as runs end: it is
        called at the start and after every run that ends, and returns the runs to do now, in
        order; those running, and those whose job raised, are skipped.

    Returns:
      The ``run_info.json`` payloads of the runs that ended, in the order they ended.
    """
    if todo and refill is not None:
        raise ValueError("pass either todo or refill, not both")
    crashed: set[Path] = set()  # a run whose job raised is not submitted again by refill

    def replan(busy: set[Path]) -> list[RunSpec]:
        return list(todo) if refill is None else [s for s in refill() if s.rel_dir not in busy | crashed]

    pending = replan(set())
    if not pending:
        return []
    import cloudpickle

    module = sys.modules[__name__]
    if __name__ != "__main__":  # imported by path (tests): the jobs cannot import it by name
        cloudpickle.register_pickle_by_value(module)
    pool = make_executor(executor, Path(scratch_dir) / "submitit", slurm)
    running: dict[Any, RunSpec] = {}
    infos: list[dict[str, Any]] = []
    k, n = 0, (len(todo) if refill is None else None)  # a refilled plan has no known length
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            spec = pending.pop(0)
            running[pool.submit(_run_job, spec, str(results_dir), str(scratch_dir))] = spec
        ended = [job for job in running if job.done()]
        if not ended:
            time.sleep(poll_seconds)
            continue
        for job in ended:
            spec, k = running.pop(job), k + 1
            try:
                info = job.result()
            except Exception as err:  # one failed run must not stop the others; it is reported
                crashed.add(spec.rel_dir)
                log(f"{_count(k, n)} FAILED {spec.rel_dir}: {type(err).__name__}: {str(err)[-2000:]} "
                    f"(job {job.job_id}, logs in {Path(scratch_dir) / 'submitit'})")
                continue
            infos.append(info)
            log(_line(k, n, spec, info))
        if refill is not None:
            pending = replan({s.rel_dir for s in running.values()})
    return infos


def _count(k: int, n: int | None) -> str:
    return f"[{k}/{n}]" if n is not None else f"[{k}]"


def _line(k: int, n: int | None, spec: RunSpec, info: dict[str, Any]) -> str:
    if info["flags"]:
        return f"{_count(k, n)} FAILED (flagged) {spec.rel_dir}: {'; '.join(info['flags'])}"
    errors = ", ".join(f"{key} {value:.4g}" for key, value in info["test"].items())
    took = f"{info['wall_seconds']:.0f} s wall, {info['cpu_seconds']:.0f} s CPU"
    return f"{_count(k, n)} {spec.rel_dir}: {errors} ({took})"


# ----------------------------------------------------------------------------------------------
# Aggregation


def collect(results_dir: Path) -> list[dict[str, Any]]:
    """One row per finished, unflagged run under ``results_dir/runs`` (result.json + run_info.json)."""
    rows = []
    for path in sorted((results_dir / "runs").glob("*/*/*/seed*/result.json")):
        result = json.loads(path.read_text())
        if not result.get("finished") or is_flagged(result):
            continue
        info_path = path.parent / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        dataset_dir, backbone, arm = path.parts[-5:-2]
        cfg = result["config"]
        rows.append({"dataset": cfg["dataset"], "backbone": backbone, "arm": arm, "encoding": cfg["encoding"],
                     "lam": cfg["lam"], "lr": cfg.get("lr", float("nan")), "seed": cfg["seed"], "epochs": cfg["epochs"],
                     "best_val": result.get("best_val", float("nan")), "test": result["test"],
                     "units": result["units"], "cpu_seconds": info.get("cpu_seconds", float("nan")),
                     "tables": info.get("tables")})
    return rows


def flagged_runs(results_dir: Path) -> list[tuple[str, list[str]]]:
    """``(run directory, flags)`` of every flagged run under ``results_dir/runs``: the failed runs."""
    out = []
    for path in sorted((results_dir / "runs").glob("*/*/*/seed*/result.json")):
        result = json.loads(path.read_text())
        if is_flagged(result):
            out.append((str(path.parent.relative_to(results_dir)), list(result.get("flags", []))))
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else float("nan"))


def summarise(rows: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (dataset, backbone, arm), for ``task`` ``md17`` or ``qm9``.

    MD17 rows report ``force_mae`` (meV/Angstrom) and ``energy_mae`` (meV); QM9 rows ``mae`` in the
    target's unit. Table rows also carry the mean relative change of the tables' values.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        kind = row["dataset"].split(":")[1] if row["dataset"].startswith("synthetic") else row["dataset"].split(":")[0]
        if kind == task:
            groups.setdefault((row["dataset"], row["backbone"], row["arm"]), []).append(row)
    metrics = ("force_mae", "energy_mae") if task == "md17" else ("mae",)
    order = {arm: k for k, arm in enumerate(ARMS)}  # an arm no longer defined sorts last
    out = []
    def study_order(kv: tuple) -> tuple:
        (dataset, backbone, arm), _ = kv
        return dataset, backbone, order.get(arm, len(order))

    for (dataset, backbone, arm), members in sorted(groups.items(), key=study_order):
        summary: dict[str, Any] = {
            "dataset": dataset, "name": dataset.split(":")[1], "backbone": backbone, "arm": arm,
            "note": ARMS[arm].note if arm in ARMS else "", "encoding": members[0]["encoding"],
            "lam": members[0]["lam"], "lr": members[0]["lr"], "epochs": members[0]["epochs"],
            "n_seeds": len(members),
            "seeds": " ".join(str(m["seed"]) for m in sorted(members, key=lambda m: m["seed"])),
            "unit": members[0]["units"][0],
        }
        summary["val_mean"], summary["val_std"] = mean_std([m["best_val"] for m in members])
        for metric in metrics:
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = mean_std([m["test"][metric] for m in members])
        for key, column in (("values_rel_change", "table_rel_change"),
                            ("values_rel_change_reached", "table_rel_change_reached"),
                            ("values_rel_change_unreached", "table_rel_change_unreached")):
            moved = [np.mean([t[key] for t in m["tables"]]) for m in members if m["tables"] and key in m["tables"][0]]
            summary[column] = float(np.mean(moved)) if moved else float("nan")
        summary["cpu_seconds_mean"] = float(np.mean([m["cpu_seconds"] for m in members]))
        out.append(summary)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV of ``rows`` (floats with 6 significant digits); nothing when there are no rows."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def environment() -> dict[str, str]:
    """Versions, git commit and machine of this invocation."""
    import torch

    import posenc

    versions = {"python": platform.python_version(), "torch": torch.__version__, "posenc": posenc.__version__}
    try:
        import jax

        versions["jax"] = jax.__version__
    except ImportError:
        versions["jax"] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        versions["git"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        versions["git"] = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions["machine"] = f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"
    return versions


def _fmt(mean: float, std: float, digits: int = 1) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {std:.{digits}f}")


def _moved(row: dict[str, Any]) -> str:
    if np.isnan(row["table_rel_change"]):
        return "-"
    return (f"{row['table_rel_change']:.3f} ({_fmt(row['table_rel_change_reached'], np.nan, 3)} / "
            f"{_fmt(row['table_rel_change_unreached'], np.nan, 3)})")


def write_readme(results_dir: Path, invocations: list[dict[str, Any]], md17: list[dict[str, Any]],
                 qm9: list[dict[str, Any]]) -> None:
    """``results/README.md``: what was run, how, where, and the summary tables."""
    lines = ["# Results of the comparison grid", "",
             "Written by `scripts/run_grid.py` (do not edit by hand). Each run's files are under",
             "`runs/<dataset>/<backbone>/<arm>/seed<k>/`: `result.json` (config, test errors in the paper's units),",
             "`metrics.csv` (one row per epoch) and `run_info.json` (time; how far the tables moved).",
             "Checkpoints are not kept. MD17 seed k = published rMD17 split k (original MD17 labels).", ""]
    protocol = results_dir / "campaign" / "protocol.md"
    if protocol.is_file():  # the converged campaign's protocol, quoted whole (its headings one level down)
        lines += ["The converged campaign (`scripts/campaign.py`) keeps its runs and report in `campaign/`;",
                  "its protocol, fixed before its first run:", ""]
        lines += ["#" + line if line.startswith("#") else line for line in protocol.read_text().splitlines()]
        lines.append("")
    lines += ["## Arms of the reduced grid and its studies", ""]
    for name, arm in ARMS.items():
        changes = ", ".join(f"{k} = {v}" for k, v in arm.config.items())
        lines.append(f"- `{name}`: encoding `{arm.encoding}`, lambda = {arm.lam:g}, {changes}: {arm.note}")
    lines += ["", "## Budgets", ""]
    for budget in BUDGETS.values():
        lines.append(f"- `{budget.name}`: {budget.description}.")
    rows = collect(results_dir)
    cpu = sum(r["cpu_seconds"] for r in rows if np.isfinite(r["cpu_seconds"]))
    lines += ["", "## Invocations", "",
              f"{len(rows)} finished runs; their training and testing took {cpu / 60:.1f} CPU-minutes in all",
              "(`cpu_seconds` of each `run_info.json`, one thread per run).", ""]
    for inv in invocations:
        took = f", {inv['runs']} runs in {inv['wall_minutes']:g} min wall" if "wall_minutes" in inv else ""
        lines += [f"- {inv['date']} (budget `{inv['budget']}`, jobs {inv['jobs']}{took}):", "",
                  f"  ```\n  {inv['command']}\n  ```", "",
                  "  " + ", ".join(f"{k} {v}" for k, v in inv["environment"].items()), ""]
    failed = flagged_runs(results_dir)
    if failed:
        lines += ["## Failed (flagged) runs", "",
                  "Flagged by `posenc.run_health`; left out of every table below.", ""]
        lines += [f"- `{rel_dir}`: {'; '.join(flags) or 'flagged'}" for rel_dir, flags in failed]
        lines.append("")
    if md17:
        lines += ["## MD17 (test force MAE meV/Å, energy MAE meV; mean ± std over splits)", "",
                  "| molecule | backbone | arm | lr | epochs | splits | force MAE | energy MAE "
                  "| table change (reached / unreached bins) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in md17:
            lines.append(f"| {r['name']} | {r['backbone']} | {r['arm']} | {r['lr']:g} | {r['epochs']} | {r['seeds']} | "
                         f"{_fmt(r['force_mae_mean'], r['force_mae_std'])} | "
                         f"{_fmt(r['energy_mae_mean'], r['energy_mae_std'])} | {_moved(r)} |")
        lines.append("")
    if qm9:
        lines += ["## QM9 (test MAE in the target's unit; mean ± std over seeds)", "",
                  "| target | backbone | arm | lr | epochs | seeds | MAE | unit "
                  "| table change (reached / unreached bins) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in qm9:
            lines.append(f"| {r['name']} | {r['backbone']} | {r['arm']} | {r['lr']:g} | {r['epochs']} | {r['seeds']} | "
                         f"{_fmt(r['mae_mean'], r['mae_std'], 2)} | {r['unit']} | {_moved(r)} |")
        lines.append("")
    lines += ["'table change' = ||V_final - V_init|| / ||V_init|| of the Hermite value tables (mean over layers",
              "and seeds), V_init the table before training (saved by the run); in brackets the same over the rows",
              "that training distances reach and over the rows no training distance reaches.", "",
              "## The paper's numbers", "",
              "`paper_table1.csv` (MD17 force MAE, meV/Å, with the standard deviation where given) and",
              "`paper_table2.csv` (QM9 MAE) are transcribed by hand from the paper's Tables 1 and 2 (Gao et al.",
              "2022, arXiv 2211.12773; text in `../shared/paper/`), one row per method and molecule/target;",
              "the EGNN +Smooth values of naphthalene and salicylic acid are missing from the text extraction.", ""]
    (results_dir / "README.md").write_text("\n".join(lines))


#: The calibration note's 12-CPU-minute test force MAE (meV/A) that the proof runs must meet.
PROOF_TARGETS = {"proof-raw": 12.0, "proof-hermite": 14.0}


def _engine_run(path: Path) -> dict[str, Any]:
    """One engine or proof run: its result, metrics, CPU time and zero-prediction loss."""
    from posenc.run_health import zero_prediction_loss
    from posenc.training import TrainConfig, load_data, output_stats, resolve

    result = json.loads((path / "result.json").read_text())
    info_path = path / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    with open(path / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    cfg = result["config"]
    config = resolve(TrainConfig.from_dict({**cfg, "progress": False, "n_test": 1}))
    train = load_data(config)["train"]
    zero = zero_prediction_loss(train, output_stats(train, 100), loss=cfg["loss"], energy_weight=cfg["energy_weight"],
                                force_weight=cfg["force_weight"])
    left = next((int(r["epoch"]) for r in metrics if float(r["train_data"]) < 0.9 * zero), None)
    return {"result": result, "metrics": metrics, "cpu": info.get("cpu_seconds", float("nan")), "zero": zero,
            "left": left}


def write_engine_report(results_dir: Path) -> bool:
    """``results/engine.md`` (and ``engine_proof_curves.png``): the training engine's stability study
    and proof runs, from their committed files. Returns False when there is none of them."""
    found = {}
    for path in sorted((results_dir / "runs").glob("*/egnn/*/seed1")):
        arm = path.parts[-2]
        if (arm.startswith("engine-") or arm.startswith("proof-")) and (path / "result.json").is_file():
            found[path.parts[-4].removeprefix("md17-"), arm] = _engine_run(path)
    if not found:
        return False
    order = {arm: k for k, arm in enumerate((*ENGINE_ARMS, *PROOF_ARMS))}
    molecules = {mol: k for k, mol in enumerate(("ethanol", "malonaldehyde", "aspirin"))}
    found = dict(sorted(found.items(), key=lambda kv: (molecules.get(kv[0][0], 99), kv[0][0], order[kv[0][1]])))
    lines = ["# The training engine: stability and proof", "",
             "Written by `scripts/run_grid.py` from the runs under `runs/` (do not edit by hand). The default",
             "recipe of `posenc.training.TrainConfig` for every run: Adam at lr 1e-3, linear warm-up over 2 epochs,",
             "cosine to 1e-5, gradient clipping at 10, batch 16, EGNN 4x64, rMD17 split 1 (original MD17 labels),",
             "950 training and 50 validation frames, the split's 1,000 test frames, torch backend, one thread.",
             "'Left F = 0' is the first epoch whose mean training data loss fell below 0.9 x the zero-prediction",
             "loss (the loss of predicting F = 0 and the per-atom energy fit; `posenc.run_health`).", "",
             f"## Stability: every encoding, {ENGINE_EPOCHS} epochs, no tuning", "",
             "| molecule | arm | flags | left F = 0 (epoch) | final train loss / zero-prediction loss | "
             "test force MAE (meV/Å) | test energy MAE (meV) | CPU s |", "|---|---|---|---|---|---|---|---|"]
    for (mol, arm), run in found.items():
        if not arm.startswith("engine-"):
            continue
        res, last = run["result"], run["metrics"][-1]
        test = res.get("test") or {}
        lines.append(f"| {mol} | `{arm.removeprefix('engine-')}` | {'; '.join(res.get('flags', [])) or 'none'} | "
                     f"{run['left'] or 'never'} | {float(last['train_data']) / run['zero']:.4f} | "
                     f"{test.get('force_mae', float('nan')):.1f} | {test.get('energy_mae', float('nan')):.1f} | "
                     f"{run['cpu']:.0f} |")
    proofs = {key: run for key, run in found.items() if key[1].startswith("proof-")}
    if proofs:
        lines += ["", f"## Proof: ethanol, {PROOF_EPOCHS} epochs", "",
                  "| arm | flags | test force MAE (meV/Å) | target (calibration note) | met | test energy MAE (meV) | "
                  "best epoch | CPU minutes |", "|---|---|---|---|---|---|---|---|"]
        for (mol, arm), run in proofs.items():
            res = run["result"]
            test = res.get("test") or {}
            force, target = test.get("force_mae", float("nan")), PROOF_TARGETS[arm]
            lines.append(f"| {mol} `{arm.removeprefix('proof-')}` | {'; '.join(res.get('flags', [])) or 'none'} | "
                         f"{force:.1f} | <= {target:g} | {'yes' if force <= target else 'no'} | "
                         f"{test.get('energy_mae', float('nan')):.1f} | {res.get('best_epoch')} | "
                         f"{run['cpu'] / 60:.1f} |")
        lines += ["", "![validation force MAE against epoch](engine_proof_curves.png)"]
        _plot_proof_curves(proofs, results_dir / "engine_proof_curves.png")
    (results_dir / "engine.md").write_text("\n".join(lines) + "\n")
    return True


def _plot_proof_curves(proofs: dict[tuple[str, str], dict[str, Any]], path: Path) -> None:
    """Validation force MAE and training loss against epoch (log scales) of the proof runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for (mol, arm), run in proofs.items():
        epoch = [int(r["epoch"]) for r in run["metrics"]]
        label = f"{mol} {arm.removeprefix('proof-')}"
        axes[0].plot(epoch, [float(r["val_force_mae"]) for r in run["metrics"]], label=label)
        axes[1].plot(epoch, [float(r["train_data"]) / run["zero"] for r in run["metrics"]], label=label)
    for ax, ylabel in zip(axes, ("validation force MAE (meV/Å)", "training loss / zero-prediction loss")):
        ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(results_dir: Path, invocation: dict[str, Any] | None = None) -> tuple[list[dict], list[dict]]:
    """Writes the summary CSVs and the README; records ``invocation`` in ``grid_invocations.json``."""
    log_path = results_dir / "grid_invocations.json"
    invocations = json.loads(log_path.read_text()) if log_path.is_file() else []
    if invocation is not None:
        invocations.append(invocation)
        results_dir.mkdir(parents=True, exist_ok=True)
        log_path.write_text(json.dumps(invocations, indent=1))
    rows = collect(results_dir)
    md17, qm9 = summarise(rows, "md17"), summarise(rows, "qm9")
    write_csv(results_dir / "md17_summary.csv", md17)
    write_csv(results_dir / "qm9_summary.csv", qm9)
    write_readme(results_dir, invocations, md17, qm9)
    write_engine_report(results_dir)
    return md17, qm9


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("md17", "qm9", "both"), default="both")
    p.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin", "malonaldehyde"],
                   help="MD17 molecules ('synthetic': toy data)")
    p.add_argument("--targets", nargs="+", default=["U0", "homo"], help="QM9 targets ('synthetic': toy data)")
    p.add_argument("--backbones", nargs="+", default=["egnn"], choices=MD17_BACKBONES, help="MD17 backbones")
    p.add_argument("--study", choices=("main", "lr", "ablation", "long", "engine", "proof"), default="main",
                   help="which arms by default: the paper's (main), the lr study (every main arm at each of "
                        "LR_CANDIDATES), the ablation (posenc varied one knob at a time), the long check (raw, "
                        "posenc, posenc-frozen for LONG_EPOCHS), the engine's stability study (every encoding at "
                        "the default recipe for ENGINE_EPOCHS) or its proof (raw and hermite for PROOF_EPOCHS); "
                        "all but main are MD17 only")
    p.add_argument("--arms", nargs="+", default=None, choices=tuple(ARMS),
                   help="arms (default: by --study; main: raw posenc smooth for MD17, raw mlp posenc smooth for QM9)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="MD17 splits / QM9 seeds")
    p.add_argument("--qm9-seeds", nargs="+", type=int, default=None, help="QM9 seeds (default: --seeds)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="reduced")
    p.add_argument("--device", default=None, help="override the budget's torch device")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="how runs are started (submitit): local processes, or SLURM jobs; with local and --jobs 1, "
                        "one after the other in this process")
    p.add_argument("--slurm-partition", default=None, help="SLURM partition of the jobs (--executor slurm)")
    p.add_argument("--slurm-minutes", type=int, default=24 * 60, help="SLURM time limit of each job, minutes")
    p.add_argument("--slurm-gpus", type=int, default=0, help="GPUs of each SLURM job (with --device cuda)")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--scratch-dir", type=Path, default=DEFAULT_SCRATCH,
                   help="checkpoints (git-ignored, never committed)")
    p.add_argument("--overwrite", action="store_true", help="rerun finished runs whose config differs")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    p.add_argument("--aggregate-only", action="store_true", help="only rewrite the summaries and README")
    p.add_argument("--refresh-tables", action="store_true",
                   help="recompute the table statistics of the selected finished runs from their scratch files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.aggregate_only:
        aggregate(args.results_dir)
        return 0
    budget = BUDGETS[args.budget]
    if args.device is not None:
        budget = dataclasses.replace(budget, config={**budget.config, "device": args.device})
    if args.study != "main" and args.dataset != "md17":
        raise SystemExit(f"--study {args.study} runs on MD17 only: pass --dataset md17")
    md17_arms = args.arms or {"main": MD17_ARMS, "lr": LR_STUDY_ARMS, "ablation": ABLATION_ARMS,
                              "long": LONG_ARMS, "engine": ENGINE_ARMS, "proof": PROOF_ARMS}[args.study]
    qm9_arms = args.arms or QM9_ARMS
    specs = []
    if args.dataset in ("md17", "both"):
        specs += expand_grid(md17_molecules=args.molecules, backbones=args.backbones,
                             md17_arms=md17_arms, seeds=args.seeds, budget=budget)
    if args.dataset in ("qm9", "both"):
        specs += expand_grid(qm9_targets=args.targets, qm9_arms=qm9_arms, seeds=args.qm9_seeds or args.seeds,
                             budget=budget)
    specs.sort(key=lambda s: s.seed)  # stable: seed-major across both data sets
    if args.refresh_tables:
        refresh_tables(specs, args.results_dir, args.scratch_dir)
        aggregate(args.results_dir)
        return 0
    if args.dry_run:
        for spec in specs:
            print(f"{run_state(spec, args.results_dir):8s} {spec.rel_dir}  epochs={spec.config['epochs']}")
        return 0
    started, tic = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    slurm = {"partition": args.slurm_partition, "minutes": args.slurm_minutes, "gpus": args.slurm_gpus}
    infos = run_grid(specs, args.results_dir, args.scratch_dir, jobs=args.jobs, overwrite=args.overwrite,
                     log=lambda line: print(line, flush=True), executor=args.executor, slurm=slurm)
    invocation = {"date": started, "wall_minutes": round((time.perf_counter() - tic) / 60, 1),
                  "runs": len(infos), "budget": budget.name, "jobs": args.jobs,
                  "command": "python scripts/run_grid.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "environment": environment()}
    aggregate(args.results_dir, invocation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
