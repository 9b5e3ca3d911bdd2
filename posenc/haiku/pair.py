"""Pair-potential models in Haiku: the mirror of ``posenc.torch.pair``.

Same names and numbers as the torch module: ``PairEnergy`` is ``E(r) = shift + scale *
MLP(encoding(r))`` with a SiLU readout, ``ClusterEnergy`` sums it over the pairs of each molecule,
forces come from ``jax.grad``, and :func:`fit` is the same Adam loop written as a pure, jitted
update function. Module names follow the torch attribute names (``pair_energy/~/encoding``,
``pair_energy/~/layers_0`` ...), so ``posenc.convert.torch_to_haiku(torch_model, "pair_energy")``
gives parameters this module accepts, with the same energies.

The encoding is passed as a factory (e.g. ``functools.partial(HermiteEncoding, 64, 16, 0.8, 3.0)``)
and built inside the model as the submodule ``encoding``: a Haiku module's parameters live under
the name scope it is created in.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from posenc.data.molecules import Molecules
from posenc.fitting import FitResult, batch_indices, n_samples, normalisation
from posenc.haiku.losses import total_smoothness_loss
from posenc.toys import PairCurve

EncodingFactory = Callable[..., Callable[[jax.Array], jax.Array]]


class PairEnergy(hk.Module):
    """``E(r) = shift + scale * readout(encoding(r))`` with a SiLU MLP readout.

    Args:
      encoding: a factory called as ``encoding(name="encoding")`` that returns a posenc Haiku
        encoding, e.g. ``functools.partial(HermiteEncoding, 64, 16, 0.8, 3.0)``.
      hidden: width of the hidden layers.
      n_layers: number of hidden SiLU layers (>= 1); ``layers_{n_layers}`` is the output layer.
      name: module name (default ``"pair_energy"``).

    Parameters: ``layers_k/{w, b}``, the encoding's, and the frozen ``[1]`` arrays ``shift`` and
    ``scale`` (wrapped in ``stop_gradient``: :func:`fit` sets them from data, the optimiser
    never moves them).
    """

    def __init__(self, encoding: EncodingFactory, hidden: int = 64, n_layers: int = 2,
                 name: str | None = "pair_energy") -> None:
        super().__init__(name=name)
        if n_layers < 1 or hidden < 1:
            raise ValueError(f"need n_layers >= 1 and hidden >= 1, got n_layers={n_layers}, hidden={hidden}")
        # Submodules built here are named "pair_energy/~/encoding", "pair_energy/~/layers_k": the
        # names posenc.convert derives from the torch attributes.
        self.encoding = encoding(name="encoding")
        self.layers = [hk.Linear(hidden, name=f"layers_{k}") for k in range(n_layers)]
        self.layers.append(hk.Linear(1, name=f"layers_{n_layers}"))

    def __call__(self, r: jax.Array) -> jax.Array:
        """``[...]`` distances -> ``[...]`` energies."""
        h = self.encoding(r)  # [..., dim]
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))  # [..., hidden]
        out = self.layers[-1](h)[..., 0]  # [...]
        shift = hk.get_parameter("shift", [1], r.dtype, init=hk.initializers.Constant(0.0))
        scale = hk.get_parameter("scale", [1], r.dtype, init=hk.initializers.Constant(1.0))
        return jax.lax.stop_gradient(shift[0]) + jax.lax.stop_gradient(scale[0]) * out


def intra_pairs(n_atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` inside each molecule of a ragged batch (numpy: static data for jit).

    Args:
      n_atoms: ``[M]`` atoms per molecule (atoms concatenated in molecule order).

    Returns:
      ``(pair_index [2, P], pair_molecule [P])`` as int32 arrays.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if n_atoms.ndim != 1 or n_atoms.size == 0 or (n_atoms < 1).any():
        raise ValueError(f"n_atoms must be a non-empty [M] array of counts >= 1, got {n_atoms.tolist()}")
    offsets = np.cumsum(n_atoms) - n_atoms  # [M]
    n_max = int(n_atoms.max())
    tri = np.stack(np.triu_indices(n_max, k=1))  # [2, P_max]
    keep = tri[1][None, :] < n_atoms[:, None]  # [M, P_max]
    pair_molecule = np.broadcast_to(np.arange(n_atoms.size)[:, None], keep.shape)[keep]  # [P]
    pair_index = np.broadcast_to(tri[:, None, :], (2, *keep.shape))[:, keep] + offsets[pair_molecule]  # [2, P]
    return pair_index.astype(np.int32), pair_molecule.astype(np.int32)


class ClusterEnergy(hk.Module):
    """Total energy of each molecule as a sum of learned pair terms: ``E_m = sum_{i<j in m} V(r_ij)``.

    Args:
      encoding, hidden, n_layers: as for :class:`PairEnergy` (submodule ``pair_energy``).
      name: module name (default ``"cluster_energy"``).
    """

    def __init__(self, encoding: EncodingFactory, hidden: int = 64, n_layers: int = 2,
                 name: str | None = "cluster_energy") -> None:
        super().__init__(name=name)
        self.pair_energy = PairEnergy(encoding, hidden, n_layers, name="pair_energy")

    def __call__(self, pos: jax.Array, pair_index: jax.Array, pair_molecule: jax.Array,
                 n_molecules: int) -> jax.Array:
        """Energies ``[M]`` from positions ``[A, 3]``, pairs ``[2, P]`` and their molecules ``[P]``.

        Pairs whose molecule index is ``>= n_molecules`` are dropped (how :func:`fit` pads batches
        to a fixed shape); they still need a valid distance.
        """
        if pos.ndim != 2 or pos.shape[-1] != 3:
            raise ValueError(f"pos must be [A, 3], got {tuple(pos.shape)}")
        d = pos[pair_index[0]] - pos[pair_index[1]]  # [P, 3]
        r = jnp.linalg.norm(d, axis=-1)  # [P]
        e_pair = self.pair_energy(r)  # [P]
        return jax.ops.segment_sum(e_pair, pair_molecule, num_segments=n_molecules)  # [M]


def pair_energy_model(encoding: EncodingFactory, hidden: int = 64, n_layers: int = 2) -> hk.Transformed:
    """``hk.without_apply_rng(hk.transform(...))`` of a :class:`PairEnergy`: ``apply(params, r)``."""
    return hk.without_apply_rng(hk.transform(lambda r: PairEnergy(encoding, hidden, n_layers)(r)))


def cluster_energy_model(encoding: EncodingFactory, hidden: int = 64, n_layers: int = 2) -> hk.Transformed:
    """Transformed :class:`ClusterEnergy`: ``apply(params, pos, pair_index, pair_molecule, n_molecules)``."""

    def forward(pos, pair_index, pair_molecule, n_molecules):
        return ClusterEnergy(encoding, hidden, n_layers)(pos, pair_index, pair_molecule, n_molecules)

    return hk.without_apply_rng(hk.transform(forward))


def energy_and_force(apply_fn: Callable, params: hk.Params, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(E [...], F = -dE/dr [...])`` of a pair model's ``apply`` by ``jax.grad``."""
    def total(r):
        energy = apply_fn(params, r)
        return energy.sum(), energy

    grad, energy = jax.grad(total, has_aux=True)(r)
    return energy, -grad


def energy_and_forces(apply_fn: Callable, params: hk.Params, pos: jax.Array, pair_index: jax.Array,
                      pair_molecule: jax.Array, n_molecules: int) -> tuple[jax.Array, jax.Array]:
    """``(E [M], F = -dE/dpos [A, 3])`` of a cluster model's ``apply`` by ``jax.grad``."""
    def total(pos):
        energy = apply_fn(params, pos, pair_index, pair_molecule, n_molecules)
        return energy.sum(), energy

    grad, energy = jax.grad(total, has_aux=True)(pos)
    return energy, -grad


# --- training ------------------------------------------------------------------------------------
def set_normalisation(params: hk.Params, shift: float, scale: float) -> hk.Params:
    """A copy of ``params`` with every ``shift``/``scale`` entry replaced (the pair model's)."""
    out: dict[str, dict[str, Any]] = {}
    for path, entries in params.items():
        new: dict[str, Any] = dict(entries)
        if "shift" in new:
            new["shift"] = np.full((1,), shift, dtype=np.asarray(new["shift"]).dtype)
            new["scale"] = np.full((1,), scale, dtype=np.asarray(new["scale"]).dtype)
        out[path] = new
    return out


def _batch(data: PairCurve | Molecules, idx: np.ndarray, dtype: Any, n_atoms_max: int = 0,
           n_pairs_max: int = 0) -> dict[str, Any]:
    """The selected samples as arrays; clusters padded to a fixed shape (see :class:`ClusterEnergy`).

    Padding: atoms up to ``len(idx) * n_atoms_max`` (mask ``atom_mask``), pairs up to
    ``len(idx) * n_pairs_max`` by repeating the first real pair with molecule index M (dropped).
    """
    if isinstance(data, PairCurve):
        return {"r": np.asarray(data.r[idx], dtype), "energy": np.asarray(data.energy[idx], dtype),
                "force": np.asarray(data.force[idx], dtype)}
    sub = data.subset(idx)
    m = len(idx)
    pair_index, pair_molecule = intra_pairs(sub.n_atoms)
    n_atoms_pad = max(m * n_atoms_max, sub.pos.shape[0])
    n_pairs_pad = max(m * n_pairs_max, pair_molecule.size)
    pos = np.zeros((n_atoms_pad, 3), dtype)
    force = np.zeros((n_atoms_pad, 3), dtype)
    mask = np.zeros((n_atoms_pad, 1), dtype)
    pos[: sub.pos.shape[0]], force[: sub.pos.shape[0]], mask[: sub.pos.shape[0]] = sub.pos, sub.forces, 1.0
    extra = n_pairs_pad - pair_molecule.size
    pair_index = np.concatenate([pair_index, np.repeat(pair_index[:, :1], extra, axis=1)], axis=1)
    pair_molecule = np.concatenate([pair_molecule, np.full(extra, m, np.int32)])
    return {"pos": pos, "pair_index": pair_index, "pair_molecule": pair_molecule,
            "energy": np.asarray(sub.targets[:, 0], dtype), "force": force, "atom_mask": mask}


def _predictor(apply_fn: Callable, clusters: bool) -> Callable:
    """``predict(params, batch) -> (energy, force)`` for either model kind (pure; jit-able)."""
    if clusters:
        def predict(params, batch):
            return energy_and_forces(apply_fn, params, batch["pos"], batch["pair_index"], batch["pair_molecule"],
                                     batch["energy"].shape[0])
    else:
        def predict(params, batch):
            return energy_and_force(apply_fn, params, batch["r"])
    return predict


def _param_dtype(params: hk.Params) -> Any:
    return jax.tree_util.tree_leaves(params)[0].dtype


def evaluate(model: hk.Transformed, params: hk.Params, data: PairCurve | Molecules,
             batch_size: int = 1024) -> tuple[float, float]:
    """Energy and force MAE of the model on ``data`` (target units), in chunks."""
    clusters = isinstance(data, Molecules)
    predict = jax.jit(_predictor(model.apply, clusters))
    dtype = _param_dtype(params)
    n = n_samples(data)
    e_err, f_err, n_f = 0.0, 0.0, 0
    for start in range(0, n, batch_size):
        batch = _batch(data, np.arange(start, min(n, start + batch_size)), dtype)
        energy, force = (np.asarray(a) for a in predict(params, batch))
        e_err += float(np.abs(energy - batch["energy"]).sum())
        f_err += float(np.abs(force - batch["force"]).sum())
        n_f += batch["force"].size
    return e_err / n, f_err / n_f


def fit(
    model: hk.Transformed,
    params: hk.Params,
    train: PairCurve | Molecules,
    test: PairCurve | Molecules | None = None,
    *,
    steps: int = 2000,
    lr: float = 3e-3,
    lam: float = 0.0,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    cosine: bool = True,
    progress: bool = True,
) -> FitResult:
    """Trains with Adam (optax) through a pure jitted update; the mirror of ``posenc.torch.pair.fit``.

    Same loss, normalisation, batch order (``posenc.fitting.batch_indices``) and schedule as the
    torch version, so from the same initial weights (moved with ``posenc.convert``) the two
    backends follow the same trajectory up to floating-point rounding.

    Args:
      model: from :func:`pair_energy_model` (train on a PairCurve) or :func:`cluster_energy_model`
        (train on Molecules with forces).
      params: initial parameters (``model.init(...)`` or converted from torch).
      train, test, steps, lr, lam, energy_weight, force_weight, batch_size, seed, cosine, progress:
        as for ``posenc.torch.pair.fit``.

    Returns:
      :class:`~posenc.fitting.FitResult` whose ``params`` holds the trained parameters.
    """
    clusters = isinstance(train, Molecules)
    if test is not None and isinstance(test, Molecules) != clusters:
        raise TypeError("train and test must both be PairCurve or both Molecules")
    stats = normalisation(train)
    params = set_normalisation(params, stats["shift"], stats["scale"])
    dtype = _param_dtype(params)
    schedule = optax.cosine_decay_schedule(lr, steps) if cosine else lr
    optimizer = optax.adam(schedule)
    opt_state = jax.jit(optimizer.init)(params)
    predict = _predictor(model.apply, clusters)

    def loss_fn(params, batch):
        if force_weight != 0.0:
            energy, force = predict(params, batch)
            err = (force - batch["force"]) / stats["force_rms"]  # [A, 3] or [B]
            if clusters:  # padding atoms carry no force
                f_loss = jnp.sum(batch["atom_mask"] * err**2) / (3.0 * jnp.sum(batch["atom_mask"]))
            else:
                f_loss = jnp.mean(err**2)
        else:
            energy = (model.apply(params, batch["pos"], batch["pair_index"], batch["pair_molecule"],
                                  batch["energy"].shape[0]) if clusters else model.apply(params, batch["r"]))
            f_loss = jnp.zeros((), energy.dtype)
        e_loss = jnp.mean(((energy - batch["energy"]) / stats["energy_std"]) ** 2)
        smooth = total_smoothness_loss(params).astype(energy.dtype)
        loss = energy_weight * e_loss + force_weight * f_loss + lam * smooth
        return loss, jnp.stack([loss, e_loss, f_loss, smooth])

    @jax.jit
    def update(params, opt_state, batch):
        grads, aux = jax.grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    batches = batch_indices(n_samples(train), batch_size, steps, seed)
    pad = {}
    if isinstance(train, Molecules):  # clusters: one static shape for every batch, a single compilation
        pad = {"n_atoms_max": int(train.n_atoms.max()),
               "n_pairs_max": int((train.n_atoms * (train.n_atoms - 1) // 2).max())}
    hist = np.zeros((steps, 4))
    start = time.perf_counter()
    for k in tqdm(range(steps), disable=not progress, desc="fit", leave=False):
        params, opt_state, aux = update(params, opt_state, _batch(train, batches[k], dtype, **pad))
        hist[k] = np.asarray(aux)
    seconds = time.perf_counter() - start
    e_mae, f_mae = evaluate(model, params, train if test is None else test)
    return FitResult(hist[:, 0], hist[:, 1], hist[:, 2], hist[:, 3], energy_mae=e_mae, force_mae=f_mae,
                     seconds=seconds, stats=stats, params=params)
