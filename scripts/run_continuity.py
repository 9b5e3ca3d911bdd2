"""The committed results of the chapter *How smooth must an encoding be?* (``results/continuity/``).

Linear (C0), Hermite (C1), B-spline and quintic Hermite (C2) table encodings at the same table
size and training budget, measured three ways (``posenc.continuity_study``):

1. ``toy``: the Morse pair curve of ``posenc.continuity_study.TOY_POTENTIAL`` fitted by a
   :class:`~posenc.torch.pair.PairEnergy` per encoding and seed; errors of E, F and d^2E/dr^2
   against the analytic answer, and the model's derivative jumps at the bin centres ->
   ``toy.json`` / ``toy.npz``;
2. per encoding, an EGNN trained on rMD17 ethanol (split 1) with the training engine's default
   recipe for ``--epochs`` epochs, then: its test errors, the jumps of its first table, BFGS
   relaxation of the first test frame and harmonic frequencies from central differences of the
   forces at each ``--fd-steps``, and NVE runs from the first test frame at each ``--timesteps``
   for ``--nve-fs`` -> ``ethanol_<encoding>.json`` / ``.npz`` and the run's
   ``ethanol_<encoding>_metrics.csv``;
3. ``meta.json``: the command, the budget, versions, machine and CPU seconds of each stage.

Checkpoints stay in the scratch directory (``--scratch``, git-ignored). The script resumes: a
stage whose results file exists is skipped, an unfinished training run continues from its last
checkpoint. One torch thread; run it with ``OMP_NUM_THREADS=1``.

Example (the committed results)::

    OMP_NUM_THREADS=1 python scripts/run_continuity.py --epochs 400 --nve-fs 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "results" / "continuity"
DEFAULT_SCRATCH = REPO / ".scratch" / "continuity"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="md17:ethanol",
                   help="md17:ethanol, or synthetic:md17 (toy clusters, for tests; read as eV)")
    p.add_argument("--epochs", type=int, default=400, help="training epochs of every encoding")
    p.add_argument("--train-overrides", type=json.loads, default={},
                   help='further TrainConfig fields as JSON, e.g. \'{"n_train": 50}\' (the same for every encoding)')
    p.add_argument("--timesteps", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="NVE time steps, fs")
    p.add_argument("--nve-fs", type=float, default=2000.0, help="simulated time of each NVE run, fs")
    p.add_argument("--fd-steps", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2],
                   help="finite-difference displacements of the Hessian, Angstrom")
    p.add_argument("--toy-steps", type=int, default=4000, help="optimiser steps of every toy fit")
    p.add_argument("--toy-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encodings", nargs="+", default=None, help="a subset of the four (default: all)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def run_toy(args: argparse.Namespace, encodings: Sequence[str]) -> None:
    from posenc.continuity_study import TOY_POTENTIAL, TOY_TABLE, save_study, toy_study, toy_training_data

    summary, curves = toy_study(TOY_POTENTIAL, toy_training_data(), steps=args.toy_steps, seeds=args.toy_seeds,
                                encodings=encodings, progress=not args.no_progress, **TOY_TABLE)
    summary["potential_parameters"] = {"d_e": TOY_POTENTIAL.d_e, "a": TOY_POTENTIAL.a, "r_e": TOY_POTENTIAL.r_e}
    save_study(args.results / "toy", summary, curves)


def train_encoding(args: argparse.Namespace, encoding: str, out_dir: Path) -> dict[str, Any]:
    """Trains (or resumes, or finds finished) one encoding's run; its training summary."""
    from posenc.continuity_study import md17_config
    from posenc.trainer import train

    cpu_file = out_dir / "cpu_seconds.json"  # training CPU time over every resumption
    spent = json.loads(cpu_file.read_text())["cpu_seconds"] if cpu_file.is_file() else 0.0
    result_file = out_dir / "result.json"
    if not (result_file.is_file() and json.loads(result_file.read_text()).get("finished")):
        config = md17_config(encoding, epochs=args.epochs, out_dir=out_dir, dataset=args.dataset, threads=1,
                             resume=any(out_dir.glob("last.*")), progress=not args.no_progress,
                             **args.train_overrides)
        start = time.process_time()
        train(config)
        spent += time.process_time() - start
        cpu_file.write_text(json.dumps({"cpu_seconds": spent}))
    result = json.loads(result_file.read_text())
    if not result.get("finished"):
        raise RuntimeError(f"the {encoding} run did not finish (flags: {result.get('flags')}); see {out_dir}")
    keep = ("epochs", "n_layers", "hidden", "n_bin", "dim", "lr", "batch_size", "n_train", "n_val", "n_test",
            "md17_split", "dataset", "seed", "dtype")
    return {"test": result["test"], "best_epoch": result["best_epoch"], "flags": result.get("flags", []),
            "x_range": result["x_range"], "cpu_seconds": spent,
            "config": {k: result["config"][k] for k in keep}}


def run_molecule(args: argparse.Namespace, encoding: str, stem: Path) -> None:
    import numpy as np
    from ase import Atoms

    from posenc.continuity import CONTINUITY
    from posenc.continuity_study import (
        first_table,
        load_calculator,
        md17_config,
        molecule_study,
        save_study,
        table_jumps,
    )
    from posenc.training import load_data, resolve

    out_dir = args.scratch / stem.name
    out_dir.mkdir(parents=True, exist_ok=True)
    training = train_encoding(args, encoding, out_dir)
    synthetic = args.dataset.startswith("synthetic")
    calc = load_calculator(out_dir, energy_unit="eV" if synthetic else None)  # toy units read as eV
    config = resolve(md17_config(encoding, epochs=args.epochs, out_dir=out_dir, dataset=args.dataset,
                                 **args.train_overrides))
    first = load_data(config)["test"].subset(np.arange(1))
    start = Atoms(numbers=first.z, positions=first.pos)
    began = time.process_time()
    summary, traces = molecule_study(calc, start, timesteps_fs=args.timesteps, duration_fs=args.nve_fs,
                                     fd_steps=args.fd_steps, progress=not args.no_progress)
    summary = {"encoding": encoding, "continuity": CONTINUITY[encoding], "training": training,
               "table": {"n_bin": first_table(calc.model).n_bin, "dim": first_table(calc.model).dim},
               "table_jumps": table_jumps(calc.model), **summary,
               "analysis_cpu_seconds": time.process_time() - began}
    shutil.copyfile(out_dir / "metrics.csv", stem.parent / f"{stem.name}_metrics.csv")
    save_study(stem, summary, traces)


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """What the results depend on: every option but the directories and the progress bars."""
    return {k: v for k, v in vars(args).items() if k not in ("results", "scratch", "no_progress", "encodings")}


def check_meta(args: argparse.Namespace) -> None:
    """Refuses to add to results that an earlier invocation made with another budget."""
    path = args.results / "meta.json"
    if path.is_file():
        earlier = json.loads(path.read_text())["budget"]
        now = json.loads(json.dumps(budget(args)))  # as json would store it
        if earlier != now:
            raise SystemExit(f"{path} was made with budget {earlier}, not {now}: resume with the same options, "
                             "or write to another --results directory")


def portable_command(argv: Sequence[str]) -> str:
    """The command line, quoted, with absolute paths made relative to the repository (or, outside
    it, reduced to their last part), so that the committed files name no machine-local path."""
    def portable(arg: str) -> str:
        path = Path(arg)
        if not path.is_absolute():
            return arg
        return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else f"<elsewhere>/{path.name}"

    return shlex.join(["python", "scripts/run_continuity.py", *map(portable, argv)])


def write_meta(args: argparse.Namespace, argv: Sequence[str], stages: dict[str, float]) -> None:
    """``meta.json``: what made these results (its stage times merged with earlier invocations')."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_grid import environment

    path = args.results / "meta.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"stage_cpu_seconds": {}}
    meta["stage_cpu_seconds"].update(stages)
    meta.update({"command": portable_command(argv), "budget": budget(args),
                 "environment": environment(),
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    path.write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    from tqdm.auto import tqdm

    from posenc.continuity_study import ENCODINGS

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    encodings = tuple(args.encodings or ENCODINGS)
    unknown = sorted(set(encodings) - set(ENCODINGS))
    if unknown:
        raise SystemExit(f"unknown encodings {unknown}; choose from {ENCODINGS}")
    torch.set_num_threads(1)
    args.results.mkdir(parents=True, exist_ok=True)
    check_meta(args)
    write_meta(args, argv, {})  # before the first stage, so that a resumption is checked against it
    task, name = args.dataset.split(":", 1)
    molecule = "synthetic" if task == "synthetic" else name
    stems = {"toy": args.results / "toy", **{enc: args.results / f"{molecule}_{enc}" for enc in encodings}}
    for name, stem in tqdm(stems.items(), desc="stages", disable=args.no_progress):
        if stem.with_suffix(".json").is_file():
            tqdm.write(f"{name}: done ({stem.with_suffix('.json').name}), skipped")
            continue
        began = time.process_time()
        if name == "toy":
            run_toy(args, encodings)
        else:
            run_molecule(args, name, stem)
        seconds = time.process_time() - began
        write_meta(args, argv, {name: seconds})
        tqdm.write(f"{name}: {seconds:.0f} CPU s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
