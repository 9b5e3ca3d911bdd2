"""The converged campaign: the paper's Table 1 at convergence, run by the protocol of
``results/campaign/protocol.md`` (fixed before the first run).

Stages, each planned from the committed results of the one before (so one invocation runs the
whole campaign in order, and a second one resumes it):

1. ``tune``: every EGNN arm but ``smooth`` at each rate of :data:`LR_CANDIDATES`, ethanol split 1,
   :data:`TUNE_EPOCHS` epochs; the rate with the lowest validation force MAE wins.
2. ``tune-smooth``: ``smooth`` (posenc's model with the smoothness loss) at posenc's chosen rate,
   each lambda of :data:`LAM_CANDIDATES`, chosen the same way.
3. ``main``: every arm at its chosen setting for :data:`EPOCHS` epochs on every molecule and split
   of :func:`main_plan`, split-major, so a cut-short campaign is balanced.

The runs train through :func:`run_grid.run_grid` (resume from scratch checkpoints, flags, kept
files) into ``results/campaign/runs/<dataset>/<backbone>/<arm>/seed<k>/``. Only validation errors
choose settings; the tuning runs' test errors are recorded and never read here.

Examples::

    python scripts/campaign.py --dry-run          # the plan and the state of each run
    python scripts/campaign.py                    # run (or resume) the whole campaign
    python scripts/campaign.py --molecules ethanol malonaldehyde aspirin benzene
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_grid  # noqa: E402  (the sibling script, importable once its folder is on the path)

RESULTS = run_grid.DEFAULT_RESULTS / "campaign"
#: Epochs of every main run (cosine horizon too).
EPOCHS = 1000
#: Epochs of the tuning runs, whose *validation* error picks each arm's rate and smooth's lambda.
TUNE_EPOCHS = 200
LR_CANDIDATES = (3e-4, 1e-3, 3e-3)
LAM_CANDIDATES = (0.01, 0.1, 1.0)
#: Where settings are tuned: (molecule, split).
TUNE_ON = ("ethanol", 1)
#: Every run's fixed part of the config (the engine's default recipe otherwise).
BASE_CONFIG: dict[str, Any] = {"n_layers": 4, "hidden": 64, "batch_size": 16, "schedule": "cosine",
                               "device": "cpu", "md17_labels": "md17"}


@dataclasses.dataclass(frozen=True)
class CampaignArm:
    """One arm: its encoding and fixed changes; ``rate_of`` names the arm whose tuned rate it uses
    (itself by default), and ``tune_lam`` whether lambda is tuned instead of the rate."""

    encoding: str
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""
    rate_of: str | None = None
    tune_lam: bool = False


ARMS: dict[str, CampaignArm] = {
    "raw": CampaignArm("raw", note="the backbone's own distance feature (EGNN: d^2 / mean d^2)"),
    "posenc": CampaignArm("hermite", note="Hermite table, 64 bins x 32, sinusoidal init, lambda = 0"),
    "smooth": CampaignArm("hermite", note="posenc with the smoothness loss (tuned lambda)",
                          rate_of="posenc", tune_lam=True),
    "frozen": CampaignArm("hermite", {"freeze_tables": True},
                          note="posenc's sinusoidal table never trained (a fixed basis)"),
    "gaussian": CampaignArm("gaussian", note="Gaussian RBF, 50 fixed centres (what practitioners use)"),
}
#: Arms per (backbone, molecule kind): aspirin (21 atoms, ~4x the cost) runs four arms on split 1.
EGNN_ARMS = ("raw", "posenc", "smooth", "frozen", "gaussian")
ASPIRIN_ARMS = ("raw", "posenc", "smooth", "frozen")
TRANSFORMER_ARMS = ("raw", "posenc", "smooth")
#: The paper's Table 1 molecules; the first two run on splits 1-3, aspirin on split 1, the rest
#: only when named with ``--molecules`` (their rows read "not run" until then).
PAPER_MOLECULES = ("aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic",
                   "toluene", "uracil")
DEFAULT_MOLECULES = ("ethanol", "malonaldehyde", "aspirin")
SPLITS = (1, 2, 3)


def _spec(molecule: str, split: int, backbone: str, arm: str, config: dict[str, Any]) -> run_grid.RunSpec:
    dataset = f"md17:{molecule}"
    full = {**BASE_CONFIG, **config, "dataset": dataset, "backbone": backbone, "md17_split": split,
            "seed": split}
    return run_grid.RunSpec(dataset, backbone, arm, split, full)


def tune_specs() -> list[run_grid.RunSpec]:
    """Stage 1: the rate candidates of every arm that tunes its rate."""
    molecule, split = TUNE_ON
    return [_spec(molecule, split, "egnn", f"tune-{name}-lr{lr:g}",
                  {"encoding": arm.encoding, "lam": 0.0, "lr": lr, "epochs": TUNE_EPOCHS, **arm.changes})
            for lr in LR_CANDIDATES for name, arm in ARMS.items() if arm.rate_of is None]


def tune_lam_specs(posenc_lr: float) -> list[run_grid.RunSpec]:
    """Stage 2: smooth's lambda candidates at posenc's chosen rate."""
    molecule, split = TUNE_ON
    arm = ARMS["smooth"]
    return [_spec(molecule, split, "egnn", f"tune-smooth-lam{lam:g}",
                  {"encoding": arm.encoding, "lam": lam, "lr": posenc_lr, "epochs": TUNE_EPOCHS, **arm.changes})
            for lam in LAM_CANDIDATES]


def _best_by_validation(specs: Sequence[run_grid.RunSpec], results_dir: Path) -> run_grid.RunSpec | None:
    """The finished, unflagged spec with the lowest ``best_val``; None while any is unfinished.

    Raises:
      RuntimeError: every candidate finished flagged (the arm cannot be tuned).
    """
    scores = {}
    for spec in specs:
        state = run_grid.run_state(spec, results_dir)
        if state in ("todo", "conflict"):
            return None
        if state == "done":
            scores[spec] = json.loads((results_dir / spec.rel_dir / "result.json").read_text())["best_val"]
    if not scores:
        raise RuntimeError(f"every tuning run of {[str(s.rel_dir) for s in specs]} is flagged")
    return min(scores, key=scores.__getitem__)


def chosen_settings(results_dir: Path = RESULTS) -> dict[str, dict[str, float]]:
    """``arm -> {"lr": ..., ("lam": ...)}`` for every arm whose tuning has finished."""
    tuned = tune_specs()
    out: dict[str, dict[str, float]] = {}
    for name, arm in ARMS.items():
        if arm.rate_of is None:
            best = _best_by_validation([s for s in tuned if s.arm.startswith(f"tune-{name}-lr")], results_dir)
            if best is not None:
                out[name] = {"lr": best.config["lr"], "lam": 0.0}
    posenc = out.get("posenc")
    if posenc is not None:
        best = _best_by_validation(tune_lam_specs(posenc["lr"]), results_dir)
        if best is not None:
            out["smooth"] = {"lr": posenc["lr"], "lam": best.config["lam"]}
    return out


def main_plan(molecules: Sequence[str] = DEFAULT_MOLECULES) -> list[tuple[str, int, str, str]]:
    """``(molecule, split, backbone, arm)`` of every main run, split-major (each split's ethanol and
    malonaldehyde first, then the Transformer, then aspirin, then any other molecule)."""
    bad = [m for m in molecules if m not in PAPER_MOLECULES]
    if bad:
        raise ValueError(f"unknown MD17 molecule(s) {bad}; choose from {PAPER_MOLECULES}")
    plan = []
    for split in SPLITS:
        for molecule in ("ethanol", "malonaldehyde"):
            if molecule in molecules:
                plan += [(molecule, split, "egnn", arm) for arm in EGNN_ARMS]
    if "ethanol" in molecules:
        plan += [("ethanol", 1, "transformer", arm) for arm in TRANSFORMER_ARMS]
    if "aspirin" in molecules:
        plan += [("aspirin", 1, "egnn", arm) for arm in ASPIRIN_ARMS]
    for molecule in molecules:
        if molecule not in ("ethanol", "malonaldehyde", "aspirin"):
            plan += [(molecule, 1, "egnn", arm) for arm in ASPIRIN_ARMS]
    return plan


def main_specs(settings: dict[str, dict[str, float]],
               molecules: Sequence[str] = DEFAULT_MOLECULES) -> list[run_grid.RunSpec]:
    """Stage 3: the main runs of every arm whose setting is chosen (the others wait)."""
    specs = []
    for molecule, split, backbone, arm in main_plan(molecules):
        if arm in settings:
            specs.append(_spec(molecule, split, backbone, arm,
                               {"encoding": ARMS[arm].encoding, **settings[arm], "epochs": EPOCHS,
                                **ARMS[arm].changes}))
    return specs


def plan(results_dir: Path = RESULTS, molecules: Sequence[str] = DEFAULT_MOLECULES) -> list[run_grid.RunSpec]:
    """Every run that can be configured now, in the order they should run."""
    specs = tune_specs()
    settings = chosen_settings(results_dir)
    if "posenc" in settings:
        specs += tune_lam_specs(settings["posenc"]["lr"])
    return specs + main_specs(settings, molecules)


def run(results_dir: Path, scratch_dir: Path, molecules: Sequence[str], log: Any = print) -> int:
    """Runs the campaign one run at a time, re-planning after each (tuning unlocks later stages).

    Returns:
      How many runs were trained.
    """
    trained = 0
    while True:
        todo = [s for s in plan(results_dir, molecules)
                if run_grid.run_state(s, results_dir) not in ("done", "failed")]
        if not todo:
            return trained
        run_grid.run_grid(todo[:1], results_dir, scratch_dir, jobs=1, log=log)
        trained += 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", nargs="+", default=list(DEFAULT_MOLECULES), choices=PAPER_MOLECULES,
                   help="MD17 molecules of the main stage (the paper's other five run split 1, four arms)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--scratch-dir", type=Path, default=run_grid.DEFAULT_SCRATCH / "campaign",
                   help="checkpoints (git-ignored, never committed)")
    p.add_argument("--dry-run", action="store_true", help="list the runs planned now and their state")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        for spec in plan(args.results_dir, args.molecules):
            print(f"{run_grid.run_state(spec, args.results_dir):8s} {spec.rel_dir}  "
                  f"lr={spec.config['lr']:g} lam={spec.config['lam']:g} epochs={spec.config['epochs']}")
        return 0
    run(args.results_dir, args.scratch_dir, args.molecules, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
