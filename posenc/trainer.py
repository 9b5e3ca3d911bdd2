"""``posenc train``: one epoch loop for both backends, ``train(TrainConfig(...))``.

The loop's bookkeeping is written once, here, in numpy: the data (loaded and cut), the output
statistics, the distance scale, the data order of each epoch (seeded by (seed, epoch)), the
history rows, the best/last checkpoint policy, the metrics files, the run's flags
(:mod:`posenc.run_health`), resume checks, the final test on the best weights,
``encoding_tables.npz`` and ``result.json`` (file layout in :mod:`posenc.training`). A backend
(``posenc.torch.train.Backend``, ``posenc.haiku.train.Backend``) supplies only what differs, the
:class:`TrainingBackend` interface: build the model and optimiser, run an epoch of steps,
evaluate, report the rate, save and restore its state, and give its tables.

Resuming is exact: a checkpoint holds the backend's whole state and the loop's (epoch, history,
best, flags' window), and an epoch's data order depends on (seed, epoch) only, so "2 epochs, stop,
resume 2 more" reproduces a 4-epoch run loss for loss.

Data parallelism (``data_parallel``, ``posenc train --data-parallel N``; under ``torchrun`` for
torch): ``batch_size`` stays the global batch, split across the devices by the backend
(:mod:`posenc.parallel`), whose losses and metrics are those of one process on the whole batch.
Every process runs this loop on the same reduced numbers, so they take the same decisions; only
the main one (torch rank 0) writes files. The state does not depend on the number of devices, so
a run may resume on another number.

Example:
  >>> from posenc.trainer import train
  >>> from posenc.training import TrainConfig
  >>> result = train(TrainConfig(dataset="md17:ethanol", encoding="hermite", lam=0.1, quick=True))  # doctest: +SKIP
  >>> result.test["force_mae"], result.status  # meV/Angstrom  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from posenc.data.graphs import batches
from posenc.data.molecules import Molecules
from posenc.encoding_defaults import TABLE_ENCODINGS, distance_scale
from posenc.parallel import DataParallelError
from posenc.run_health import RunHealth, zero_prediction_loss
from posenc.training import (
    TrainConfig,
    TrainResult,
    check_resumable,
    cut_data,
    encoding_range,
    epoch_seed,
    load_data,
    mae_summary,
    output_stats,
    patience_ran_out,
    resolve,
    save_encoding_tables,
    warmup_steps,
    write_metrics,
)

__all__ = ["TrainingBackend", "backend_class", "train"]

Tables = tuple[list[dict[str, np.ndarray]], "tuple[float, float] | None"]


class TrainingBackend(Protocol):
    """What a backend supplies to :func:`train`; ``posenc.<backend>.train.Backend`` implements it.

    Construction: ``Backend(config, data, x_range, stats, distance_scale, data_parallel=None)`` builds the model
    (seeded by ``config.seed``), its output statistics, optimiser and schedule; ``x_range`` is
    the encoded distance range (Angstrom), ``stats`` the output statistics of
    :func:`posenc.training.output_stats` and ``distance_scale`` the training set's rms distance
    (Angstrom; the trainer puts ``scale = 1 / distance_scale`` into the encoding arguments
    through :func:`posenc.training.encoding_overrides`); ``data_parallel`` the devices to split
    every batch across (None: the backend's default, see ``posenc.<backend>.distributed``).

    Attributes:
      suffix: the checkpoint files' suffix (``".pt"``, ``".npz"``).
      n_species: atomic numbers ``0..n_species - 1`` the model embeds (the rows of ``atom_ref``).
    """

    suffix: str
    n_species: int

    def __init__(self, config: TrainConfig, data: dict[str, Molecules], x_range: tuple[float, float],
                 stats: dict[str, np.ndarray], distance_scale: float, *, data_parallel: int | None = None) -> None:
        """Builds the model, its output statistics, optimiser and schedule (see above)."""

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0 of a torch job; always in Haiku,
        which drives all its devices from one process)."""

    def run_epoch(self, order: list[np.ndarray]) -> np.ndarray:
        """One optimiser step per index array of training molecules, in this order.

        Returns:
          ``[n_steps, 3]`` float64 per-step (loss, data loss, smoothness loss), fetched from the
          device once, at the end of the epoch.
        """

    def evaluate(self, mols: Molecules) -> dict[str, float]:
        """Mean absolute errors over ``mols``: ``{"energy_mae", "force_mae"}`` or ``{"mae"}``."""

    def end_epoch(self, val: float) -> None:
        """Called after each epoch with its validation error (a plateau schedule steps on it)."""

    def lr(self, step: int) -> float:
        """The base learning rate of optimiser step ``step`` (0-based)."""

    def save(self, path: Path, meta: dict[str, Any], resumable: bool) -> None:
        """Writes the weights (and, when ``resumable``, the whole training state) and ``meta``
        (plain floats, ints, strings, lists and dicts) to ``path``, atomically."""

    def restore(self, path: Path, resumable: bool) -> dict[str, Any]:
        """Loads the weights (and, when ``resumable``, the training state) of ``path``; returns
        its ``meta``. Raises FileNotFoundError or ValueError (a corrupt or foreign file). In a
        data-parallel job every process calls it, after the main one has written ``path``."""

    def tables(self) -> Tables:
        """The current distance tables, layer by layer, and their range (``([], None)``: none)."""

    def initial_tables(self) -> list[dict[str, np.ndarray]]:
        """The tables before any step (a resumed run rebuilds the same initialisation)."""

    def close(self) -> None:
        """Releases what the backend holds beyond memory (a torch process group it started)."""


def backend_class(name: str) -> type[TrainingBackend]:
    """The ``Backend`` class of ``posenc.<name>.train`` (imported on demand: no torch for Haiku)."""
    if name not in ("torch", "haiku"):
        raise ValueError(f"backend must be torch|haiku, got {name!r}")
    return importlib.import_module(f"posenc.{name}.train").Backend


def train(config: TrainConfig, data: dict[str, Molecules] | None = None, *,
          data_parallel: int | None = None) -> TrainResult:
    """Trains, validates, checkpoints and tests one model, in either backend.

    Args:
      config: the run (see :class:`posenc.training.TrainConfig`).
      data: ``{"train", "val", "test"}`` sets to use instead of loading ``config.dataset`` (tests,
        notebooks); ``config.dataset`` still names the task. Cut like loaded data.
      data_parallel: devices to split every batch across: Haiku's mesh size (None: 1); torch's
        ranks, which ``torchrun`` starts (None: as many as it started, 1 outside it). The result
        does not depend on it.

    Returns:
      :class:`posenc.training.TrainResult` (also written to ``out_dir/result.json``); its
      ``flags`` name what went wrong, if anything (``status == "flagged"``).

    Raises:
      ValueError: a bad config, a corrupt or foreign checkpoint, ``resume`` with a config that
        differs from the checkpoint's, or devices that are not there.
      FileNotFoundError: ``resume`` without ``out_dir/last.*``.
      posenc.parallel.DataParallelError: a rank of a data-parallel job was lost (the message
        names the last checkpoint to resume from).
    """
    config = resolve(config)
    cls = backend_class(config.backend)
    data = load_data(config) if data is None else cut_data(data, config)
    train_set = data["train"]
    x_range = encoding_range(config, train_set)
    stats = output_stats(train_set, cls.n_species)
    scale = distance_scale(train_set)
    backend = cls(config, data, x_range, stats, scale, data_parallel=data_parallel)
    try:
        return _run(config, data, backend, x_range, stats, scale)
    finally:
        backend.close()


def _run(config: TrainConfig, data: dict[str, Molecules], backend: TrainingBackend, x_range: tuple[float, float],
         stats: dict[str, np.ndarray], scale: float) -> TrainResult:
    """:func:`train`'s epoch loop, final test and files, on a built backend."""
    if config.out_dir is None:  # resolve() names one
        raise ValueError("config.out_dir is None: pass the config through posenc.training.resolve first")
    train_set, out_dir, suffix = data["train"], Path(config.out_dir), backend.suffix
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    health = RunHealth(
        zero_prediction_loss(train_set, stats, loss=config.loss, energy_weight=config.energy_weight,
                             force_weight=config.force_weight),
        warmup_steps(config, steps_per_epoch), steps_per_epoch, config.epochs)
    initial_tables = backend.initial_tables()

    best: dict[str, Any]  # {"epoch": int, "val": float}
    start, history, best = 0, [], {"epoch": 0, "val": math.inf}
    if config.resume:
        meta = backend.restore(out_dir / f"last{suffix}", resumable=True)
        check_resumable(meta["config"], config)
        start, history, best = meta["epoch"], meta["history"], meta["best"]
        health = RunHealth.from_state(meta["health"])

    end = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
    label = f"{config.dataset} {config.backbone}+{config.encoding}" + (" (haiku)" if config.backend == "haiku" else "")
    has_forces = train_set.forces is not None
    writes = backend.main  # one process writes the files of a data-parallel job
    bar = tqdm(range(start, end), desc=label, disable=not (config.progress and writes), initial=start, total=end)
    try:
        for epoch in bar:
            tic = time.perf_counter()
            order = list(batches(train_set, config.batch_size, shuffle=True, seed=epoch_seed(config.seed, epoch)))
            steps = backend.run_epoch(order)  # [n_steps, 3]
            flags = health.check_epoch(epoch, steps)
            train_means = dict(zip(("train_loss", "train_data", "train_smooth"), steps.mean(axis=0).tolist()))
            if health.stopped:  # no evaluation and no checkpoint of a non-finite state
                val = dict.fromkeys(("energy_mae", "force_mae") if has_forces else ("mae",), math.nan)
            else:
                val = backend.evaluate(data["val"])
            primary = val["force_mae"] if "force_mae" in val else val["mae"]
            if not health.stopped:
                backend.end_epoch(primary)
            row = {"epoch": epoch + 1, "lr": backend.lr((epoch + 1) * steps_per_epoch), **train_means,
                   **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - tic,
                   "flags": ";".join(flags)}
            history.append(row)
            if health.stopped:
                if writes:
                    write_metrics(out_dir, history)
                break
            meta = {"epoch": epoch + 1, "x_range": list(x_range), "distance_scale": scale}
            if primary < best["val"]:
                best = {"epoch": epoch + 1, "val": primary}
                if writes:
                    backend.save(out_dir / f"best{suffix}", meta, resumable=False)
            if writes:
                backend.save(out_dir / f"last{suffix}", {**meta, "history": history, "best": best,
                                                         "config": config.to_dict(), "health": health.state()},
                             resumable=True)
                write_metrics(out_dir, history)
            bar.set_postfix(loss=f"{row['train_loss']:.4g}", val=f"{primary:.4g}")
            if patience_ran_out(config, epoch + 1, best["epoch"]):
                end = epoch + 1
                break
    except DataParallelError as err:  # from a collective of run_epoch or evaluate, before the epoch's files
        saved = history[-1]["epoch"] if history else start
        advice = (f"the last checkpoint {out_dir / f'last{suffix}'} (epoch {saved}) is intact: run the same command "
                  "with --resume (on any number of devices)" if saved else "no epoch had finished: start it again")
        raise DataParallelError(f"{err} in epoch {saved + 1}; the job stops, and {advice}") from err

    finished = (end == config.epochs or patience_ran_out(config, end, best["epoch"])) and not health.stopped
    test: dict[str, float] = {}
    if finished:
        backend.restore(out_dir / f"best{suffix}", resumable=False)
        test = backend.evaluate(data["test"])
        tables, table_range = backend.tables()
        if tables and table_range is not None and writes:
            form = config.encoding if config.encoding in TABLE_ENCODINGS else None
            save_encoding_tables(out_dir / "encoding_tables.npz", tables, *table_range, initial=initial_tables,
                                 form=form)
    result = TrainResult(out_dir=str(out_dir), history=history, best_epoch=best["epoch"], best_val=best["val"],
                         test=test, units=train_set.target_units, x_range=x_range, finished=finished,
                         distance_scale=scale, flags=list(health.messages))
    if writes:
        result.write(config)
    if config.progress and writes and (finished or result.flags):
        summary = mae_summary(test, train_set.target_units) if finished else "no test"
        tqdm.write(f"{label} lambda={config.lam:g}: {summary} (best epoch {best['epoch']})"
                   + "".join(f"\nFLAGGED: {m}" for m in result.flags))
    return result
