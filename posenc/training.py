"""Backend-agnostic pieces of ``posenc train`` (numpy): the config, data, statistics, schedule, files.

The trainer (:func:`posenc.trainer.train`) uses these for either backend, so one
:class:`TrainConfig` drives both, both see the same data, statistics, batch order and learning
rate, and both write the same files into ``out_dir``:

* ``metrics.csv`` / ``metrics.json``: one row per epoch (rewritten atomically after every epoch);
* ``last.*`` / ``best.*``: checkpoints (``.pt`` torch, ``.npz`` Haiku), written atomically;
* ``result.json``: the config, the best epoch, the test errors in the paper's units, the distance
  scale and the run's flags (:mod:`posenc.run_health`);
* ``encoding_tables.npz``: the learned distance tables (``values_layer{i}``, ``slopes_layer{i}``,
  ``x_min``, ``x_max``) when the encoding has tables.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posenc.data.molecules import Molecules
from posenc.encoding_defaults import SCALED_ENCODINGS, TABLE_ENCODINGS, distance_encoding_kwargs, distance_range

TASKS = ("md17", "qm9", "synthetic")
SCHEDULES = ("cosine", "plateau", "none")

#: What ``quick=True`` changes, for every field still at its default: seconds to a couple of
#: minutes on two CPU cores (tests, notebooks, a first look).
QUICK_PROFILE: dict[str, Any] = {
    "n_train": 200, "n_val": 50, "n_test": 200, "epochs": 10, "n_layers": 2, "hidden": 32, "batch_size": 10,
    "qm9_subset": 2000,
}


@dataclass
class TrainConfig:
    """Everything one training run needs; ``posenc train`` flags have the same names.

    Attributes:
      dataset: ``md17:<molecule>`` (energy + forces), ``qm9:<target>`` (one property), or
        ``synthetic:md17`` / ``synthetic:qm9`` (toy Morse clusters from :mod:`posenc.toys`, in reduced
        units, for tests and offline demos).
      backbone: ``egnn | transformer | dimenet``.
      backend: ``torch``, or ``haiku`` (EGNN only).
      encoding: distance encoding ``raw | mlp | gaussian | bessel | linear | hermite | bspline | hermite5``.
      n_bin: bins of a table encoding (None: the default, 64).
      dim: output size of the encoding (tables, mlp, gaussian, bessel; None: the default).
      x_min, x_max: the encoded range, Angstrom (None: 0 and the longest training distance plus
        a margin, see :func:`posenc.encoding_defaults.distance_range`).
      init: table initialisation (None: sinusoidal).
      encoding_kwargs: any further keyword arguments of the encoding.
      share_encoding: one encoding for all layers (default: one per layer).
      update_coords: EGNN's equivariant coordinate updates.
      n_layers, hidden: backbone depth and width.
      lam: weight lambda of the smoothness loss (``--lambda``).
      freeze_tables: never train the distance tables (values and slopes of every table
        encoding): the encoding is then the fixed basis its initialisation picked, the control
        that tells what *learning* the table adds.
      table_lr_scale: the tables learn at ``table_lr_scale`` times the rate of every other
        parameter (the whole schedule is scaled, its floor too).
      optimizer: ``adam`` or ``adamw``.
      lr, weight_decay: learning rate and weight decay.
      schedule: ``cosine`` (per step: the warm-up, then cosine to ``min_lr``; :func:`lr_factor`),
        ``none`` (the warm-up, then ``lr``) or ``plateau`` (no warm-up; halve the rate after
        ``patience`` epochs without a better validation error; torch only).
      warmup_epochs: the rate rises linearly from about 0 to ``lr`` over this many epochs' steps
        (Adam's first steps are then small, whatever the gradients; 0: no warm-up). The run's
        flags (:mod:`posenc.run_health`) are checked after it.
      min_lr, patience: of the schedules.
      epochs: epochs of the whole run (also the cosine horizon).
      stop_after: stop after this many epochs (a planned interruption: resume later with
        ``resume=True`` and the same config).
      stop_patience: end the run early, as finished (tested on its best weights), once the
        validation error has not improved for this many epochs after the warm-up (None: train
        all ``epochs``; the cosine horizon stays ``epochs`` either way).
      batch_size: molecules per batch.
      energy_weight, force_weight: weights of the two terms of the energy/force loss.
      loss: ``mse`` or ``l1``, on targets divided by the training scale.
      grad_clip: clip the gradient norm (None: no clipping).
      n_train, n_val, n_test: cut each part to its first n molecules (None: all).
      md17_split, md17_labels: which rMD17 split (1..5) and labels (``md17`` original / ``rmd17``).
      qm9_split: QM9 split name (``egnn`` or ``dimenet``); qm9_subset: molecules loaded in all (None: all).
      data_dir: MD17 data directory (None: the loader's default resolution).
      seed: seeds the model, the data order and the train/validation carving.
      device, dtype: torch device and float dtype (``float32`` or ``float64``).
      threads: torch CPU threads (None: leave as is).
      out_dir: output directory (None: ``runs/<dataset>_<backbone>_<encoding>_lam<lam>_seed<seed>``).
      resume: continue from ``out_dir/last.*``.
      quick: apply :data:`QUICK_PROFILE` to the fields left at their defaults.
      progress: show tqdm bars.
    """

    dataset: str = "md17:ethanol"
    backbone: str = "egnn"
    backend: str = "torch"
    encoding: str = "hermite"
    n_bin: int | None = None
    dim: int | None = None
    x_min: float | None = None
    x_max: float | None = None
    init: str | None = None
    encoding_kwargs: dict[str, Any] = field(default_factory=dict)
    share_encoding: bool = False
    update_coords: bool = False
    n_layers: int = 4
    hidden: int = 64
    lam: float = 0.0
    freeze_tables: bool = False
    table_lr_scale: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    patience: int = 10
    epochs: int = 100
    stop_after: int | None = None
    stop_patience: int | None = None
    batch_size: int = 16
    energy_weight: float = 0.01
    force_weight: float = 0.99
    loss: str = "mse"
    grad_clip: float | None = 10.0
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    md17_split: int = 1
    md17_labels: str = "md17"
    qm9_split: str = "egnn"
    qm9_subset: int | None = None
    data_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    out_dir: str | None = None
    resume: bool = False
    quick: bool = False
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a dict (e.g. a YAML file), rejecting unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Fields that may differ between a run and its resumption (the rest must match the checkpoint).
RESUMABLE_CHANGES = frozenset({"epochs", "stop_after", "resume", "progress", "threads", "device", "out_dir"})


def resolve(config: TrainConfig) -> TrainConfig:
    """A checked copy of ``config`` with the quick profile applied and ``out_dir`` filled in.

    Raises:
      ValueError: a bad dataset string, backbone, backend, schedule, loss, dtype or size.
    """
    values = config.to_dict()
    if config.quick:
        defaults = TrainConfig().to_dict()
        for key, value in QUICK_PROFILE.items():
            if values[key] == defaults[key]:
                values[key] = value
    out = TrainConfig(**values)
    parse_dataset(out.dataset)
    checks = [
        (out.backbone in ("egnn", "transformer", "dimenet"),
         f"backbone must be egnn|transformer|dimenet, got {out.backbone!r}"),
        (out.backend in ("torch", "haiku"), f"backend must be torch|haiku, got {out.backend!r}"),
        (out.backend == "torch" or out.backbone == "egnn",
         f"the haiku backend has the EGNN only, not {out.backbone!r}"),
        (out.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {out.schedule!r}"),
        (out.optimizer in ("adam", "adamw"), f"optimizer must be adam|adamw, got {out.optimizer!r}"),
        (out.loss in ("mse", "l1"), f"loss must be mse|l1, got {out.loss!r}"),
        (out.dtype in ("float32", "float64"), f"dtype must be float32|float64, got {out.dtype!r}"),
        (out.epochs >= 1 and out.batch_size >= 1, "epochs and batch_size must be >= 1"),
        (out.stop_after is None or out.stop_after >= 1, "stop_after must be >= 1"),
        (out.stop_patience is None or out.stop_patience >= 1, f"stop_patience must be >= 1, got {out.stop_patience}"),
        (out.lam >= 0, f"lambda must be >= 0, got {out.lam}"),
        (out.lr > 0, f"lr must be > 0, got {out.lr}"),
        (out.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {out.warmup_epochs}"),
        (out.table_lr_scale > 0,
         f"table_lr_scale must be > 0 (freeze_tables=True stops the tables), got {out.table_lr_scale}"),
        (not (out.freeze_tables or out.table_lr_scale != 1.0) or out.encoding in TABLE_ENCODINGS,
         f"freeze_tables / table_lr_scale need a table encoding {TABLE_ENCODINGS}, not {out.encoding!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if out.out_dir is None:
        tag = out.dataset.replace(":", "-")
        out.out_dir = str(Path("runs") / f"{tag}_{out.backbone}_{out.encoding}_lam{out.lam:g}_seed{out.seed}")
    return out


def parse_dataset(dataset: str) -> tuple[str, str]:
    """``"md17:ethanol"`` -> ``("md17", "ethanol")``; raises ValueError on a malformed string."""
    task, sep, name = dataset.partition(":")
    if not sep or task not in TASKS or not name:
        raise ValueError(f"dataset must be md17:<molecule>, qm9:<target> or synthetic:md17|qm9, got {dataset!r}")
    if task == "synthetic" and name not in ("md17", "qm9"):
        raise ValueError(f"synthetic dataset is synthetic:md17 (energy + forces) or synthetic:qm9, got {dataset!r}")
    return task, name


def synthetic_data(kind: str, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, Molecules]:
    """Toy Morse clusters as a stand-in data set (no files needed).

    ``md17``: 6-atom clusters with energies and forces (every cluster the same size, like MD17);
    ``qm9``: 3 to 7 atoms, the energy as the only target and no forces. Reduced units (sigma, eps).
    """
    from posenc.toys import Morse, random_clusters

    sizes = {"train": n_train, "val": n_val, "test": n_test}
    n_atoms = 6 if kind == "md17" else (3, 7)
    data = {}
    for k, (part, n) in enumerate(sizes.items()):
        mols = random_clusters(Morse(), n, n_atoms, seed=seed * 3 + k, z=6)
        if kind == "qm9":
            mols = dataclasses.replace(mols, forces=None)
        data[part] = dataclasses.replace(mols, name=f"synthetic:{kind}/{part}")
    return data


def cut_data(data: dict[str, Molecules], config: TrainConfig) -> dict[str, Molecules]:
    """``data`` with each part cut to its first ``n_train``/``n_val``/``n_test`` molecules (None: all).

    Raises:
      ValueError: a part lacks, or a cut leaves it empty.
    """
    out = dict(data)
    for part, n in (("train", config.n_train), ("val", config.n_val), ("test", config.n_test)):
        if part not in out:
            raise ValueError(f"data must have 'train', 'val' and 'test' parts; {part!r} is missing")
        if n is not None and n < 1:
            raise ValueError(f"n_{part} must be >= 1, got {n}")
        if n is not None and n < len(out[part]):
            out[part] = out[part].subset(np.arange(n))
    return out


def load_data(config: TrainConfig) -> dict[str, Molecules]:
    """The ``{"train", "val", "test"}`` sets of ``config.dataset``, cut to ``n_train``/``n_val``/``n_test``."""
    task, name = parse_dataset(config.dataset)
    if task == "synthetic":
        n = {"n_train": 64, "n_val": 16, "n_test": 16}
        n.update({k: getattr(config, k) for k in n if getattr(config, k) is not None})
        return synthetic_data(name, n["n_train"], n["n_val"], n["n_test"], config.seed)
    if task == "md17":
        from posenc.data import load_md17

        kwargs = {k: getattr(config, k) for k in ("n_train", "n_val") if getattr(config, k) is not None}
        data = load_md17(name, split=config.md17_split, labels=config.md17_labels, data_dir=config.data_dir,
                         seed=config.seed, progress=config.progress, **kwargs)
    else:
        from posenc.data import load_qm9

        data = load_qm9(split=config.qm9_split, targets=name, subset=config.qm9_subset, progress=config.progress)
    return cut_data(data, config)


def encoding_overrides(config: TrainConfig, distance_scale: float | None = None) -> dict[str, Any]:
    """The encoding arguments the config sets (``n_bin``, ``dim``, ``x_min``, ``init``, extras).

    Args:
      config: the run.
      distance_scale: the training set's rms distance (Angstrom,
        :func:`posenc.encoding_defaults.distance_scale`); encodings that read the distance itself
        (:data:`posenc.encoding_defaults.SCALED_ENCODINGS`) then get ``scale = 1 / distance_scale``
        unless ``config.encoding_kwargs`` sets ``scale``. None: no scale is added.
    """
    name = config.encoding
    out: dict[str, Any] = {}
    if name in TABLE_ENCODINGS:
        out.update({k: getattr(config, k) for k in ("n_bin", "dim", "x_min", "init") if getattr(config, k) is not None})
    elif name == "gaussian":
        out.update({k: v for k, v in (("n_centres", config.dim), ("x_min", config.x_min)) if v is not None})
    elif name == "bessel" and config.dim is not None:
        out["n_basis"] = config.dim
    elif name == "mlp" and config.dim is not None:
        out["dim"] = config.dim
    if distance_scale is not None and name in SCALED_ENCODINGS:
        if not distance_scale > 0:
            raise ValueError(f"distance_scale must be > 0, got {distance_scale}")
        out["scale"] = 1.0 / distance_scale
    out.update(config.encoding_kwargs)
    distance_encoding_kwargs(name, 1.0, out)  # rejects an unknown encoding name early
    return out


def encoding_range(config: TrainConfig, train: Molecules) -> tuple[float, float]:
    """``(x_min, x_max)`` of the distance encoding: the config's, else from the training data."""
    lo, hi = distance_range(train)
    return (lo if config.x_min is None else config.x_min), (hi if config.x_max is None else config.x_max)


def output_stats(train: Molecules, n_species: int) -> dict[str, np.ndarray]:
    """Output statistics of the training set for the model's ``OutputStats``.

    ``atom_ref`` and ``mol_shift``: least squares of the targets on the element counts of each
    molecule plus a constant (minimum-norm: MD17's fixed composition just spreads the mean
    energy over the atoms). ``scale``: with forces, their root mean square (energy and forces are
    then learned in units of the force scale); otherwise the spread of the targets around that fit.

    Returns:
      ``{"scale": [T], "atom_ref": [n_species, T], "mol_shift": [T]}`` (float64).
    """
    if int(train.z.max()) >= n_species:
        raise ValueError(f"atomic number {int(train.z.max())} exceeds the model's {n_species} species")
    mol = np.repeat(np.arange(len(train)), train.n_atoms)
    counts = np.zeros((len(train), n_species))
    np.add.at(counts, (mol, train.z), 1.0)
    present = np.flatnonzero(counts.any(0))
    design = np.concatenate([counts[:, present], np.ones((len(train), 1))], axis=1)  # [M, S + 1]
    coef = np.linalg.lstsq(design, train.targets, rcond=None)[0]  # [S + 1, T]
    atom_ref = np.zeros((n_species, train.targets.shape[1]))
    atom_ref[present] = coef[:-1]
    if train.forces is not None:
        scale = np.full(train.targets.shape[1], np.sqrt(np.mean(train.forces**2)))
    else:
        scale = (train.targets - design @ coef).std(0)
    return {"scale": np.where(scale > 0, scale, 1.0), "atom_ref": atom_ref, "mol_shift": coef[-1]}


def patience_ran_out(config: TrainConfig, epoch: int, best_epoch: int) -> bool:
    """Whether ``config.stop_patience`` ends a run after ``epoch`` (1-based), its best validation
    error having been at ``best_epoch``: the epochs since the later of the best epoch and the end
    of the warm-up reach the patience. Always False without a patience."""
    if config.stop_patience is None:
        return False
    return epoch - max(best_epoch, math.ceil(config.warmup_epochs)) >= config.stop_patience


def lr_factor(step: Any, total: int, warmup: int, alpha: float, xp: Any = np) -> Any:
    """The multiplier of the base rate at optimiser step ``step`` (0-based): warm-up, then cosine.

    ``(step + 1) / warmup`` for ``step < warmup`` (so the first step is small but not wasted and
    step ``warmup - 1`` reaches 1), then ``alpha + (1 - alpha) (1 + cos(pi u)) / 2`` with
    ``u = (step - warmup) / (total - warmup)`` clipped to [0, 1]: from 1 down to ``alpha`` at
    ``total`` and after. The one closed form of both backends: torch calls it with numpy, Haiku
    with ``xp=jax.numpy`` inside its optax schedule.

    Args:
      step: the step, a scalar or array of any integer or float type of ``xp``.
      total: steps of the whole run.
      warmup: warm-up steps (0: none).
      alpha: the final multiplier, ``min_lr / lr`` (1: constant after the warm-up).
      xp: the array module, ``numpy`` or ``jax.numpy``.

    Returns:
      The multiplier, an ``xp`` scalar or array shaped like ``step``.
    """
    s = xp.asarray(step) * 1.0
    ramp = xp.minimum((s + 1.0) / max(warmup, 1), 1.0)
    done = xp.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
    cosine = alpha + (1.0 - alpha) * 0.5 * (1.0 + xp.cos(math.pi * done))
    return xp.where(s < warmup, ramp, cosine)


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The warm-up's length in optimiser steps: ``warmup_epochs`` epochs, rounded."""
    return int(round(config.warmup_epochs * steps_per_epoch))


def schedule_factor(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int, float]:
    """``(total, warmup, alpha)`` of :func:`lr_factor` for ``config`` (``none``: alpha 1)."""
    alpha = 1.0 if config.schedule == "none" else config.min_lr / config.lr
    return config.epochs * steps_per_epoch, warmup_steps(config, steps_per_epoch), alpha


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch: a function of (seed, epoch) only, so resuming repeats it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(out_dir: str | os.PathLike, history: list[dict[str, float]]) -> None:
    """``metrics.csv`` and ``metrics.json`` with one row per finished epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(Path(out_dir) / "metrics.csv", buf.getvalue().encode())
    atomic_write(Path(out_dir) / "metrics.json", json.dumps(history, indent=1).encode())


def save_encoding_tables(path: str | os.PathLike, tables: list[dict[str, np.ndarray]], x_min: float, x_max: float,
                         initial: list[dict[str, np.ndarray]] | None = None, form: str | None = None) -> None:
    """``encoding_tables.npz``: ``values_layer{i}`` (and ``slopes_layer{i}``, ``curvatures_layer{i}``
    where the form has them), ``x_min``, ``x_max`` and, when given, ``form``.

    With ``initial`` (the same layout, before training) also ``init_values_layer{i}`` (and so on),
    so how far training moved the tables is known for any initialisation, random ones included.
    ``form`` (``posenc.spline.TABLE_FORMS``) tells a B-spline's control values from a linear table.
    """
    # Any: np.savez's stubs read a **dict[str, ndarray] as a possible allow_pickle=
    arrays: dict[str, Any] = {"x_min": np.asarray(x_min), "x_max": np.asarray(x_max)}
    if form is not None:
        arrays["form"] = np.asarray(form)
    for prefix, layers in (("", tables), ("init_", initial or [])):
        for i, table in enumerate(layers):
            for key, value in table.items():
                arrays[f"{prefix}{key}_layer{i}"] = np.asarray(value)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """Raises ValueError if ``config`` differs from the checkpoint's in a field that changes the run."""
    current = config.to_dict()
    diff = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if diff:
        raise ValueError("cannot resume: the config differs from the checkpoint's in "
                         + ", ".join(f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in diff))


def mae_summary(errors: dict[str, float], units: tuple[str, ...]) -> str:
    """One line naming the test errors and their units."""
    if "force_mae" in errors:
        return (f"test force MAE {errors['force_mae']:.3f} {units[0]}/Angstrom, "
                f"energy MAE {errors['energy_mae']:.3f} {units[0]}")
    return f"test MAE {errors['mae']:.4g} {units[0]}"


@dataclass
class TrainResult:
    """What ``train`` returns.

    Attributes:
      out_dir: where the files are.
      history: per-epoch metrics (the rows of ``metrics.csv``).
      best_epoch: the epoch (1-based) with the lowest validation error.
      best_val: that validation error.
      test: test errors in the data's units (``force_mae`` meV/Angstrom and ``energy_mae`` meV for
        MD17; ``mae`` in the target's unit for QM9); empty when the run stopped early.
      units: the target units.
      x_range: the encoded distance range.
      finished: False when ``stop_after`` ended the run before ``epochs``, or a non-finite loss
        stopped it (True when ``stop_patience`` ended it: the history's length says when).
      distance_scale: the training set's rms interatomic distance (Angstrom); encodings in
        :data:`posenc.encoding_defaults.SCALED_ENCODINGS` read ``distance / distance_scale``.
      flags: what :class:`posenc.run_health.RunHealth` flagged (``"stuck at epoch 5: ..."``);
        empty for a healthy run.
    """

    out_dir: str
    history: list[dict[str, float]]
    best_epoch: int
    best_val: float
    test: dict[str, float]
    units: tuple[str, ...]
    x_range: tuple[float, float]
    finished: bool
    distance_scale: float
    flags: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"ok"``, or ``"flagged"`` when :attr:`flags` is not empty (then not a result)."""
        return "flagged" if self.flags else "ok"

    def write(self, config: TrainConfig) -> None:
        """``result.json``: this result, its status and the config."""
        payload = {**dataclasses.asdict(self), "status": self.status, "config": config.to_dict()}
        atomic_write(Path(self.out_dir) / "result.json", json.dumps(payload, indent=1).encode())
