"""Training speed: CPU-seconds per epoch of EGNN 4x64 on rMD17, both backends, one thread.

An epoch is what the trainer's backend runs between two validations (``Backend.run_epoch``):
950 training frames of the split in batches of 16 (60 steps), each step the loss with forces by
autograd (``create_graph``), backward, gradient clipping, Adam and the schedule. Validation is
not included. Cells: molecule (ethanol, aspirin) x backend (torch, haiku) x arm:

* ``raw``: EGNN's own feature, the squared distance (divided by the training set's mean);
* ``hermite``: the learned Hermite table (64 bins x 32), lambda = 0;
* ``hermite+smooth``: the same with lambda = 0.1 (the smoothness loss in every step);
* ``plain eager``: the reference column, an EGNN written here the obvious way in PyTorch
  (concatenate ``[h_i, h_j, d^2]``, edge lists, ``index_add``; raw feature, plain Adam): what a
  straightforward implementation costs on the same machine.

Each cell runs in a subprocess of its own, pinned to one core (``os.sched_setaffinity``; XLA's
thread flags alone still let it spread over every core) with one torch thread, and is timed in
CPU seconds of that process (``time.process_time``), so the numbers do not depend on what the
other core does. One warm-up
epoch (Haiku's compilation) is dropped; the table gives the fastest of ``--epochs`` timed epochs
(this VM's CPU speed drifts by about 10% over minutes: the minimum is the figure least touched
by it).

Targets (issue 12): ethanol Hermite <= 1.0 CPU-s/epoch in each backend; Hermite <= 1.10 x raw in
the same backend; aspirin Hermite <= 5 CPU-s/epoch. Needs the rMD17 files
(``POSENC_DATA`` or ``../shared/data/rmd17``).

Usage::

    python benchmarks/bench_training.py [--epochs 3] [--molecules ethanol aspirin] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "training_cpu.md"
ARMS = ("raw", "hermite", "hermite+smooth")
BACKENDS = ("torch", "haiku")
TARGET_SECONDS = {"ethanol": 1.0, "aspirin": 5.0}
TARGET_RATIO = 1.10
N_TRAIN, BATCH, LAYERS, HIDDEN = 950, 16, 4, 64


def cell_config(molecule: str, backend: str, arm: str):
    """The :class:`posenc.training.TrainConfig` of one cell."""
    from posenc.training import TrainConfig

    encoding, lam = ("hermite", 0.1) if arm == "hermite+smooth" else (arm, 0.0)
    return TrainConfig(dataset=f"md17:{molecule}", backend=backend, encoding=encoding, lam=lam, n_layers=LAYERS,
                       hidden=HIDDEN, batch_size=BATCH, n_train=N_TRAIN, n_val=50, n_test=50, epochs=1000,
                       threads=1, progress=False, out_dir="unused")


def time_backend(molecule: str, backend: str, arm: str, epochs: int) -> list[float]:
    """CPU seconds of ``epochs + 1`` epochs of the trainer's backend (this process)."""
    from posenc.data.graphs import batches
    from posenc.encoding_defaults import distance_scale
    from posenc.trainer import backend_class
    from posenc.training import encoding_range, epoch_seed, load_data, output_stats, resolve

    config = resolve(cell_config(molecule, backend, arm))
    data = load_data(config)
    cls = backend_class(backend)
    train = data["train"]
    runner = cls(config, data, encoding_range(config, train), output_stats(train, cls.n_species),
                 distance_scale(train))
    times = []
    for epoch in range(epochs + 1):
        order = list(batches(train, BATCH, shuffle=True, seed=epoch_seed(0, epoch)))
        tic = time.process_time()
        steps = runner.run_epoch(order)
        times.append(time.process_time() - tic)
        if not np.isfinite(steps).all():
            raise RuntimeError(f"{molecule} {backend} {arm}: non-finite loss")
    return times


def time_plain(molecule: str, epochs: int) -> list[float]:
    """CPU seconds per epoch of the plain eager EGNN (raw feature) on the same frames."""
    import torch
    from torch import nn

    from posenc.data import load_md17
    from posenc.data.graphs import batches, fully_connected_edges
    from posenc.encoding_defaults import distance_scale

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    train = load_md17(molecule, split=1, labels="md17", n_train=N_TRAIN, n_val=50, progress=False)["train"]
    inv_sq = 1.0 / distance_scale(train) ** 2
    f_scale = float(np.sqrt(np.mean(train.forces**2)))

    def mlp(sizes: list[int], act_last: bool = False) -> nn.Sequential:
        layers: list[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1]))
            if k < len(sizes) - 2 or act_last:
                layers.append(nn.SiLU())
        return nn.Sequential(*layers)

    class PlainEGNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, HIDDEN)
            self.edge = nn.ModuleList(mlp([2 * HIDDEN + 1, HIDDEN, HIDDEN], True) for _ in range(LAYERS))
            self.node = nn.ModuleList(mlp([2 * HIDDEN, HIDDEN, HIDDEN]) for _ in range(LAYERS))
            self.head = mlp([HIDDEN, HIDDEN, 1])

        def forward(self, z, pos, edges, mol, n_mol):  # type: ignore[no-untyped-def]
            j, i = edges
            d2 = ((pos[i] - pos[j]) ** 2).sum(-1, keepdim=True) * inv_sq  # [E, 1]
            h = self.embed(z)
            for edge, node in zip(self.edge, self.node):
                m = edge(torch.cat([h[i], h[j], d2], -1))  # [E, H]
                h = h + node(torch.cat([h, torch.zeros_like(h).index_add(0, i, m)], -1))
            return torch.zeros(n_mol, 1).index_add(0, mol, self.head(h))[:, 0]

    torch.manual_seed(0)
    model = PlainEGNN()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    times = []
    for epoch in range(epochs + 1):
        tic = time.process_time()
        for idx in batches(train, BATCH, shuffle=True, seed=epoch):
            atoms = train.atom_index(idx)
            n_atoms = train.n_atoms[idx]
            pos = torch.tensor(train.pos[atoms], dtype=torch.float32, requires_grad=True)
            energy = model(torch.as_tensor(train.z[atoms]), pos, torch.as_tensor(fully_connected_edges(n_atoms)),
                           torch.repeat_interleave(torch.arange(idx.size), torch.as_tensor(n_atoms)), idx.size)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
            target = torch.tensor(train.forces[atoms], dtype=torch.float32)
            loss = ((-grad - target) / f_scale).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.process_time() - tic)
    return times


def run_cell(molecule: str, column: str, epochs: int) -> float:
    """The fastest CPU-s/epoch of one cell, measured in a fresh one-core subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    out = subprocess.run([sys.executable, __file__, "--cell", molecule, column, "--epochs", str(epochs)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cell {molecule} {column} failed:\n{out.stderr[-3000:]}")
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return float(min(times[1:]))


def table(results: dict[tuple[str, str], float], molecules: list[str]) -> str:
    """The markdown table with targets, and what each target measured."""
    head = ("| molecule | plain eager (reference) | "
            + " | ".join(f"{b} {a}" for b in BACKENDS for a in ARMS) + " |")
    lines = [head, "|" + "---|" * (2 + len(BACKENDS) * len(ARMS))]
    for mol in molecules:
        cells = [f"{results[mol, 'plain']:.3f}"]
        cells += [f"{results[mol, f'{b}:{a}']:.3f}" for b in BACKENDS for a in ARMS]
        lines.append(f"| {mol} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for mol in molecules:
        for backend in BACKENDS:
            herm, raw = results[mol, f"{backend}:hermite"], results[mol, f"{backend}:raw"]
            limit = TARGET_SECONDS[mol]
            lines.append(f"| {mol} {backend} hermite <= {limit:g} CPU-s/epoch | {herm:.3f} | "
                         + ("yes" if herm <= limit else f"no, by {100 * (herm / limit - 1):.0f}%") + " |")
            ratio = herm / raw
            lines.append(f"| {mol} {backend} hermite / raw <= {TARGET_RATIO:.2f} | {ratio:.3f} | "
                         + ("yes" if ratio <= TARGET_RATIO else f"no, by {100 * (ratio / TARGET_RATIO - 1):.0f}%")
                         + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per cell (after one warm-up epoch)")
    parser.add_argument("--molecules", nargs="+", default=list(TARGET_SECONDS), choices=list(TARGET_SECONDS))
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.name}")
    parser.add_argument("--cell", nargs=2, metavar=("MOLECULE", "COLUMN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:  # a subprocess: time one cell, print the epoch times as JSON
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        molecule, column = args.cell
        if column == "plain":
            times = time_plain(molecule, args.epochs)
        else:
            backend, arm = column.split(":")
            times = time_backend(molecule, backend, arm, args.epochs)
        print(json.dumps(times))
        return
    columns = ["plain"] + [f"{b}:{a}" for b in BACKENDS for a in ARMS]
    results = {}
    for mol in args.molecules:
        for column in columns:
            results[mol, column] = run_cell(mol, column, args.epochs)
            print(f"{mol:<10} {column:<22} {results[mol, column]:.3f} CPU-s/epoch", flush=True)
    text = (f"# Training speed on CPU (one thread)\n\nWritten by `python benchmarks/bench_training.py --write` "
            f"on {platform.processor() or platform.machine()}, Python {platform.python_version()}: EGNN "
            f"{LAYERS}x{HIDDEN}, rMD17 split 1, {N_TRAIN} training frames, batch {BATCH}, forces by autograd; "
            f"CPU seconds per epoch (training steps only), the fastest of {args.epochs} epochs after a warm-up epoch. "
            "See the script's docstring for what each column runs.\n\n" + table(results, args.molecules) + "\n")
    print("\n" + text)
    if args.write:
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
