"""Training-step time per backbone x distance encoding, on CPU (PyTorch).

One step = the loss of a batch (energy and forces by autograd with ``create_graph=True`` for the
MD17 batch, the property for the QM9 batch) + ``lam * L_smooth`` + backward + Adam. Two batches:

* MD17 aspirin: 16 frames x 21 atoms, fully connected (real rMD17 frames when the loader finds
  them, else random geometries of the same formula);
* QM9-sized: 32 random molecules of 10..29 atoms (H/C/N/O), fully connected (DimeNet++: its
  5 Angstrom radius graph).

Times are CPU seconds of this process (one thread): the fastest step of each cell, the cells
taking turns so that a slow spell of a shared machine hits all alike. The "+%" column is the step
time over the same backbone with its own distance feature (EGNN and Transformer: the raw
distance; DimeNet++: its Bessel basis): the encoding's share of a step. ``hermite+smooth`` adds
``lam * L_smooth`` (lam = 0.1). Run:

    OMP_NUM_THREADS=1 python benchmarks/bench_training.py [--seconds 5] [--backbones egnn transformer]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from posenc.torch.batching import collate
from posenc.data.molecules import Molecules
from posenc.torch.models import graph_cutoff, make_model, set_output_stats
from posenc.torch.train import loss_terms
from posenc.encoding_defaults import distance_range
from posenc.training import output_stats

ENCODINGS = ("raw", "mlp", "gaussian", "bessel", "linear", "hermite", "hermite+smooth")
#: Each backbone's own distance feature: the reference of the "+%" column.
BASELINE = {"egnn": "raw", "transformer": "raw", "dimenet": "bessel"}
ASPIRIN_Z = np.array([6] * 9 + [8] * 4 + [1] * 8)


def random_geometries(z_per_mol: list[np.ndarray], seed: int, forces: bool) -> Molecules:
    """Random molecules with atoms >= 1 Angstrom apart in a ball of molecular size."""
    rng = np.random.default_rng(seed)
    pos = []
    for z in z_per_mol:
        radius = 1.2 * len(z) ** (1 / 3)
        atoms: list[np.ndarray] = []
        while len(atoms) < len(z):
            trial = rng.uniform(-radius, radius, size=3)
            if np.linalg.norm(trial) <= radius and all(np.linalg.norm(trial - a) >= 1.0 for a in atoms):
                atoms.append(trial)
        pos.extend(atoms)
    z = np.concatenate(z_per_mol)
    return Molecules(z=z, pos=np.array(pos), n_atoms=np.array([len(m) for m in z_per_mol]),
                     targets=rng.normal(size=(len(z_per_mol), 1)), target_names=("y",), target_units=("meV",),
                     forces=rng.normal(size=(z.size, 3)) if forces else None)


def aspirin_batch(n: int) -> tuple[Molecules, str]:
    """``n`` aspirin frames: real rMD17 ones if the loader finds them, else random ones."""
    try:
        from posenc.data import load_md17

        return load_md17("aspirin", n_train=n, n_val=1, download=False, progress=False)["train"], "rMD17 aspirin"
    except (FileNotFoundError, ValueError, OSError):
        return random_geometries([ASPIRIN_Z] * n, 0, forces=True), "random aspirin-formula geometries"


def qm9_batch(n: int) -> Molecules:
    rng = np.random.default_rng(1)
    sizes = rng.integers(10, 30, size=n)
    return random_geometries([rng.choice([1, 1, 6, 6, 7, 8], size=s) for s in sizes], 1, forces=False)


class Cell:
    """One backbone + encoding, ready to take training steps on one batch."""

    def __init__(self, backbone: str, encoding: str, mols: Molecules) -> None:
        name, self.lam = ("hermite", 0.1) if encoding == "hermite+smooth" else (encoding, 0.0)
        torch.manual_seed(0)
        self.model = make_model(backbone, encoding=name, x_max=distance_range(mols)[1], n_layers=4, hidden=64)
        stats = output_stats(mols, 100)
        set_output_stats(self.model, **stats)
        self.scale = torch.as_tensor(stats["scale"], dtype=torch.float32)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = collate(mols, np.arange(len(mols)), cutoff=graph_cutoff(backbone))
        self.times: list[float] = []

    def step(self) -> None:
        """One training step, timed in CPU seconds of this process."""
        tic = time.process_time()
        loss, _ = loss_terms(self.model, self.batch, scale=self.scale, lam=self.lam)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.times.append(time.process_time() - tic)


def time_row(backbone: str, encodings: list[str], mols: Molecules, seconds: float, rounds: int) -> dict[str, float]:
    """Seconds per step of each encoding: the fastest of the rounds, after two warm-up rounds.

    The cells take turns, one step each per round, so a slow spell of the (shared) machine hits
    all of them alike; CPU time of this process, not wall time, for the same reason.
    """
    cells = {}
    for encoding in encodings:
        try:
            cells[encoding] = Cell(backbone, encoding, mols)
        except (ValueError, ImportError) as err:  # an encoding this backbone does not take
            print(f"  ({backbone}+{encoding}: {err})")
    start, done = time.perf_counter(), 0
    while done < rounds + 2 or time.perf_counter() - start < seconds:
        for cell in cells.values():
            cell.step()
        done += 1
    return {encoding: float(np.min(cell.times[2:])) for encoding, cell in cells.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget per backbone and batch")
    parser.add_argument("--rounds", type=int, default=5, help="at least this many timed steps per cell")
    parser.add_argument("--backbones", nargs="+", default=["egnn", "transformer", "dimenet"])
    parser.add_argument("--encodings", nargs="+", default=list(ENCODINGS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    aspirin, source = aspirin_batch(16)
    batches = {"MD17 aspirin 16x21 (E+F)": aspirin, "QM9-sized 32 mol (property)": qm9_batch(32)}
    print(f"CPU, {args.threads} thread(s); aspirin batch: {source}; models 4 layers x 64; "
          f"+%: over the backbone's own distance feature ({', '.join(f'{b} {e}' for b, e in BASELINE.items())})")
    for label, mols in batches.items():
        print(f"\n{label}")
        print(f"{'backbone':<12}" + "".join(f"{e:>17}" for e in args.encodings))
        for backbone in args.backbones:
            times = time_row(backbone, args.encodings, mols, args.seconds, args.rounds)
            base = times.get(BASELINE[backbone])
            cells = []
            for encoding in args.encodings:
                if encoding not in times:
                    cells.append("n/a")
                    continue
                extra = f" {100 * (times[encoding] / base - 1):+5.0f}%" if base and encoding != BASELINE[backbone] else " " * 7
                cells.append(f"{1e3 * times[encoding]:>8.1f} ms{extra}")
            print(f"{backbone:<12}" + "".join(f"{c:>17}" for c in cells))


if __name__ == "__main__":
    main()
