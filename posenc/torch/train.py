"""Training a backbone with a distance encoding (PyTorch): ``train(TrainConfig(...))`` or ``posenc train``.

One epoch: the training molecules in an order seeded by (seed, epoch), batches collated into
graphs, the loss (energy + forces for MD17, the normalised property for QM9) plus
``lam * L_smooth`` of every table encoding, an optimiser step (and a cosine step). After each
epoch: validation errors, ``metrics.csv``/``.json``, ``last.pt`` and, when the validation error
improved, ``best.pt``. At the end the best weights are tested and the learned tables saved (file
layout in :mod:`posenc.training`).

Resuming is exact: the checkpoint holds the model, optimiser, scheduler and torch RNG state and the
epoch, and the data order of an epoch depends on (seed, epoch) only, so "2 epochs, stop, resume 2
more" reproduces a 4-epoch run loss for loss.

Example:
  >>> from posenc.torch.train import TrainConfig, train
  >>> result = train(TrainConfig(dataset="md17:ethanol", encoding="hermite", lam=0.1, quick=True))  # doctest: +SKIP
  >>> result.test["force_mae"]  # meV/Angstrom  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from posenc.data.graphs import batches
from posenc.torch.batching import Batch, collate
from posenc.data.molecules import Molecules
from posenc.torch.encodings import TableEncoding
from posenc.torch.losses import total_smoothness_loss
from posenc.torch.models import energy_and_forces, graph_cutoff, make_model, set_output_stats
from posenc.torch.models.common import N_SPECIES
from posenc.training import (
    TrainConfig,
    TrainResult,
    atomic_write,
    check_resumable,
    cosine_factor,
    cut_data,
    encoding_overrides,
    encoding_range,
    epoch_seed,
    load_data,
    mae_summary,
    output_stats,
    resolve,
    save_encoding_tables,
    write_metrics,
)

__all__ = ["TrainConfig", "TrainResult", "build_model", "encoding_tables", "evaluate", "load_checkpoint",
           "loss_terms", "table_parameters", "train"]

CHECKPOINT_FORMAT = "posenc-torch-checkpoint-1"
#: A weights checkpoint (``best.pt``) holds these; a resumable one (``last.pt``) all of CHECKPOINT_KEYS.
WEIGHTS_KEYS = ("format", "epoch", "model")
CHECKPOINT_KEYS = (*WEIGHTS_KEYS, "optimizer", "scheduler", "torch_rng", "history", "best", "config")


def build_model(config: TrainConfig, x_range: tuple[float, float], n_outputs: int) -> nn.Module:
    """The backbone of ``config`` with its distance encoding over ``x_range``."""
    extra: dict[str, Any] = {}
    if config.backbone in ("egnn", "transformer"):
        extra["share_encoding"] = config.share_encoding
    if config.backbone == "egnn":
        extra["update_coords"] = config.update_coords
    overrides = encoding_overrides(config)
    if config.backbone != "dimenet" and config.encoding in ("hermite", "linear", "gaussian"):
        overrides.setdefault("x_min", x_range[0])
    model = make_model(config.backbone, encoding=config.encoding, encoding_kwargs=overrides, x_max=x_range[1],
                       n_layers=config.n_layers, hidden=config.hidden, n_outputs=n_outputs,
                       dtype=getattr(torch, config.dtype), **extra)
    return model.to(config.device)


def loss_terms(model: nn.Module, batch: Batch, *, scale: torch.Tensor, lam: float, loss: str = "mse",
               energy_weight: float = 0.01, force_weight: float = 0.99) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch and its parts.

    With forces (MD17): ``w_E * err((E - E*) / s) + w_F * err((F - F*) / s)``, forces by autograd
    with ``create_graph=True``; without (QM9): ``err((y - y*) / s)`` over the targets; ``s`` is the
    training scale, ``err`` the mean square (``mse``) or mean absolute (``l1``) error. Plus
    ``lam * L_smooth`` summed over the model's table encodings.

    Returns:
      ``(loss, {"data": ..., "smooth": ...})``.
    """
    err = (lambda r: r.pow(2).mean()) if loss == "mse" else (lambda r: r.abs().mean())
    if batch.forces is not None:
        y, forces = energy_and_forces(model, batch, create_graph=True)
        data = energy_weight * err((y - batch.targets) / scale) + force_weight * err((forces - batch.forces) / scale[0])
    else:
        data = err((model(batch) - batch.targets) / scale)
    smooth = total_smoothness_loss(model)
    return data + lam * smooth, {"data": float(data.detach()), "smooth": float(smooth.detach())}


def evaluate(model: nn.Module, graphs: list[Batch]) -> dict[str, float]:
    """Mean absolute errors over ``graphs``, in the data's units.

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
    if n_comp:
        return {"energy_mae": abs_e / n_mol, "force_mae": abs_f / n_comp}
    return {"mae": abs_e / n_mol}


def encoding_tables(model: nn.Module) -> tuple[list[dict[str, np.ndarray]], tuple[float, float] | None]:
    """The learned distance tables, layer by layer, and their range.

    Every table encoding of the model except an angle's (DimeNet++'s ``sbf``); ``slopes`` only for
    Hermite tables. Returns ``([], None)`` when the encoding has no table.
    """
    tables, x_range = [], None
    for name, module in model.named_modules():
        if isinstance(module, TableEncoding) and "sbf" not in name.split("."):
            table = {"values": module.values.detach().cpu().numpy().copy()}  # a copy: training moves the parameters
            if hasattr(module, "slopes"):
                table["slopes"] = module.slopes.detach().cpu().numpy().copy()
            tables.append(table)
            x_range = (module.x_min, module.x_max)
    return tables, x_range


def table_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model's distance tables (values and slopes of every table encoding)."""
    return [p for m in model.modules() if isinstance(m, TableEncoding) for p in m.parameters(recurse=False)]


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam/AdamW over two groups: the tables (at ``table_lr_scale`` x lr, or left out when frozen)
    and everything else."""
    tables = table_parameters(model)
    if config.freeze_tables:
        for p in tables:
            p.requires_grad_(False)
    table_ids = {id(p) for p in tables}
    groups = [{"params": [p for p in model.parameters() if id(p) not in table_ids], "lr": config.lr}]
    if tables and not config.freeze_tables:
        groups.append({"params": tables, "lr": config.lr * config.table_lr_scale})
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    if config.schedule == "cosine":  # stepped per batch, over the whole run; each group's rate scaled alike
        total, alpha = config.epochs * steps_per_epoch, config.min_lr / config.lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total, alpha))
    if config.schedule == "plateau":  # stepped per epoch on the validation error
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=config.patience,
                                                          min_lr=config.min_lr)
    return None


def _save(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | Path, *, resumable: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`train`: ``best.pt`` (weights) or ``last.pt`` (resumable).

    Args:
      path: the checkpoint file.
      resumable: require the full training state (optimizer, scheduler, RNG, history, config).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is truncated, corrupt, not a posenc checkpoint, or lacks what a
        checkpoint of its kind (or a resumable one, when asked) must hold.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"corrupt or truncated checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a posenc torch checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    # a file with any training state must carry all of it; a weights file needs only WEIGHTS_KEYS
    full = resumable or any(k in state for k in CHECKPOINT_KEYS if k not in WEIGHTS_KEYS)
    missing = [k for k in (CHECKPOINT_KEYS if full else WEIGHTS_KEYS) if k not in state]
    if missing:
        raise ValueError(f"corrupt checkpoint {path}: it lacks {missing}")
    return state


def train(config: TrainConfig, data: dict[str, Molecules] | None = None) -> TrainResult:
    """Trains, validates, checkpoints and tests one model.

    Args:
      config: the run (see :class:`posenc.training.TrainConfig`).
      data: ``{"train", "val", "test"}`` sets to use instead of loading ``config.dataset`` (tests,
        notebooks); ``config.dataset`` still names the task.

    Returns:
      :class:`posenc.training.TrainResult` (also written to ``out_dir/result.json``).

    Raises:
      ValueError: a bad config, a corrupt checkpoint, or ``resume`` with a config that differs.
      FileNotFoundError: ``resume`` without ``out_dir/last.pt``.
    """
    config = resolve(config)
    if config.backend == "haiku":
        from posenc.haiku.train import train as train_haiku

        return train_haiku(config, data)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)  # Gaussian tails would otherwise hit slow float32 denormals
    data = load_data(config) if data is None else cut_data(data, config)
    train_set, out_dir = data["train"], Path(config.out_dir)
    dtype, cutoff = getattr(torch, config.dtype), graph_cutoff(config.backbone)
    x_range = encoding_range(config, train_set)

    torch.manual_seed(config.seed)
    model = build_model(config, x_range, train_set.targets.shape[1])
    stats = output_stats(train_set, N_SPECIES)
    set_output_stats(model, **stats)
    initial_tables = encoding_tables(model)[0]  # before any step (a resumed run rebuilds the same init)
    scale = torch.as_tensor(stats["scale"], dtype=dtype, device=config.device)
    optimizer = _optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    scheduler = _scheduler(config, optimizer, steps_per_epoch)

    start, history, best = 0, [], {"epoch": 0, "val": math.inf}
    if config.resume:
        state = load_checkpoint(out_dir / "last.pt", resumable=True)
        check_resumable(state["config"], config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, history, best = state["epoch"], state["history"], state["best"]

    def graphs(mols: Molecules) -> list[Batch]:
        return [collate(mols, idx, cutoff=cutoff, dtype=dtype, device=config.device)
                for idx in batches(mols, config.batch_size, shuffle=False)]

    val_graphs = graphs(data["val"])
    end = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
    bar = tqdm(range(start, end), desc=f"{config.dataset} {config.backbone}+{config.encoding}",
               disable=not config.progress, initial=start, total=end)
    for epoch in bar:
        tic, sums, n = time.perf_counter(), {"loss": 0.0, "data": 0.0, "smooth": 0.0}, 0
        for idx in batches(train_set, config.batch_size, shuffle=True, seed=epoch_seed(config.seed, epoch)):
            b = collate(train_set, idx, cutoff=cutoff, dtype=dtype, device=config.device)
            loss, parts = loss_terms(model, b, scale=scale, lam=config.lam, loss=config.loss,
                                     energy_weight=config.energy_weight, force_weight=config.force_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if config.schedule == "cosine":
                scheduler.step()
            sums["loss"] += float(loss.detach())
            sums["data"] += parts["data"]
            sums["smooth"] += parts["smooth"]
            n += 1
        val = evaluate(model, val_graphs)
        primary = val.get("force_mae", val.get("mae"))
        if config.schedule == "plateau":
            scheduler.step(primary)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{k}": v / n for k, v in sums.items()}, **{f"val_{k}": v for k, v in val.items()},
               "seconds": time.perf_counter() - tic}
        history.append(row)
        if primary < best["val"]:
            best = {"epoch": epoch + 1, "val": primary}
            _save(out_dir / "best.pt", {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict()})
        _save(out_dir / "last.pt", {
            "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": None if scheduler is None else scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "history": history, "best": best, "config": config.to_dict(),
        })
        write_metrics(out_dir, history)
        bar.set_postfix(loss=f"{row['train_loss']:.4g}", val=f"{primary:.4g}")

    finished = end == config.epochs
    test: dict[str, float] = {}
    if finished:
        best_state = load_checkpoint(out_dir / "best.pt")
        model.load_state_dict(best_state["model"])
        test = evaluate(model, graphs(data["test"]))
        tables, table_range = encoding_tables(model)
        if tables:
            save_encoding_tables(out_dir / "encoding_tables.npz", tables, *table_range, initial=initial_tables)
    result = TrainResult(out_dir=str(out_dir), history=history, best_epoch=best["epoch"], best_val=best["val"],
                         test=test, units=train_set.target_units, x_range=x_range, finished=finished)
    result.write(config)
    if finished and config.progress:
        tqdm.write(f"{config.dataset} {config.backbone}+{config.encoding} lambda={config.lam:g}: "
                   f"{mae_summary(test, train_set.target_units)} (best epoch {best['epoch']})")
    return result
