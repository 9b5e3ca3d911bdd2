"""The Haiku (JAX) training backend: the mirror of ``posenc.torch.train`` with a pure, jitted update.

:class:`Backend` implements :class:`posenc.trainer.TrainingBackend` for the EGNN; the epoch loop,
the files and the flags are the trainer's. Batches are the fixed-size, masked graphs of
:func:`posenc.haiku.batching.collate_jax` (padded to ``batch_size`` molecules of the data set's
largest size), so ``update`` compiles once. Forces are ``-jax.grad`` of the energy with respect to
the positions inside the loss, and ``jax.value_and_grad`` of that loss gives the parameter
gradients (the double derivative torch gets from ``create_graph=True``). The per-step losses stay
on the device until the end of the epoch. No torch is imported.

With ``data_parallel`` N > 1 the step runs over a one-axis mesh of N devices
(:mod:`posenc.haiku.distributed`): every batch as N stacked, padded parts sharded along the
leading axis, the model ``vmap``-ed over it, parameters and optimiser state replicated.

Checkpoints (``best.npz`` weights, ``last.npz`` the whole state) hold data only: an ``.npz`` of
the parameter and optimiser-state leaves plus a JSON string (``meta``) describing the tree
structure, the format version and the trainer's metadata, read with ``allow_pickle=False``. The
pickles of format ``posenc-haiku-checkpoint-1`` (``*.pkl``) are refused, never unpickled:
unpickling a file can run any code it contains.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import zipfile
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from posenc.data.graphs import batches
from posenc.data.molecules import Molecules
from posenc.haiku.batching import collate_jax
from posenc.haiku.distributed import DataParallel, data_parallel
from posenc.haiku.losses import total_smoothness_loss
from posenc.haiku.models.common import N_SPECIES, energy_and_forces
from posenc.haiku.models.egnn import EGNN
from posenc.encoding_defaults import RANGED_ENCODINGS, TABLE_PARAMETERS
from posenc.training import TrainConfig, atomic_write, encoding_overrides, lr_factor, schedule_factor

__all__ = ["Backend", "build_model", "encoding_tables", "evaluate", "learning_rate", "load_checkpoint", "make_loss",
           "make_optimizer", "table_parameters"]

CHECKPOINT_FORMAT = "posenc-haiku-checkpoint-2"
#: The pickle format of earlier versions: refused, named in the message.
PICKLE_FORMAT = "posenc-haiku-checkpoint-1"
#: A weights checkpoint (``best.npz``) holds these; a resumable one (``last.npz``) all of CHECKPOINT_KEYS.
WEIGHTS_KEYS = ("format", "epoch", "params", "x_range", "distance_scale")
CHECKPOINT_KEYS = (*WEIGHTS_KEYS, "opt_state", "history", "best", "config", "health")

Graph = dict[str, jax.Array]
Params = dict[str, dict[str, Any]]
#: ``loss(params, graph) -> (total, (data, smooth))``.
LossFn = Callable[[Params, Graph], tuple[jax.Array, tuple[jax.Array, jax.Array]]]


def build_model(config: TrainConfig, x_range: tuple[float, float], n_outputs: int,
                distance_scale: float | None = None, stats: dict[str, np.ndarray] | None = None) -> hk.Transformed:
    """The EGNN of ``config`` with its distance encoding over ``x_range`` (Angstrom), transformed.

    Args:
      config: the run (the EGNN only).
      x_range: the encoded distance range.
      n_outputs: targets per molecule.
      distance_scale: the training set's rms distance (see :func:`posenc.training.encoding_overrides`).
      stats: output statistics (:func:`posenc.training.output_stats`); None: the defaults.
    """
    if config.backbone != "egnn":
        raise ValueError(f"the haiku backend has the EGNN only, not {config.backbone!r}")
    overrides = encoding_overrides(config, distance_scale)
    if config.encoding in RANGED_ENCODINGS:
        overrides.setdefault("x_min", x_range[0])
    return hk.without_apply_rng(hk.transform(lambda g: EGNN(
        config.n_layers, config.hidden, config.encoding, overrides, x_max=x_range[1],
        share_encoding=config.share_encoding, update_coords=config.update_coords, n_outputs=n_outputs,
        stats=stats)(g)))


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The base rate of each optimiser step: ``lr`` times :func:`posenc.training.lr_factor`.

    ``cosine``: warm-up, then cosine to ``min_lr``; ``none``: warm-up, then ``lr``.

    Raises:
      ValueError: ``plateau`` (torch only).
    """
    if config.schedule == "plateau":
        raise ValueError("the haiku backend has schedule 'cosine' or 'none'; 'plateau' is torch only")
    total, warmup, alpha = schedule_factor(config, steps_per_epoch)
    return lambda step: config.lr * lr_factor(step, total, warmup, alpha, xp=jnp)


def _is_table(path: str, name: str) -> bool:
    """Whether parameter ``name`` of module ``path`` is a distance table (values, slopes or
    curvatures of a table encoding)."""
    return name in TABLE_PARAMETERS and "encoding" in path


def table_parameters(params: Params) -> Params:
    """The distance tables of ``params`` (values, slopes, curvatures of every table encoding), as a sub-tree."""
    tables = {path: {n: v for n, v in leaves.items() if _is_table(path, n)} for path, leaves in params.items()}
    return {path: leaves for path, leaves in tables.items() if leaves}


def _table_scale(factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the distance tables by ``factor`` (0 freezes them), others unchanged.

    After Adam this is the same as a ``factor`` times larger rate for the tables, as the torch
    backend's second parameter group.
    """
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        scaled = {path: {name: u * factor if _is_table(path, name) else u for name, u in leaves.items()}
                  for path, leaves in updates.items()}
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: TrainConfig, rate: optax.Schedule) -> optax.GradientTransformation:
    """Adam/AdamW at ``rate`` with the config's gradient clipping and table rate (or freezing)."""
    parts = [] if config.grad_clip is None else [optax.clip_by_global_norm(config.grad_clip)]
    parts.append(optax.adam(rate) if config.optimizer == "adam"
                 else optax.adamw(rate, weight_decay=config.weight_decay))
    factor = 0.0 if config.freeze_tables else config.table_lr_scale
    if factor != 1.0:
        parts.append(_table_scale(factor))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def _predictor(apply: Callable[[Params, Graph], jax.Array], has_forces: bool,
               stacked: bool) -> Callable[[Params, Graph], tuple[jax.Array, jax.Array]]:
    """``predict(params, graph) -> (y [M_pad, T], forces [A_pad, 3])``, forces by ``jax.grad`` (the
    graph's zeros without forces); ``stacked``: ``vmap``-ed over a leading axis of parts."""
    def predict(params: Params, graph: Graph) -> tuple[jax.Array, jax.Array]:
        return energy_and_forces(apply, params, graph) if has_forces else (apply(params, graph), graph["forces"])

    return jax.vmap(predict, in_axes=(None, 0)) if stacked else predict


def make_loss(apply: Callable[[Params, Graph], jax.Array], scale: np.ndarray, config: TrainConfig,
              has_forces: bool, stacked: bool = False) -> LossFn:
    """``loss(params, graph) -> (total, (data, smooth))``: the torch loss, with padding masked out.

    ``scale`` ``[T]`` is the training scale; see ``posenc.torch.train.make_loss`` for the terms.
    ``stacked``: ``graph`` holds the parts of one batch stacked along a leading axis (the
    sharded layout of :mod:`posenc.haiku.distributed`); the means are then over every part's
    molecules and atoms, the means of the whole batch.
    """
    err = jnp.square if config.loss == "mse" else jnp.abs

    def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
        mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)), values.shape)
        return jnp.sum(jnp.where(mask, err(values), 0.0)) / jnp.sum(mask)

    outputs = _predictor(apply, has_forces, stacked)

    def loss(params: Params, graph: Graph) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        s = jnp.asarray(scale, graph["pos"].dtype)
        y, forces = outputs(params, graph)
        if has_forces:
            data = (config.energy_weight * masked_mean((y - graph["targets"]) / s, graph["mol_mask"])
                    + config.force_weight * masked_mean((forces - graph["forces"]) / s[0], graph["atom_mask"]))
        else:
            data = masked_mean((y - graph["targets"]) / s, graph["mol_mask"])
        smooth = total_smoothness_loss(params)
        if config.lam == 0:  # only reported: no gradient to compute
            smooth = jax.lax.stop_gradient(smooth)
        return data + config.lam * smooth, (data, smooth)

    return loss


def evaluate(predict: Callable[[Params, Graph], tuple[jax.Array, jax.Array]], params: Params, graphs: list[Graph],
             *, forces: bool) -> dict[str, float]:
    """Mean absolute errors over ``graphs``, in the data's units (padding masked out).

    Args:
      predict: ``predict(params, graph) -> (y [M_pad, T], forces [A_pad, 3])`` (or, for stacked
        graphs, ``y [N, M_pad, T]`` and ``forces [N, A_pad, 3]``).
      params: the model's parameters.
      graphs: padded graphs of :func:`posenc.haiku.batching.collate_jax`, or N of them stacked
        (:meth:`posenc.haiku.distributed.DataParallel.put`).
      forces: whether the data has forces.

    Returns:
      ``{"energy_mae", "force_mae"}`` with forces, else ``{"mae"}`` over molecules and targets.
    """
    abs_e = abs_f = 0.0
    n_mol = n_comp = 0
    for g in graphs:
        y, f = predict(params, g)
        mol, atom = np.asarray(g["mol_mask"]), np.asarray(g["atom_mask"])
        abs_e += float(np.abs(np.asarray(y - g["targets"]))[mol].sum())
        n_mol += int(mol.sum()) * int(g["targets"].shape[-1])
        abs_f += float(np.abs(np.asarray(f - g["forces"]))[atom].sum())
        n_comp += 3 * int(atom.sum())
    if forces:
        return {"energy_mae": abs_e / n_mol, "force_mae": abs_f / n_comp}
    return {"mae": abs_e / n_mol}


def encoding_tables(params: Params, x_range: tuple[float, float]) -> tuple[list[dict[str, np.ndarray]],
                                                                           tuple[float, float] | None]:
    """The learned distance tables of a Haiku EGNN, layer by layer, and their range (Angstrom).

    ``slopes`` (Hermite forms) and ``curvatures`` (quintic Hermite) where the form has them.
    Returns ``([], None)`` when the encoding has no table.

    Args:
      params: the model's parameters.
      x_range: the tables' range (Haiku parameters do not carry it).
    """
    def layer(path: str) -> int:
        found = re.search(r"layers_(\d+)", path)
        return int(found.group(1)) if found else -1

    tables = table_parameters(params)
    found = [{k: np.array(v) for k, v in tables[p].items()} for p in sorted(tables, key=layer)]
    return found, ((float(x_range[0]), float(x_range[1])) if found else None)


def _refuse_pickle(path: Path) -> None:
    """Raises ValueError, without unpickling, when ``path`` is not a zip (npz) file."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x80"):
        raise ValueError(f"{path} is a pickle (the {PICKLE_FORMAT!r} format of earlier posenc versions, or a "
                         f"foreign file); it is not loaded, because unpickling can run any code. posenc reads "
                         f"Haiku checkpoints of format {CHECKPOINT_FORMAT!r} (an .npz of arrays plus JSON)")
    if head != b"PK\x03\x04":
        raise ValueError(f"{path} is not a posenc Haiku checkpoint (format {CHECKPOINT_FORMAT!r}: an .npz of arrays "
                         "plus JSON)")


def load_checkpoint(path: str | Path, *, resumable: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by the trainer: ``best.npz`` (weights) or ``last.npz`` (resumable).

    Data only: ``numpy.load(allow_pickle=False)`` and ``json.loads``; no code is executed.

    Args:
      path: the checkpoint file.
      resumable: require the full training state (optimiser state, history, config).

    Returns:
      The metadata, ``params`` (a ``{module: {name: array}}`` tree of numpy arrays) and, in a
      resumable file, ``opt_state`` (``{"treedef": str, "leaves": [arrays]}``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a pickle (format ``posenc-haiku-checkpoint-1`` or foreign), a truncated or
        corrupt file, another format, or a file that lacks what its kind must hold.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _refuse_pickle(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"corrupt or truncated checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a posenc Haiku checkpoint of format {CHECKPOINT_FORMAT!r} (found {found!r})")
    tree = meta.pop("tree")
    try:
        state = {**meta, "params": {}}
        for k, (module, name) in enumerate(tree["params"]):
            state["params"].setdefault(module, {})[name] = arrays[f"params_{k}"]
        if "opt_state" in tree:
            state["opt_state"] = {"treedef": tree["opt_state"]["treedef"],
                                  "leaves": [arrays[f"opt_{k}"] for k in range(tree["opt_state"]["n_leaves"])]}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"corrupt checkpoint {path}: its arrays do not match its tree ({err})") from err
    full = resumable or any(k in state for k in CHECKPOINT_KEYS if k not in WEIGHTS_KEYS)
    missing = [k for k in (CHECKPOINT_KEYS if full else WEIGHTS_KEYS) if k not in state]
    if missing:
        raise ValueError(f"corrupt checkpoint {path}: it lacks {missing}")
    return state


def _save_checkpoint(path: Path, meta: dict[str, Any], params: Params, opt_state: Any = None) -> None:
    """Writes :func:`load_checkpoint`'s format atomically (``opt_state`` None: weights only)."""
    names = sorted((module, name) for module, leaves in params.items() for name in leaves)
    # Any: np.savez's stubs read a **dict[str, ndarray] as a possible allow_pickle=
    arrays: dict[str, Any] = {f"params_{k}": np.asarray(params[m][n]) for k, (m, n) in enumerate(names)}
    tree: dict[str, Any] = {"params": [list(x) for x in names]}
    if opt_state is not None:
        leaves, treedef = jax.tree_util.tree_flatten(opt_state)
        arrays.update({f"opt_{k}": np.asarray(leaf) for k, leaf in enumerate(leaves)})
        tree["opt_state"] = {"treedef": str(treedef), "n_leaves": len(leaves)}
    arrays["meta"] = np.asarray(json.dumps({"format": CHECKPOINT_FORMAT, **meta, "tree": tree}))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


class _Steps(NamedTuple):
    """The jitted functions of one model / loss / optimiser setting."""

    rate: optax.Schedule
    tx: optax.GradientTransformation
    init: Callable[[jax.Array, Graph], Params]
    update: Callable[[Params, Any, Graph], tuple[Params, Any, jax.Array]]
    predict: Callable[[Params, Graph], tuple[jax.Array, jax.Array]]


#: Compiled steps by setting: a resumed run or a repeated notebook cell in the same process
#: reuses them instead of compiling again (the double derivative of the forces is slow to compile).
_STEPS: dict[str, _Steps] = {}
_STEPS_KEPT = 8


def _compiled_steps(config: TrainConfig, x_range: tuple[float, float], stats: dict[str, np.ndarray],
                    distance_scale: float, n_outputs: int, has_forces: bool, steps_per_epoch: int,
                    parallel: DataParallel) -> _Steps:
    """The model's jitted ``init``, ``update`` and ``predict`` for this setting (cached).

    With more than one device ``update`` and ``predict`` take stacked, sharded graphs
    (:meth:`posenc.haiku.distributed.DataParallel.put`) and ``update`` returns replicated
    parameters and optimiser state.
    """
    stacked = parallel.size > 1
    devices = [d.id for d in parallel.mesh.devices.flat] if stacked else []
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("stop_after", "resume", "progress", "threads", "device", "out_dir")}
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(stats[k]).tobytes() for k in sorted(stats))).hexdigest()
    key = json.dumps([settings, x_range, distance_scale, n_outputs, has_forces, steps_per_epoch, digest,
                      bool(jax.config.read("jax_enable_x64")), devices], sort_keys=True, default=str)
    if key in _STEPS:
        return _STEPS[key]
    model = build_model(config, x_range, n_outputs, distance_scale, stats)
    rate = learning_rate(config, steps_per_epoch)
    tx = make_optimizer(config, rate)
    loss_fn = make_loss(model.apply, stats["scale"], config, has_forces, stacked)

    def update(params: Params, opt_state: Any, g: Graph) -> tuple[Params, Any, jax.Array]:
        (loss, (data_loss, smooth)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, g)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([loss, data_loss, smooth])

    # sharded: XLA sums the parts' gradients across the mesh; the new state stays replicated
    step = jax.jit(update, out_shardings=parallel.replicated) if stacked else jax.jit(update)
    predict = jax.jit(_predictor(model.apply, has_forces, stacked))
    # a jitted init is far faster than eager
    steps = _Steps(rate, tx, jax.jit(model.init), step, predict)
    while len(_STEPS) >= _STEPS_KEPT:
        _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = steps
    return steps


class Backend:
    """The Haiku side of :class:`posenc.trainer.TrainingBackend` (see there for the methods).

    Every method runs under ``jax.enable_x64(config.dtype == "float64")``.

    Args:
      config: the run (EGNN; ``cosine`` or ``none`` schedule).
      data: ``{"train", "val", "test"}``; validation graphs are collated once.
      x_range: the encoded distance range, Angstrom.
      stats: output statistics of the training set.
      distance_scale: the training set's rms distance, Angstrom.
      data_parallel: devices of the mesh (None: 1; see :func:`posenc.haiku.distributed.data_parallel`).

    Raises:
      ValueError: fewer JAX devices than ``data_parallel``, or more than molecules in a batch.
    """

    suffix = ".npz"
    n_species = N_SPECIES

    def __init__(self, config: TrainConfig, data: dict[str, Molecules], x_range: tuple[float, float],
                 stats: dict[str, np.ndarray], distance_scale: float, data_parallel: int | None = None) -> None:
        self.config, self.train_set = config, data["train"]
        self.parallel = _devices(data_parallel, config)
        self.has_forces = self.train_set.forces is not None
        overrides = encoding_overrides(config, distance_scale)
        self.table_range = (float(overrides.get("x_min", x_range[0])), float(overrides.get("x_max", x_range[1])))
        # one device's part of a batch: padded to the largest part, ceil(batch_size / devices) molecules
        bs = -(-config.batch_size // self.parallel.size)
        n_max = int(max(part.n_atoms.max() for part in data.values()))
        self.sizes = {"max_atoms": bs * n_max, "max_edges": bs * n_max * (n_max - 1), "max_molecules": bs}
        with self.precision():
            self.steps = _compiled_steps(config, x_range, stats, distance_scale, self.train_set.targets.shape[1],
                                         self.has_forces, math.ceil(len(self.train_set) / config.batch_size),
                                         self.parallel)
            first = collate_jax(self.train_set, np.arange(min(bs, len(self.train_set))), **self.sizes)  # one part
            self.params = self.place(self.steps.init(jax.random.PRNGKey(config.seed), first))
            self._initial_tables = encoding_tables(self.params, self.table_range)[0]
            self.opt_state = self.place(self.steps.tx.init(self.params))
            self.val_set, self.val_graphs = data["val"], self.graphs(data["val"])

    @property
    def main(self) -> bool:
        return self.parallel.main

    def place(self, tree: Any) -> Any:
        """Parameters or optimiser state where the step expects them (replicated on a mesh)."""
        return self.parallel.replicate(tree) if self.parallel.size > 1 else tree

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """JAX's float64 switch, on for ``dtype="float64"`` runs."""
        with jax.enable_x64(self.config.dtype == "float64"):
            yield

    def graph(self, mols: Molecules, idx: np.ndarray) -> Graph:
        """Molecules ``idx`` of ``mols`` as one padded graph; on a mesh, ``idx`` is a whole batch and
        the graph its parts stacked and sharded (an empty part: any molecule, masked out)."""
        if self.parallel.size == 1:
            return collate_jax(mols, idx, **self.sizes)
        parts = []
        for part in self.parallel.parts(idx):
            g = collate_jax(mols, part if part.size else idx[:1], **self.sizes)
            if not part.size:  # the loss and the errors count masked molecules and atoms as padding
                g = {**g, "mol_mask": jnp.zeros_like(g["mol_mask"]), "atom_mask": jnp.zeros_like(g["atom_mask"])}
            parts.append(g)
        return self.parallel.put(parts)

    def graphs(self, mols: Molecules) -> list[Graph]:
        """``mols`` in their stored order as padded batches of ``batch_size``."""
        return [self.graph(mols, idx) for idx in batches(mols, self.config.batch_size, shuffle=False)]

    def run_epoch(self, order: list[np.ndarray]) -> np.ndarray:
        with self.precision():
            per_step = []
            for idx in order:
                self.params, self.opt_state, losses = self.steps.update(self.params, self.opt_state,
                                                                        self.graph(self.train_set, idx))
                per_step.append(losses)
            return np.asarray(jnp.stack(per_step), dtype=np.float64)  # one host transfer per epoch

    def evaluate(self, mols: Molecules) -> dict[str, float]:
        with self.precision():
            graphs = self.val_graphs if mols is self.val_set else self.graphs(mols)
            return evaluate(self.steps.predict, self.params, graphs, forces=self.has_forces)

    def end_epoch(self, val: float) -> None:
        del val  # no plateau schedule in this backend

    def lr(self, step: int) -> float:
        with self.precision():
            return float(self.steps.rate(step))

    def save(self, path: Path, meta: dict[str, Any], resumable: bool) -> None:
        _save_checkpoint(path, meta, jax.device_get(self.params), self.opt_state if resumable else None)

    def restore(self, path: Path, resumable: bool) -> dict[str, Any]:
        legacy = path.with_suffix(".pkl")
        state = load_checkpoint(legacy if not path.is_file() and legacy.is_file() else path, resumable=resumable)
        shapes = jax.tree.map(np.shape, self.params)
        if jax.tree.map(np.shape, state["params"]) != shapes:
            raise ValueError(f"{path} holds parameters of another model than this config builds")
        with self.precision():
            self.params = self.place(jax.tree.map(jnp.asarray, state["params"]))
            if resumable:
                treedef = jax.tree_util.tree_structure(self.opt_state)
                if state["opt_state"]["treedef"] != str(treedef):
                    raise ValueError(f"{path} holds the optimiser state of another optimiser than this config builds")
                self.opt_state = self.place(jax.tree_util.tree_unflatten(
                    treedef, [jnp.asarray(x) for x in state["opt_state"]["leaves"]]))
        return {k: v for k, v in state.items() if k not in ("format", "params", "opt_state")}

    def tables(self) -> tuple[list[dict[str, np.ndarray]], tuple[float, float] | None]:
        return encoding_tables(self.params, self.table_range)

    def initial_tables(self) -> list[dict[str, np.ndarray]]:
        return self._initial_tables

    def close(self) -> None:
        self.parallel.close()


def _devices(requested: int | None, config: TrainConfig) -> DataParallel:
    """The run's :class:`posenc.haiku.distributed.DataParallel`, checked against the batch size."""
    parallel = data_parallel(requested, config.device)
    if parallel.size > config.batch_size:
        raise ValueError(f"{parallel.size} devices need batch_size >= {parallel.size} (the global batch is split "
                         f"across them), got {config.batch_size}")
    return parallel
