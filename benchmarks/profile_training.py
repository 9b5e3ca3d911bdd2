"""Where a training step's time goes: EGNN 4x64 steps on rMD17 ethanol, torch or Haiku.

The step is the model-level loop every version of posenc has had (collate 16 frames, energy and
forces by autograd with ``create_graph``, the force/energy loss, backward, Adam), so the same
script profiles an old checkout and the current one. One core, one thread, flush-to-zero on.
Prints, and with ``--write`` appends to ``benchmarks/results/profile_training.md``:

* the share of the step's self CPU time by kind of operation (matrix products, the table
  interpolation and its gradients, elementwise maths, gathers/scatters, fills and copies, Adam);
* the ten most expensive operations with their input shapes;
* Haiku (``--backend haiku``): the host's share (collating a batch) against the jitted update.

Usage::

    python benchmarks/profile_training.py --encoding hermite [--backend haiku] [--label "after"] [--write]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from posenc.data import load_md17
from posenc.encoding_defaults import distance_range
from posenc.torch.models import energy_and_forces, make_model

try:  # the collate moved in the training-engine rework
    from posenc.torch.batching import collate
except ImportError:  # an older checkout
    from posenc.data.batching import collate  # type: ignore[no-redef]

RESULTS = Path(__file__).resolve().parent / "results" / "profile_training.md"

#: Kinds of operation, by the profiler's event name (first match wins).
KINDS = [
    ("table interpolation", r"Interpolate|TableGrad|embedding_bag|sparse"),
    ("matrix products", r"aten::(mm|addmm|bmm|matmul)$"),
    ("fills and copies", r"aten::(fill_|zero_|zeros|copy_|_to_copy|clone|empty|cat)"),
    ("gathers and scatters", r"aten::(index|index_select|index_add|index_put|scatter|gather|_index_put)"),
    ("Adam", r"Optimizer|_fused_adam|_foreach"),
    ("elementwise and reductions", r"aten::"),
]


def kind(name: str) -> str:
    for label, pattern in KINDS:
        if re.search(pattern, name):
            return label
    return "other (Python autograd bookkeeping)"


def profile_haiku(args: argparse.Namespace, train) -> str:  # type: ignore[no-untyped-def]
    """The Haiku step split into its host part (collating a batch) and the jitted update."""
    import haiku as hk
    import jax
    import optax

    try:
        from posenc.haiku.batching import collate_jax
    except ImportError:  # an older checkout
        from posenc.data.batching import collate_jax  # type: ignore[no-redef]
    from posenc.haiku.models.common import energy_and_forces as hk_energy_and_forces
    from posenc.haiku.models.egnn import EGNN

    kwargs = {"x_min": 0.0} if args.encoding in ("hermite", "linear", "gaussian") else {}
    n, x_max = int(train.n_atoms[0]), distance_range(train)[1]
    model = hk.without_apply_rng(hk.transform(lambda g: EGNN(4, 64, args.encoding, kwargs, x_max=x_max)(g)))
    scale = float(np.sqrt(np.mean(train.forces**2)))

    def graph(k: int):  # type: ignore[no-untyped-def]
        return collate_jax(train, np.arange(k, k + 16), max_atoms=16 * n, max_edges=16 * n * (n - 1), max_molecules=16)

    def loss(params, g):  # type: ignore[no-untyped-def]
        energy, forces = hk_energy_and_forces(model.apply, params, g)
        return (0.99 * (((forces - g["forces"]) / scale) ** 2).mean()
                + 0.01 * (((energy - g["targets"]) / scale) ** 2).mean())

    tx = optax.adam(1e-4)

    @jax.jit
    def update(params, opt_state, g):  # type: ignore[no-untyped-def]
        grads = jax.grad(loss)(params, g)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    params = model.init(jax.random.PRNGKey(0), graph(0))
    opt_state = tx.init(params)
    graphs = [graph(16 * k) for k in range(args.steps)]
    for g in graphs[:3]:  # compile
        params, opt_state = update(params, opt_state, g)
    jax.block_until_ready(params)
    tic = time.process_time()
    for k in range(args.steps):
        graph(16 * k)
    collate_s = (time.process_time() - tic) / args.steps
    tic = time.process_time()
    for g in graphs:
        params, opt_state = update(params, opt_state, g)
    jax.block_until_ready(params)
    update_s = (time.process_time() - tic) / args.steps
    total = collate_s + update_s
    return "\n".join([f"## {args.label}: Haiku EGNN 4x64 + {args.encoding}, ethanol, batch 16, one thread", "",
                      f"{total * 1e3:.1f} CPU-ms per step after compilation (mean of {args.steps} steps).", "",
                      "| part | CPU-ms per step | share |", "|---|---|---|",
                      f"| collate (host, numpy -> device arrays) | {collate_s * 1e3:.2f} | "
                      f"{100 * collate_s / total:.1f}% |",
                      f"| jitted update (forces, double backward, Adam) | {update_s * 1e3:.2f} | "
                      f"{100 * update_s / total:.1f}% |"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoding", default="hermite")
    parser.add_argument("--backend", choices=("torch", "haiku"), default="torch")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--label", default="current checkout")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core: XLA would otherwise spread over all of them
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.backend == "haiku":
        train = load_md17("ethanol", split=1, labels="md17", n_train=950, n_val=50, progress=False)["train"]
        _emit(profile_haiku(args, train), args.write)
        return
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    train = load_md17("ethanol", split=1, labels="md17", n_train=950, n_val=50, progress=False)["train"]
    torch.manual_seed(0)
    kwargs = {"x_min": 0.0} if args.encoding in ("hermite", "linear", "gaussian") else {}
    model = make_model("egnn", encoding=args.encoding, encoding_kwargs=kwargs, x_max=distance_range(train)[1],
                       n_layers=4, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    scale = float(np.sqrt(np.mean(train.forces**2)))
    batches = [collate(train, np.arange(k, k + 16)) for k in range(0, 16 * args.steps, 16)]

    def step(b) -> None:  # type: ignore[no-untyped-def]
        energy, forces = energy_and_forces(model, b, create_graph=True)
        loss = 0.99 * ((forces - b.forces) / scale).pow(2).mean() + 0.01 * ((energy - b.targets) / scale).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for b in batches[:5]:
        step(b)
    tic = time.process_time()
    for b in batches:
        step(b)
    per_step = (time.process_time() - tic) / len(batches)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for b in batches:
            step(b)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        by_kind[kind(e.key)] += e.self_cpu_time_total
    lines = [f"## {args.label}: EGNN 4x64 + {args.encoding}, ethanol, batch 16, one thread",
             "", f"{per_step * 1e3:.1f} CPU-ms per step without the profiler (mean of {len(batches)} steps).", "",
             "| kind | share of self CPU time |", "|---|---|"]
    lines += [f"| {k} | {100 * v / total:.1f}% |" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    lines += ["", "| operation | input shapes | calls | share |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        shapes = str(e.input_shapes)[:60].replace("|", "/")
        lines.append(f"| {e.key} | {shapes} | {e.count} | {100 * e.self_cpu_time_total / total:.1f}% |")
    _emit("\n".join(lines) + "\n", args.write)


def _emit(text: str, write: bool) -> None:
    """Prints a section and, with ``write``, appends it to :data:`RESULTS`."""
    print(text)
    if write:
        if not RESULTS.exists():
            RESULTS.write_text("# Where a training step's time goes\n\nWritten by "
                               "`python benchmarks/profile_training.py --write` (see its docstring).\n\n")
        with RESULTS.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
