"""Data-parallel scaling on CPU: one torch process against two gloo ranks, the same global batch.

Each setting starts ``torchrun --standalone --nproc_per_node=N`` on this script's worker, which
builds the trainer's torch backend (``posenc.torch.train.Backend``, DistributedDataParallel for
N = 2) and times ``run_epoch`` (the training steps: loss with forces by autograd, backward with
DDP's gradient all-reduce, clipping, Adam; validation is not included) on EGNN 4x64 with the
Hermite table. Every rank has one torch thread and is pinned to a core of its own
(``os.sched_setaffinity``), so N = 2 uses two cores and N = 1 one.

Measured per epoch: wall seconds (between two barriers, so the slower rank counts) and CPU
seconds summed over the ranks (``time.process_time`` of each rank process, gloo's threads
included): the cost. One warm-up epoch is dropped; the table gives the fastest of ``--epochs``
timed epochs over ``--repeats`` alternating launches (this VM's CPU speed drifts by about 10%
over minutes). The global batch stays ``BATCH``: two ranks step on half of it each, and train
the same model as one process (``tests/test_distributed_torch.py``).

Usage (needs both cores free; the rMD17 files, ``POSENC_DATA`` or ``../shared/data/rmd17``, or
``--dataset synthetic:md17``)::

    python benchmarks/bench_scaling.py [--datasets md17:ethanol md17:aspirin] [--epochs 3] [--repeats 2] [--write]
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

RESULTS = Path(__file__).resolve().parent / "results" / "scaling_cpu.md"
RANKS = (1, 2)
N_TRAIN, BATCH, LAYERS, HIDDEN = 950, 16, 4, 64


def worker(dataset: str, epochs: int) -> None:
    """One rank (under torchrun): prints ``[[wall, cpu over ranks], ...]`` per epoch on rank 0."""
    import torch

    from posenc.data.graphs import batches
    from posenc.encoding_defaults import distance_scale
    from posenc.torch.train import Backend
    from posenc.training import TrainConfig, encoding_range, epoch_seed, load_data, output_stats, resolve

    rank = int(os.environ["LOCAL_RANK"])
    os.sched_setaffinity(0, {rank % os.cpu_count()})  # one core per rank
    config = resolve(TrainConfig(dataset=dataset, encoding="hermite", n_layers=LAYERS, hidden=HIDDEN,
                                 batch_size=BATCH, n_train=N_TRAIN, n_val=50, n_test=50, epochs=1000, threads=1,
                                 progress=False, out_dir="unused"))
    data = load_data(config)
    train = data["train"]
    backend = Backend(config, data, encoding_range(config, train), output_stats(train, Backend.n_species),
                      distance_scale(train))
    times = []
    for epoch in range(epochs + 1):
        order = list(batches(train, BATCH, shuffle=True, seed=epoch_seed(0, epoch)))
        backend.parallel.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        backend.run_epoch(order)
        backend.parallel.barrier()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        cpu_all = float(backend.parallel.sum(torch.tensor([cpu], dtype=torch.float64))[0])
        times.append([wall, cpu_all])
    backend.close()
    if rank == 0:
        print(json.dumps({"times": times, "steps": len(order), "n_train": len(train), "atoms": int(train.n_atoms[0])}))


def launch(n_ranks: int, dataset: str, epochs: int) -> dict:
    """Runs the worker under ``torchrun`` with ``n_ranks`` ranks; rank 0's measurements."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_ranks}", __file__,
           "--worker", "--dataset", dataset, "--epochs", str(epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{n_ranks} ranks failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(best: dict[tuple[str, int], tuple[float, float]], info: dict[str, dict], epochs: int, repeats: int) -> str:
    """The markdown page: what ran, then one row per data set and number of ranks."""
    import torch

    first = next(iter(info.values()))
    lines = [  # no heading: the book includes the file under its own
        "Data-parallel scaling on CPU (gloo), written by `python benchmarks/bench_scaling.py --write` on "
        f"{platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"torch {torch.__version__}: EGNN {LAYERS}x{HIDDEN} with the Hermite table, "
        f"{first['n_train']} training molecules in global batches of {BATCH} ({first['steps']} steps per epoch), "
        "forces by autograd; training steps only. One torch thread per rank, each rank on a core of its own. "
        f"The fastest of {epochs} epochs x {repeats} launches, after a warm-up epoch.",
        "",
        "| data | atoms | ranks | molecules per rank and step | wall s/epoch | CPU s/epoch (all ranks) "
        "| speed-up (wall) | CPU cost vs 1 rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, n), (wall, cpu) in best.items():
        wall_1, cpu_1 = best[dataset, 1]
        lines.append(f"| `{dataset}` | {info[dataset]['atoms']} | {n} | {BATCH // n} | {wall:.3f} | {cpu:.3f} "
                     f"| {wall_1 / wall:.2f}x | {cpu / cpu_1:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["md17:ethanol", "md17:aspirin"],
                        help="md17:<molecule> or synthetic:md17")
    parser.add_argument("--dataset", help=argparse.SUPPRESS)  # the worker's
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per launch (after a warm-up epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="launches per number of ranks, alternating")
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.name}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.dataset, args.epochs)
        return
    best: dict[tuple[str, int], tuple[float, float]] = {}
    info: dict[str, dict] = {}
    for dataset in args.datasets:
        for repeat in range(args.repeats):
            for n in RANKS:
                info[dataset] = run = launch(n, dataset, args.epochs)
                timed = run["times"][1:]
                wall, cpu = min(t[0] for t in timed), min(t[1] for t in timed)
                old = best.get((dataset, n), (wall, cpu))
                best[dataset, n] = (min(wall, old[0]), min(cpu, old[1]))
                print(f"{dataset} repeat {repeat + 1}, {n} rank(s): {wall:.3f} wall-s/epoch, {cpu:.3f} CPU-s/epoch",
                      flush=True)
    text = table(best, info, args.epochs, args.repeats)
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
