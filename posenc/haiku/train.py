"""Training the Haiku EGNN: the mirror of ``posenc.torch.train`` with a pure, jitted update.

``posenc train --backend haiku --backbone egnn ...`` lands here. Batches are the fixed-size,
masked graphs of ``posenc.data.batching.collate_jax`` (padded to ``batch_size`` molecules of the
data set's largest size), so ``update`` compiles once. Forces are ``-jax.grad`` of the energy
with respect to the positions inside the loss, and ``jax.value_and_grad`` of that loss gives the
parameter gradients (the double derivative torch gets from ``create_graph=True``). Same config,
data order, statistics, loss and files as the torch loop (see :mod:`posenc.training`);
checkpoints are pickles (``last.pkl``, ``best.pkl``) of numpy trees, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from posenc.data.graphs import batches
from posenc.haiku.batching import collate_jax
from posenc.data.molecules import Molecules
from posenc.haiku.losses import total_smoothness_loss
from posenc.haiku.models.common import N_SPECIES, energy_and_forces
from posenc.haiku.models.egnn import EGNN
from posenc.training import (
    TrainConfig,
    TrainResult,
    atomic_write,
    check_resumable,
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

CHECKPOINT_FORMAT = "posenc-haiku-checkpoint-1"
CHECKPOINT_KEYS = ("format", "epoch", "params", "opt_state", "history", "best", "config")

Graph = dict[str, jax.Array]


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The rate per step: cosine from ``lr`` to ``min_lr`` over the run, or constant."""
    if config.schedule == "plateau":
        raise ValueError("the haiku backend has schedule 'cosine' or 'none'; 'plateau' is torch only")
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, config.epochs * steps_per_epoch, alpha=config.min_lr / config.lr)
    return optax.constant_schedule(config.lr)


def is_table(path: str, name: str) -> bool:
    """Whether parameter ``name`` of module ``path`` is a distance table (values or slopes of a table encoding)."""
    return name in ("values", "slopes") and "encoding" in path


def table_scale(factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the distance tables by ``factor`` (0 freezes them), others unchanged.

    After Adam this is the same as a ``factor`` times larger rate for the tables, as the torch
    backend's second parameter group.
    """
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        scaled = {path: {name: u * factor if is_table(path, name) else u for name, u in leaves.items()}
                  for path, leaves in updates.items()}
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: TrainConfig, rate: optax.Schedule) -> optax.GradientTransformation:
    """Adam/AdamW at ``rate`` with the config's gradient clipping and table rate (or freezing)."""
    parts = [] if config.grad_clip is None else [optax.clip_by_global_norm(config.grad_clip)]
    parts.append(optax.adam(rate) if config.optimizer == "adam" else optax.adamw(rate, weight_decay=config.weight_decay))
    factor = 0.0 if config.freeze_tables else config.table_lr_scale
    if factor != 1.0:
        parts.append(table_scale(factor))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def make_loss(apply: Callable[[Any, Graph], jax.Array], scale: np.ndarray, config: TrainConfig,
              has_forces: bool) -> Callable[[Any, Graph], tuple[jax.Array, tuple[jax.Array, jax.Array]]]:
    """``loss(params, graph) -> (total, (data, smooth))``: the torch loss, with padding masked out."""
    err = jnp.square if config.loss == "mse" else jnp.abs

    def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
        mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - 1)), values.shape)
        return jnp.sum(jnp.where(mask, err(values), 0.0)) / jnp.sum(mask)

    def loss(params: Any, graph: Graph) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        s = jnp.asarray(scale, graph["pos"].dtype)
        if has_forces:
            y, forces = energy_and_forces(apply, params, graph)
            data = (config.energy_weight * masked_mean((y - graph["targets"]) / s, graph["mol_mask"])
                    + config.force_weight * masked_mean((forces - graph["forces"]) / s[0], graph["atom_mask"]))
        else:
            data = masked_mean((apply(params, graph) - graph["targets"]) / s, graph["mol_mask"])
        smooth = total_smoothness_loss(params)
        return data + config.lam * smooth, (data, smooth)

    return loss


def encoding_tables(params: dict) -> list[dict[str, np.ndarray]]:
    """The learned distance tables of a Haiku EGNN, layer by layer (``slopes`` for Hermite only)."""
    def layer(path: str) -> int:
        found = re.search(r"layers_(\d+)", path)
        return int(found.group(1)) if found else -1

    paths = sorted((p for p in params if "values" in params[p]), key=layer)
    return [{k: np.asarray(v) for k, v in params[p].items() if k in ("values", "slopes")} for p in paths]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`train`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is truncated, corrupt or not a posenc Haiku checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"corrupt or truncated checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a posenc Haiku checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"corrupt checkpoint {path}: it lacks {missing}")
    return state


def _save(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, pickle.dumps(jax.device_get(state)))


def train(config: TrainConfig, data: dict[str, Molecules] | None = None) -> TrainResult:
    """Trains the Haiku EGNN (see ``posenc.torch.train.train`` for the arguments and the files)."""
    config = resolve(config)
    if config.backbone != "egnn":
        raise ValueError(f"the haiku backend has the EGNN only, not {config.backbone!r}")
    with jax.enable_x64(config.dtype == "float64"):
        return _train(config, load_data(config) if data is None else cut_data(data, config))


class Steps(NamedTuple):
    """The jitted functions of one model / loss / optimiser setting."""

    rate: optax.Schedule
    tx: optax.GradientTransformation
    init: Callable[[jax.Array, Graph], Any]
    update: Callable[[Any, Any, Graph], tuple[Any, Any, jax.Array, jax.Array, jax.Array]]
    predict: Callable[[Any, Graph], tuple[jax.Array, jax.Array]]


#: Compiled steps by setting: a resumed run or a repeated notebook cell in the same process
#: reuses them instead of compiling again (the double derivative of the forces is slow to compile).
_STEPS: dict[str, Steps] = {}
_STEPS_KEPT = 8


def compiled_steps(config: TrainConfig, x_range: tuple[float, float], stats: dict[str, np.ndarray],
                   overrides: dict[str, Any], n_outputs: int, has_forces: bool, steps_per_epoch: int) -> Steps:
    """The model's jitted ``init``, ``update`` and ``predict`` for this setting (cached)."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("stop_after", "resume", "progress", "threads", "device", "out_dir")}
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(stats[k]).tobytes() for k in sorted(stats))).hexdigest()
    key = json.dumps([settings, x_range, overrides, n_outputs, has_forces, steps_per_epoch, digest,
                      bool(jax.config.jax_enable_x64)], sort_keys=True, default=str)
    if key in _STEPS:
        return _STEPS[key]
    model = hk.without_apply_rng(hk.transform(lambda g: EGNN(
        config.n_layers, config.hidden, config.encoding, overrides, x_max=x_range[1],
        share_encoding=config.share_encoding, update_coords=config.update_coords, n_outputs=n_outputs,
        stats=stats)(g)))
    rate = learning_rate(config, steps_per_epoch)
    tx = make_optimizer(config, rate)
    loss_fn = make_loss(model.apply, stats["scale"], config, has_forces)

    @jax.jit
    def update(params: Any, opt_state: Any, g: Graph) -> tuple[Any, Any, jax.Array, jax.Array, jax.Array]:
        (loss, (data_loss, smooth)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, g)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, data_loss, smooth

    @jax.jit
    def predict(params: Any, g: Graph) -> tuple[jax.Array, jax.Array]:
        return energy_and_forces(model.apply, params, g) if has_forces else (model.apply(params, g), g["forces"])

    steps = Steps(rate, tx, jax.jit(model.init), update, predict)  # a jitted init is far faster than eager
    while len(_STEPS) >= _STEPS_KEPT:
        _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = steps
    return steps


def _train(config: TrainConfig, data: dict[str, Molecules]) -> TrainResult:
    train_set, out_dir = data["train"], Path(config.out_dir)
    has_forces = train_set.forces is not None
    x_range = encoding_range(config, train_set)
    stats = output_stats(train_set, N_SPECIES)
    overrides = encoding_overrides(config)
    if config.encoding in ("hermite", "linear", "gaussian"):
        overrides.setdefault("x_min", x_range[0])
    n_outputs = train_set.targets.shape[1]

    bs = config.batch_size
    n_max = int(max(part.n_atoms.max() for part in data.values()))
    sizes = {"max_atoms": bs * n_max, "max_edges": bs * n_max * (n_max - 1), "max_molecules": bs}

    def graph(mols: Molecules, idx: np.ndarray) -> Graph:
        return collate_jax(mols, idx, **sizes)

    steps_per_epoch = math.ceil(len(train_set) / bs)
    rate, tx, init, update, predict = compiled_steps(config, x_range, stats, overrides, n_outputs, has_forces,
                                                     steps_per_epoch)

    def evaluate(params: Any, graphs: list[Graph]) -> dict[str, float]:
        abs_e = abs_f = 0.0
        n_mol = n_comp = 0
        for g in graphs:
            y, forces = predict(params, g)
            mol, atom = np.asarray(g["mol_mask"]), np.asarray(g["atom_mask"])
            abs_e += float(np.abs(np.asarray(y - g["targets"]))[mol].sum())
            n_mol += int(mol.sum()) * n_outputs
            abs_f += float(np.abs(np.asarray(forces - g["forces"]))[atom].sum())
            n_comp += 3 * int(atom.sum())
        if has_forces:
            return {"energy_mae": abs_e / n_mol, "force_mae": abs_f / n_comp}
        return {"mae": abs_e / n_mol}

    if config.resume:
        state = load_checkpoint(out_dir / "last.pkl")
        check_resumable(state["config"], config)
        params, opt_state = jax.tree.map(jnp.asarray, (state["params"], state["opt_state"]))
        start, history, best = state["epoch"], state["history"], state["best"]
    first = graph(train_set, np.arange(min(bs, len(train_set))))
    initial_params = init(jax.random.PRNGKey(config.seed), first)  # also a resumed run's initial tables
    if not config.resume:
        params = initial_params
        opt_state = tx.init(params)
        start, history, best = 0, [], {"epoch": 0, "val": math.inf}

    def graphs(mols: Molecules) -> list[Graph]:
        return [graph(mols, idx) for idx in batches(mols, bs, shuffle=False)]

    val_graphs = graphs(data["val"])
    end = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
    bar = tqdm(range(start, end), desc=f"{config.dataset} egnn+{config.encoding} (haiku)",
               disable=not config.progress, initial=start, total=end)
    for epoch in bar:
        tic, sums, n = time.perf_counter(), {"loss": 0.0, "data": 0.0, "smooth": 0.0}, 0
        for idx in batches(train_set, bs, shuffle=True, seed=epoch_seed(config.seed, epoch)):
            params, opt_state, loss, data_loss, smooth = update(params, opt_state, graph(train_set, idx))
            for key, value in (("loss", loss), ("data", data_loss), ("smooth", smooth)):
                sums[key] += float(value)
            n += 1
        val = evaluate(params, val_graphs)
        primary = val.get("force_mae", val.get("mae"))
        row = {"epoch": epoch + 1, "lr": float(rate((epoch + 1) * steps_per_epoch)),
               **{f"train_{k}": v / n for k, v in sums.items()}, **{f"val_{k}": v for k, v in val.items()},
               "seconds": time.perf_counter() - tic}
        history.append(row)
        if primary < best["val"]:
            best = {"epoch": epoch + 1, "val": primary}
            _save(out_dir / "best.pkl", {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "params": params})
        _save(out_dir / "last.pkl", {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "params": params,
                                     "opt_state": opt_state, "history": history, "best": best,
                                     "config": config.to_dict()})
        write_metrics(out_dir, history)
        bar.set_postfix(loss=f"{row['train_loss']:.4g}", val=f"{primary:.4g}")

    finished = end == config.epochs
    test: dict[str, float] = {}
    if finished:
        with open(out_dir / "best.pkl", "rb") as f:
            best_params = jax.tree.map(jnp.asarray, pickle.load(f)["params"])
        test = evaluate(best_params, graphs(data["test"]))
        tables = encoding_tables(best_params)
        if tables:
            table_range = (float(overrides.get("x_min", x_range[0])), float(overrides.get("x_max", x_range[1])))
            save_encoding_tables(out_dir / "encoding_tables.npz", tables, *table_range,
                                 initial=encoding_tables(initial_params))
    result = TrainResult(out_dir=str(out_dir), history=history, best_epoch=best["epoch"], best_val=best["val"],
                         test=test, units=train_set.target_units, x_range=x_range, finished=finished)
    result.write(config)
    if finished and config.progress:
        tqdm.write(f"{config.dataset} egnn+{config.encoding} (haiku) lambda={config.lam:g}: "
                   f"{mae_summary(test, train_set.target_units)} (best epoch {best['epoch']})")
    return result

