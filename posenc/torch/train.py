"""The PyTorch training backend: the model, loss, optimiser and state behind ``posenc.trainer.train``.

:class:`Backend` implements :class:`posenc.trainer.TrainingBackend`; the epoch loop, the files
and the flags are the trainer's. One step: the batch collated into a graph, the loss (energy +
forces by autograd with ``create_graph=True`` for MD17, the normalised property for QM9) plus
``lam * L_smooth`` of every table encoding, an optimiser step and a schedule step. The per-step
losses stay on the device until the end of the epoch. Checkpoints (``best.pt`` weights,
``last.pt`` the whole state with the torch RNG) are read with ``torch.load(weights_only=True)``,
which executes no code.

Under ``torchrun`` the model is wrapped in DistributedDataParallel (:mod:`posenc.torch.distributed`):
each rank steps on its part of every global batch with the loss weighted so that DDP's average of
the ranks' gradients is the single-process gradient of the whole batch (see :func:`make_loss`).

Example:
  >>> from posenc.trainer import train
  >>> from posenc.training import TrainConfig
  >>> result = train(TrainConfig(dataset="md17:ethanol", encoding="hermite", lam=0.1, quick=True))  # doctest: +SKIP
  >>> result.test["force_mae"]  # meV/Angstrom  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import pickle
import zipfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from posenc.data.graphs import batches
from posenc.data.molecules import Molecules
from posenc.encoding_defaults import RANGED_ENCODINGS, TABLE_PARAMETERS
from posenc.torch.batching import Batch, collate
from posenc.torch.distributed import DataParallel, data_parallel
from posenc.torch.encodings import TableEncoding
from posenc.torch.losses import total_smoothness_loss
from posenc.torch.models import energy_and_forces, graph_cutoff, make_model, set_output_stats
from posenc.torch.models.common import N_SPECIES
from posenc.training import TrainConfig, atomic_write, encoding_overrides, lr_factor, schedule_factor

__all__ = ["Backend", "build_model", "encoding_tables", "evaluate", "learning_rate", "load_checkpoint", "make_loss",
           "make_optimizer", "table_parameters"]

CHECKPOINT_FORMAT = "posenc-torch-checkpoint-2"
#: A weights checkpoint (``best.pt``) holds these; a resumable one (``last.pt``) all of CHECKPOINT_KEYS.
WEIGHTS_KEYS = ("format", "epoch", "model", "x_range", "distance_scale")
CHECKPOINT_KEYS = (*WEIGHTS_KEYS, "optimizer", "scheduler", "torch_rng", "history", "best", "config", "health")

#: ``(w_mol, w_comp)``: multipliers of the summed target and force-component errors (see :func:`make_loss`).
Weights = tuple[float, float]
#: ``loss(batch, weights=None) -> (total, data, smooth)``, three 0-d tensors (total carries the graph).
LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def build_model(config: TrainConfig, x_range: tuple[float, float], n_outputs: int,
                distance_scale: float | None = None, stats: dict[str, np.ndarray] | None = None) -> nn.Module:
    """The backbone of ``config`` with its distance encoding over ``x_range`` (Angstrom).

    Args:
      config: the run.
      x_range: the encoded distance range.
      n_outputs: targets per molecule.
      distance_scale: the training set's rms distance (see :func:`posenc.training.encoding_overrides`).
      stats: output statistics to set (:func:`posenc.training.output_stats`); None leaves the
        defaults (a checkpoint's state dict then brings them).
    """
    extra: dict[str, Any] = {}
    if config.backbone in ("egnn", "transformer"):
        extra["share_encoding"] = config.share_encoding
    if config.backbone == "egnn":
        extra["update_coords"] = config.update_coords
    overrides = encoding_overrides(config, distance_scale)
    if config.backbone != "dimenet" and config.encoding in RANGED_ENCODINGS:
        overrides.setdefault("x_min", x_range[0])
    model = make_model(config.backbone, encoding=config.encoding, encoding_kwargs=overrides, x_max=x_range[1],
                       n_layers=config.n_layers, hidden=config.hidden, n_outputs=n_outputs,
                       dtype=getattr(torch, config.dtype), **extra)
    if stats is not None:
        set_output_stats(model, **stats)
    return model.to(config.device)


def make_loss(model: nn.Module, scale: torch.Tensor, config: TrainConfig) -> LossFn:
    """``loss(batch, weights=None) -> (total, data, smooth)``: the training loss of one batch and its parts.

    With forces (MD17): ``w_E * err((E - E*) / s) + w_F * err((F - F*) / s)``, forces by autograd
    with ``create_graph=True``; without (QM9): ``err((y - y*) / s)`` over the targets; ``s`` ``[T]``
    is the training scale, ``err`` the mean square (``mse``) or mean absolute (``l1``) error. Plus
    ``lam * L_smooth`` summed over the model's table encodings.

    ``weights`` None takes the means over ``batch``. A rank's part of a global batch of M molecules
    (T targets) and A atoms instead passes ``(n / (M T), n / (3 A))`` for n ranks: ``err`` becomes
    the part's summed error times its weight, and DDP's average over the n ranks of the gradients
    is then exactly the gradient of the global batch's means, whatever the parts' sizes and atom
    counts. The smoothness term is the same on every rank and is not scaled, so the average counts
    it once. An empty part passes ``(0, 0)`` with any molecule (its data term is then zero).
    """
    def err(r: torch.Tensor, weight: float | None) -> torch.Tensor:
        e = r.pow(2) if config.loss == "mse" else r.abs()
        return e.mean() if weight is None else e.sum() * weight

    def loss(batch: Batch, weights: Weights | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w_mol, w_comp = (None, None) if weights is None else weights
        if batch.forces is not None:
            y, forces = energy_and_forces(model, batch, create_graph=True)
            data = (config.energy_weight * err((y - batch.targets) / scale, w_mol)
                    + config.force_weight * err((forces - batch.forces) / scale[0], w_comp))
        else:
            data = err((model(batch) - batch.targets) / scale, w_mol)
        with torch.set_grad_enabled(config.lam > 0):  # at lambda = 0 it is only reported
            smooth = total_smoothness_loss(model)
        return data + config.lam * smooth, data, smooth

    return loss


def evaluate(model: nn.Module, graphs: list[Batch],
             reduce: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """Mean absolute errors over ``graphs``, in the data's units.

    Args:
      model: the model (not a DDP wrapper: no gradients are reduced here).
      graphs: the batches.
      reduce: sums ``[4]`` float64 partial sums (absolute errors and counts of molecules and
        force components) over the ranks of a data-parallel job, each of which evaluated its
        part of the molecules; None: one process.

    Returns:
      ``{"energy_mae", "force_mae"}`` (per molecule; per force component) with forces, else
      ``{"mae"}`` over molecules and targets.
    """
    model.eval()
    abs_e = abs_f = 0.0
    n_mol = n_comp = 0
    for b in graphs:
        if b.forces is not None:
            y, forces = energy_and_forces(model, b)
            abs_f += float((forces - b.forces).abs().sum())
            n_comp += b.forces.numel()
        else:
            with torch.no_grad():
                y = model(b)
        abs_e += float((y.detach() - b.targets).abs().sum())
        n_mol += b.targets.numel()
    model.train()
    if reduce is not None:
        abs_e, n_mol, abs_f, n_comp = reduce(np.array([abs_e, n_mol, abs_f, n_comp], dtype=np.float64)).tolist()
    if n_comp:
        return {"energy_mae": abs_e / n_mol, "force_mae": abs_f / n_comp}
    return {"mae": abs_e / n_mol}


def encoding_tables(model: nn.Module) -> tuple[list[dict[str, np.ndarray]], tuple[float, float] | None]:
    """The learned distance tables, layer by layer, and their range (Angstrom).

    Every table encoding of the model except an angle's (DimeNet++'s ``sbf``); ``slopes`` (Hermite
    forms) and ``curvatures`` (quintic Hermite) where the form has them. Returns ``([], None)``
    when the encoding has no table.
    """
    tables, x_range = [], None
    for name, module in model.named_modules():
        if isinstance(module, TableEncoding) and "sbf" not in name.split("."):
            # copies: training moves the parameters
            table = {name: getattr(module, name).detach().cpu().numpy().copy()
                     for name in TABLE_PARAMETERS if hasattr(module, name)}
            tables.append(table)
            x_range = (module.x_min, module.x_max)
    return tables, x_range


def table_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model's distance tables (values and slopes of every table encoding)."""
    return [p for m in model.modules() if isinstance(m, TableEncoding) for p in m.parameters(recurse=False)]


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The base rate of each optimiser step: ``lr`` times :func:`posenc.training.lr_factor`.

    ``cosine``: warm-up, then cosine to ``min_lr``; ``none``: warm-up, then ``lr``; ``plateau``:
    ``lr`` (the plateau scheduler of :func:`make_optimizer` lowers it epoch by epoch).
    """
    if config.schedule == "plateau":
        return lambda step: config.lr
    total, warmup, alpha = schedule_factor(config, steps_per_epoch)
    return lambda step: config.lr * float(lr_factor(step, total, warmup, alpha))


def make_optimizer(config: TrainConfig, model: nn.Module,
                   rate: Callable[[int], float]) -> tuple[torch.optim.Optimizer, Any]:
    """Adam/AdamW over two groups and its per-step (or, for ``plateau``, per-epoch) scheduler.

    The groups: the tables (at ``table_lr_scale`` x the rate, or left out and frozen with
    ``freeze_tables``) and everything else. Every group follows ``rate(step) / lr``.

    Returns:
      ``(optimizer, scheduler)``: a ``LambdaLR`` stepped once per optimiser step, or a
      ``ReduceLROnPlateau`` stepped once per epoch on the validation error.
    """
    tables = table_parameters(model)
    if config.freeze_tables:
        for p in tables:
            p.requires_grad_(False)
    table_ids = {id(p) for p in tables}
    groups = [{"params": [p for p in model.parameters() if id(p) not in table_ids], "lr": config.lr}]
    if tables and not config.freeze_tables:
        groups.append({"params": tables, "lr": config.lr * config.table_lr_scale})
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    # fused: one kernel for every parameter's update instead of a handful of ops per tensor
    optimizer = cls(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.schedule == "plateau":
        return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=config.patience,
                                                                     min_lr=config.min_lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: rate(step) / config.lr)


def load_checkpoint(path: str | Path, *, resumable: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by the trainer: ``best.pt`` (weights) or ``last.pt`` (resumable).

    ``torch.load(weights_only=True)`` unpickles tensors and plain containers only and executes no
    code.

    Args:
      path: the checkpoint file.
      resumable: require the full training state (optimizer, scheduler, RNG, history, config).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is truncated, corrupt, not a posenc checkpoint of this format, or lacks
        what a checkpoint of its kind (or a resumable one, when asked) must hold.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"corrupt or truncated checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{path} is not a posenc torch checkpoint of format {CHECKPOINT_FORMAT!r} (found {found!r})")
    # a file with any training state must carry all of it; a weights file needs only WEIGHTS_KEYS
    full = resumable or any(k in state for k in CHECKPOINT_KEYS if k not in WEIGHTS_KEYS)
    missing = [k for k in (CHECKPOINT_KEYS if full else WEIGHTS_KEYS) if k not in state]
    if missing:
        raise ValueError(f"corrupt checkpoint {path}: it lacks {missing}")
    return state


def _keep_freed_memory() -> bool:
    """Asks glibc's allocator to keep freed memory for reuse instead of returning it to the system.

    A training step allocates and frees the same few hundred kilobyte-sized tensors every time.
    By default glibc serves blocks above 128 kB with fresh ``mmap`` pages and unmaps them when
    freed, so every step pays the kernel to zero new pages on first touch (``aten::fill_`` and
    elementwise ops on fresh outputs were 2-4x slower in the profile; measured: about 10% of an
    MD17 ethanol epoch on one thread). Raising the mmap and trim thresholds keeps those blocks in
    the process's heap (the same as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``), at the
    cost of not handing freed memory back to the system until the process ends.

    Returns:
      Whether the setting was applied (False where the C library is not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


class Backend:
    """The torch side of :class:`posenc.trainer.TrainingBackend` (see there for the methods).

    Args:
      config: the run (``device``, ``dtype``, ``threads`` are used here).
      data: ``{"train", "val", "test"}``; validation graphs are collated once.
      x_range: the encoded distance range, Angstrom.
      stats: output statistics of the training set.
      distance_scale: the training set's rms distance, Angstrom.
      data_parallel: ranks asked for (None: as many as ``torchrun`` started, 1 outside it; see
        :func:`posenc.torch.distributed.data_parallel`).

    Raises:
      ValueError: ``data_parallel`` > 1 outside ``torchrun``, or more ranks than molecules in a
        batch.
    """

    suffix = ".pt"
    n_species = N_SPECIES

    def __init__(self, config: TrainConfig, data: dict[str, Molecules], x_range: tuple[float, float],
                 stats: dict[str, np.ndarray], distance_scale: float, data_parallel: int | None = None) -> None:
        self.parallel = _join(data_parallel, config)
        config = dataclasses.replace(config, device=self.parallel.device)  # cuda -> this rank's GPU
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.set_flush_denormal(True)  # Gaussian tails would otherwise hit slow float32 denormals
        if torch.device(config.device).type == "cpu":
            _keep_freed_memory()
        self.config, self.train_set = config, data["train"]
        self.dtype, self.cutoff = getattr(torch, config.dtype), graph_cutoff(config.backbone)
        torch.manual_seed(config.seed)
        self.model = build_model(config, x_range, self.train_set.targets.shape[1], distance_scale, stats)
        self._initial_tables = encoding_tables(self.model)[0]  # before any step
        steps_per_epoch = -(-len(self.train_set) // config.batch_size)
        self.rate = learning_rate(config, steps_per_epoch)
        self.optimizer, self.scheduler = make_optimizer(config, self.model, self.rate)
        self.loss = make_loss(self.parallel.wrap(self.model),
                              torch.as_tensor(stats["scale"], dtype=self.dtype, device=config.device), config)
        self.val_set, self.val_graphs = data["val"], self.graphs(data["val"])

    @property
    def main(self) -> bool:
        return self.parallel.main

    def graphs(self, mols: Molecules) -> list[Batch]:
        """This rank's part of ``mols`` in their stored order, as batches of at most ``batch_size``."""
        parts = (self.parallel.part(idx) for idx in batches(mols, self.config.batch_size, shuffle=False))
        return [collate(mols, part, cutoff=self.cutoff, dtype=self.dtype, device=self.config.device)
                for part in parts if part.size]

    def step_weights(self, idx: np.ndarray) -> tuple[np.ndarray, Weights | None]:
        """This rank's molecules of the global batch ``idx`` and their loss weights (:func:`make_loss`).

        One process: all of ``idx``, the means. An empty part steps on the batch's first molecule
        at weight zero, because every rank must take part in DDP's gradient reduction.
        """
        if self.parallel.size == 1:
            return idx, None
        part = self.parallel.part(idx)
        if not part.size:
            return idx[:1], (0.0, 0.0)
        n = self.parallel.size
        n_targets = idx.size * self.train_set.targets.shape[1]
        n_comp = 3 * int(self.train_set.n_atoms[idx].sum())
        return part, (n / n_targets, n / n_comp)

    def run_epoch(self, order: list[np.ndarray]) -> np.ndarray:
        per_step = []
        with self.parallel.guard():
            for idx in order:
                part, weights = self.step_weights(idx)
                b = collate(self.train_set, part, cutoff=self.cutoff, dtype=self.dtype, device=self.config.device)
                loss, data, smooth = self.loss(b, weights)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP: averages the gradients over the ranks
                if self.config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)
                self.optimizer.step()
                if self.config.schedule != "plateau":
                    self.scheduler.step()
                per_step.append(torch.stack([loss.detach(), data.detach(), smooth.detach()]))
            # each rank's weighted losses average to the global batch's: one reduction per epoch
            losses = self.parallel.sum(torch.stack(per_step)) / self.parallel.size
        return losses.double().cpu().numpy()  # one host transfer per epoch

    def evaluate(self, mols: Molecules) -> dict[str, float]:
        graphs = self.val_graphs if mols is self.val_set else self.graphs(mols)
        if self.parallel.size == 1:
            return evaluate(self.model, graphs)
        with self.parallel.guard():
            return evaluate(self.model, graphs, reduce=self._sum)

    def _sum(self, values: np.ndarray) -> np.ndarray:
        """``values`` summed over the ranks, in float64."""
        return self.parallel.sum(torch.as_tensor(values, device=self.config.device)).cpu().numpy()

    def end_epoch(self, val: float) -> None:
        if self.config.schedule == "plateau":
            self.scheduler.step(val)

    def lr(self, step: int) -> float:
        if self.config.schedule == "plateau":
            return float(self.optimizer.param_groups[0]["lr"])
        return self.rate(step)

    def save(self, path: Path, meta: dict[str, Any], resumable: bool) -> None:
        state = {"format": CHECKPOINT_FORMAT, **meta, "model": self.model.state_dict()}
        if resumable:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         torch_rng=torch.get_rng_state())
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(path, buf.getvalue())

    def restore(self, path: Path, resumable: bool) -> dict[str, Any]:
        with self.parallel.guard():
            self.parallel.barrier()  # rank 0 wrote the file: every rank reads it once it is there
        state = load_checkpoint(path, resumable=resumable)
        self.model.load_state_dict(state["model"])
        if resumable:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
        return {k: v for k, v in state.items() if k not in ("format", "model", "optimizer", "scheduler", "torch_rng")}

    def tables(self) -> tuple[list[dict[str, np.ndarray]], tuple[float, float] | None]:
        return encoding_tables(self.model)

    def initial_tables(self) -> list[dict[str, np.ndarray]]:
        return self._initial_tables

    def close(self) -> None:
        self.parallel.close()


def _join(requested: int | None, config: TrainConfig) -> DataParallel:
    """The run's :class:`posenc.torch.distributed.DataParallel`, checked against the batch size."""
    parallel = data_parallel(requested, config.device)
    if parallel.size > config.batch_size:
        parallel.close()
        raise ValueError(f"{parallel.size} ranks need batch_size >= {parallel.size} (the global batch is split "
                         f"across them), got {config.batch_size}")
    return parallel
